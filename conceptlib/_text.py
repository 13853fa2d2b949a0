"""Reading the text files users hand to conceptlib (prompt lists, templates, concept lists)."""

from __future__ import annotations

import os
from pathlib import Path

from conceptlib.errors import UsageError


def read_utf8(path: str | os.PathLike[str], *, holds: str, called: str) -> str:
    """The text of ``path``, without a leading byte-order mark.

    Windows editors save "UTF-8 with BOM"; kept, the mark would be part of the first line (a
    template, a prompt, a path that then names nothing, a JSON line that does not parse).

    Args:
        path: the file.
        holds: what each line should be, for the message (``one prompt template a line``).
        called: what the user calls the file, for the hint (``template file``).

    Raises:
        UsageError: the file is not UTF-8, naming it and what it should hold.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"is not UTF-8 text (expected {holds})", path=path, hint=f"save the {called} as UTF-8") from None
