"""Text from sources is shown, never interpreted: control characters become escapes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backfill.textsafe import visible

# What a terminal may act on: C0 controls, DEL, the C1 range (its CSI, 0x9b, starts an
# escape sequence on its own) and the bidirectional overrides that reorder what is shown.
ACTIVE = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u202e",
    "\u2066",
    "\u2028",
]


def test_escape_bell_and_csi_are_shown_as_escapes() -> None:
    """ESC, BEL and CSI read as Python-style escapes, the rest of the text as it was."""
    assert visible("[/bold] \x1b[2J\x07 evil") == "[/bold] \\x1b[2J\\x07 evil"
    assert visible("a\x9b31mb\x7f") == "a\\x9b31mb\\x7f"
    assert visible("tab\there\nline\r") == "tab\\there\\nline\\r"
    assert visible("\u202eevil") == "\\u202eevil"


def test_ordinary_text_is_left_alone() -> None:
    """Letters, punctuation and non-ASCII text (accents, CJK, emoji) pass unchanged."""
    text = "Zürich 東京 ✓ 🎾 [red]tag[/] C:\\path 100%"
    assert visible(text) is text or visible(text) == text


def test_multiline_keeps_newlines_and_tabs_but_nothing_else() -> None:
    """Where several lines are expected (a traceback), only newline and tab survive."""
    assert visible("a\n\tb\x1b[1mc\r", multiline=True) == "a\n\tb\\x1b[1mc\\r"


@given(st.text())
def test_no_active_character_survives(text: str) -> None:
    """Whatever the input, the output holds no character a terminal would act on."""
    shown = visible(text)
    assert not any(ch in shown for ch in ACTIVE)
