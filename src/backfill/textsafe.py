"""Text from outside (a source's error, a partition key, a ledger row, an argument) made
safe to show on a terminal.

A terminal acts on control characters: ESC and the C1 CSI start escape sequences that
clear the screen, move the cursor, retitle the window or write the clipboard; BEL rings;
a carriage return overwrites the line; bidirectional overrides reorder what is read.
:func:`visible` turns each such character into a Python-style escape, so the text is
shown, never obeyed. It is for display only: JSON and the ledger keep the text as it was.
"""

from __future__ import annotations

__all__ = ["visible"]

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
# Bidirectional embeddings, overrides and isolates, and the Unicode line separators.
_LAYOUT = [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]

_ONE_LINE: dict[int, str] = {c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in _CONTROLS}
_ONE_LINE.update({c: f"\\u{c:04x}" for c in _LAYOUT})
_LINES = {c: s for c, s in _ONE_LINE.items() if chr(c) not in "\n\t"}


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character shown as an escape.

    >>> visible("[/bold] \\x1b[2J\\x07 evil")
    '[/bold] \\\\x1b[2J\\\\x07 evil'

    ``multiline`` keeps newlines and tabs (for a traceback); otherwise they are escaped
    too, so one value stays on one line.
    """
    if text.isprintable():
        # Every character escaped here is unprintable: most text needs no translation.
        return text
    return text.translate(_LINES if multiline else _ONE_LINE)
