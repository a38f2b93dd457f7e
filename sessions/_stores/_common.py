"""Checks and encodings shared by the durable stores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._errors import CorruptRecord, StoreError
from ._base import Record


def check_records(session_id: str, records: Sequence[Record]) -> None:
    """Raise `StoreError` unless ``records`` belong to ``session_id`` and number on
    without a gap (where they start is checked against the log by the writer)."""
    expected = records[0].seq if records else 0
    for record in records:
        if not isinstance(record, Record):
            raise StoreError(f"expected a sessions.Record, got {type(record).__name__}")
        if record.session_id != session_id:
            raise StoreError(f"record of session {record.session_id!r} appended to {session_id!r}")
        if not isinstance(record.data, dict):
            raise StoreError(
                f"record {session_id!r}#{record.seq}: data must be a dict, got {type(record.data).__name__}"
            )
        if record.seq != expected:
            raise StoreError(f"records of {session_id!r} are not consecutive: #{record.seq} after #{expected - 1}")
        expected += 1


def gap_error(session_id: str, last: int, first: int) -> StoreError:
    """The error for an append whose first record does not follow the log's last."""
    return StoreError(f"record {session_id!r}#{first} does not follow {session_id!r}#{last}")


def dumps(obj: Any, what: str) -> str:
    """Compact JSON of ``obj``; `StoreError` when it is not JSON (``what`` names it)."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from None


def check_loaded(session_id: str, record: Record, expected_seq: int, location: str, line: int) -> None:
    """Raise `CorruptRecord` unless a loaded ``record`` is the next of ``session_id``."""
    if record.session_id != session_id:
        raise CorruptRecord(location, line, f"record of session {record.session_id!r} in the log of {session_id!r}")
    if record.seq != expected_seq:
        raise CorruptRecord(location, line, f"seq {record.seq} where {expected_seq} was expected")
