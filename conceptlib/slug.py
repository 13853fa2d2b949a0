"""Safe names: concept slugs (folder names in the library) and exported file stems.

A concept's name becomes a folder under ``<home>/concepts/``, so it must be one harmless path
component on every platform: no separators, no ``..``, no control characters, not a Windows
device name, short enough for any file system. Letters of every script are kept (``铃兰`` is a
fine name); everything else collapses to ``-``.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest slug, in UTF-8 bytes. File systems allow 255 bytes per component; staying far below
#: leaves room for suffixes (``-2``) and for the staging prefix, and keeps tables readable.
MAX_SLUG_BYTES = 96
#: Longest exported file stem, in UTF-8 bytes (the suffix, at most ``.safetensors``, comes on top).
MAX_STEM_BYTES = 120

# Names Windows reserves in every folder, with or without an extension.
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
_NOT_SLUG = re.compile(r"[^\w-]+")
_DASHES = re.compile(r"[-_]*-[-_]*")
# Characters no file name may hold on Windows, macOS or Linux, plus the control characters.
_NOT_FILENAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


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
    if text in _WINDOWS_RESERVED:
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


def safe_stem(text: str, *, max_bytes: int = MAX_STEM_BYTES) -> str:
    """A file stem that keeps ``text`` as readable as possible (case, dots, spaces).

    Used for exported files, whose stem is the word AUTOMATIC1111 and ComfyUI users type, so
    it should stay close to the token: only characters no file system accepts are replaced.

    Args:
        text: the prompt word, e.g. ``cat-toy``.
        max_bytes: the longest result, in UTF-8 bytes.

    Returns:
        The stem, or ``""`` when nothing usable is left.

    Example:
        >>> safe_stem("bad/prompt:v2")
        'bad-prompt-v2'
    """
    text = unicodedata.normalize("NFC", text)
    text = _NOT_FILENAME.sub("-", text)
    # Leading dots hide files and ``..`` is a parent reference, a leading dash reads as an
    # option in shells; trailing dots and spaces are silently dropped by Windows, which would
    # change the prompt word.
    text = _truncate(text, max_bytes).strip(" .-")
    if not text or text.lower().split(".")[0] in _WINDOWS_RESERVED:
        return "" if not text else text + "-1"
    return text
