"""A small in-memory Hugging Face Hub for tests, driven by the real ``huggingface_hub`` client.

It speaks the subset of the Hub's HTTP protocol that ``HfApi``, ``hf_hub_download`` and
``snapshot_download`` use (see ``../shared/docs/hub-protocol.md``): repository info and listing,
``resolve`` downloads (HEAD + GET, ranges), tree and paths-info, create repo and branch,
preupload, NDJSON commits, pull requests (``refs/pr/N``) and whoami. State lives in memory:
repositories → commits → files.

Every file is uploaded in "regular" mode (the bytes ride inside the commit payload), so neither
Xet nor git-LFS is involved and ``HF_HUB_DISABLE_XET`` is not needed. Downloads are plain HTTP
because no ``X-Xet-*`` header is ever sent. Files that the real Hub keeps in LFS (weights,
images) are still *described* as LFS (``lfs.sha256`` in listings, ``X-Linked-Etag`` on resolve),
as huggingface.co does, so clients see both kinds of metadata.

Faults are injected per test with :meth:`HubServer.inject`: a status code (500, 429 with
``Retry-After``, 401, 403, ...), a connection dropped part-way through a body, or wrong bytes
of the right length.

>>> with HubServer() as hub:
...     hub.add_user("hf_test", "alice", orgs=["acme"])
...     hub.create_repo("acme/cat-toy", {"token_identifier.txt": b"<cat-toy>"})
...     hub.inject("GET", r"/resolve/", status=500, times=2)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

#: Suffixes huggingface.co stores in LFS by default (its .gitattributes); listed as LFS here.
LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".png", ".jpg", ".jpeg", ".webp", ".gif")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid``/``blobId`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-LFS pointer text the real Hub stores in git for an LFS file."""
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def is_lfs(path: str) -> bool:
    """Whether the Hub would keep ``path`` in LFS (binary weights and images)."""
    return path.lower().endswith(LFS_SUFFIXES)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass
class Commit:
    """One commit: the whole tree (path → bytes), its parent and its message."""

    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    date: float


@dataclass
class PullRequest:
    """A pull request: its number, title and the ``refs/pr/N`` head."""

    num: int
    title: str
    description: str
    author: str
    created: float


