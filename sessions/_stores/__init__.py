"""Stores: durable event logs of sessions, behind the `Store` protocol (see `_base`)."""
