"""Pull concepts from the Hugging Face Hub and push them back, through ``huggingface_hub`` only.

>>> from conceptlib.library import Library
>>> from conceptlib import hub
>>> lib = Library.open()
>>> hub.pull(lib, "sd-concepts-library/cat-toy").status
'added'
>>> hub.push(lib, "cat-toy", "me/cat-toy").commit_url
'https://huggingface.co/me/cat-toy/commit/...'

Every request goes through ``HfApi``, ``hf_hub_download`` and ``snapshot_download``, so the
client's own settings apply: ``HF_TOKEN`` and ``hf auth login``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` (pull resolves from the local cache), ``HF_HOME``/``HF_HUB_CACHE``. They are
read at call time (:func:`hub_settings`) and handed to the client explicitly, because the
client reads them once at import.

This module is the sharing layer: which files of a repository make a concept, staging and
importing them into a :class:`~conceptlib.library.Library`, model cards, commits. The requests
themselves (settings, the client seam, retries, error translation, repository references,
hash checks of downloads) live one floor down in :mod:`conceptlib.hubclient`, which
:mod:`conceptlib.single_file` uses as well; the public names it had here are re-exported.

A pull never leaves half a concept behind: files land in the Hugging Face cache (content
addressed, so an interrupted download resumes), are checked against the hashes the Hub lists,
copied to a private staging folder, decoded, and only then handed to the library in one call.

Recognised repository layouts (see ``docs/formats.md`` b.12), decided from the listing by
:func:`conceptlib.layout.detect_layout`, where a local folder's concepts are decided too:

* sd-concepts-library: ``learned_embeds.bin`` or ``.safetensors``, ``token_identifier.txt``,
  ``type_of_concept.txt``, ``concept_images/``, a README model card;
* diffusers textual-inversion training output: ``learned_embeds.safetensors`` (SDXL: plus
  ``learned_embeds_2.safetensors``);
* AUTOMATIC1111 / kohya files: one ``.pt``/``.safetensors``/``.bin`` embedding anywhere in the
  repository (pick one with ``filename=`` when there are several).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from conceptlib._images import IMAGE_SUFFIXES
from conceptlib.errors import (
    ConceptlibError,
    DuplicateConceptError,
    EmbeddingFileError,
    HubIntegrityError,
    HubNotCachedError,
    HubRepoNotFoundError,
    IsHypernetworkError,
    NotAConceptRepoError,
    UsageError,
)
from conceptlib.families import FAMILIES

# The transport, one floor down. ``X as X`` marks the names re-exported only because code
# written before the split imports them from here (fetch_model_configs, the CLI's
# quiet_client_output); new code imports them from conceptlib.hubclient.
from conceptlib.hubclient import (
    MODEL_CONFIG_PATTERNS as MODEL_CONFIG_PATTERNS,
)
from conceptlib.hubclient import (
    Again,
    HubSettings,
    RemoteFile,
    RepoChanged,
    check_file,
    download_snapshot,
    evict,
    first_line,
    get_hub_api,
    hub_settings,
    parse_repo_ref,
    redownload,
    remote_files,
    status_transient,
    transient,
    with_retries,
)
from conceptlib.hubclient import (
    fetch_model_configs as fetch_model_configs,
)
from conceptlib.hubclient import (
    quiet_client_output as quiet_client_output,
)

# Which files of a repository make its concept is decided where a folder's is: conceptlib.layout.
# ``X as X``: names kept importable from here, where they were before.
from conceptlib.layout import (
    MAX_REPO_PATH_BYTES as MAX_REPO_PATH_BYTES,
)
from conceptlib.layout import (
    SIDE_FILES as SIDE_FILES,
)
from conceptlib.layout import (
    SKIP_LONG_PATH as SKIP_LONG_PATH,
)
from conceptlib.layout import (
    SKIP_UNSAFE_PATH as SKIP_UNSAFE_PATH,
)
from conceptlib.layout import (
    Layout,
    detect_layout,
    safe_repo_path,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from conceptlib.concept import Concept
    from conceptlib.embedding import Embedding
    from conceptlib.library import Library

__all__ = [
    "AuthorItem",
    "AuthorSummary",
    "HubSettings",
    "Layout",
    "PullResult",
    "PushResult",
    "RemoteFile",
    "detect_layout",
    "get_hub_api",
    "hub_settings",
    "model_card",
    "parse_repo_ref",
    "pull",
    "pull_author",
    "push",
]

#: Most repositories :func:`pull_author` pulls at once: each holds a thread and
#: :data:`conceptlib.hubclient.FILE_WORKERS` connections, and more than this only trips the
#: Hub's rate limits.
MAX_JOBS = 64

#: Default base model per family for the model card when the concept records none.
BASE_MODELS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
CARD_TAGS = ("textual_inversion", "stable-diffusion", "stable-diffusion-diffusers", "text-to-image")

# What to do next when the Hub keeps failing, per operation: only the operation knows what a
# failure may have left behind (a pull keeps finished concepts, a commit may have landed).
_PULL_AGAIN = Again(
    answered="check your connection and pull again: finished concepts are kept, nothing is half-imported",
    lost="check your connection and pull again: finished concepts are kept, nothing is half-imported",
)
#: Before the commit (creating the repository or branch) nothing can have been committed.
_PUSH_SETUP_AGAIN = Again(answered="nothing was committed; push again later", lost="nothing was committed; push again later")
_PUSH_AGAIN = Again(
    answered="nothing was committed; push again later",
    lost="the commit may have landed before the connection failed; push again, which commits nothing if it did",
)


# --- download, verification, staging ----------------------------------------------------------



@dataclass
class _Fetched:
    commit: str
    folder: Path
    layout: Layout
    sha256: dict[str, str]
    card: dict[str, Any]
    last_modified: str | None = None




def _without_large_images(layout: Layout, remote: dict[str, RemoteFile], repo_id: str = "") -> Layout:
    """``layout`` without the files the listing says are too large to take (never downloaded).

    Images and side files (README.md, ...) past their limits are skipped and reported; an
    embedding past :data:`conceptlib.formats.MAX_FILE_SIZE` refuses the repository, before a
    byte of it is fetched.
    """
    from dataclasses import replace

    from conceptlib._images import MAX_IMAGE_BYTES
    from conceptlib._snapshots import MAX_SIDE_FILE_BYTES
    from conceptlib.formats import MAX_FILE_SIZE

    def size(path: str) -> int:
        return remote[path].size or 0

    for path in layout.embedding:
        if size(path) > MAX_FILE_SIZE:
            raise EmbeddingFileError(
                f"is {size(path):,} bytes, more than the {MAX_FILE_SIZE:,} an embedding file may have: "
                "not downloaded",
                path=f"{repo_id}/{path}" if repo_id else path,
            )
    large_images = [p for p in layout.images if size(p) > MAX_IMAGE_BYTES]
    large_sides = [p for p in layout.side_files if size(p) > MAX_SIDE_FILE_BYTES]
    if not large_images and not large_sides:
        return layout
    skipped = [
        (p, f"is {size(p) / 2**20:.0f} MiB, more than the {limit // 2**20} MiB {what} may have: not downloaded")
        for paths, limit, what in (
            (large_images, MAX_IMAGE_BYTES, "an image"),
            (large_sides, MAX_SIDE_FILE_BYTES, "a file beside an embedding"),
        )
        for p in paths
    ]
    return replace(
        layout,
        images=tuple(p for p in layout.images if p not in large_images),
        side_files=tuple(p for p in layout.side_files if p not in large_sides),
        skipped=layout.skipped + tuple(skipped),
    )


def _fetch_online(
    settings: HubSettings, api: HfApi, repo_id: str, revision: str, filename: str | None, known_commit: str | None
) -> _Fetched | str:
    """Resolve ``revision``, and unless it is ``known_commit`` download and verify the concept.

    Returns:
        The fetched files, or the commit id when it equals ``known_commit`` (nothing downloaded).
    """
    info = with_retries(
        lambda: api.model_info(repo_id, revision=revision, files_metadata=True),
        repo_id=repo_id,
        revision=revision,
        again=_PULL_AGAIN,
        op="read",
        what=f"{repo_id}: reading the repository",
    )
    commit = str(info.sha)
    if known_commit is not None and commit == known_commit:
        return commit
    remote = remote_files(info)
    layout = _without_large_images(detect_layout(list(remote), repo_id=repo_id, filename=filename), remote, repo_id)

    def download() -> Path:
        folder = download_snapshot(settings, repo_id, revision, layout.files, offline=False)
        if folder.name != commit:
            raise RepoChanged(f"{repo_id} moved from {commit[:7]} to {folder.name[:7]} during the pull")
        return folder

    folder = with_retries(
        download, repo_id=repo_id, revision=revision, again=_PULL_AGAIN, op="read", what=f"{repo_id}: downloading"
    )
    sha256: dict[str, str] = {}
    for path in layout.files:
        local = folder / path
        digest, problem = check_file(local, remote.get(path))
        if problem is not None:
            # Once more from scratch: a proxy or a flaky link may have mangled one transfer.
            evict(local)
            with_retries(
                lambda p=path: redownload(settings, repo_id, commit, p),  # type: ignore[misc]
                repo_id=repo_id,
                revision=commit,
                again=_PULL_AGAIN,
                op="read",
                what=f"{repo_id}: downloading {path}",
            )
            digest, problem = check_file(local, remote.get(path))
            if problem is not None:
                evict(local)
                raise HubIntegrityError(
                    f"{repo_id}@{commit[:7]}: {path} does not match its hash ({problem}); nothing was imported",
                    repo_id=repo_id,
                )
        sha256[path] = digest
    card_data = getattr(info, "card_data", None)
    card = _card_fields(card_data.to_dict()) if card_data is not None else {}
    last_modified = getattr(info, "last_modified", None)
    modified = last_modified.isoformat() if last_modified is not None else None
    return _Fetched(commit, folder, layout, sha256, card, modified)


def _fetch_offline(settings: HubSettings, repo_id: str, revision: str, filename: str | None) -> _Fetched:
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        paths = [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=settings.cache_dir)]
    except Exception:
        paths = []
    try:
        if paths:
            layout = detect_layout(paths, repo_id=repo_id, filename=filename)
            folder = download_snapshot(settings, repo_id, revision, layout.files, offline=True)
        else:
            # No cached listing: take whatever the cached snapshot holds.
            folder = download_snapshot(settings, repo_id, revision, (), offline=True)
            listed = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            layout = detect_layout(listed, repo_id=repo_id, filename=filename)
    except LocalEntryNotFoundError as exc:
        raise HubNotCachedError(
            f"{repo_id}@{revision} is not in the local cache, and HF_HUB_OFFLINE is set", repo_id=repo_id, revision=revision
        ) from exc
    sha256: dict[str, str] = {}
    for path in layout.files:
        local = folder / path
        if not local.is_file():
            raise HubNotCachedError(
                f"{repo_id}@{revision}: {path} is not in the local cache, and HF_HUB_OFFLINE is set",
                repo_id=repo_id,
                revision=revision,
            )
        digest, problem = check_file(local, None)
        if problem is not None:
            evict(local)
            raise HubIntegrityError(
                f"{repo_id}: cached {path} is damaged ({problem}); nothing was imported", repo_id=repo_id,
                hint="unset HF_HUB_OFFLINE and pull once: the damaged copy was removed from the cache and is downloaded again",
            )  # fmt: skip
        sha256[path] = digest
    card: dict[str, Any] = {}
    if "README.md" in layout.side_files:
        card = _read_card(folder / "README.md")
    return _Fetched(folder.name, folder, layout, sha256, card)


#: The model-card fields a pull keeps, and how much of each: a card is a stranger's YAML, whose
#: aliases can make a few hundred bytes stand for billions of values (a "billion laughs").
CARD_FIELDS = ("license", "base_model", "tags", "instance_prompt")
MAX_CARD_TEXT = 4096
MAX_CARD_LIST = 64
#: The front matter of a card is at its start; no honest one is larger.
MAX_CARD_BYTES = 2**20


def _card_fields(card: Any) -> dict[str, Any]:
    """The :data:`CARD_FIELDS` of a parsed card that are text, or short lists of text.

    Anything else (mappings, numbers, lists of lists, very long text) is dropped unlooked-at,
    so no alias bomb is ever expanded, printed or stored.
    """
    out: dict[str, Any] = {}
    if not isinstance(card, dict):
        return out
    for key in CARD_FIELDS:
        value = card.get(key)
        if isinstance(value, str) and len(value) <= MAX_CARD_TEXT:
            out[key] = value
        elif (
            isinstance(value, list) and len(value) <= MAX_CARD_LIST
            and all(isinstance(v, str) and len(v) <= MAX_CARD_TEXT for v in value)
        ):  # fmt: skip
            out[key] = list(value)
    return out


def _read_card(path: Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
        return _card_fields(ModelCard(text, ignore_metadata_errors=True).data.to_dict())
    except Exception:
        return {}


def _stage(fetched: _Fetched, staging: Path) -> tuple[Path, list[Path], list[tuple[str, str]]]:
    """Copy the concept's files out of the cache.

    Images are checked as what they claim (:func:`conceptlib._images.check_image`) and left out
    when they are not; nothing is written outside ``staging``, whatever the repository's paths.

    Returns:
        What to read, the image paths, and ``(repository path, reason)`` of images left out.
    """
    from conceptlib._images import MAX_IMAGE_BYTES, check_image
    from conceptlib.errors import ImageFileError

    root = staging.resolve()
    layout = fetched.layout
    skipped: list[tuple[str, str]] = []
    images: list[Path] = []
    for path in layout.files:
        target = staging.joinpath(*path.split("/"))
        # detect_layout already refused such paths; this guards every later way in.
        if not safe_repo_path(path) or not target.resolve().is_relative_to(root):
            raise HubIntegrityError(f"{path!r} would be written outside the staging folder; nothing was imported", repo_id=None)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = fetched.folder / path  # a link into the cache's blobs: followed, the cache is ours
        if path in layout.images:
            try:
                size = source.stat().st_size
                if size > MAX_IMAGE_BYTES:
                    raise ImageFileError(f"is {size / 2**20:.0f} MiB, more than the {MAX_IMAGE_BYTES // 2**20} MiB an image may have")
                data = source.read_bytes()
                check_image(data, path)
            except ImageFileError as exc:
                skipped.append((path, exc.message))
                continue
            target.write_bytes(data)
            images.append(target)
        else:
            shutil.copyfile(source, target)
    if layout.kind == "a1111":
        return staging.joinpath(*layout.embedding[0].split("/")), images, skipped
    if layout.kind == "sd-concepts-library" and len(layout.embedding) == 1 and layout.embedding[0] not in (
        "learned_embeds.safetensors", "learned_embeds.bin"
    ):
        return staging.joinpath(*layout.embedding[0].split("/")), images, skipped
    return staging, images, skipped


def _read_embedding(source: Path, fetched: _Fetched, repo_id: str) -> Embedding:
    """Decode the staged concept and find its word: token file, file, card, or file name.

    The repository's text files are read strictly (:func:`conceptlib._inputs.read_folder_words`)
    and the word must be one a user can type (:func:`conceptlib.library.check_token`); errors
    name the file on the Hub (``repo@commit/token_identifier.txt``: :func:`pull` renames the
    staging paths).
    """
    from conceptlib._inputs import TOKEN_FILE, Folder, read_folder_words
    from conceptlib.formats import read
    from conceptlib.library import check_token

    where = f"{repo_id}@{fetched.commit[:7]}"
    emb = read(source)
    origin = f"{where}/{fetched.layout.embedding[0]}"
    # A concept folder's text files were read with it; a single file takes those beside it.
    folder = source if source.is_dir() else source.parent
    with Folder(folder) as files:
        from_file = read_folder_words(files, emb)
    if from_file:
        prefix = PurePosixPath(fetched.layout.embedding[0]).parent.as_posix() if not source.is_dir() else ""
        origin = f"{where}/{prefix}/{TOKEN_FILE}" if prefix not in ("", ".") else f"{where}/{TOKEN_FILE}"
    prompt = fetched.card.get("instance_prompt")
    if not emb.token and isinstance(prompt, str) and prompt.strip():
        emb.token = prompt.strip()
        origin = f"{where}/README.md"
    if not emb.token and fetched.layout.kind == "a1111":
        # The rule of a local `conceptlib add` (the stored name, else the file's stem), so a
        # file gets the same token whichever way it comes in.
        emb.token = emb.prompt_word() or PurePosixPath(fetched.layout.embedding[0]).stem
    if emb.token:
        emb.token = check_token(emb.token, path=origin)
    return emb


# --- the library side ---------------------------------------------------------------------------
# Everything the hub needs from conceptlib.library.Library: show, find_by_source, add (whose
# report's one() gives the concept or raises), update (keeps the previous content hash in the
# concept's history), embedding. Concept records are conceptlib.concept.Concept.


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _source_of(concept: Any) -> dict[str, Any] | None:
    """The Hub provenance of a concept record, or None for concepts from elsewhere."""
    source = _field(concept, "source")
    if not isinstance(source, dict) or not source.get("repo_id"):
        return None
    return source


def _find_concept(library: Library, name: str) -> Concept | None:
    """The concept named exactly ``name`` (``show`` also resolves tokens, which is not wanted here)."""
    from conceptlib.errors import AmbiguousConceptError, ConceptNotFoundError

    try:
        concept = library.show(name)
    except (ConceptNotFoundError, AmbiguousConceptError):
        return None
    return concept if concept.name == name else None


def _default_name(repo_id: str) -> str:
    from conceptlib.slug import slugify

    return slugify(repo_id.rsplit("/", 1)[-1]) or "concept"


# --- pull ---------------------------------------------------------------------------------------

PullStatus = Literal["added", "updated", "unchanged"]


@dataclass(frozen=True)
class PullResult:
    """What :func:`pull` did.

    Attributes:
        repo_id: the repository.
        name: the concept's name in the library.
        status: ``added``, ``updated`` or ``unchanged``.
        commit: the commit the concept now comes from.
        previous_commit: the commit it came from before (updates and unchanged pulls).
        content_hash: the vectors' content hash.
        previous_content_hash: the content hash before an update.
        layout: the repository layout recognised (None when unchanged).
        files: path → sha256 of the files imported.
        url: the repository at that commit.
        skipped: path → reason of the repository's files left out: images that are not what
            they claim or too large, paths that could lead out of a local folder.
        near_duplicates: concept name → score of the library concepts a newly added concept is
            close to without being the same (``add``'s near-duplicate report).
    """

    repo_id: str
    name: str
    status: PullStatus
    commit: str
    previous_commit: str | None = None
    content_hash: str | None = None
    previous_content_hash: str | None = None
    layout: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    near_duplicates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``conceptlib pull --json`` prints)."""
        return {
            "repo_id": self.repo_id,
            "name": self.name,
            "status": self.status,
            "commit": self.commit,
            "previous_commit": self.previous_commit,
            "content_hash": self.content_hash,
            "previous_content_hash": self.previous_content_hash,
            "layout": self.layout,
            "files": dict(self.files),
            "url": self.url,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped.items()],
            "near_duplicates": [{"existing": name, "score": round(score, 4)} for name, score in self.near_duplicates.items()],
        }