@dataclass
class Repo:
    """A model repository: branches → commit ids, every commit, pull requests."""

    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)  # num → head commit
    pr_info: dict[int, PullRequest] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def author(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def resolve(self, revision: str) -> Commit | None:
        """A branch, tag, ``refs/pr/N`` or full commit id → its commit (None if unknown)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match.group(1)) in self.prs:
            return self.commits[self.prs[int(match.group(1))]]
        return self.commits.get(revision)


@dataclass
class Fault:
    """A fault to inject into requests matching ``method`` and the ``path`` regex.

    Attributes:
        method: HTTP method to match (None: any).
        path: regex searched in the decoded request path (without the query string).
        status: answer with this status instead of serving the request.
        headers: extra headers for a ``status`` answer (e.g. ``Retry-After``).
        error_code: ``X-Error-Code`` for a ``status`` answer (``RepoNotFound``, ...).
        message: ``X-Error-Message`` and JSON ``error`` for a ``status`` answer.
        drop_after: serve the headers and this many body bytes, then close the connection.
        corrupt: serve bytes of the right length but the wrong content.
        times: how many matching requests to affect (None: all of them).
    """

    method: str | None
    path: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None
    message: str | None = None
    drop_after: int | None = None
    corrupt: bool = False
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return re.search(self.path, path) is not None


class HubError(Exception):
    """An HTTP error answer, with the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit


class HubState:
    """Everything the server knows: users, repositories, faults and a request log."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, str] = {}  # token → user name
        self.orgs: dict[str, set[str]] = {}  # org → member names
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []  # (method, decoded path with query)
        self.page_size = 100
        self._counter = itertools.count(1)
        self._clock = time.time()

    def now(self) -> float:
        # Strictly increasing timestamps keep "lastModified" ordering deterministic in tests.
        with self.lock:
            self._clock = max(self._clock + 1, time.time())
            return self._clock

    def new_oid(self, seed: str) -> str:
        return hashlib.sha1(f"{next(self._counter)}:{seed}:{time.time_ns()}".encode()).hexdigest()

    def user_for(self, authorization: str | None) -> str | None:
        """The user a ``Bearer`` header names; raises 401 for an unknown token."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, set()))

    def can_read(self, user: str | None, repo: Repo) -> bool:
        return not repo.private or self.can_write(user, repo.author)


class HubServer:
    """The server, its state and fault injection; a context manager that runs it in a thread.

    Args:
        host: interface to bind (always loopback in tests).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.state = HubState()
        handler = type("BoundHandler", (_Handler,), {"hub": self.state})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        handler.base_url = self.url  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- setup helpers -------------------------------------------------------------------------
    def add_user(self, token: str, name: str, orgs: list[str] | tuple[str, ...] = ()) -> None:
        """Register a token for ``name``, member of ``orgs``."""
        with self.state.lock:
            self.state.tokens[token] = name
            for org in orgs:
                self.state.orgs.setdefault(org, set()).add(name)

    def create_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *, private: bool = False) -> str:
        """Create a repository holding ``files`` on ``main``; returns the head commit id."""
        with self.state.lock:
            repo = Repo(repo_id, private=private)
            self.state.repos[repo_id] = repo
            initial = {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}
            initial.update(files or {})
            return self._commit(repo, "main", initial, "initial commit")

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", delete: tuple[str, ...] = ()) -> str:
        """Add or replace ``files`` (and delete ``delete``) on ``branch``; returns the new commit id."""
        with self.state.lock:
            repo = self.state.repos[repo_id]
            head = repo.resolve(branch)
            tree = dict(head.files) if head else {}
            for path in delete:
                tree.pop(path, None)
            tree.update(files)
            return self._commit(repo, branch, tree, "update")

    def _commit(self, repo: Repo, branch: str, tree: dict[str, bytes], title: str) -> str:
        parent = repo.branches.get(branch)
        oid = self.state.new_oid(repo.repo_id + title)
        repo.commits[oid] = Commit(oid, parent, tree, title, self.state.now())
        repo.branches[branch] = oid
        return oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The tree at ``revision`` (a copy)."""
        with self.state.lock:
            commit = self.state.repos[repo_id].resolve(revision)
            assert commit is not None, revision
            return dict(commit.files)

    def head(self, repo_id: str, revision: str = "main") -> str:
        """The commit id ``revision`` points at."""
        with self.state.lock:
            commit = self.state.repos[repo_id].resolve(revision)
            assert commit is not None, revision
            return commit.oid

    # --- faults and log ------------------------------------------------------------------------
    def inject(
        self,
        method: str | None,
        path: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        error_code: str | None = None,
        message: str | None = None,
        drop_after: int | None = None,
        corrupt: bool = False,
        times: int | None = 1,
    ) -> Fault:
        """Make the next ``times`` requests matching ``method`` and ``path`` (a regex) fail.

        Returns:
            The :class:`Fault`; its ``hits`` counts the requests it affected.
        """
        fault = Fault(method, path, status, dict(headers or {}), error_code, message, drop_after, corrupt, times)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self, method: str | None = None, contains: str = "") -> list[str]:
        """Logged request paths, filtered by method and a substring."""
        with self.state.lock:
            return [p for m, p in self.state.log if (method is None or m == method) and contains in p]

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()


def _entry(path: str, data: bytes, commit: Commit) -> dict[str, Any]:
    """A tree/paths-info entry for a file, LFS-described like huggingface.co does."""
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
    if is_lfs(path):
        pointer = lfs_pointer(data)
        entry["oid"] = git_blob_sha1(pointer)
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
    else:
        entry["oid"] = git_blob_sha1(data)
    entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": _iso(commit.date)}
    return entry


