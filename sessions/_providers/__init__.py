"""Providers: one backend each, behind the `Provider` protocol (see `_base`)."""