# One library write at a time: org pulls download concurrently but import serially, so the
# library never sees two writers from this process.
_LIBRARY_LOCK = threading.RLock()


def pull(
    library: Library,
    repo_id: str,
    revision: str | None = None,
    name: str | None = None,
    *,
    filename: str | None = None,
    force: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
) -> PullResult:
    """Import (or update) the concept a Hub repository holds, with its provenance and images.

    Args:
        library: the :class:`~conceptlib.library.Library` to import into.
        repo_id: ``namespace/name`` (``@revision`` and Hub URLs are accepted too).
        revision: branch, tag, ``refs/pr/N`` or commit; default ``main``.
        name: the concept's name in the library; default: the one already pulled from this
            repository, else the repository's name.
        filename: the embedding file to take when the repository holds several; another file
            than the one pulled before is imported (as an update) even at an unchanged commit.
            Later pulls of the concept take the same file again without being told.
        force: download and re-import even when the revision is unchanged.
        token: the word to type, instead of the repository's (e.g. when another concept of
            the same family already uses it); an update keeps the concept's current token.
            The repository's word is its ``token_identifier.txt``, else the token stored in the
            file, else the card's ``instance_prompt``, else what ``conceptlib add`` takes for
            the file (an AUTOMATIC1111 file's stored name, else its file name).
        api: the client to use (default :func:`get_hub_api`).

    Returns:
        A :class:`PullResult`: ``added``, ``updated`` (the previous content hash stays in the
        concept's history) or ``unchanged`` (nothing downloaded).

    Raises:
        UsageError: a malformed repository id.
        NotAConceptRepoError: the repository holds no embedding (or several: pass ``filename``).
        HubIntegrityError: downloaded bytes do not match their listed hash (nothing imported).
        HubAuthError: 401/403.
        HubUnavailableError: 5xx, 429 or dropped connections persisted through the retries.
        HubRepoNotFoundError: no such repository (or a private one the token cannot see).
        HubRevisionNotFoundError: no such revision.
        HubNotCachedError: offline and not in the cache.
        EmbeddingFileError: the embedding file cannot be read (a subclass names why).
        ConceptExistsError: ``name`` (or the repository's name) belongs to another concept.
        TokenInUseError, DuplicateConceptError: the library already has the token or vectors.

    Example:
        >>> pull(lib, "sd-concepts-library/cat-toy").status
        'added'
        >>> pull(lib, "sd-concepts-library/cat-toy").status
        'unchanged'
    """
    parsed_id, parsed_rev = parse_repo_ref(repo_id)
    if parsed_rev and revision and parsed_rev != revision:
        raise UsageError(f"two revisions given for {parsed_id}: {parsed_rev!r} and {revision!r}")
    repo_id, revision = parsed_id, revision or parsed_rev
    requested = revision or "main"
    settings = hub_settings()

    with _LIBRARY_LOCK:
        existing = _find_concept(library, name) if name else library.find_by_source(repo_id)
        if existing is None and not name:
            existing = _find_concept(library, _default_name(repo_id))
    target = name or (existing.name if existing is not None else _default_name(repo_id))
    source = _source_of(existing) if existing is not None else None
    if existing is not None and (source is None or source.get("repo_id") != repo_id):
        from conceptlib.errors import ConceptExistsError

        origin = f"pulled from {source['repo_id']}" if source else "not from the Hub"
        raise ConceptExistsError(target, hint=f"it is {origin}; pull this one under another name with --as NAME")
    if token is not None and existing is not None and token.strip() != existing.token:
        # A pull keeps an existing concept's token: say so rather than drop the request.
        raise UsageError(
            f"{existing.name} is in the library already, with the token {existing.token!r}; --token applies to a first pull",
            hint=f"change the token with `conceptlib rename {existing.name} --token '{token.strip()}'`",
        )
    if filename is None and source is not None and source.get("picked"):
        # Pulled with --file before: the same file again, as the user chose among several.
        filename = str(source.get("file"))
    known = None if force or source is None else source.get("commit")
    if known is not None and source is not None and filename is not None and filename.strip("/") != source.get("file"):
        # An unchanged commit proves nothing when another of its files is asked for.
        known = None

    if settings.offline:
        fetched: _Fetched | str = _fetch_offline(settings, repo_id, requested, filename)
        if known is not None and isinstance(fetched, _Fetched) and fetched.commit == known:
            fetched = fetched.commit
    else:
        fetched = _fetch_online(settings, api or get_hub_api(settings), repo_id, requested, filename, known)
    base = settings.base_url
    if isinstance(fetched, str):
        return PullResult(
            repo_id, target, "unchanged", fetched, previous_commit=fetched,
            content_hash=existing.content_hash if existing is not None else None,
            url=f"{base}/{repo_id}/tree/{fetched}",
        )

    staging = Path(tempfile.mkdtemp(prefix="conceptlib-pull-"))
    try:
        read_from, images, left_out = _stage(fetched, staging)
        try:
            emb: Embedding | None = _read_embedding(read_from, fetched, repo_id)
        except IsHypernetworkError:
            # A hypernetwork repository: its word is its file's stem, as AUTOMATIC1111 calls it.
            if existing is not None and existing.kind != "hypernetwork":
                raise
            emb = None
        provenance = _provenance(settings, repo_id, requested, fetched)
        if filename is not None:
            provenance["picked"] = True  # later pulls take this file again without --file
        metadata = _concept_metadata(emb, fetched)
        with _LIBRARY_LOCK:
            near: dict[str, float] = {}
            if existing is None:
                report = library.add(
                    read_from,
                    name=target,
                    token=token or (emb.token if emb is not None else None),
                    # A concept folder brings its concept_images/ itself.
                    images=None if read_from.is_dir() else images,
                    license=metadata.get("license"),
                    source=provenance,
                    metadata=metadata,
                )
                concept = report.one()
                near = {n.existing: n.score for n in report.near_duplicates}
                status: PullStatus = "added"
            else:
                concept = library.update(
                    existing.name, read_from, token=token, images=images, source=provenance, metadata=metadata
                )
                status = "updated"
    except ConceptlibError as exc:
        # Name the file as it is on the Hub, not by its throw-away staging path.
        if exc.path and Path(exc.path).is_relative_to(staging):
            relative = Path(exc.path).relative_to(staging).as_posix()
            where = f"{repo_id}@{fetched.commit[:7]}"
            exc.path = where if relative == "." else f"{where}/{relative}"
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PullResult(
        repo_id,
        concept.name,
        status,
        fetched.commit,
        previous_commit=source.get("commit") if source else None,
        content_hash=concept.content_hash,
        previous_content_hash=existing.content_hash if existing is not None else None,
        layout=fetched.layout.kind,
        files=dict(fetched.sha256),
        url=provenance["url"],
        skipped=dict([*fetched.layout.skipped, *left_out]),
        near_duplicates=near,
    )


