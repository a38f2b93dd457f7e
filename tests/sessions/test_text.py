"""The text policy (sessions._text): a pair split across pieces is joined, a lone surrogate becomes U+FFFD."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sessions._text import TextJoiner, check_text, clean_text

# characters with surrogates well represented: halves of pairs, astral characters, ASCII
CHARS = st.one_of(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from(["\ud83d", "\ude00", "a", "\U0001f600", "é"]),
    st.characters(),
)
PIECES = st.lists(st.text(alphabet=CHARS, max_size=6), max_size=8)


@given(PIECES)
def test_streaming_pieces_gives_what_cleaning_the_whole_text_gives(pieces: list[str]) -> None:
    """However a stream is cut, the joiner's output is the clean form of the whole text."""
    joiner = TextJoiner()
    out = "".join(joiner.push(piece) for piece in pieces) + joiner.flush()
    assert out == clean_text("".join(pieces))
    out.encode("utf-8")  # always encodable


@given(st.text(alphabet=CHARS, max_size=20))
def test_clean_text_keeps_encodable_text_and_replaces_only_lone_halves(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert cleaned == text
    assert clean_text(cleaned) == cleaned


def test_a_split_pair_is_one_character_and_a_lone_half_is_the_replacement_character() -> None:
    joiner = TextJoiner()
    assert joiner.push("a\ud83d") == "a"
    assert joiner.push("\ude00b") == "\U0001f600b"
    assert joiner.push("\ud83d") == ""
    assert joiner.push("c") == "\ufffdc"
    assert joiner.push("\ud83d") == ""
    assert joiner.flush() == "\ufffd"
    assert joiner.flush() == ""


def test_check_text_names_where_the_surrogate_is() -> None:
    import pytest

    import sessions

    check_text("prompt", "fine \U0001f600")
    with pytest.raises(sessions.InvalidOption, match=r"'\\ud83d' at index 2") as info:
        check_text("opts", {"k": ["ok", "ab\ud83d"]})
    assert info.value.option == "opts['k']"
