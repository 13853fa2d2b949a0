"""Snapshots: an input from the wild copied into a private folder before anything decodes it.

What is decoded, what is hashed and what the library keeps are then the same bytes, and
nothing can change or leak any more: the copy is made by the link-safe reader of
:mod:`conceptlib._inputs` (whose docstring states the rules), and decoded by
:func:`conceptlib.formats.read`. ``add``, ``update`` and ``validate`` read their inputs this way.

Imports point down: this module uses :mod:`conceptlib.formats` and :mod:`conceptlib._inputs`;
neither of them imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib._inputs import (
    Folder,
    Skipped,
    naming,
    read_named,
    refusal,
    renamed,
    unexpected_reason,
)
from conceptlib.errors import BadInputError, ConceptlibError, InputReadError, ResourceLimitError
from conceptlib.formats import MAX_FILE_SIZE, read, sdxl_pair
from conceptlib.layout import PICKLE_OR_SAFETENSORS, own_names

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

__all__ = ["CONCEPT_IMAGES", "Snapshot", "read_input", "read_snapshot", "snapshot"]

CONCEPT_IMAGES = "concept_images"
#: Other files of a concept folder (README, hparams) kept byte for byte up to this size.
MAX_SIDE_FILE_BYTES = 16 * 2**20


@dataclass
class Snapshot:
    """An input copied into a private folder, where nothing can change or leak any more.

    Attributes:
        source: the input as named or found (a file, or a concept folder).
        copy: the same input in the copy (a file, or a folder).
        root: the copy's folder, standing for ``origin``.
        origin: the folder ``root`` stands for (the concept folder, or the file's folder).
        skipped: what was left alone while copying (links out, non-images, large side files).
        images: the concept folder's checked ``concept_images/``, in the copy.
    """

    source: Path
    copy: Path
    root: Path
    origin: Path
    skipped: list[Skipped] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)

    def shown(self, path: str | os.PathLike[str]) -> Path:
        """Where ``path`` (in the copy) is in the input, for messages."""
        p = Path(path)
        if p == self.root or p.is_relative_to(self.root):
            return self.origin / p.relative_to(self.root)
        return p

    def rename(self, exc: BaseException) -> BaseException:
        """``exc``, naming the input's files instead of the copy's (changed in place)."""
        if isinstance(exc, ConceptlibError) and exc.path is not None:
            exc.path = os.fspath(self.shown(exc.path))
            exc.message = exc.message.replace(os.fspath(self.root), os.fspath(self.origin))
            exc.args = (str(exc),)
        elif isinstance(exc, OSError) and exc.filename:
            return renamed(exc, self.shown(exc.filename))
        return exc


def snapshot(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, images: bool = True
) -> Snapshot:
    """Copy an input into the new folder ``dest``: a file (with its SDXL partner), or a concept folder.

    A concept folder brings its own embedding files, its other files (token and type files,
    README, ...; at most :data:`MAX_SIDE_FILE_BYTES` each) and the images of its
    ``concept_images/`` that pass :func:`conceptlib._images.check_image`; other embedding files
    beside its own are concepts of their own and stay behind. Links are followed only while
    they stay inside the concept folder; everything refused is in ``skipped``.

    Args:
        source: the file or folder.
        dest: a new folder for the copy (created).
        within: the folder ``source`` was found in, whose link rule applies to a file; None
            when the user named ``source`` (then a link there is followed).
        images: copy a concept folder's ``concept_images/`` too.

    Raises:
        UnsafeLinkError: the input itself, or every embedding file of a concept folder, is a
            link leading out or nowhere.
        BadInputError: a subclass naming the file (too large, not a regular file).
        OSError: the input cannot be read.
    """
    src, out = Path(source), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        snap = Snapshot(src, out, out, src)
        own = set(own_names())
        with Folder(src) as folder:
            entries, skipped = folder.entries()
            snap.skipped += skipped
            refused: list[BaseException] = []
            copied = False
            for entry in entries:
                if entry.name.startswith(".") or entry.kind != "file":
                    continue
                is_own = entry.name in own
                if not is_own and entry.name.lower().endswith(PICKLE_OR_SAFETENSORS):
                    continue  # a concept of its own, added as such
                try:
                    if is_own:
                        folder.copy(entry.rel, out / entry.name, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
                        copied = True
                    else:
                        folder.copy(entry.rel, out / entry.name, limit=MAX_SIDE_FILE_BYTES, what="file beside an embedding")
                except (BadInputError, OSError) as exc:
                    if is_own:
                        refused.append(exc)
                    snap.skipped.append(Skipped(os.fspath(folder.path / entry.rel), refusal(exc), exc))
            # An embedding file refused while listing (a link out) is why the folder gives
            # nothing: say that, not "holds no learned_embeds".
            refused += [s.error for s in skipped if Path(s.path).name in own and s.error is not None]
            if not copied and refused:
                raise refused[0]
            if images and any(e.name == CONCEPT_IMAGES and e.kind == "dir" for e in entries):
                snap.images = _copy_images(folder, CONCEPT_IMAGES, out / CONCEPT_IMAGES, snap.skipped)
        return snap
    origin = src.parent
    snap = Snapshot(src, out / src.name, out, origin)
    if within is None:
        data = read_named(src, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
        with naming(snap.copy), open(snap.copy, "xb") as handle:
            handle.write(data)
    else:
        with Folder(within) as folder:
            folder.copy(src.relative_to(within).as_posix(), snap.copy, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
    # The second file of an SDXL pair sits beside the first: the folder's link rule applies.
    partners = [n for n in sdxl_pair(src.name) or () if n != src.name and os.path.lexists(origin / n)]
    if partners:
        with Folder(origin) as folder:
            for name in partners:
                try:
                    folder.copy(name, out / name, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
                except (BadInputError, OSError) as exc:
                    snap.skipped.append(Skipped(os.fspath(origin / name), refusal(exc)))
    return snap


def _copy_images(folder: Folder, sub: str, dest: Path, skipped: list[Skipped]) -> list[Path]:
    """Copy the images in ``sub`` of ``folder`` that are what they claim; the others go to ``skipped``."""
    from conceptlib._images import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, check_image
    from conceptlib.errors import ImageFileError

    entries, refused = folder.entries(sub)
    skipped += refused
    copied: list[Path] = []
    for entry in entries:
        if entry.kind != "file" or entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        shown = folder.path / entry.rel
        try:
            data = folder.read_bytes(entry.rel, limit=MAX_IMAGE_BYTES, what="image", error=ImageFileError)
            check_image(data, shown)
        except (BadInputError, OSError) as exc:
            skipped.append(Skipped(os.fspath(shown), refusal(exc)))
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / entry.name
        with naming(target), open(target, "xb") as handle:
            handle.write(data)
        copied.append(target)
    return copied


def read_snapshot(snap: Snapshot, *, strict: bool = True) -> Embedding:
    """Decode a snapshot (a concept folder's token and type files are read by :func:`conceptlib.formats.read`).

    Errors name the input's files, never the copy's. An exception no reader foresaw (a bug,
    or bytes no check anticipated) becomes an :class:`InputReadError` for this input alone;
    ``MemoryError`` is not caught (the machine, not the file, is then in trouble).

    Raises:
        BadInputError: a subclass naming the file and the problem.
        OSError: the copy cannot be read (naming the input's file).
    """
    try:
        emb = read(snap.copy, strict=strict)
    except (ConceptlibError, OSError) as exc:
        raise snap.rename(exc) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise InputReadError(f"cannot be read: {unexpected_reason(exc)}", path=snap.source) from exc
    emb.source_path = os.fspath(snap.shown(emb.source_path)) if emb.source_path else os.fspath(snap.source)
    return emb


def read_input(
    path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, strict: bool = False
) -> tuple[Embedding, list[Skipped]]:
    """Read an embedding file or concept folder from the wild, through a private snapshot.

    Args:
        path: the file or folder.
        within: the folder it was found in (its link rule applies), None when named.
        strict: NaN/Inf vectors are an error.

    Returns:
        The embedding (its ``source_path`` names ``path``'s file), and what was left alone.

    Raises:
        BadInputError: a subclass naming the file and the problem.
        OSError: it cannot be read.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="conceptlib-read-") as scratch:
        snap = snapshot(path, Path(scratch) / "input", within=within, images=False)
        return read_snapshot(snap, strict=strict), snap.skipped