def _provenance(settings: HubSettings, repo_id: str, revision: str, fetched: _Fetched) -> dict[str, Any]:
    base = settings.base_url
    embedding = fetched.layout.embedding[0]
    return {
        "type": "huggingface",
        "repo_id": repo_id,
        "revision": revision,
        "commit": fetched.commit,
        "endpoint": base,
        "url": f"{base}/{repo_id}/tree/{fetched.commit}",
        "file": embedding,
        "file_url": f"{base}/{repo_id}/resolve/{fetched.commit}/{embedding}",
        "files": dict(fetched.sha256),
        "sha256": fetched.sha256[embedding],
        "layout": fetched.layout.kind,
        "card": _card_fields(fetched.card),
        "last_modified": fetched.last_modified,
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _concept_metadata(emb: Embedding | None, fetched: _Fetched) -> dict[str, str]:
    meta: dict[str, str] = {}
    if emb is not None and emb.metadata.get("concept_type"):
        meta["concept_type"] = emb.metadata["concept_type"]
    for key in ("license", "base_model"):
        value = fetched.card.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str) and value:
            meta[key] = value
    return meta


# --- pull a whole organisation ----------------------------------------------------------------

AuthorStatus = Literal["added", "updated", "skipped", "failed"]


@dataclass(frozen=True)
class AuthorItem:
    """One repository's outcome in :func:`pull_author`.

    Attributes:
        repo_id: the repository.
        status: ``added``, ``updated``, ``skipped`` (unchanged, holds no concept, or holds
            vectors the library already has) or ``failed``.
        name: the concept's name in the library, when imported.
        commit: the commit imported or found unchanged.
        reason: why it was skipped or failed (one line).
        exit_code: for a failure, 2 when the repository's content was refused (bad input),
            1 when the Hub or the network failed; 0 otherwise.
    """

    repo_id: str
    status: AuthorStatus
    name: str | None = None
    commit: str | None = None
    reason: str | None = None
    exit_code: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "status": self.status, "name": self.name, "commit": self.commit, "reason": self.reason}


