"""Which files in a folder make a concept: decided here, once, for ``add``, ``validate`` and ``preview``.

:func:`find_inputs` walks the paths a user named and returns plain data: the concepts found
(an embedding file, a diffusers SDXL pair, or an sd-concepts-library / diffusers concept
folder) and what was left alone, with the reason. Nothing is decoded here; each command reads
the concepts its own way (through :mod:`conceptlib._snapshots`) and words its own messages.
Before this module, ``add`` and ``validate`` each had a walker and they disagreed (a ``.pt``
beside ``learned_embeds.bin`` was a concept for one and not the other; a thumbnail was skipped
by one and an unreadable file for the other).

Folders are listed with :class:`conceptlib._inputs.Folder`, whose docstring states the link
rule: a link out of the folder (or to nothing) is never followed and is reported as skipped;
a link to a folder inside is not descended into (its target is searched where it is); a path
the user named is followed.

The rules on names are pure functions (:func:`own_names`, :func:`is_thumbnail`,
:func:`read_with_partner`), so a list of names from elsewhere can be judged the same way.

Imports point down: this module uses :mod:`conceptlib.formats` and :mod:`conceptlib._inputs`;
the library, the CLI and preview use it; it never imports them. :mod:`conceptlib.formats` is
imported inside the functions: it brings numpy, and the library (loaded by the CLI at start-up)
takes this module's messages at module scope.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conceptlib._inputs import Folder, Skipped, refusal
from conceptlib._terminal import printable
from conceptlib.errors import BadInputError

__all__ = [
    "EMBEDDING_SUFFIXES",
    "SKIP_PLAIN_IMAGE",
    "SKIP_THUMBNAIL",
    "Found",
    "Inputs",
    "find_inputs",
    "folder_files",
    "is_thumbnail",
    "own_names",
    "read_with_partner",
]

#: Suffixes a folder search looks at (the content decides the format, not this).
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp")
#: Files that are embeddings and nothing else (a .png may be a sample image).
PICKLE_OR_SAFETENSORS = (".pt", ".bin", ".safetensors")
#: Pictures a folder search picks up: they may hold an embedding, or be a sample picture.
PICTURE_SUFFIXES = (".png", ".webp")
#: Folders a search never descends into (unless they are concept folders themselves): sample
#: images and caches.
SKIP_DIRS = frozenset({"concept_images", "images", "samples", "__pycache__"})
#: AUTOMATIC1111's card thumbnail of ``NAME.pt`` is ``NAME.preview.png`` (its loader skips these).
PREVIEW_SUFFIX = ".preview.png"
SKIP_THUMBNAIL = "an AUTOMATIC1111 preview thumbnail"
#: Given by the commands that decode a picture found in a folder and find no embedding in it.
SKIP_PLAIN_IMAGE = "an image without an embedding"
#: Why a folder gave nothing (``add``'s wording; ``validate`` keeps its own).
EMPTY_FOLDER = "the folder holds no embedding files (.pt, .bin, .safetensors, .png)"


# --- rules on names (pure) -------------------------------------------------------------------


def own_names() -> tuple[str, ...]:
    """The names of a concept folder's own embedding files, in the order they are preferred.

    ``learned_embeds_2.safetensors`` is the second file of a diffusers SDXL pair; it belongs to
    the folder but does not make one on its own.
    """
    from conceptlib.formats import FOLDER_FILES, sdxl_pair

    return (*FOLDER_FILES, *(sdxl_pair(FOLDER_FILES[0]) or ()))


def folder_files(names: Collection[str]) -> frozenset[str]:
    """Which of ``names`` (one folder's entries) are the folder's own embedding files."""
    return frozenset(n for n in own_names() if n in names)


def makes_concept_folder(names: Collection[str]) -> bool:
    """Whether a folder with these entries is one concept (it holds a ``FOLDER_FILES`` name)."""
    from conceptlib.formats import FOLDER_FILES

    return any(n in names for n in FOLDER_FILES)


def is_thumbnail(name: str) -> bool:
    """Whether ``name`` is an AUTOMATIC1111 card thumbnail (``NAME.preview.png``), never a concept."""
    return name.lower().endswith(PREVIEW_SUFFIX)


def read_with_partner(name: str, names: Collection[str]) -> bool:
    """Whether ``name`` is the second file of a diffusers SDXL pair whose first file is in ``names``.

    Such a file is read with the first one and is no concept of its own.
    """
    from conceptlib.formats import sdxl_pair

    pair = sdxl_pair(name)
    return pair is not None and name == pair[1] and pair[0] in names


# --- the folder walk -------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One concept to read.

    Attributes:
        path: an embedding file (an SDXL pair's first file), or a concept folder.
        within: the folder it was found in, whose link rule applies when it is read; None when
            the user named it (a link there is followed).
        kind: ``file``, ``sdxl-pair`` (a file whose ``_2`` partner sits beside it) or ``folder``.
    """

    path: Path
    within: Path | None
    kind: str

    @property
    def picture(self) -> bool:
        """Found in a folder and a picture: it may hold no embedding (a sample picture), which is no error."""
        return self.within is not None and self.kind == "file" and self.path.suffix.lower() in PICTURE_SUFFIXES


@dataclass
class Inputs:
    """What :func:`find_inputs` found.

    Attributes:
        concepts: the concepts, in walk order (each folder's entries sorted by name).
        skipped: what was left alone on the way, with why: links out or to nothing, special
            files, thumbnails. A concept folder's own files are not listed here (reading the
            folder reports those).
        rejected: named paths, or folders, that give nothing: missing, cannot be listed, or
            holding no embedding file (:data:`EMPTY_FOLDER`); ``error`` carries the exception
            where there is one.
    """

    concepts: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rejected: list[Skipped] = field(default_factory=list)


def _present(folder: Path) -> frozenset[str]:
    # lexists: a learned_embeds that is a link out still makes a concept folder, whose reading
    # then says why it is refused (the link is never followed here).
    return frozenset(n for n in own_names() if os.path.lexists(folder / n))


def find_inputs(paths: Sequence[str | os.PathLike[str]]) -> Inputs:
    """The concepts in ``paths``: files, concept folders, and folders searched recursively.

    A folder holding ``learned_embeds.safetensors``, ``learned_embeds.bin`` or
    ``embeddings.pt`` is one concept; other ``.pt``/``.bin``/``.safetensors`` files beside
    them are concepts of their own (a folder of downloads often has one ``learned_embeds.bin``
    among many ``.pt`` files). Elsewhere every ``.pt``, ``.bin``, ``.safetensors``, ``.png``
    and ``.webp`` file is a concept, except AUTOMATIC1111 thumbnails and the second file of a
    diffusers SDXL pair. Hidden entries, ``concept_images/``, ``images/``, ``samples/`` and
    ``__pycache__/`` are not searched.

    Args:
        paths: the files and folders the user named.

    Returns:
        The :class:`Inputs`; nothing raises for one path's problem.
    """
    from conceptlib.formats import sdxl_pair

    result = Inputs()

    def visit(root: Folder, rel: str) -> None:
        here = root.path / rel if rel else root.path
        own = _present(here)
        if makes_concept_folder(own):
            result.concepts.append(Found(here, root.path, "folder"))
            walk(root, rel, skip=own, suffixes=PICKLE_OR_SAFETENSORS)
        else:
            walk(root, rel)

    def walk(root: Folder, rel: str, skip: frozenset[str] = frozenset(), suffixes: tuple[str, ...] = EMBEDDING_SUFFIXES) -> None:
        here = root.path / rel if rel else root.path
        try:
            entries, refused = root.entries(rel)
        except (BadInputError, OSError) as exc:
            result.rejected.append(Skipped(str(here), f"cannot list the folder: {_reason(exc)}", exc))
            return
        # In a concept folder only what would have been an input of its own is reported here;
        # its own files are for whoever reads the folder to report.
        result.skipped += [
            r for r in refused
            if not Path(r.path).name.startswith(".") and (not skip or Path(r.path).suffix.lower() in suffixes and Path(r.path).name not in skip)
        ]  # fmt: skip
        names = {e.name for e in entries}
        for entry in entries:
            if entry.name.startswith(".") or entry.name in skip:
                continue
            path = root.path / entry.rel
            if entry.kind == "dir":
                # A link to a folder inside is not followed: its target is searched where it is.
                if not entry.linked and (makes_concept_folder(_present(path)) or entry.name not in SKIP_DIRS):
                    visit(root, entry.rel)
            elif path.suffix.lower() in suffixes:
                if read_with_partner(entry.name, names):
                    continue
                if is_thumbnail(entry.name):
                    result.skipped.append(Skipped(str(path), SKIP_THUMBNAIL))
                    continue
                pair = sdxl_pair(entry.name)
                kind = "sdxl-pair" if pair is not None and pair[1] in names and pair[1] != entry.name else "file"
                result.concepts.append(Found(path, root.path, kind))

    for item in paths:
        path = Path(item)
        if path.is_dir():  # a link the user named is followed
            before = len(result.concepts) + len(result.rejected)
            try:
                root = Folder(path)
            except OSError as exc:
                result.rejected.append(Skipped(str(path), f"cannot open the folder: {_reason(exc)}", exc))
                continue
            with root:
                visit(root, "")
            if len(result.concepts) + len(result.rejected) == before:
                result.rejected.append(Skipped(str(path), EMPTY_FOLDER))
        elif path.exists():
            pair = sdxl_pair(path.name)
            paired = pair is not None and pair[0] == path.name and os.path.lexists(path.parent / pair[1])
            result.concepts.append(Found(path, None, "sdxl-pair" if paired else "file"))
        elif path.is_symlink():
            result.rejected.append(Skipped(str(path), f"is a symbolic link to nothing (to {printable(os.readlink(path))})"))
        else:
            result.rejected.append(Skipped(str(path), "no such file or folder", FileNotFoundError(2, "No such file or directory", str(path))))
    return result


def _reason(exc: BaseException) -> str:
    """One line for a folder that cannot be listed: the same words ``add`` always gave (the path is named beside it)."""
    return refusal(exc, unreadable="")
