"""The Hub client: how conceptlib talks to the Hugging Face Hub, with no idea of concepts.

Everything that sends a request or checks what came back lives here, below the sharing layer
(:mod:`conceptlib.hub`: pull, push, repository layouts, model cards) and below
:mod:`conceptlib.single_file`, which fetches the configs a single-file checkpoint lacks:

* settings read from the environment at call time (:func:`hub_settings`) and the one seam that
  builds the client (:func:`get_hub_api`);
* retries with back-off (:func:`with_retries`) and the translation of client errors into
  ``conceptlib.errors`` (:func:`translate`), told by the caller whether the operation reads or
  writes (:data:`Operation`) instead of guessing it from a message;
* repository references (:func:`parse_repo_ref`), the files a listing promises
  (:class:`RemoteFile`) and the checks of downloaded files against them (:func:`check_file`);
* snapshot downloads into the Hugging Face cache, and :func:`fetch_model_configs`.

It imports only leaves (``config``, ``errors``) at module scope, and ``huggingface_hub`` inside
the functions that call it, so both layers above can import it at module scope without a
circle and without slowing the CLI's start-up.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from conceptlib import config
from conceptlib.errors import (
    ConceptlibError,
    HubAuthError,
    HubError,
    HubNotCachedError,
    HubNotFoundError,
    HubRepoNotFoundError,
    HubRequestError,
    HubRevisionNotFoundError,
    HubUnavailableError,
    ModelConfigError,
    UsageError,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "DEFAULT_ENDPOINT",
    "FILE_WORKERS",
    "MODEL_CONFIG_PATTERNS",
    "RETRIES",
    "Again",
    "HubSettings",
    "Operation",
    "RemoteFile",
    "RepoChanged",
    "check_file",
    "download_snapshot",
    "evict",
    "fetch_model_configs",
    "first_line",
    "get_hub_api",
    "hub_settings",
    "parse_repo_ref",
    "quiet_client_output",
    "redownload",
    "remote_files",
    "status_transient",
    "transient",
    "translate",
    "with_retries",
]

T = TypeVar("T")

#: What a request does on the Hub, as the caller's operation sees it (a push's listing of the
#: repository is part of a write). It picks the advice of an error: a 401 on a read can be
#: fixed by sending no token at all, which never helps a write.
Operation = Literal["read", "write"]

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Retries after the first attempt for transient faults (5xx, 429, dropped connections).
RETRIES = 4
#: First back-off delay in seconds; doubles each retry up to RETRY_MAX_DELAY.
RETRY_BASE_DELAY = 1.0
RETRY_MAX_DELAY = 30.0
#: A Retry-After longer than this is not waited for: the error is reported instead.
MAX_RETRY_AFTER = 120.0
#: Parallel file downloads inside one repository (org pulls multiply this by ``jobs``).
FILE_WORKERS = 4


# --- settings and the client seam -------------------------------------------------------------


@dataclass(frozen=True)
class HubSettings:
    """The Hub settings in effect for one call, read from the environment at call time.

    Attributes:
        endpoint: ``HF_ENDPOINT`` without a trailing slash, or None for the client's default.
        cache_dir: the Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``).
        offline: ``HF_HUB_OFFLINE`` is set: resolve from the cache, never touch the network.
        token: a token found through ``HF_TOKEN`` or ``$HF_HOME/token``, or None to let the
            client look further (Colab secrets, OIDC).
    """

    endpoint: str | None
    cache_dir: str
    offline: bool
    token: str | None

    @property
    def base_url(self) -> str:
        """The endpoint used for links (provenance URLs, model cards)."""
        if self.endpoint:
            return self.endpoint
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/") or DEFAULT_ENDPOINT


def _hf_home() -> str:
    # Same resolution as huggingface_hub.constants, but per call instead of at import.
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME") or default))


def hub_settings() -> HubSettings:
    """Read ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` now.

    Returns:
        The settings to hand to ``huggingface_hub`` calls.

    Example:
        >>> hub_settings().offline
        False
    """
    endpoint = (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or None
    if endpoint is not None and not re.match(r"https?://[^/]", endpoint):
        # Otherwise every request fails as if the network were down, after all the retries.
        raise UsageError(f"HF_ENDPOINT {endpoint!r} is not a URL (it must start with http:// or https://)", hint="fix or unset HF_ENDPOINT")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    cache_dir = os.path.expandvars(os.path.expanduser(cache)) if cache else os.path.join(_hf_home(), "hub")
    offline = config.is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    if not offline:
        # The client fixed its own offline switch at import; if that says offline, every
        # request would fail, so resolve from the cache instead.
        from huggingface_hub import constants

        offline = bool(constants.is_offline_mode())
    token = (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or "").strip() or None
    if token is None:
        # `hf auth login` stores the token under HF_HOME; read it from the HF_HOME in effect now.
        token_path = Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(_hf_home(), "token"))
        with contextlib.suppress(OSError):
            token = token_path.read_text(encoding="utf-8").strip() or None
    return HubSettings(endpoint=endpoint, cache_dir=cache_dir, offline=offline, token=token)


def get_hub_api(settings: HubSettings | None = None) -> HfApi:
    """The one place conceptlib builds its Hub client (tests and embedders may replace it).

    Args:
        settings: the settings to use; read from the environment when omitted.

    Returns:
        An ``HfApi`` bound to the endpoint and token in effect.

    Example:
        >>> get_hub_api().endpoint
        'https://huggingface.co'
    """
    from huggingface_hub import HfApi

    settings = settings or hub_settings()
    return HfApi(endpoint=settings.endpoint, token=settings.token, library_name="conceptlib")


# --- errors and retries -----------------------------------------------------------------------

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# httpx (or httpx2, which huggingface_hub 2.x uses) transport errors, matched by class name so
# this module does not import the HTTP library the client happens to use.
_TRANSPORT_ERRORS = frozenset({"TransportError", "TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"})


class RepoChanged(Exception):
    """The repository moved to another commit between two calls of one pull.

    Raised by the caller that notices it (the listing and the download disagree), and
    :func:`transient`, so :func:`with_retries` starts that step over at the new commit.
    """


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_not_found(exc: BaseException) -> bool:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if type(exc).__name__ in ("LocalEntryNotFoundError", "IncompleteSnapshotError"):
        return False  # snapshot_download's "not cached" after a failed call: look at its cause
    return isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError))


def transient(exc: BaseException) -> bool:
    """Whether trying again can help: 5xx, 429, timeouts, dropped connections, changed repo."""
    for err in _causes(exc):
        if isinstance(err, RepoChanged):
            return True
        if _is_not_found(err):
            return False
        status = _status(err)
        if status is not None:
            return status in _TRANSIENT_STATUS
        if {t.__name__ for t in type(err).__mro__} & _TRANSPORT_ERRORS:
            return True
        if isinstance(err, (ConnectionError, TimeoutError)) and type(err).__name__ != "OfflineModeIsEnabled":
            return True
        if isinstance(err, OSError) and "Consistency check failed" in str(err):
            return True  # a body shorter than announced: the connection dropped
    return False


def _retry_after(exc: BaseException) -> float | None:
    for err in _causes(exc):
        response = getattr(err, "response", None)
        headers = getattr(response, "headers", None)
        if headers is None:
            continue
        value = headers.get("Retry-After")
        if value is not None:
            with contextlib.suppress(ValueError):
                return max(0.0, float(value))
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (its class name when it has none), for a summary."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_says(exc: BaseException) -> str:
    """What the Hub said about an error (its X-Error-Message or JSON ``error``), on one line."""
    said = " ".join(str(getattr(exc, "server_message", None) or "").split())
    return said[:297] + "..." if len(said) > 300 else said


def _not_found(exc: BaseException, repo_id: str | None, what: str, revision: str | None) -> HubError:
    """A not-found answer of the Hub, saying which repository or revision and on which Hub."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = repo_id or str(getattr(exc, "repo_id", None) or "the repository")
    where = hub_settings().base_url
    if isinstance(exc, GatedRepoError):
        return HubAuthError(
            f"{repo} on {where} is gated and this account has not been granted access",
            repo_id=repo_id,
            hint=f"ask for access on {where}/{repo}, then log in with `hf auth login` or set HF_TOKEN",
        )
    if isinstance(exc, RepositoryNotFoundError):
        # The Hub answers 401 to an anonymous request and 404 to a logged-in one, whether the
        # repository is missing or private: say which of the two cases this was.
        if _status(exc) == 401:
            return HubRepoNotFoundError(f"repository {repo} not found on {where} (or it is private, and no token was sent)", repo_id=repo_id)
        return HubRepoNotFoundError(
            f"repository {repo} not found on {where} (or it is private, and this token cannot see it)",
            repo_id=repo_id,
            hint="check the repository id; for a private one, run `hf auth login` with a token of an account that can read it",
        )
    if isinstance(exc, RevisionNotFoundError):
        rev = f"no revision {revision!r}" if revision else "no such revision"
        return HubRevisionNotFoundError(f"{repo} has {rev} on {where}", repo_id=repo_id, revision=revision)
    said = _server_says(exc)
    return HubNotFoundError(
        f"{what}: not found on the Hub" + (f" ({said})" if said else ""),
        repo_id=repo_id,
        revision=revision,
        hint=f"see what {repo} holds on {where}/{repo}",
    )


class Again(NamedTuple):
    """The hint for a Hub that kept failing, by what the last failure may have left behind."""

    #: The Hub answered with an error status (429, 500, 502, 503): it did not act on the request.
    answered: str
    #: A timeout (408, 504) or a dropped connection: the request may have been acted on.
    lost: str


#: HTTP statuses that say the answer was lost, not that the request was refused.
_TIMEOUT_STATUS = frozenset({408, 504})


def translate(
    exc: BaseException,
    repo_id: str | None,
    what: str,
    attempts: int = 1,
    *,
    op: Operation,
    revision: str | None = None,
    again: Again | None = None,
) -> BaseException:
    """Turn a client error into a conceptlib error that names the repository and a next step.

    Args:
        exc: what the client raised.
        repo_id: the repository the request was about (None for a listing of many).
        what: the operation as the user would say it, for the start of the message.
        attempts: how many tries were made (named in the message when more than one).
        op: whether the operation reads or writes; decides the advice of a 401.
        revision: the revision asked for, named by a not-found error.
        again: the operation's hint for a Hub that kept failing (the error's default otherwise).

    Returns:
        A conceptlib error, or ``exc`` itself when it is no Hub failure conceptlib knows.
    """
    if isinstance(exc, ConceptlibError):
        return exc
    if _is_not_found(exc):
        return _not_found(exc, repo_id, what, revision)
    from huggingface_hub.errors import LocalEntryNotFoundError

    for err in _causes(exc):
        status = _status(err)
        if status == 401:
            return HubAuthError(
                f"{what}: the Hub refused the credentials (401)", repo_id=repo_id,
                # A wrong HF_TOKEN fails even public reads; no token at all would do for those.
                hint="check HF_TOKEN or log in again with `hf auth login`; public repositories need no token, so unsetting a bad one also works"
                if op == "read" else None,
            )  # fmt: skip
        if status == 403:
            return HubAuthError(
                f"{what}: the token has no rights to do this (403)",
                repo_id=repo_id,
                hint="use a token with write access to that namespace (`hf auth login`), or open a pull request with --create-pr",
            )
        if status == 429:
            after = _retry_after(err)
            wait_s = f"; the Hub asks to wait {after:.0f} s" if after is not None else ""
            return HubUnavailableError(
                f"{what}: rate limited by the Hub (429){wait_s}", repo_id=repo_id, hint=again.answered if again else None
            )
        if status is not None and status >= 500:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            hint = (again.lost if status in _TIMEOUT_STATUS else again.answered) if again else None
            return HubUnavailableError(f"{what}: the Hub answered {status}{tries}", repo_id=repo_id, hint=hint)
        if status is not None and status >= 400 and status not in _TRANSIENT_STATUS:
            # Any other refusal (409 conflict, 400 bad request, ...): the Hub's words say why.
            reason = str(getattr(getattr(err, "response", None), "reason_phrase", "") or "")
            said = _server_says(err)
            return HubRequestError(
                f"{what}: the Hub answered {status}{' ' + reason if reason else ''}{': ' + said if said else ''}",
                status=status,
                server_message=said or None,
                repo_id=repo_id,
            )
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is None and exc.__context__ is None:
        # The client's own offline switch, not a failed request.
        return HubNotCachedError(f"{what}: not in the local cache, and huggingface_hub is offline", repo_id=repo_id, revision=revision)
    if transient(exc):
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return HubUnavailableError(
            f"{what}: the connection failed{tries} ({first_line(_root_cause(exc))})",
            repo_id=repo_id,
            hint=again.lost if again else None,
        )
    return exc


def _root_cause(exc: BaseException) -> BaseException:
    last = exc
    for err in _causes(exc):
        last = err
    return last


def status_transient(exc: BaseException) -> bool:
    """Only an HTTP error status that proves the request was not acted on.

    A gateway or request timeout (504, 408) does not: the Hub behind the proxy may still have
    opened the pull request, and a retry would open a second one.
    """
    return any(_status(err) in _TRANSIENT_STATUS - _TIMEOUT_STATUS for err in _causes(exc))


def with_retries(
    fn: Callable[[], T],
    *,
    repo_id: str | None,
    what: str,
    op: Operation,
    revision: str | None = None,
    again: Again | None = None,
    retries: int | None = None,
    retry_if: Callable[[BaseException], bool] = transient,
) -> T:
    """Call ``fn``; on a transient fault wait (Retry-After, else exponential back-off) and retry.

    huggingface_hub already retries some calls internally (downloads resume after a dropped
    connection, list pagination backs off); this outer loop covers the calls it does not
    (repository info, tree listing) and gives up with a conceptlib error after ``retries``;
    ``repo_id``, ``revision`` and ``what`` (the operation, for messages) name what failed, ``op``
    says whether it reads or writes (see :func:`translate`), and ``again`` gives the
    operation's next step when the Hub keeps failing.
    """
    budget = RETRIES if retries is None else retries
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= budget or not retry_if(exc):
                translated = translate(exc, repo_id, what, attempt + 1, op=op, revision=revision, again=again)
                if translated is exc:
                    raise
                raise translated from exc
            after = _retry_after(exc)
            if after is not None and after > MAX_RETRY_AFTER:
                raise translate(exc, repo_id, what, attempt + 1, op=op, revision=revision, again=again) from exc
            delay = after if after is not None else min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)
            time.sleep(delay)
            attempt += 1


# --- repository references and the files a listing promises ----------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_repo_ref(text: str) -> tuple[str, str | None]:
    """Split ``REPO_ID[@REVISION]`` (or a Hub URL) into the repository id and the revision.

    Args:
        text: ``ns/name``, ``ns/name@rev`` (rev may hold slashes: ``refs/pr/3``), or a URL such
            as ``https://huggingface.co/ns/name/tree/rev``.

    Returns:
        ``(repo_id, revision)``; revision is None when not given.

    Raises:
        UsageError: not a model repository id.

    Example:
        >>> parse_repo_ref("sd-concepts-library/cat-toy@refs/pr/1")
        ('sd-concepts-library/cat-toy', 'refs/pr/1')
    """
    value = text.strip()
    revision: str | None = None
    url = re.match(r"^(?:https?://[^/]+/|hf://)(?:models/)?([^/@]+/[^/@]+)(?:/(?:tree|blob|resolve)/([^/]+))?", value)
    if url:
        repo_id, revision = url.group(1), url.group(2)
        if revision:
            from urllib.parse import unquote

            revision = unquote(revision)
        value = repo_id + (f"@{revision}" if revision else "")
    repo_id, sep, rev = value.partition("@")
    if sep:
        if not rev:
            raise UsageError(f"{text!r}: empty revision after '@'")
        revision = rev
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise UsageError(
            f"{text!r} is not a Hub model repository id",
            hint="write it as NAMESPACE/NAME, e.g. sd-concepts-library/cat-toy, optionally @REVISION",
        )
    return repo_id, revision


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repository at one commit, with the hashes the Hub lists for it.

    Attributes:
        path: path inside the repository (``/``-separated).
        size: size in bytes, when listed.
        sha256: content sha256 (listed for LFS files).
        blob_id: git blob id; the content's git-sha1 for regular (non-LFS) files.
        lfs: stored in LFS (then ``blob_id`` hashes the pointer, not the content).
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    blob_id: str | None = None
    lfs: bool = False


# --- downloads and their checks --------------------------------------------------------------


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one pass."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def check_file(path: Path, expected: RemoteFile | None) -> tuple[str, str | None]:
    """sha256 of a downloaded file and, if it does not match what the Hub lists, why."""
    sha256, sha1 = _hashes(path)
    if expected is not None:
        if expected.sha256 and expected.sha256 != sha256:
            return sha256, f"sha256 {sha256[:12]}… but the Hub lists {expected.sha256[:12]}…"
        if not expected.lfs and expected.blob_id and expected.blob_id != sha1:
            return sha256, f"git blob id {sha1[:12]}… but the Hub lists {expected.blob_id[:12]}…"
    # The cache names each blob by its ETag: the sha256 for LFS files, the git-sha1 otherwise.
    # Offline this is the only record of what the Hub promised.
    blob = Path(os.path.realpath(path))
    if blob != path.absolute() and blob.parent.name == "blobs":
        name = blob.name
        if re.fullmatch(r"[0-9a-f]{64}", name) and name != sha256:
            return sha256, f"sha256 {sha256[:12]}… but the cache entry is {name[:12]}…"
        if re.fullmatch(r"[0-9a-f]{40}", name) and name != sha1:
            return sha256, f"git blob id {sha1[:12]}… but the cache entry is {name[:12]}…"
    return sha256, None


def evict(path: Path) -> None:
    """Remove a bad blob and its snapshot link so neither a retry nor an offline pull reuses it."""
    blob = Path(os.path.realpath(path))
    for target in (path, blob):
        with contextlib.suppress(OSError):
            target.unlink()


def remote_files(info: Any) -> dict[str, RemoteFile]:
    out: dict[str, RemoteFile] = {}
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        out[sibling.rfilename] = RemoteFile(
            path=sibling.rfilename,
            size=getattr(sibling, "size", None),
            sha256=getattr(lfs, "sha256", None) if lfs else None,
            blob_id=getattr(sibling, "blob_id", None),
            lfs=lfs is not None,
        )
    return out


def download_snapshot(settings: HubSettings, repo_id: str, revision: str, files: tuple[str, ...], *, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=settings.cache_dir,
        endpoint=settings.endpoint,
        token=settings.token,
        # Escaped: a path holding [ ] * ? must match itself only.
        allow_patterns=[glob.escape(f) for f in files],
        local_files_only=offline,
        max_workers=FILE_WORKERS,
    )
    return Path(folder)


# What a diffusers pipeline needs besides weights: small JSON configs and the tokenizers.
MODEL_CONFIG_PATTERNS = ("model_index.json", "*/config.json", "*/scheduler_config.json", "tokenizer*/*.json", "tokenizer*/*.txt")


def fetch_model_configs(repo_id: str, *, revision: str | None = None) -> Path:
    """The configs and tokenizers of a diffusers model repository, without its weights.

    A single-file checkpoint (AUTOMATIC1111/ComfyUI layout) carries weights only; building
    its pipeline needs the matching ``model_index.json``, component configs and tokenizer
    files (a few MB). They are downloaded once into the Hugging Face cache; offline
    (``HF_HUB_OFFLINE``) or when the Hub cannot be reached, the cached copy is used.

    Args:
        repo_id: the diffusers repository, e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``.
        revision: branch, tag or commit; the default branch when None.

    Returns:
        The local snapshot folder (inside the cache; do not modify it).

    Raises:
        ModelConfigError: offline (or unreachable) and not cached, or the repository holds no
            ``model_index.json``.
        HubAuthError: the repository is gated and the token does not open it.
        HubRepoNotFoundError, HubRevisionNotFoundError: no such repository (or a private one
            the token cannot see) or revision.
    """
    from huggingface_hub import snapshot_download

    settings = hub_settings()

    def download(offline: bool) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=settings.cache_dir,
                endpoint=settings.endpoint,
                token=settings.token,
                allow_patterns=list(MODEL_CONFIG_PATTERNS),
                local_files_only=offline,
            )
        )

    reason = "HF_HUB_OFFLINE is set"
    folder: Path | None = None
    if not settings.offline:
        try:
            folder = with_retries(
                lambda: download(False),
                repo_id=repo_id,
                revision=revision,
                op="read",
                what=f"fetching them from {settings.base_url}",
            )
        except HubUnavailableError as exc:
            reason = exc.message
    if folder is None:
        try:
            folder = download(True)
        except Exception as exc:
            from huggingface_hub.errors import LocalEntryNotFoundError

            if isinstance(exc, LocalEntryNotFoundError):
                raise ModelConfigError(f"the configs of {repo_id} are not in the local cache ({reason})") from exc
            raise
    if not (folder / "model_index.json").is_file():
        raise ModelConfigError(f"{repo_id} has no model_index.json: not a diffusers model repository")
    return folder


def redownload(settings: HubSettings, repo_id: str, commit: str, path: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo_id,
            path,
            revision=commit,
            cache_dir=settings.cache_dir,
            endpoint=settings.endpoint,
            token=settings.token,
            force_download=True,
        )
    )


@contextlib.contextmanager
def quiet_client_output() -> Iterator[None]:
    """Silence huggingface_hub's tqdm bars and its warnings while a caller reports progress itself.

    The client logs every retried download ("Error while downloading ...", "Trying to resume
    download...") and skipped empty commit; conceptlib retries on its own and reports the
    outcome (or one error line), so those lines only repeat it. Both switches are global to
    the process, and are restored on exit.

    Example:
        >>> with quiet_client_output():
        ...     pull(lib, "sd-concepts-library/cat-toy")
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        logging,
    )

    was_disabled = are_progress_bars_disabled()
    verbosity = logging.get_verbosity()
    disable_progress_bars()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if not was_disabled:
            enable_progress_bars()