@dataclass
class AuthorSummary:
    """What :func:`pull_author` did, repository by repository (in listing order)."""

    author: str
    items: list[AuthorItem] = field(default_factory=list)

    def of(self, status: AuthorStatus) -> list[AuthorItem]:
        """The items with ``status``."""
        return [i for i in self.items if i.status == status]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else the worst failure's: 2 for refused content, 1 for the Hub."""
        return max((i.exit_code for i in self.items), default=0)

    @property
    def counts(self) -> dict[str, int]:
        """``{"added": n, "updated": n, "skipped": n, "failed": n}``."""
        statuses: tuple[AuthorStatus, ...] = ("added", "updated", "skipped", "failed")
        return {s: len(self.of(s)) for s in statuses}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``conceptlib pull --author ORG --json``)."""
        return {"author": self.author, "total": len(self.items), **self.counts, "items": [i.to_dict() for i in self.items]}


#: progress(done, total, item): called with (0, total, None) after listing, then once per repository.
Progress = Callable[[int, int, "AuthorItem | None"], None]


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a summary: the conceptlib message, or the Hub's first line.

    Args:
        exc: what a pull raised.

    Returns:
        One line without the traceback.
    """
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, ConceptlibError):
        return str(exc)
    if isinstance(exc, RepositoryNotFoundError):
        return "repository not found (or private)"
    if isinstance(exc, RevisionNotFoundError):
        return "revision not found"
    return f"{type(exc).__name__}: {first_line(exc)}"


