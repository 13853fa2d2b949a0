"""Safe names: concept slugs (folder names in the library) and exported file stems.

A concept's name becomes a folder under ``<home>/concepts/``, so it must be one harmless path
component on every platform: no separators, no ``..``, no control characters, not a Windows
device name, short enough for any file system. Letters of every script are kept (``铃兰`` is a
fine name); everything else collapses to ``-``.

:func:`portable_stem` is the one rule for a file name every platform accepts; :func:`safe_stem`
and the ``--for`` export words (:func:`conceptlib.library.ui_word`) are built on it. This module
imports only the leaf :mod:`conceptlib._terminal`.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from conceptlib._terminal import is_invisible

#: Longest slug, in UTF-8 bytes. File systems allow 255 bytes per component; staying far below
#: leaves room for suffixes (``-2``) and for the staging prefix, and keeps tables readable.
MAX_SLUG_BYTES = 96
#: Longest exported file stem, in UTF-8 bytes: with the longest suffix (``.safetensors``) and a
#: ``-sdxl``/``-2`` to tell two files apart, far below the 255 bytes every file system allows.
MAX_STEM_BYTES = 120

#: Device names Windows reserves in every folder, whatever follows the first dot (``CON.txt``
#: and ``con.v2`` are the console too). The superscript digits count: Windows maps ``COM¹`` to
#: ``COM1``.
WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{p}{d}" for p in ("com", "lpt") for d in ("0123456789" + "\u00b9\u00b2\u00b3")}
)
_NOT_SLUG = re.compile(r"[^\w-]+")
_DASHES = re.compile(r"[-_]*-[-_]*")
# Characters no file name may hold on Windows, macOS or Linux (controls are invisible, below).
_NOT_FILENAME = re.compile(r'[/\\:*?"<>|]')
# Windows drops trailing dots and spaces (the name would change); a leading dot hides a file
# and ``..`` is a parent reference; a leading dash reads as an option in shells.
_STRIPPED = " .-"


def _truncate(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def slugify(text: str, *, max_bytes: int = MAX_SLUG_BYTES) -> str:
    """Turn any text into a concept name: lowercase letters, digits, ``-`` and ``_``.

    Args:
        text: a token (``<cat-toy>``), a file stem or a name typed by a user.
        max_bytes: the longest result, in UTF-8 bytes.

    Returns:
        The slug, or ``""`` when nothing usable is left (e.g. for ``"../"``).

    Example:
        >>> slugify("<Cat Toy>")
        'cat-toy'
        >>> slugify("../../etc/passwd")
        'etc-passwd'
        >>> slugify("铃兰")
        '铃兰'
    """
    # NFKC folds full-width and compatibility forms, so visually equal names get one slug.
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _NOT_SLUG.sub("-", text)
    text = _DASHES.sub("-", text).strip("-_")
    text = _truncate(text, max_bytes).strip("-_")
    if text in WINDOWS_DEVICES:
        text += "-1"
    return text


def numbered(slug: str, n: int, *, max_bytes: int = MAX_SLUG_BYTES) -> str:
    """``slug`` with the suffix ``-n``, shortened first so that the result is still a slug.

    Example:
        >>> numbered("cat-toy", 2)
        'cat-toy-2'
    """
    suffix = f"-{n}"
    return _truncate(slug, max_bytes - len(suffix)).rstrip("-_") + suffix


def is_slug(name: str) -> bool:
    """Whether ``name`` is already a valid concept name (``slugify(name) == name``)."""
    return bool(name) and slugify(name) == name


def portable_stem(text: str, *, refuse: re.Pattern[str] | None = None, max_bytes: int = MAX_STEM_BYTES) -> str:
    """``text`` made a file stem that Windows, macOS and Linux all store and show as it is.

    The rule: NFC (macOS would store another spelling of ``é``); every run of characters that
    no file system accepts (``/ \\ : * ? " < > |``), of invisible characters (controls, bidi
    overrides, zero-width characters, see :func:`conceptlib._terminal.is_invisible`) and of
    characters ``refuse`` matches becomes one ``-``; no leading or trailing dot, dash or space;
    at most ``max_bytes`` UTF-8 bytes, no character cut in half; and a Windows device name
    (:data:`WINDOWS_DEVICES`, before the first dot) gets ``-1`` after it, so ``con.v2`` becomes
    ``con-1.v2``. Everything else, case and spaces included, is kept.

    Args:
        text: the wanted stem, e.g. a prompt word.
        refuse: a pattern matching one more character the caller's use refuses (a prompt
            parser's syntax, say); it is tried on single characters.
        max_bytes: the longest result, in UTF-8 bytes.

    Returns:
        The stem, or ``""`` when nothing usable is left.

    Example:
        >>> portable_stem("con.v2")
        'con-1.v2'
        >>> portable_stem("cat toy (v2)", refuse=re.compile(r"[\\s()]"))
        'cat-toy-v2'
    """

    def refused(char: str) -> bool:
        return is_invisible(char) or bool(_NOT_FILENAME.match(char)) or bool(refuse is not None and refuse.fullmatch(char))

    text = unicodedata.normalize("NFC", text)
    text = "".join("-" if bad else "".join(run) for bad, run in itertools.groupby(text, key=refused))
    text = _truncate(text.strip(_STRIPPED), max_bytes).rstrip(_STRIPPED)
    head, dot, rest = text.partition(".")
    # Windows also ignores spaces between the device name and its dot (``NUL .txt``).
    if head.rstrip(" ").lower() in WINDOWS_DEVICES:
        marked = f"{head}-1"
        text = marked + _truncate(dot + rest, max_bytes - len(marked.encode("utf-8"))).rstrip(_STRIPPED)
    return text


def safe_stem(text: str, *, max_bytes: int = MAX_STEM_BYTES) -> str:
    """A file stem that keeps ``text`` as readable as possible (case, dots, spaces).

    Used for exported files, whose stem is the word AUTOMATIC1111 and ComfyUI users type, so
    it should stay close to the token: :func:`portable_stem` with no further rule.

    Args:
        text: the prompt word, e.g. ``cat-toy``.
        max_bytes: the longest result, in UTF-8 bytes.

    Returns:
        The stem, or ``""`` when nothing usable is left.

    Example:
        >>> safe_stem("bad/prompt:v2")
        'bad-prompt-v2'
    """
    return portable_stem(text, max_bytes=max_bytes)
