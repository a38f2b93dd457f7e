"""Checks and encodings shared by the durable stores."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Sequence
from typing import Any, Final

from .._errors import CorruptRecord, StoreError, UnstorableRecord
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


def json_text(session_id: str, seq: int, obj: Any, what: str = "data") -> str:
    """Compact JSON of ``obj`` (``what`` names it in errors), checked to encode as UTF-8.

    Raises:
        UnstorableRecord: ``obj`` is not JSON, or holds a string that is not valid
            Unicode (a lone surrogate), which UTF-8 cannot encode.
    """
    try:
        text = _dumps(obj)
    except (TypeError, ValueError) as exc:
        raise UnstorableRecord(session_id, seq, f"as JSON: {exc}") from None
    if not text.isascii():
        utf8(session_id, seq, text, obj, what)
    return text


def _dumps_with_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _dumps_with_c_encoder(obj: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))``, the same text and the
    same errors, through json's C encoder directly: json.dumps with options builds a
    JSONEncoder and goes through two Python layers per call, a fifth of the cost of a
    turn's record. A new encoder per call, with its own circular-reference markers, as
    json.dumps makes (the stores encode on several threads)."""
    encoder = _c_make_encoder({}, _default, _encode_basestring, None, ":", ",", False, False, True)
    return "".join(encoder(obj, 0))


_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_basestring = json.encoder.encode_basestring
_default = json.JSONEncoder().default  # the TypeError json.dumps raises, word for word
_dumps = _dumps_with_c_encoder if _c_make_encoder is not None else _dumps_with_json


def check_json(session_id: str, seq: int, obj: Any) -> None:
    """Raise what `json_text` would raise for ``obj``, without encoding it when it is
    plainly JSON (for a store that keeps values, not text: `InMemoryStore`).

    ``obj`` is plainly JSON when it is made of exactly ``dict`` (with ``str`` keys),
    ``list``, ``tuple``, ``str`` (valid Unicode), ``int``, ``float``, ``bool`` and
    ``None``, nested at most `_PLAIN_DEPTH` deep. Anything else (subclasses, other key
    types, deeper or circular values) goes through `json_text`, so the outcome is
    exactly `json_text`'s; the walk costs a tenth of the encoding of a turn's record.

    Raises:
        UnstorableRecord: as `json_text`.
    """
    if not _plain(obj, 0):
        json_text(session_id, seq, obj)


_PLAIN_SCALARS: Final = frozenset({int, float, bool, type(None)})
_PLAIN_DEPTH: Final = 32


def _plain(obj: Any, depth: int) -> bool:
    kind = type(obj)
    if kind is str:
        return obj.isascii() or _encodes(obj)
    if kind in _PLAIN_SCALARS:
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    depth += 1
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str or not (key.isascii() or _encodes(key)):
                return False
            kind = type(value)
            if kind is str:
                if not (value.isascii() or _encodes(value)):
                    return False
            elif kind not in _PLAIN_SCALARS and not _plain(value, depth):
                return False
        return True
    if kind is list or kind is tuple:
        for value in obj:
            kind = type(value)
            if kind is str:
                if not (value.isascii() or _encodes(value)):
                    return False
            elif kind not in _PLAIN_SCALARS and not _plain(value, depth):
                return False
        return True
    return False


def utf8(session_id: str, seq: int, text: str, obj: Any = None, what: str = "data") -> bytes:
    """``text`` (the JSON of ``obj``, a record's ``data`` or, with ``what="record"``, a
    whole `Record.to_dict`) as UTF-8.

    Raises:
        UnstorableRecord: a string holds a lone surrogate, naming where in ``obj`` it is.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        if what == "record" and isinstance(obj, dict):  # a whole record: name its own fields
            where = _surrogate_at(obj.get("kind"), "kind") or _surrogate_at(obj.get("data"), "data")
        else:
            where = _surrogate_at(obj, what) if obj is not None else None
        bad = text[exc.start : exc.end]
        raise UnstorableRecord(
            session_id,
            seq,
            f"as UTF-8: {where or 'a string'} holds {bad!r}, a lone surrogate (not valid Unicode)",
        ) from None


def _surrogate_at(obj: Any, path: str) -> str | None:
    """The path (``data['message']['content']``) of the first string in ``obj`` that UTF-8 cannot encode."""
    if isinstance(obj, str):
        return None if _encodes(obj) else path
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and not _encodes(key):
                return f"a key of {path}"
            found = _surrogate_at(value, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            found = _surrogate_at(value, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_loaded(session_id: str, record: Record, expected_seq: int, location: str, line: int) -> None:
    """Raise `CorruptRecord` unless a loaded ``record`` is the next of ``session_id``."""
    if record.session_id != session_id:
        raise CorruptRecord(location, line, f"record of session {record.session_id!r} in the log of {session_id!r}")
    if record.seq != expected_seq:
        raise CorruptRecord(location, line, f"seq {record.seq} where {expected_seq} was expected")