def pull_author(
    library: Library,
    author: str,
    *,
    limit: int | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
    api: HfApi | None = None,
    force: bool = False,
) -> AuthorSummary:
    """Pull every concept repository of a user or organisation, several at a time.

    Each repository is pulled as by :func:`pull`: it is imported whole or not at all, so an
    interrupted run leaves only finished concepts, and running it again skips those whose
    commit has not changed (the listing carries each repository's commit, so they cost no
    further request) and resumes the rest; files already in the Hugging Face cache are not
    downloaded again.

    Args:
        library: the library to import into.
        author: the user or organisation, e.g. ``sd-concepts-library``.
        limit: pull at most this many repositories (in the Hub's listing order).
        jobs: repositories pulled at once.
        progress: called as ``progress(done, total, item)``; see :data:`Progress`.
        api: the client to use (default :func:`get_hub_api`).
        force: download and re-import every repository, unchanged ones too (as :func:`pull`'s).

    Returns:
        An :class:`AuthorSummary`: added, updated, skipped and failed, with reasons.

    Raises:
        UsageError: ``jobs`` outside 1 to :data:`MAX_JOBS`, ``limit`` < 0 or an offline session (listing needs the Hub).
        HubAuthError, HubUnavailableError: the listing itself failed.
        KeyboardInterrupt: after the repositories in flight have finished (or failed) cleanly.

    Example:
        >>> s = pull_author(lib, "sd-concepts-library", limit=20, jobs=8)
        >>> s.counts
        {'added': 19, 'updated': 0, 'skipped': 1, 'failed': 0}
    """
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be from 1 to {MAX_JOBS}, got {jobs}")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 or more")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", author):
        raise UsageError(f"{author!r} is not a Hub user or organisation name")
    settings = hub_settings()
    if settings.offline:
        raise UsageError(
            "listing an organisation needs the Hub, and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE, or pull single repositories from the cache",
        )
    client = api or get_hub_api(settings)
    listed = with_retries(
        lambda: [(m.id, getattr(m, "sha", None)) for m in client.list_models(author=author, limit=limit, expand=["sha", "lastModified"])],
        repo_id=None,
        again=_PULL_AGAIN,
        op="read",
        what=f"listing {author}'s repositories",
    )
    summary = AuthorSummary(author)
    total = len(listed)
    if progress:
        progress(0, total, None)
    from conceptlib._inputs import concerns_the_library

    def one(repo_id: str, listed_sha: str | None) -> AuthorItem:
        try:
            with _LIBRARY_LOCK:
                existing = library.find_by_source(repo_id)
            source = _source_of(existing) if existing is not None else None
            if not force and existing is not None and source and listed_sha and source.get("commit") == listed_sha:
                return AuthorItem(repo_id, "skipped", existing.name, listed_sha, f"unchanged at {listed_sha[:7]}")
            result = pull(library, repo_id, api=client, force=force)
        except NotAConceptRepoError as exc:
            return AuthorItem(repo_id, "skipped", reason=exc.message.removeprefix(f"{repo_id}: "))
        except DuplicateConceptError as exc:
            # Organisations hold re-uploads of the same vectors; the library keeps one copy.
            return AuthorItem(repo_id, "skipped", exc.existing, reason=exc.message)
        except Exception as exc:  # one broken repository must not stop the others...
            if concerns_the_library(exc, library.home):
                raise  # ...but a damaged library or a full disk stops every one of them
            from conceptlib.errors import BadInputError

            code = 2 if isinstance(exc, BadInputError) else 1
            return AuthorItem(repo_id, "failed", reason=describe_error(exc).removeprefix(f"{repo_id}: "), exit_code=code)
        if result.status == "unchanged":
            return AuthorItem(repo_id, "skipped", result.name, result.commit, f"unchanged at {result.commit[:7]}")
        return AuthorItem(repo_id, result.status, result.name, result.commit)

    results: dict[str, AuthorItem] = {}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="conceptlib-pull")
    pending: dict[Future[AuthorItem], str] = {}
    try:
        for repo_id, sha in listed:
            pending[pool.submit(one, repo_id, sha)] = repo_id
        while pending:
            # A short timeout keeps the main thread responsive to Ctrl-C.
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                item = future.result()
                results[pending.pop(future)] = item
                if progress:
                    progress(len(results), total, item)
    except BaseException:
        # Interrupted: drop what has not started, let what is running finish whole.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    summary.items = [results[repo_id] for repo_id, _ in listed]
    return summary


