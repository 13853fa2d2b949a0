"""Text read from files, made safe to show on a terminal (a leaf: imports nothing of conceptlib).

Names, tokens and metadata come from strangers' files. Printed raw, an escape sequence can
rewrite the screen (clear it, fake a "done" line, set the window title), a bidirectional
override can make ``evil<U+202E>gnp.pt`` read as ``eviltp.png``, and a zero-width space makes
two tokens look identical. :func:`printable` escapes every such character the way Python's
``repr`` would (``\\x1b``, ``\\u202e``) and bounds the length, so a 6 MB name is one short line.
:func:`invisible_characters` lists them, for refusing tokens no one could type.
"""

from __future__ import annotations

import os
import reprlib
import unicodedata

__all__ = ["MAX_SHOWN_CHARS", "invisible_characters", "is_invisible", "printable"]

#: File-controlled text longer than this is cut in messages (a pickle can carry a 6 MB string).
MAX_SHOWN_CHARS = 200

# Unicode categories that draw nothing or steer the terminal: controls (C0, C1, DEL), format
# characters (bidi overrides and isolates, zero-width joiners, BOM, soft hyphen), surrogates,
# private use, unassigned code points, and line/paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def is_invisible(char: str) -> bool:
    """True for a character that is not shown as itself (controls, bidi marks, zero-width...)."""
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def invisible_characters(text: str) -> list[str]:
    """The distinct invisible characters of ``text``, escaped (``['\\\\x1b', '\\\\u202e']``), in order."""
    seen: dict[str, None] = {}
    for char in text:
        if is_invisible(char):
            seen.setdefault(_escape(char), None)
    return list(seen)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _bounded_str(value: object, limit: int | None) -> str:
    # str() of a 5,000-digit int raises ValueError (Python's int-to-text limit) and str() of a
    # container walks all of it; reprlib stops at a few items and digits.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, (int, float, bool, os.PathLike)) or value is None:
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = shown.maxlong = max(limit or MAX_SHOWN_CHARS, 20)
    return shown.repr(value)


def printable(text: object, limit: int | None = MAX_SHOWN_CHARS) -> str:
    """``text`` with invisible characters escaped and at most ``limit`` characters shown.

    Ordinary characters of every script pass unchanged (a CJK or emoji token stays readable);
    a backslash is left as it is, so a real Windows path reads naturally. The cut adds
    ``…(+N characters)`` so a reader knows something was left out.

    Args:
        text: any value; non-strings are shown through ``str``.
        limit: the most characters of ``text`` to show, or None for all of them.
    """
    value = text if isinstance(text, str) else _bounded_str(text, limit)
    cut = 0
    if limit is not None and len(value) > limit:
        cut = len(value) - limit
        value = value[:limit]
    # isprintable() is C-fast and true only for text with none of the invisible categories.
    if not value.isprintable() and any(is_invisible(c) for c in value):
        value = "".join(_escape(c) if is_invisible(c) else c for c in value)
    return f"{value}…(+{cut} characters)" if cut else value
