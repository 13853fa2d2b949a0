"""Which files make a concept: decided here, once, for ``add``, ``validate``, ``preview`` and the Hub.

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

A Hub repository is judged the same way from its listing, before anything is downloaded:
:func:`detect_layout` returns the :class:`Layout` (the embedding file or SDXL pair, the side
files, the training images, and what was left out), which :mod:`conceptlib.hub` then fetches.

The rules on names are pure functions (:func:`own_names`, :func:`is_thumbnail`,
:func:`read_with_partner`), so a list of names from elsewhere can be judged the same way.

Imports point down: this module uses :mod:`conceptlib.formats` and :mod:`conceptlib._inputs`;
the library, the CLI and preview use it; it never imports them. :mod:`conceptlib.formats` is
imported inside the functions: it brings numpy, and the library (loaded by the CLI at start-up)
takes this module's messages at module scope.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from conceptlib._images import IMAGE_SUFFIXES
from conceptlib._inputs import Folder, Skipped, refusal
from conceptlib._terminal import invisible_characters, printable
from conceptlib.errors import BadInputError, NotAConceptRepoError

__all__ = [
    "EMBEDDING_SUFFIXES",
    "SKIP_PLAIN_IMAGE",
    "SKIP_THUMBNAIL",
    "SKIP_LONG_PATH",
    "SKIP_UNSAFE_PATH",
    "SIDE_FILES",
    "Found",
    "Inputs",
    "Layout",
    "detect_layout",
    "safe_repo_path",
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


#: A repository's files besides its embedding that a pull takes.
SIDE_FILES = ("token_identifier.txt", "type_of_concept.txt", "README.md")
#: Folders and names of full-pipeline or training artefacts that are never embeddings.
_NOT_EMBEDDING_DIRS = {
    "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
    "feature_extractor", "safety_checker", "transformer", "logs", "optimizer",
}
_NOT_EMBEDDING_NAME = re.compile(
    r"^(diffusion_pytorch_model|pytorch_model|model|optimizer|scheduler|training_args|random_states?|scaler|"
    r"adapter_model|pytorch_lora_weights)([._-].*)?\.(bin|safetensors|pt)$",
    re.I,
)


# --- a Hub repository's listing (names only: nothing is downloaded or decoded) ----------------
#
# The remote side of the same question. A listing is judged before any download, so only the
# names count: pictures are never candidates (pulling every picture of a repository to see which
# hold an embedding would cost a download each), and the repository's own name breaks ties.


@dataclass(frozen=True)
class Layout:
    """Which files of a repository make up its concept.

    Attributes:
        kind: ``sd-concepts-library``, ``diffusers``, ``diffusers-sdxl`` or ``a1111``.
        embedding: the embedding file(s): one, or the SDXL pair.
        side_files: token_identifier.txt, type_of_concept.txt and README.md, when present.
        images: ``concept_images/*`` (training images).
        skipped: ``(path, reason)`` of files left out: paths that could leave a local folder
            (``concept_images/../../x``, absolute, backslashes, control characters), images
            larger than conceptlib takes.
    """

    kind: str
    embedding: tuple[str, ...]
    side_files: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """Every file to download."""
        return self.embedding + self.side_files + self.images


def _is_embedding_candidate(path: str) -> bool:
    p = PurePosixPath(path)
    if p.suffix.lower() not in PICKLE_OR_SAFETENSORS:
        return False
    if any(part in _NOT_EMBEDDING_DIRS or part.startswith("checkpoint-") for part in p.parts[:-1]):
        return False
    return not _NOT_EMBEDDING_NAME.match(p.name) and not p.name.endswith(".optim")


def _shown(paths: list[str]) -> str:
    """The first few paths, for a one-line message."""
    return ", ".join(paths[:8]) + (f", ... ({len(paths) - 8} more)" if len(paths) > 8 else "")


SKIP_UNSAFE_PATH = "its path could lead out of the folder it is saved in (.., /, \\ or control characters): not downloaded"
SKIP_LONG_PATH = "its path is longer than a local file system stores (255 bytes a name, 1,024 in all): not downloaded"
#: Longest repository path saved locally, in UTF-8 bytes (the cache adds its own folders above it).
MAX_REPO_PATH_BYTES = 1024


def safe_repo_path(path: str) -> bool:
    """Whether a repository file path can be saved under a local folder exactly as it reads.

    Paths come from the remote repository's listing, which its owner controls: ``..``, an
    absolute path, a backslash (a separator on Windows), an empty or ``.`` part or an
    invisible character could put a file elsewhere than where it appears to go, and a name
    longer than a file system stores would fail the whole download.
    """
    parts = path.split("/")
    return (
        bool(path) and not path.startswith("/") and "\\" not in path
        and all(part not in ("", ".", "..") for part in parts) and not invisible_characters(path)
        and _fits_a_file_system(path)
    )  # fmt: skip


def _fits_a_file_system(path: str) -> bool:
    """Whether every name of ``path`` and the whole path are short enough to be saved anywhere."""
    return len(path.encode("utf-8", "surrogatepass")) <= MAX_REPO_PATH_BYTES and all(
        len(part.encode("utf-8", "surrogatepass")) <= 255 for part in path.split("/")
    )


def detect_layout(paths: list[str] | tuple[str, ...], *, repo_id: str = "", filename: str | None = None) -> Layout:
    """Decide which files of a repository hold its concept.

    Paths that could leave a local folder (see :func:`safe_repo_path`) are never part of a
    concept: they are listed in ``skipped`` instead.

    Args:
        paths: every file path in the repository at the chosen revision.
        repo_id: the repository (names it in errors; a file named like it wins ties).
        filename: the embedding file to take, when the repository holds several.

    Returns:
        The :class:`Layout`.

    Raises:
        NotAConceptRepoError: no embedding file, several and no ``filename``, ``filename``
            missing, or ``filename`` not a plain path.

    Example:
        >>> detect_layout(["learned_embeds.bin", "token_identifier.txt"]).kind
        'sd-concepts-library'
        >>> detect_layout(["learned_embeds.bin", "concept_images/../../x.png"]).skipped[0][0]
        'concept_images/../../x.png'
    """
    if filename is not None and not safe_repo_path(filename.strip("/")):
        raise NotAConceptRepoError(f"{repo_id}: '{printable(filename)}' is not a plain path inside the repository", repo_id=repo_id)
    unsafe = tuple(
        (p, SKIP_UNSAFE_PATH if _fits_a_file_system(p) else SKIP_LONG_PATH)
        for p in sorted(set(paths)) if not safe_repo_path(p)
    )  # fmt: skip
    layout = _layout([p for p in paths if safe_repo_path(p)], repo_id=repo_id, filename=filename)
    return replace(layout, skipped=unsafe) if unsafe else layout


def _layout(paths: list[str] | tuple[str, ...], *, repo_id: str = "", filename: str | None = None) -> Layout:
    """:func:`detect_layout` on paths already known to be safe (same arguments and errors)."""
    files = set(paths)
    side = tuple(f for f in SIDE_FILES if f in files)
    images = tuple(sorted(f for f in files if f.startswith("concept_images/") and f.lower().endswith(IMAGE_SUFFIXES)))
    if filename is not None:
        name = filename.strip("/")
        if name not in files:
            listed = sorted(f for f in files if _is_embedding_candidate(f))
            raise NotAConceptRepoError(
                f"{repo_id}: no file {name!r} in the repository",
                repo_id=repo_id,
                hint=f"its embedding files: {_shown(listed)}" if listed else "it holds no embedding file",
            )
        pair = name[: -len(".safetensors")] + "_2.safetensors" if name.endswith(".safetensors") else None
        if name == "learned_embeds.safetensors" and pair in files:
            return Layout("diffusers-sdxl", (name, pair), side, images)
        kind = "sd-concepts-library" if PurePosixPath(name).name.startswith("learned_embeds") and "token_identifier.txt" in files else "a1111"
        return Layout(kind, (name,), side, images)
    if "learned_embeds.safetensors" in files and "learned_embeds_2.safetensors" in files:
        return Layout("diffusers-sdxl", ("learned_embeds.safetensors", "learned_embeds_2.safetensors"), side, images)
    for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
        # safetensors first: the same vectors without a pickle (the Hub bot's converted variant).
        if name in files:
            kind = "sd-concepts-library" if "token_identifier.txt" in files else "diffusers"
            return Layout(kind, (name,), side, images)
    candidates = sorted(f for f in files if _is_embedding_candidate(f))
    if len(candidates) == 1:
        return Layout("a1111", (candidates[0],), side, images)
    if not candidates:
        raise NotAConceptRepoError(
            f"{repo_id}: holds no textual-inversion embedding (no learned_embeds.* and no .pt/.safetensors/.bin file)",
            repo_id=repo_id,
            hint="check the repository id; conceptlib pulls embedding repositories, not full models",
        )
    stem = repo_id.rsplit("/", 1)[-1].lower()
    named = [c for c in candidates if PurePosixPath(c).stem.lower() == stem]
    if len(named) == 1:
        return Layout("a1111", (named[0],), side, images)
    raise NotAConceptRepoError(
        f"{repo_id}: holds {len(candidates)} embedding files ({_shown(candidates)})",
        repo_id=repo_id,
        hint="pick one with --file PATH",
    )