# --- push ---------------------------------------------------------------------------------------

PushStatus = Literal["pushed", "unchanged"]


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` did.

    Attributes:
        name: the concept pushed.
        repo_id: the repository.
        revision: the branch committed to (``main`` unless given), or the PR's ``refs/pr/N``;
            ``main`` when a pull request was asked for but nothing changed.
        commit: the new commit id (the current one when nothing changed).
        commit_url: link to the commit.
        pr_url: link to the pull request, with ``create_pr`` (None when nothing changed).
        files: paths of the concept's repository layout, in commit order.
        repo_url: link to the repository.
        status: ``pushed``, or ``unchanged`` when the revision already held these exact files
            (nothing was committed and no pull request was opened).
        removed: files an earlier push left that this concept does not have (a second SDXL
            file, ``learned_embeds.bin``, images), deleted in the same commit.
    """

    name: str
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    pr_url: str | None
    files: list[str]
    repo_url: str
    status: PushStatus = "pushed"
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``conceptlib push --json`` prints)."""
        return {
            "name": self.name, "repo_id": self.repo_id, "status": self.status, "revision": self.revision,
            "commit": self.commit, "commit_url": self.commit_url, "pr_url": self.pr_url, "files": list(self.files),
            "repo_url": self.repo_url, "removed": list(self.removed),
        }


def _concept_parts(library: Library, concept: Concept) -> tuple[Concept, Embedding, list[tuple[str, bytes]]]:
    """The concept record, its vectors (with its current token) and its images' names and bytes.

    Images are read from the concept's folder without following any link (the library writes
    regular files only) and must match the sha256 its manifest records: whatever else sits
    there was put in by hand, and is never pushed.

    Raises:
        ConceptDamagedError: an image is a link, missing, or not the recorded bytes.
    """
    emb = library.embedding(concept.name)
    return concept, emb, _own_images(library, concept)


def _own_images(library: Library, concept: Concept) -> list[tuple[str, bytes]]:
    """The names and bytes of a library item's images, read as :func:`_concept_parts` says."""
    from conceptlib._inputs import Folder
    from conceptlib.errors import ConceptDamagedError

    images: list[tuple[str, bytes]] = []
    folder = library.folder(concept.name)
    with Folder(folder, links=False) as own:
        for record in concept.images:
            try:
                data = own.read_bytes(record.path, limit=1 << 30)
            except (ConceptlibError, OSError) as exc:
                reason = exc.message if isinstance(exc, ConceptlibError) else (exc.strerror or str(exc))
                raise ConceptDamagedError(f"{record.path}: {reason}", path=folder) from None
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise ConceptDamagedError(f"{record.path} does not match its recorded sha256 (damaged or changed)", path=folder)
            images.append((record.name, data))
    return images


#: What a hypernetwork repository's card is tagged with.
HYPERNETWORK_CARD_TAGS = ("hypernetwork", "stable-diffusion", "text-to-image")


def hypernetwork_card(*, concept: Concept, word: str, base_model: str | None, license: str, images: list[str]) -> str:
    """The README.md of a hypernetwork repository: what it is, where it goes, how to call it.

    Example:
        >>> from conceptlib.concept import Concept
        >>> card = hypernetwork_card(concept=Concept("anime", "anime", kind="hypernetwork"), word="anime",
        ...                          base_model=None, license="mit", images=[])
        >>> "<hypernet:anime:1>" in card
        True
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(license=license, base_model=base_model, tags=[*HYPERNETWORK_CARD_TAGS, "conceptlib"])
    meta = concept.metadata
    family = FAMILIES.get(concept.family or "")
    lines = [
        "---",
        data.to_yaml().strip(),
        "---",
        f"### {concept.name}: a hypernetwork for Stable Diffusion",
        f"A hypernetwork{f' for {family.label}' if family else ''} that transforms the inputs of the key and value projections "
        f"of the UNet's attention layers (widths {meta.get('hypernetwork_widths', '?')}; layer structure "
        f"{meta.get('layer_structure', '?')}, {meta.get('activation_func', '?')} activation).",
        "",
        f"Put {_code_span(word + '.pt')} in `models/hypernetworks/` (AUTOMATIC1111 and ComfyUI) and call it in a prompt as "
        f"{_code_span(f'<hypernet:{word}:1>')}; the number is its strength (0 turns it off).",
        "",
        "With conceptlib:",
        "",
        "```sh",
        "conceptlib pull REPO_ID",
        f"conceptlib render {shlex.quote(f'a portrait <hypernet:{word}:0.8>')} --model MODEL",
        "```",
        "",
    ]
    if concept.description:
        lines += [concept.description.strip(), ""]
    if images:
        lines.append("Sample images:")
        lines += [f"![{word} {i}](./{path})" for i, path in enumerate(images)]
        lines.append("")
    return "\n".join(lines)


