"""Text that enters a session, and the one policy for text that cannot be encoded.

A Python ``str`` can hold lone surrogates (code points U+D800 to U+DFFF): a JSON escape
such as ``"\\ud83d"`` whose pair was lost, or a file read with ``surrogateescape``. Such
a string has no UTF-8 form, so no store can hold it and no server can be sent it. The
policy (documented in ``docs/sessions.md``, "Text that cannot be stored"):

- text the **caller** gives (a prompt, an option) is refused with `InvalidOption`
  (`check_text`): the caller can fix it;
- text a **provider or a tool** produces is data, never a crash: a surrogate pair split
  across two stream pieces is joined into its character (`TextJoiner`), and a surrogate
  left alone is replaced by U+FFFD, the replacement character (`clean_text`).
"""

from __future__ import annotations

from typing import Any

from ._errors import InvalidOption

REPLACEMENT = "\ufffd"
"""What stands for a lone surrogate: U+FFFD REPLACEMENT CHARACTER."""


def is_encodable(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (no lone surrogates)."""
    if text.isascii():  # no surrogate, and known without reading the text
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str) -> str:
    """``text`` with each surrogate pair joined into its character and each lone
    surrogate replaced by U+FFFD; encodable text is returned as it is."""
    if is_encodable(text):
        return text
    # UTF-16 is where surrogates mean something: a pair decodes to its character, and
    # the decoder's "replace" turns a lone half into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with `clean_text` applied to every
    string in it, keys included."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_data(k): clean_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clean_data(v) for v in value)
    return value


def check_text(option: str, value: Any) -> None:
    """Raise `InvalidOption` if a string in ``value`` (a str, or dicts and lists of
    them) cannot be encoded as UTF-8."""
    if isinstance(value, str):
        if not is_encodable(value):
            bad = next(i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff")
            raise InvalidOption(
                option,
                value if len(value) <= 80 else value[:77] + "...",
                f"contains a lone surrogate ({value[bad]!r} at index {bad}), which cannot be encoded as UTF-8",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(option, key)
            check_text(f"{option}[{key!r}]", item)
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(option, item)


class TextJoiner:
    """Cleans streamed text piece by piece, joining a surrogate pair split across pieces.

    A piece that ends with the first half of a pair keeps that half back until the next
    piece: if it starts with the second half, the two become one character. Anything
    left alone becomes U+FFFD. Call `flush` when the stream ends.

    Example::

        joiner = TextJoiner()
        assert joiner.push("a\\ud83d") == "a"
        assert joiner.push("\\ude00b") == "\\U0001f600b"
        assert joiner.flush() == ""
    """

    def __init__(self) -> None:
        self._held = ""

    def push(self, piece: str) -> str:
        """The clean text of ``piece`` that can be passed on now (maybe ``""``)."""
        if self._held:
            text, self._held = self._held + piece, ""
        elif piece.isascii():  # the common piece: nothing held, nothing to clean
            return piece
        else:
            text = piece
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return clean_text(text)

    def flush(self) -> str:
        """What was held back at the stream's end: U+FFFD for a half with no pair, else ``""``."""
        held, self._held = self._held, ""
        return REPLACEMENT if held else ""