def _dirs(files: dict[str, bytes]) -> set[str]:
    out: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _card_data(readme: bytes | None) -> dict[str, Any] | None:
    """Front matter of a README, as the Hub exposes it in ``cardData``."""
    if not readme:
        return None
    text = readme.decode("utf-8", "replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    import yaml

    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; ``hub`` and ``base_url`` are bound by :class:`HubServer`."""

    hub: HubState
    base_url: str
    protocol_version = "HTTP/1.1"
    # A socket timeout bounds every read, so a stuck client can never hang the test run.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet, tests read hub.log
        pass

    # --- plumbing ------------------------------------------------------------------------------
    def _split(self) -> tuple[list[str], dict[str, list[str]]]:
        # Split before decoding: a revision such as refs%2Fpr%2F1 is one segment.
        raw, _, query = self.path.partition("?")
        segments = [unquote(s) for s in raw.split("/")[1:]]
        return segments, parse_qs(query, keep_blank_values=True)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head: bool = False) -> None:
        self.send_response(status)
        merged = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        merged.update(headers or {})
        for key, value in merged.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, err: HubError, *, head: bool = False) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers, head=head)

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.hub.lock:
            for fault in self.hub.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _dispatch(self, method: str) -> None:
        segments, query = self._split()
        path = "/" + "/".join(segments)
        with self.hub.lock:
            self.hub.log.append((method, path + ("?" + urlencode(query, doseq=True) if query else "")))
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        fault = self._fault(method, path)
        if fault is not None and fault.status is not None:
            self._error_for_fault(fault, head=method == "HEAD")
            return
        try:
            self._route(method, segments, query, body, fault)
        except HubError as err:
            self._error(err, head=method == "HEAD")

    def _error_for_fault(self, fault: Fault, *, head: bool) -> None:
        assert fault.status is not None
        message = fault.message or f"injected {fault.status}"
        headers = {"X-Error-Message": message, **fault.headers}
        if fault.error_code:
            headers["X-Error-Code"] = fault.error_code
        self._send(fault.status, json.dumps({"error": message}).encode(), headers, head=head)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- routing -------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes, fault: Fault | None) -> None:
        user = self.hub.user_for(self.headers.get("Authorization"))
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(user)
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(body)
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(user, body)
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(user, body)
            if rest == ["models"] and method == "GET":
                return self._list_models(user, query)
            if len(rest) >= 3 and rest[0] == "models":
                repo_id = f"{rest[1]}/{rest[2]}"
                return self._repo_api(method, user, repo_id, rest[3:], query, body)
            raise HubError(404, "not found")
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, user, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), fault)
        raise HubError(404, "not found")

    def _repo(self, user: str | None, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or not self.hub.can_read(user, repo):
            # The Hub does not reveal private repos: same answer as a missing one.
            raise HubError(404 if user else 401, "Repository Not Found", "RepoNotFound")
        return repo

    def _writable(self, user: str | None, repo: Repo) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to this repository")
        if not self.hub.can_write(user, repo.author):
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_api(self, method: str, user: str | None, repo_id: str, rest: list[str], query: dict[str, list[str]], body: bytes) -> None:
        with self.hub.lock:
            repo = self._repo(user, repo_id)
            if not rest and method == "GET":
                return self._json(200, self._info(repo, self._commit_at(repo, "main"), query))
            action = rest[0]
            if action == "revision" and len(rest) == 2 and method == "GET":
                return self._json(200, self._info(repo, self._commit_at(repo, rest[1]), query))
            if action == "tree" and len(rest) >= 2 and method == "GET":
                return self._tree(repo, rest[1], "/".join(rest[2:]), query)
            if action == "paths-info" and len(rest) == 2 and method == "POST":
                return self._paths_info(repo, rest[1], body)
            if action == "refs" and method == "GET":
                return self._refs(repo, query)
            if action == "commits" and len(rest) == 2 and method == "GET":
                return self._commits(repo, rest[1])
            if action == "preupload" and len(rest) == 2 and method == "POST":
                self._writable(user, repo)
                return self._preupload(repo, rest[1], body)
            if action == "commit" and len(rest) == 2 and method == "POST":
                self._writable(user, repo)
                return self._commit(repo, rest[1], query, body, user or "anonymous")
            if action == "branch" and len(rest) >= 2 and method == "POST":
                self._writable(user, repo)
                return self._create_branch(repo, "/".join(rest[1:]), body)
            if action == "discussions" and method == "POST" and len(rest) == 1:
                self._writable(user, repo)
                return self._open_pr(repo, body, user or "anonymous")
            if action == "discussions" and method == "GET" and len(rest) == 2:
                return self._pr_details(repo, int(rest[1]))
        raise HubError(404, "not found")

    # --- endpoints -----------------------------------------------------------------------------
    def _whoami(self, user: str | None) -> None:
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": org, "type": "org"} for org, members in sorted(self.hub.orgs.items()) if user in members]
        self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": orgs, "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body or b"{}").get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if match:
            import yaml

            try:
                yaml.safe_load(match.group(1))
            except yaml.YAMLError as exc:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self, user: str | None, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "only model repositories are supported by this test hub")
        if user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        namespace: str = payload.get("organization") or user
        if not self.hub.can_write(user, namespace):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.base_url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            repo = Repo(repo_id, private=private)
            self.hub.repos[repo_id] = repo
            oid = self.hub.new_oid(repo_id)
            repo.commits[oid] = Commit(oid, None, {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit", self.hub.now())
            repo.branches["main"] = oid
        self._json(200, {"url": url, "name": repo_id})

    def _delete_repo(self, user: str | None, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        with self.hub.lock:
            repo = self._repo(user, repo_id)
            self._writable(user, repo)
            del self.hub.repos[repo_id]
        self._json(200, {})

    def _info(self, repo: Repo, commit: Commit, query: dict[str, list[str]]) -> dict[str, Any]:
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = _entry(path, data, commit)
                sibling.update({"size": len(data), "blobId": entry["oid"]})
                if "lfs" in entry:
                    sibling["lfs"] = {"size": len(data), "sha256": entry["lfs"]["oid"], "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.author,
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["textual_inversion"],
            "siblings": siblings,
        }
        card = _card_data(commit.files.get("README.md"))
        if card is not None:
            info["cardData"] = card
        return info

    def _list_models(self, user: str | None, query: dict[str, list[str]]) -> None:
        author = query.get("author", [None])[0]
        search = query.get("search", [None])[0]
        limit = int(query.get("limit", ["0"])[0] or 0)
        cursor = int(query.get("cursor", ["0"])[0] or 0)
        expand = query.get("expand")
        with self.hub.lock:
            repos = sorted(
                (r for r in self.hub.repos.values() if self.hub.can_read(user, r)
                 and (author is None or r.author == author) and (search is None or search in r.repo_id)),
                key=lambda r: r.repo_id,
            )
            page_size = min(self.hub.page_size, limit) if limit else self.hub.page_size
            page = repos[cursor : cursor + page_size]
            items = []
            for repo in page:
                head = repo.commits[repo.branches["main"]]
                full = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                        "author": repo.author, "sha": head.oid, "lastModified": _iso(head.date), "createdAt": _iso(repo.created),
                        "private": repo.private, "downloads": 0, "likes": 0, "tags": ["textual_inversion"]}
                if expand:
                    items.append({k: v for k, v in full.items() if k in ("_id", "id", *expand)})
                else:
                    # Like the Hub, the default listing has no "sha": ask for it with expand.
                    items.append({k: v for k, v in full.items() if k not in ("sha", "lastModified", "author")})
        headers = {}
        if cursor + page_size < len(repos) and not (limit and cursor + page_size >= limit):
            params = {k: v for k, v in query.items() if k != "cursor"}
            params["cursor"] = [str(cursor + page_size)]
            headers["Link"] = f'<{self.base_url}/api/models?{urlencode(params, doseq=True)}>; rel="next"'
        self._json(200, items, headers)

    def _tree(self, repo: Repo, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        commit = self._commit_at(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        files, dirs = commit.files, _dirs(commit.files)
        if prefix and prefix not in dirs:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        base = prefix + "/" if prefix else ""
        out: list[dict[str, Any]] = []
        for d in sorted(dirs):
            if d.startswith(base) and (recursive or "/" not in d[len(base):]):
                out.append({"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d})
        for path in sorted(files):
            if path.startswith(base) and (recursive or "/" not in path[len(base):]):
                out.append(_entry(path, files[path], commit))
        self._json(200, out)

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> None:
        commit = self._commit_at(repo, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        dirs = _dirs(commit.files)
        out = []
        for path in form.get("paths", []):
            if path in commit.files:
                out.append(_entry(path, commit.files[path], commit))
            elif path in dirs:
                out.append({"type": "directory", "oid": git_blob_sha1(path.encode()), "size": 0, "path": path})
        self._json(200, out)

    def _refs(self, repo: Repo, query: dict[str, list[str]]) -> None:
        data: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in sorted(repo.branches.items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(repo.tags.items())],
            "converts": [],
        }
        if query.get("include_prs"):
            data["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": oid} for n, oid in sorted(repo.prs.items())]
        self._json(200, data)

    def _commits(self, repo: Repo, revision: str) -> None:
        commit: Commit | None = self._commit_at(repo, revision)
        out = []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.title, "date": _iso(commit.date), "authors": [{"user": repo.author}]})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    def _preupload(self, repo: Repo, revision: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        head = repo.resolve(revision)
        if head is None and revision != "main":
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = head.files if head else {}
        out = []
        for item in payload.get("files", []):
            existing = files.get(item["path"])
            # Everything is "regular": the bytes come inside the commit, so no Xet or LFS upload.
            out.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_blob_sha1(existing) if existing is not None else None})
        self._json(200, {"files": out, "commitOid": head.oid if head else None})

    def _commit(self, repo: Repo, revision: str, query: dict[str, list[str]], body: bytes, user: str) -> None:
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header: dict[str, Any] = next((line["value"] for line in lines if line["key"] == "header"), {})
        base = self._commit_at(repo, revision)
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                raise HubError(400, "this test hub accepts regular uploads only")
            elif key == "deletedFile":
                if value["path"] not in tree:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del tree[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in tree if p.startswith(prefix)]:
                    del tree[path]
        oid = self.hub.new_oid(repo.repo_id + header.get("summary", ""))
        repo.commits[oid] = Commit(oid, base.oid, tree, header.get("summary", "commit"), self.hub.now())
        pr_url = None
        pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if create_pr:
            num = max([*repo.pr_info, 0]) + 1
            repo.prs[num] = oid
            repo.pr_info[num] = PullRequest(num, header.get("summary", ""), header.get("description", ""), user, self.hub.now())
            pr_url = f"{self.base_url}/{repo.repo_id}/discussions/{num}"
        elif pr_match:
            repo.prs[int(pr_match.group(1))] = oid
        else:
            repo.branches[revision] = oid
        self._json(200, {"commitOid": oid, "commitUrl": f"{self.base_url}/{repo.repo_id}/commit/{oid}", "pullRequestUrl": pr_url})

    def _create_branch(self, repo: Repo, branch: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit_at(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        self._json(200, {})

    def _open_pr(self, repo: Repo, body: bytes, user: str) -> None:
        payload = json.loads(body or b"{}")
        num = max([*repo.pr_info, 0]) + 1
        repo.prs[num] = repo.branches["main"]
        repo.pr_info[num] = PullRequest(num, payload.get("title", ""), payload.get("description", ""), user, self.hub.now())
        self._json(200, {"num": num, "url": f"{self.base_url}/{repo.repo_id}/discussions/{num}"})

    def _pr_details(self, repo: Repo, num: int) -> None:
        info = repo.pr_info.get(num)
        if info is None:
            raise HubError(404, "Discussion not found")
        self._json(200, {
            "num": num, "title": info.title, "status": "open", "isPullRequest": True,
            "createdAt": _iso(info.created), "author": {"name": info.author},
            "repo": {"name": repo.repo_id, "type": "model"}, "events": [],
            "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [],
        })

    def _resolve(self, method: str, user: str | None, repo_id: str, revision: str, path: str, fault: Fault | None) -> None:
        head = method == "HEAD"
        with self.hub.lock:
            repo = self._repo(user, repo_id)
            commit = self._commit_at(repo, revision)
            data = commit.files.get(path)
            if data is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit.oid)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        if is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        if head:
            headers["Content-Length"] = str(len(data))
            self._send(200, b"", headers, head=True)
            return
        if fault is not None and fault.corrupt:
            data = bytes(b ^ 0x5A for b in data)
        status, start = 200, 0
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if ranged and int(ranged.group(1)) < len(data):
            start = int(ranged.group(1))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        headers["Content-Length"] = str(len(payload))
        if fault is not None and fault.drop_after is not None:
            self._send_and_drop(status, payload, headers, fault.drop_after)
            return
        self._send(status, payload, headers)

    def _send_and_drop(self, status: int, payload: bytes, headers: dict[str, str], keep: int) -> None:
        """Promise the whole body, send ``keep`` bytes of it, then cut the connection."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload[:keep])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def resolve_url(base: str, repo_id: str, revision: str, path: str) -> str:
    """The ``resolve`` URL the client builds for a file."""
    return f"{base}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


def iter_repo_files(files: dict[str, bytes]) -> Iterator[str]:
    """Paths in a deterministic order (helper for assertions)."""
    yield from sorted(files)