def _repo_images(images: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """(repository path, bytes) of an item's images: ``concept_images/N.SUFFIX``."""
    files = []
    for i, (image_name, data) in enumerate(images):
        suffix = PurePosixPath(image_name).suffix.lower()
        files.append((f"concept_images/{i}{suffix if suffix in IMAGE_SUFFIXES else '.png'}", data))
    return files


def _card_defaults(concept: Concept, family: str | None, license: str | None) -> tuple[str | None, str]:
    """A card's base model and license: the item's own, else what its Hub card said, else the
    family's reference model and ``mit`` (the sd-concepts-library convention)."""
    card_meta = (_source_of(concept) or {}).get("card") or {}
    base_model: Any = concept.metadata.get("base_model") or card_meta.get("base_model")
    if isinstance(base_model, list):
        base_model = base_model[0] if base_model else None
    if not base_model and family is not None:
        base_model = BASE_MODELS.get(family)
    return base_model, str(license or concept.license or card_meta.get("license") or "mit")


def _hypernetwork_files(library: Library, concept: Concept, *, license: str | None) -> list[tuple[str, bytes]]:
    """(repository path, bytes) of a hypernetwork repository: ``WORD.pt`` (AUTOMATIC1111's
    form, which ComfyUI loads too), ``concept_images/``, README last."""
    from conceptlib import hypernet
    from conceptlib.library import network_word

    network = library.hypernetwork(concept.name)
    word = network_word(concept)
    image_files = _repo_images(_own_images(library, concept))
    files: list[tuple[str, bytes]] = [(f"{word}.pt", hypernet.dumps(network, "a1111")), *image_files]
    base_model, chosen_license = _card_defaults(concept, concept.family, license)
    card = hypernetwork_card(concept=concept, word=word, base_model=base_model, license=chosen_license, images=[p for p, _d in image_files])
    files.append(("README.md", card.encode("utf-8")))
    return files


def model_card(
    *,
    name: str,
    token: str,
    concept_type: str,
    base_model: str | None,
    license: str,
    images: list[str],
    description: str | None = None,
    num_vectors: int = 1,
    family_label: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The README.md for a concept repository, in the sd-concepts-library style.

    Args:
        name: the concept's name (the heading).
        token: the placeholder token users type.
        concept_type: ``object``, ``style`` or ``negative``.
        base_model: the base model id for the metadata (``base_model``).
        license: the license id (``mit`` is the sd-concepts-library convention).
        images: repository paths of the sample images to show.
        description: an optional paragraph.
        num_vectors: vectors per token (said in the card).
        family_label: e.g. ``SD 1.x`` (said in the card).
        repo_id: the repository, for the loading example.

    Returns:
        The card: YAML front matter (license, base_model, tags, instance_prompt), then Markdown.

    Example:
        >>> print(model_card(name="cat-toy", token="<cat-toy>", concept_type="object",
        ...                  base_model=None, license="mit", images=[]).splitlines()[1])
        license: mit
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        license=license,
        base_model=base_model,
        tags=[*CARD_TAGS, "conceptlib"],
        library_name="diffusers",
        instance_prompt=token,
    )
    sdxl = family_label == "SDXL"
    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    where = repr(repo_id or "REPO_ID")
    if sdxl:
        load = [
            f"pipe.load_textual_inversion({where}, weight_name='learned_embeds.safetensors', token={token!r}, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)",
            f"pipe.load_textual_inversion({where}, weight_name='learned_embeds_2.safetensors', token={token!r}, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)",
        ]
    else:
        load = [f"pipe.load_textual_inversion({where})"]
    lines = [
        "---",
        data.to_yaml().strip(),
        "---",
        f"### {name} on Stable Diffusion",
        f"This is the {_code_span(token)} concept taught to Stable Diffusion via Textual Inversion"
        + (f" ({num_vectors} vector{'s' if num_vectors != 1 else ''}, {family_label})" if family_label else "")
        + ".",
        "",
        "Load it with diffusers:",
        "",
        "```python",
        f"from diffusers import {pipeline}",
        f"pipe = {pipeline}.from_pretrained({(base_model or 'BASE_MODEL')!r})",
        *load,
        # repr: a token is a stranger's text, and this line is copied into Python as it reads.
        f"image = pipe({f'a photo of {token}'!r}).images[0]",
        "```",
        "",
    ]
    if description:
        lines += [description.strip(), ""]
    if concept_type == "negative":
        lines += [f"Use {_code_span(token)} in the negative prompt.", ""]
    if images:
        word = "a `style`" if concept_type == "style" else "an `object`" if concept_type == "object" else f"a `{concept_type}`"
        lines.append(f"Here is the new concept you will be able to use as {word}:")
        alt = re.sub(r"[\\\[\]]", "", token)  # brackets would end the alt text and start a link
        lines += [f"![{alt} {i}](./{path})" for i, path in enumerate(images)]
        lines.append("")
    return "\n".join(lines)


def _code_span(text: str) -> str:
    """``text`` as Markdown inline code that no backtick inside it can close (CommonMark)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _push_files(
    emb: Embedding, concept: Concept, images: list[tuple[str, bytes]], *, include_bin: bool, license: str | None, repo_id: str
) -> list[tuple[str, bytes]]:
    """(repository path, bytes) of everything a concept repository holds, README last."""
    from conceptlib.formats import plan

    token = concept.token
    emb = emb.with_token(token)
    files: list[tuple[str, bytes]] = []
    if emb.is_sdxl:
        if include_bin:
            raise UsageError("--with-bin: learned_embeds.bin holds one text encoder and this concept is SDXL")
        _fmt, planned = plan(emb, "learned_embeds.safetensors", format="diffusers-sdxl")
    else:
        _fmt, planned = plan(emb, "learned_embeds.safetensors", format="diffusers")
    files += [(p.name, data) for p, data in planned]
    if include_bin:
        # The old loaders (the sd-concepts notebooks, early diffusers) only read the .bin.
        _fmt, planned = plan(emb, "learned_embeds.bin", format="diffusers-bin")
        files += [(p.name, data) for p, data in planned]
    concept_type = concept.type or "object"
    files.append(("token_identifier.txt", token.encode("utf-8")))
    files.append(("type_of_concept.txt", concept_type.encode("utf-8")))
    image_files = _repo_images(images)
    files += image_files
    image_paths = [path for path, _data in image_files]
    family = emb.family
    base_model, chosen_license = _card_defaults(concept, family.key if family else None, license)
    card = model_card(
        name=concept.name,
        token=token,
        concept_type=concept_type,
        base_model=base_model,
        license=str(chosen_license),
        images=image_paths,
        description=concept.description,
        num_vectors=emb.num_vectors,
        family_label=family.label if family else None,
        repo_id=repo_id,
    )
    files.append(("README.md", card.encode("utf-8")))
    return files


_PR_NEEDS_REPO = "a pull request needs an existing repository: check the id, or push without --create-pr to create it"
#: Repository files a push writes, so may remove when the concept no longer has them. Other
#: files (a hand-written notebook, a LICENSE) are never touched.
_MANAGED_FILE = re.compile(r"learned_embeds(_2)?\.(safetensors|bin)|concept_images/[^/]+")


def push(
    library: Library,
    name: str,
    repo_id: str,
    private: bool = False,
    create_pr: bool = False,
    revision: str | None = None,
    include_bin: bool = False,
    *,
    license: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> PushResult:
    """Publish a concept in sd-concepts-library layout, in one commit.

    Uploads ``learned_embeds.safetensors`` (SDXL: plus ``learned_embeds_2.safetensors``),
    optionally ``learned_embeds.bin`` for old loaders, ``token_identifier.txt``,
    ``type_of_concept.txt``, ``concept_images/`` and a README model card whose YAML front matter
    holds the license, base model, tags (textual_inversion, stable-diffusion, ...) and the token.

    Args:
        library: the library holding the concept.
        name: the concept's name.
        repo_id: ``namespace/name`` on the Hub.
        private: create the repository private (ignored when it exists).
        create_pr: open a pull request on an existing repository instead of committing to it.
        revision: the branch to commit to (created from ``main`` when missing).
        include_bin: also upload ``learned_embeds.bin`` (SD 1.x/2.x only).
        license: license id for the card (default: the concept's, else ``mit``).
        commit_message: default ``Upload <token> concept with conceptlib``.
        api: the client to use (default :func:`get_hub_api`).

    Returns:
        A :class:`PushResult` with the commit, and the pull request's URL with ``create_pr``;
        its ``status`` is ``unchanged`` when the repository already held these exact files
        (huggingface_hub then skips the empty commit, and opens no pull request).

    Raises:
        UsageError: bad repository id, offline, --create-pr with another branch, SDXL + bin.
        HubAuthError: no token, or no write access (use ``create_pr``).
        HubUnavailableError: the Hub kept failing.
        HubRepoNotFoundError: ``create_pr`` on a missing repository.

    Example:
        >>> push(lib, "cat-toy", "me/cat-toy", create_pr=True).pr_url
        'https://huggingface.co/me/cat-toy/discussions/1'
    """
    repo_id, parsed_rev = parse_repo_ref(repo_id)
    revision = revision or parsed_rev
    if create_pr and revision not in (None, "main"):
        raise UsageError("--create-pr opens a pull request against main; drop --revision")
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        raise UsageError(
            f"{repo_id}@{revision}: a commit id cannot be pushed to (commits are fixed)",
            hint="pass a branch with --revision, or refs/pr/N to add to an open pull request",
        )
    pr_ref = revision is not None and re.fullmatch(r"refs/pr/\d+", revision) is not None
    settings = hub_settings()
    if settings.offline:
        raise UsageError("pushing needs the Hub, and HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE")
    client = api or get_hub_api(settings)
    shown = library.show(name)
    if shown.kind == "hypernetwork":
        concept = shown
        if include_bin:
            raise UsageError("--with-bin writes an embedding's learned_embeds.bin, and this is a hypernetwork")
        files = _hypernetwork_files(library, concept, license=license)
        message = commit_message or f"Upload the {concept.token} hypernetwork with conceptlib"
        description = f"{concept.name}: hypernetwork, widths {concept.metadata.get('hypernetwork_widths', '?')}, content hash {concept.content_hash[:16]}"
        # A renamed word leaves the old WORD.pt behind: one network per repository.
        managed = re.compile(rf"{_MANAGED_FILE.pattern}|[^/]+\.pt")
    else:
        concept, emb, images = _concept_parts(library, shown)
        files = _push_files(emb, concept, images, include_bin=include_bin, license=license, repo_id=repo_id)
        message = commit_message or f"Upload {concept.token} concept with conceptlib"
        description = f"{concept.name}: {emb.num_vectors} vector(s), content hash {emb.content_hash()[:16]}"
        managed = _MANAGED_FILE
    name = concept.name

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    # Every request of a push is part of a write (op="write"), its reads of the repository too:
    # a 401 there is no public read that dropping the token would fix.
    what = f"pushing {name} to {repo_id}"
    head_before: str | None = None
    if not create_pr:
        with_retries(
            lambda: client.create_repo(repo_id, private=private, exist_ok=True),
            repo_id=repo_id,
            op="write",
            what=what,
            again=_PUSH_SETUP_AGAIN,
        )
        if revision not in (None, "main") and not pr_ref:  # a pull request's ref exists or nothing does
            with_retries(
                lambda: client.create_branch(repo_id, branch=str(revision), exist_ok=True),
                repo_id=repo_id,
                op="write",
                what=what,
                again=_PUSH_SETUP_AGAIN,
            )
        # huggingface_hub skips a commit that changes no file and then returns the branch's
        # current commit, as if it were new: only the head before the commit tells them apart.
        head_before = with_retries(
            lambda: str(client.model_info(repo_id, revision=revision or "main").sha),
            repo_id=repo_id,
            revision=revision or "main",
            op="write",
            what=what,
            again=_PUSH_SETUP_AGAIN,
        )

    # Files an earlier push wrote that this concept does not have (an SDXL second file, a .bin,
    # images since removed) go in the same commit: left there, they would be read as part of it.
    try:
        present = with_retries(
            lambda: list(client.list_repo_files(repo_id, revision=revision or "main")),
            repo_id=repo_id, revision=revision or "main", op="write", what=what, again=_PUSH_SETUP_AGAIN,
        )  # fmt: skip
    except HubRepoNotFoundError as exc:
        if create_pr:
            exc.hint = _PR_NEEDS_REPO
        raise
    new_paths = {path for path, _ in files}
    stale = sorted(p for p in present if managed.fullmatch(p) and p not in new_paths)

    def commit() -> Any:
        # Fresh operations per attempt: the client marks them as committed.
        operations: list[Any] = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        return client.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            revision=revision,
            create_pr=create_pr,
        )

    # A retried PR could open two PRs if the first reply was lost, so PRs retry only on
    # faults that prove nothing was created (an HTTP error status, not a dropped connection).
    base = settings.base_url
    again = _PUSH_AGAIN
    if create_pr:
        again = Again(
            answered="no pull request was opened; push again later",
            lost=f"a pull request may have been opened before the connection failed; see {base}/{repo_id}/discussions before pushing again",
        )
    try:
        info = with_retries(
            commit,
            repo_id=repo_id,
            revision=revision,
            op="write",
            what=what,
            again=again,
            retry_if=status_transient if create_pr else transient,
        )
    except HubRepoNotFoundError as exc:
        if create_pr:
            # Only --create-pr skips creating the repository.
            exc.hint = _PR_NEEDS_REPO
        raise
    pr_url = getattr(info, "pr_url", None)
    commit_id = str(getattr(info, "oid", ""))
    # A pull request that changes nothing is not opened (so has no URL).
    unchanged = not pr_url if create_pr else commit_id == head_before
    return PushResult(
        name=name,
        repo_id=repo_id,
        revision=getattr(info, "pr_revision", None) or revision or "main",
        commit=commit_id,
        commit_url=str(getattr(info, "commit_url", "")),
        pr_url=str(pr_url) if pr_url else None,
        files=[path for path, _ in files],
        repo_url=f"{base}/{repo_id}",
        status="unchanged" if unchanged else "pushed",
        removed=[] if unchanged else stale,
    )

