"""Hub pull and push against a local Hub-protocol server, through the real huggingface_hub client.

The server (tests/hubserver.py) runs on 127.0.0.1 on a random port; the client reaches it over
HTTP because conceptlib hands ``HF_ENDPOINT`` to every call. Nothing patches huggingface_hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
from hubserver import HubServer, git_blob_sha1

import factory
from conceptlib import hub as hubmod
from conceptlib import hubclient
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    HubIntegrityError,
    HubUnavailableError,
    NotAConceptRepoError,
    UsageError,
)
from conceptlib.formats import plan
from conceptlib.library import Library
from conceptlib.tensor import Tensor

TOKEN = "hf_test"
ORG = "sd-concepts-library"

# huggingface_hub reads HF_HUB_OFFLINE once, at import (above, before any test changes the
# environment); a shell that exports it would block every request the online tests make.
pytestmark = pytest.mark.skipif(
    huggingface_hub.constants.HF_HUB_OFFLINE, reason="HF_HUB_OFFLINE was set when huggingface_hub was imported"
)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def hub(local_hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The local Hub with a user (alice, of two organisations) whose token the client uses."""
    local_hub.add_user(TOKEN, "alice", orgs=[ORG, "acme"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return local_hub


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def library(home: Path) -> Iterator[Library]:
    with Library.open(home) as lib:
        yield lib


# --- repository builders ------------------------------------------------------------------------------


def png(color: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (color, 100, 200)).save(buf, format="PNG")
    return buf.getvalue()


def sd_concepts_repo(emb: Embedding, *, images: int = 2, concept_type: str = "object", safetensors: bool = False) -> dict[str, bytes]:
    """The files of an sd-concepts-library repository holding ``emb``."""
    token = emb.token or "<concept>"
    files: dict[str, bytes] = {}
    if safetensors:
        _, planned = plan(emb, "learned_embeds.safetensors", format="diffusers")
        files["learned_embeds.safetensors"] = planned[0][1]
    else:
        _, planned = plan(emb, "folder", format="concepts-library")
        files.update({p.name: data for p, data in planned})
    files["token_identifier.txt"] = token.encode()
    files["type_of_concept.txt"] = concept_type.encode()
    for i in range(images):
        files[f"concept_images/{i}.png"] = png(i * 40)
    links = "\n".join(f"![{token} {i}](./concept_images/{i}.png)" for i in range(images))
    files["README.md"] = (
        "---\nlicense: mit\nbase_model: runwayml/stable-diffusion-v1-5\n---\n"
        f"### {token} on Stable Diffusion\nThis is the `{token}` concept taught to Stable Diffusion via Textual Inversion.\n{links}\n"
    ).encode()
    return files


def make_concept(hub: HubServer, repo_id: str, *, seed: int = 0, **kwargs: Any) -> Embedding:
    name = repo_id.rsplit("/", 1)[1]
    emb = factory.sd1(1, seed=seed, token=f"<{name}>")
    hub.create_repo(repo_id, sd_concepts_repo(emb, **kwargs))
    return emb


def concept_dirs(home: Path) -> list[str]:
    root = home / "concepts"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# --- unit: repository references and layouts -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sd-concepts-library/cat-toy", ("sd-concepts-library/cat-toy", None)),
        ("sd-concepts-library/cat-toy@v2", ("sd-concepts-library/cat-toy", "v2")),
        ("a/b@refs/pr/3", ("a/b", "refs/pr/3")),
        ("https://huggingface.co/sd-concepts-library/cat-toy", ("sd-concepts-library/cat-toy", None)),
        ("https://huggingface.co/sd-concepts-library/cat-toy/tree/refs%2Fpr%2F1", ("sd-concepts-library/cat-toy", "refs/pr/1")),
    ],
)
def test_parse_repo_ref(text: str, expected: tuple[str, str | None]) -> None:
    assert hubmod.parse_repo_ref(text) == expected


@pytest.mark.parametrize("text", ["cat-toy", "a/b/c", "a/b@", "/b", "a/..", ""])
def test_parse_repo_ref_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        hubmod.parse_repo_ref(text)


def test_detect_layout_kinds() -> None:
    sd = hubmod.detect_layout(["learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt", "README.md", "concept_images/0.jpeg", ".gitattributes"])
    assert (sd.kind, sd.embedding, sd.images) == ("sd-concepts-library", ("learned_embeds.bin",), ("concept_images/0.jpeg",))
    both = hubmod.detect_layout(["learned_embeds.bin", "learned_embeds.safetensors", "token_identifier.txt"])
    assert both.embedding == ("learned_embeds.safetensors",)  # no pickle when a safetensors twin exists
    xl = hubmod.detect_layout(["learned_embeds.safetensors", "learned_embeds_2.safetensors", "README.md"])
    assert (xl.kind, xl.embedding) == ("diffusers-sdxl", ("learned_embeds.safetensors", "learned_embeds_2.safetensors"))
    a1111 = hubmod.detect_layout(["EasyNegative.safetensors", "README.md", "unet/diffusion_pytorch_model.safetensors"])
    assert (a1111.kind, a1111.embedding) == ("a1111", ("EasyNegative.safetensors",))
    with pytest.raises(NotAConceptRepoError, match="2 embedding files"):
        hubmod.detect_layout(["a.pt", "b.pt"], repo_id="x/y")
    assert hubmod.detect_layout(["a.pt", "b.pt"], repo_id="x/y", filename="b.pt").embedding == ("b.pt",)
    assert hubmod.detect_layout(["y.pt", "b.pt"], repo_id="x/y").embedding == ("y.pt",)
    with pytest.raises(NotAConceptRepoError, match="no textual-inversion embedding"):
        hubmod.detect_layout(["README.md", "model.safetensors"], repo_id="x/y")


def test_settings_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text("hf_saved\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = hubmod.hub_settings()
    assert settings.endpoint == "http://127.0.0.1:9"
    assert settings.cache_dir == str(tmp_path / "hf" / "hub")
    assert settings.offline is True
    assert settings.token == "hf_saved"  # what `hf auth login` wrote under HF_HOME
    assert hubmod.get_hub_api(settings).endpoint == "http://127.0.0.1:9"


# --- pull ---------------------------------------------------------------------------------------------


def test_pull_imports_concept_with_provenance_and_images(hub: HubServer, library: Any) -> None:
    emb = make_concept(hub, f"{ORG}/cat-toy", images=2)
    commit = hub.head(f"{ORG}/cat-toy")

    result = hubmod.pull(library, f"{ORG}/cat-toy")

    assert (result.status, result.name, result.commit, result.layout) == ("added", "cat-toy", commit, "sd-concepts-library")
    assert result.content_hash == emb.content_hash()
    files = hub.files(f"{ORG}/cat-toy")
    assert result.files["learned_embeds.bin"] == hashlib.sha256(files["learned_embeds.bin"]).hexdigest()
    concept = library.show("cat-toy")
    assert concept.token == "<cat-toy>"
    assert concept.content_hash == emb.content_hash()
    source = hubmod._source_of(concept)
    assert source is not None
    assert source["repo_id"] == f"{ORG}/cat-toy"
    assert source["commit"] == commit
    assert source["sha256"] == hashlib.sha256(files["learned_embeds.bin"]).hexdigest()
    assert source["url"] == f"{hub.url}/{ORG}/cat-toy/tree/{commit}"
    images = [Path(p) for p in hubmod._field(concept, "images")]
    assert sorted(p.read_bytes() for p in images) == sorted([files["concept_images/0.png"], files["concept_images/1.png"]])


def test_pull_unchanged_revision_downloads_nothing(hub: HubServer, library: Any) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    first = hubmod.pull(library, f"{ORG}/cat-toy")
    hub.clear_log()

    again = hubmod.pull(library, f"{ORG}/cat-toy")

    assert again.status == "unchanged"
    assert again.commit == first.commit
    assert hub.requests(contains="/resolve/") == []
    assert len(hub.requests()) == 1  # one repository-info call


def test_pull_new_revision_updates_and_keeps_history(hub: HubServer, library: Any) -> None:
    old = make_concept(hub, f"{ORG}/cat-toy", seed=1)
    first = hubmod.pull(library, f"{ORG}/cat-toy")
    new = factory.sd1(1, seed=2, token="<cat-toy>")
    hub.commit(f"{ORG}/cat-toy", sd_concepts_repo(new))

    result = hubmod.pull(library, f"{ORG}/cat-toy")

    assert result.status == "updated"
    assert (result.previous_commit, result.commit) == (first.commit, hub.head(f"{ORG}/cat-toy"))
    assert (result.previous_content_hash, result.content_hash) == (old.content_hash(), new.content_hash())
    concept = library.show("cat-toy")
    assert concept.content_hash == new.content_hash()
    assert old.content_hash() in json.dumps(hubmod._field(concept, "history"), default=str)
    source = hubmod._source_of(concept)
    assert source is not None and source["commit"] == result.commit
    assert len(concept.images) == 2  # the new revision's images replace the old ones


def test_pull_pinned_revision_and_pull_request(hub: HubServer, library: Any) -> None:
    old = make_concept(hub, f"{ORG}/cat-toy", seed=1)
    first_commit = hub.head(f"{ORG}/cat-toy")
    hub.commit(f"{ORG}/cat-toy", sd_concepts_repo(factory.sd1(1, seed=2, token="<cat-toy>")))

    pinned = hubmod.pull(library, f"{ORG}/cat-toy@{first_commit}")

    assert (pinned.commit, pinned.content_hash) == (first_commit, old.content_hash())


def test_pull_other_layouts(hub: HubServer, library: Any) -> None:
    xl = factory.sdxl(2, seed=3, token="<xl-thing>")
    _, planned = plan(xl, "learned_embeds.safetensors", format="diffusers-sdxl")
    hub.create_repo("acme/xl-thing", {p.name: data for p, data in planned})
    a1111 = factory.sd1(3, seed=4, name="bad-hands")
    _, planned = plan(a1111, "bad-hands.pt", format="a1111")
    hub.create_repo("acme/bad-hands", {"embeddings/bad-hands.pt": planned[0][1], "README.md": b"# bad hands\n"})

    got_xl = hubmod.pull(library, "acme/xl-thing")
    got_a1111 = hubmod.pull(library, "acme/bad-hands", name="hands")

    assert (got_xl.layout, got_xl.content_hash) == ("diffusers-sdxl", xl.content_hash())
    assert (got_a1111.layout, got_a1111.name, got_a1111.content_hash) == ("a1111", "hands", a1111.content_hash())


def two_file_repo(hub: HubServer, repo_id: str) -> tuple[Embedding, Embedding]:
    """A repository holding two AUTOMATIC1111 embeddings, a.pt and b.pt."""
    a, b = factory.sd1(1, seed=11, name="alpha"), factory.sd1(2, seed=12, name="beta")
    files = {f"{e.name[0]}.pt": plan(e, f"{e.name[0]}.pt", format="a1111")[1][0][1] for e in (a, b)}
    hub.create_repo(repo_id, files)
    return a, b


def test_pull_another_file_of_an_unchanged_commit(hub: HubServer, cli: Any, home: Path, library: Library) -> None:
    a, b = two_file_repo(hub, "acme/two-files")
    commit = hub.head("acme/two-files")[:7]
    cli("pull", "acme/two-files", "--file", "b.pt", "--home", str(home))

    other = cli("pull", "acme/two-files", "--file", "a.pt", "--home", str(home))
    same = cli("pull", "acme/two-files", "--file", "a.pt", "--home", str(home))
    missing = cli("pull", "acme/two-files", "--file", "nope.pt", "--home", str(home))

    assert (other.exit_code, other.stdout) == (0, f"updated   two-files                acme/two-files@{commit}\n")
    concept = library.show("two-files")
    assert concept.content_hash == a.content_hash()
    assert (hubmod._source_of(concept) or {})["file"] == "a.pt"
    assert (same.exit_code, same.stdout) == (0, f"unchanged two-files                acme/two-files@{commit}\n")
    assert (missing.exit_code, missing.stdout) == (2, "")
    assert missing.stderr == (
        "Error: acme/two-files: no file 'nope.pt' in the repository (hint: its embedding files: a.pt, b.pt)\n"
    )
    assert library.show("two-files").content_hash == a.content_hash()


def test_a_concept_pulled_with_file_follows_that_file(hub: HubServer, cli: Any, home: Path, library: Library) -> None:
    a, _b = two_file_repo(hub, "acme/two-files")
    assert cli("pull", "acme/two-files", "--file", "a.pt", "--home", str(home)).exit_code == 0
    newer = factory.sd1(1, seed=13, name="alpha")
    commit = hub.commit("acme/two-files", {"a.pt": plan(newer, "a.pt", format="a1111")[1][0][1]})[:7]

    again = cli("pull", "acme/two-files", "--home", str(home))  # no --file: the one chosen before

    assert (again.exit_code, again.stdout) == (0, f"updated   two-files                acme/two-files@{commit}\n")
    assert library.show("two-files").content_hash == newer.content_hash() != a.content_hash()
    # A repository with several files and no choice made is still refused.
    fresh = cli("pull", "acme/two-files", "--as", "fresh", "--home", str(home))
    assert (fresh.exit_code, fresh.stderr) == (2, "Error: acme/two-files: holds 2 embedding files (a.pt, b.pt) (hint: pick one with --file PATH)\n")


def test_pull_gives_a1111_files_the_token_of_a_local_add(hub: HubServer, library: Library, tmp_path: Path) -> None:
    named = factory.sd1(2, seed=21, name="easy-hands")  # a renamed download: its stem says nothing
    unnamed = factory.sd1(1, seed=22)  # kohya safetensors store no name: the stem it is
    named_bytes = plan(named, "x.pt", format="a1111")[1][0][1]
    unnamed_bytes = plan(unnamed, "x.safetensors", format="emb-params")[1][0][1]
    hub.create_repo("acme/renamed", {"embeddings/x7f3.pt": named_bytes, "README.md": b"# hands\n"})
    hub.create_repo("acme/plain", {"soft-light.safetensors": unnamed_bytes})
    declared_bytes = plan(factory.sd1(1, seed=23, name="easy-hands"), "x.pt", format="a1111")[1][0][1]
    hub.create_repo("acme/declared", {"x7f3.pt": declared_bytes, "token_identifier.txt": b"<declared>"})
    (tmp_path / "x7f3.pt").write_bytes(named_bytes)
    (tmp_path / "soft-light.safetensors").write_bytes(unnamed_bytes)

    pulled = [hubmod.pull(library, repo).name for repo in ("acme/renamed", "acme/plain")]
    with Library.open(tmp_path / "local-home") as local:
        added = [local.add(tmp_path / f).one().token for f in ("x7f3.pt", "soft-light.safetensors")]
    declared = hubmod.pull(library, "acme/declared", name="declared")

    assert [library.show(n).token for n in pulled] == added == ["easy-hands", "soft-light"]
    assert library.show(declared.name).token == "<declared>"  # the repository's own word wins


def test_pull_name_and_token_clashes(hub: HubServer, library: Library) -> None:
    from conceptlib.errors import ConceptExistsError, TokenInUseError

    make_concept(hub, f"{ORG}/cat-toy")
    make_concept(hub, "acme/cat-toy", seed=5)  # same name, same token, other vectors
    hubmod.pull(library, f"{ORG}/cat-toy")

    with pytest.raises(ConceptExistsError) as exists:
        hubmod.pull(library, "acme/cat-toy")
    with pytest.raises(TokenInUseError) as in_use:
        hubmod.pull(library, "acme/cat-toy", name="acme-cat")
    assert str(in_use.value).startswith(f"acme/cat-toy@{hub.head('acme/cat-toy')[:7]}: the token '<cat-toy>' is already used")
    renamed = hubmod.pull(library, "acme/cat-toy", name="acme-cat", token="<acme-cat>")

    assert f"pulled from {ORG}/cat-toy" in (exists.value.hint or "")
    assert (renamed.status, renamed.name) == ("added", "acme-cat")
    assert library.show("acme-cat").token == "<acme-cat>"
    assert hubmod.pull(library, "acme/cat-toy", name="acme-cat").status == "unchanged"
    assert len(hub.state.repos) == 2


# --- offline ------------------------------------------------------------------------------------------


def test_offline_repull_from_cache(hub: HubServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = make_concept(hub, f"{ORG}/cat-toy")
    online = hubmod.pull(Library.open(home), f"{ORG}/cat-toy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear_log()

    fresh = Library.open(tmp_path / "other-home")
    offline = hubmod.pull(fresh, f"{ORG}/cat-toy")
    again = hubmod.pull(fresh, f"{ORG}/cat-toy")

    assert hub.requests() == []  # not one request reached the Hub
    assert (offline.status, offline.commit, offline.content_hash) == ("added", online.commit, emb.content_hash())
    assert offline.files == online.files
    assert again.status == "unchanged"


def test_offline_damaged_cache_says_to_go_online(hub: HubServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.errors import HubIntegrityError

    make_concept(hub, f"{ORG}/cat-toy")
    with Library.open(home) as lib:
        hubmod.pull(lib, f"{ORG}/cat-toy")
    snapshot = next(Path(hubmod.hub_settings().cache_dir).glob(f"models--{ORG}--cat-toy/snapshots/*/learned_embeds.bin"))
    blob = snapshot.resolve()
    blob.write_bytes(blob.read_bytes()[:-3] + b"xyz")  # a damaged cached copy
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with Library.open(tmp_path / "fresh") as fresh, pytest.raises(HubIntegrityError) as info:
        hubmod.pull(fresh, f"{ORG}/cat-toy")
    assert info.value.hint == "unset HF_HUB_OFFLINE and pull once: the damaged copy was removed from the cache and is downloaded again"


def test_offline_without_cache_says_so(hub: HubServer, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = cli("pull", f"{ORG}/cat-toy")

    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {ORG}/cat-toy@main is not in the local cache, and HF_HUB_OFFLINE is set "
        "(hint: unset HF_HUB_OFFLINE and pull it once; later offline pulls resolve from the cache)\n"
    )
    assert hub.requests() == []


# --- faults -------------------------------------------------------------------------------------------


def test_500s_then_success_with_retries(hub: HubServer, library: Any) -> None:
    emb = make_concept(hub, f"{ORG}/cat-toy")
    info_fault = hub.inject("GET", r"^/api/models/.*/revision/", status=500, times=2)
    file_fault = hub.inject("GET", r"/resolve/.*learned_embeds", status=503, times=1)

    result = hubmod.pull(library, f"{ORG}/cat-toy")

    assert result.content_hash == emb.content_hash()
    assert (info_fault.hits, file_fault.hits) == (2, 1)


def test_429_retry_after_is_honoured(hub: HubServer, library: Any) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    fault = hub.inject("GET", r"^/api/models/", status=429, headers={"Retry-After": "0"}, times=1)

    assert hubmod.pull(library, f"{ORG}/cat-toy").status == "added"
    assert fault.hits == 1


def test_429_with_long_retry_after_gives_up_clearly(hub: HubServer, library: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hub.inject("GET", r"^/api/models/", status=429, headers={"Retry-After": "3600"}, times=None)

    with pytest.raises(HubUnavailableError, match=r"rate limited by the Hub \(429\); the Hub asks to wait 3600 s"):
        hubmod.pull(library, f"{ORG}/cat-toy")
    assert concept_dirs(home) == [] or "cat-toy" not in concept_dirs(home)


def test_persistent_500_fails_after_retries(hub: HubServer, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    fault = hub.inject("GET", r"^/api/models/", status=500, times=None)

    result = cli("pull", f"{ORG}/cat-toy", "--home", str(home))

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {ORG}/cat-toy: reading the repository: the Hub answered 500 after 5 attempts "
        "(hint: check your connection and pull again: finished concepts are kept, nothing is half-imported)\n"
    )
    assert fault.hits == hubclient.RETRIES + 1


def test_dropped_connection_mid_download_resumes(hub: HubServer, library: Any) -> None:
    emb = factory.sd1(8, seed=9, token="<big>")  # 8 vectors: a body worth cutting in half
    hub.create_repo("acme/big", sd_concepts_repo(emb, images=0, safetensors=True))
    fault = hub.inject("GET", r"/resolve/.*learned_embeds", drop_after=5000, times=1)

    result = hubmod.pull(library, "acme/big")

    assert fault.hits == 1
    assert result.content_hash == emb.content_hash()


def test_cli_pull_and_push_leave_out_the_clients_bars_and_logs(hub: HubServer, home: Path) -> None:
    import subprocess

    emb = factory.sd1(8, seed=9, token="<big>")
    hub.create_repo("acme/big", sd_concepts_repo(emb, images=1, safetensors=True))
    fault = hub.inject("GET", r"/resolve/.*learned_embeds", drop_after=5000, times=2)

    def conceptlib(*args: str) -> subprocess.CompletedProcess[str]:
        # A child process: huggingface_hub's log handler writes to the stderr it found at
        # import, which in-process capture does not see.
        command = [sys.executable, "-m", "conceptlib", *args, "--home", str(home)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    pulled = conceptlib("pull", "acme/big")
    conceptlib("push", "big", "--repo-id", "alice/big")
    pushed_again = conceptlib("push", "big", "--repo-id", "alice/big")

    assert fault.hits == 2
    assert (pulled.returncode, pulled.stderr) == (0, "")  # no client bars, no "Trying to resume download..."
    assert pulled.stdout == f"added     big                      acme/big@{hub.head('acme/big')[:7]}\n"
    # Not the client's "No files have been modified since last commit" besides.
    assert (pushed_again.returncode, pushed_again.stdout) == (0, "")
    assert pushed_again.stderr == "big is already up to date on alice/big@main (nothing pushed)\n"


def test_pull_progress_shows_names_as_typed_not_as_markup(hub: HubServer, cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import conceptlib.cli.hub as cli_hub

    screen = io.StringIO()
    monkeypatch.setattr(cli_hub, "err", Console(file=screen, force_terminal=True, width=100, color_system=None))

    # Read as markup, "[/bold]" closes a tag never opened: rich raised MarkupError mid-bar.
    author = cli("pull", "--author", "[/bold]x", "--home", str(home))
    repo = cli("pull", "acme/[bold]cat", "--home", str(home))

    assert author.exit_code == 2 and author.stderr == "Error: '[/bold]x' is not a Hub user or organisation name\n"
    assert "Pulling [/bold]x" in screen.getvalue()
    assert repo.exit_code == 2 and "Traceback" not in repo.stderr
    assert "Pulling acme/[bold]cat" in screen.getvalue()


def test_wrong_bytes_once_are_downloaded_again(hub: HubServer, library: Any) -> None:
    emb = make_concept(hub, f"{ORG}/cat-toy")
    fault = hub.inject("GET", r"/resolve/.*learned_embeds", corrupt=True, times=1)

    result = hubmod.pull(library, f"{ORG}/cat-toy")

    assert fault.hits == 1
    assert result.content_hash == emb.content_hash()


def test_wrong_bytes_are_refused_and_library_unchanged(hub: HubServer, library: Any, home: Path, cli: Any) -> None:
    old = make_concept(hub, f"{ORG}/cat-toy", seed=1)
    hubmod.pull(library, f"{ORG}/cat-toy")
    before = sorted(p.relative_to(home).as_posix() for p in home.rglob("*"))
    hub.commit(f"{ORG}/cat-toy", sd_concepts_repo(factory.sd1(1, seed=2, token="<cat-toy>")))
    hub.inject("GET", r"/resolve/.*learned_embeds", corrupt=True, times=None)

    with pytest.raises(HubIntegrityError, match="does not match its hash"):
        hubmod.pull(library, f"{ORG}/cat-toy")
    result = cli("pull", f"{ORG}/cat-toy", "--home", str(home))

    assert result.exit_code == 2
    assert "does not match its hash" in result.output
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == before
    assert library.show("cat-toy").content_hash == old.content_hash()


def test_not_found_and_auth_errors(hub: HubServer, cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hub.create_repo("acme/gated", sd_concepts_repo(factory.sd1(1, token="<g>")))
    hub.inject("GET", r"^/api/models/acme/gated", status=403, error_code="GatedRepo", times=None,
               message="Access to model acme/gated is restricted and you are not in the authorized list.")

    missing = cli("pull", f"{ORG}/nope", "--home", str(home))
    bad_rev = cli("pull", f"{ORG}/cat-toy@v9", "--home", str(home))
    gated = cli("pull", "acme/gated", "--home", str(home))
    monkeypatch.delenv("HF_TOKEN")
    anonymous = cli("pull", f"{ORG}/nope", "--home", str(home))
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    bad_token = cli("pull", f"{ORG}/cat-toy", "--home", str(home))

    assert [r.exit_code for r in (missing, bad_rev, gated, anonymous, bad_token)] == [2, 2, 2, 2, 2]
    assert missing.stderr == (
        f"Error: repository {ORG}/nope not found on {hub.url} (or it is private, and this token cannot see it) "
        "(hint: check the repository id; for a private one, run `hf auth login` with a token of an account that can read it)\n"
    )
    assert bad_rev.stderr == (
        f"Error: {ORG}/cat-toy has no revision 'v9' on {hub.url} "
        "(hint: check the branch, tag or commit id; leave out @REVISION for main)\n"
    )
    assert gated.stderr == (
        f"Error: acme/gated on {hub.url} is gated and this account has not been granted access "
        f"(hint: ask for access on {hub.url}/acme/gated, then log in with `hf auth login` or set HF_TOKEN)\n"
    )
    assert anonymous.stderr == (
        f"Error: repository {ORG}/nope not found on {hub.url} (or it is private, and no token was sent) "
        "(hint: check the repository id; for a private one, log in with `hf auth login` or set HF_TOKEN)\n"
    )
    assert bad_token.stderr == (
        f"Error: {ORG}/cat-toy: reading the repository: the Hub refused the credentials (401) (hint: check HF_TOKEN or log in "
        "again with `hf auth login`; public repositories need no token, so unsetting a bad one also works)\n"
    )


class _Refused(Exception):
    """A client error as huggingface_hub raises it: the HTTP response rides on the exception."""

    def __init__(self, status: int) -> None:
        super().__init__(f"{status} Client Error")
        self.response = type("Response", (), {"status_code": status, "headers": {}})()


def test_401_advice_follows_the_operation_not_the_message() -> None:
    from conceptlib.errors import HubAuthError

    # The same words for both: only ``op`` tells a read (where dropping a bad token helps) from a write.
    read = hubclient.translate(_Refused(401), "x/y", "x/y: working", op="read")
    write = hubclient.translate(_Refused(401), "x/y", "x/y: working", op="write")

    assert isinstance(read, HubAuthError) and isinstance(write, HubAuthError)
    assert str(read.hint).startswith("check HF_TOKEN") and "public repositories need no token" in str(read.hint)
    assert write.hint == HubAuthError.default_hint  # log in (with write access): nothing about dropping the token
    assert read.message == write.message == "x/y: working: the Hub refused the credentials (401)"


def test_push_with_a_wrong_token_is_not_told_to_drop_it(
    hub: HubServer, library: Any, cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")

    result = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--home", str(home))

    assert result.exit_code == 2
    assert result.stderr.startswith("Error: pushing cat-toy to alice/cat-toy: the Hub refused the credentials (401)")
    assert "public repositories need no token" not in result.stderr


def test_not_found_errors_carry_repo_and_revision(hub: HubServer, library: Library) -> None:
    from conceptlib.errors import HubRepoNotFoundError, HubRevisionNotFoundError

    make_concept(hub, f"{ORG}/cat-toy")

    with pytest.raises(HubRepoNotFoundError) as repo:
        hubmod.pull(library, f"{ORG}/nope")
    with pytest.raises(HubRevisionNotFoundError) as rev:
        hubmod.pull(library, f"{ORG}/cat-toy@v9")

    assert (repo.value.repo_id, repo.value.revision) == (f"{ORG}/nope", None)
    assert (rev.value.repo_id, rev.value.revision) == (f"{ORG}/cat-toy", "v9")
    assert isinstance(rev.value, LookupError)
    assert type(rev.value.__cause__).__name__ == "RevisionNotFoundError"  # the client's error stays reachable


def test_not_a_concept_repo(hub: HubServer, cli: Any, home: Path) -> None:
    hub.create_repo("acme/model", {"model.safetensors": b"x" * 10, "README.md": b"# a model"})

    result = cli("pull", "acme/model", "--home", str(home))

    assert result.exit_code == 2
    assert "holds no textual-inversion embedding" in result.output


# --- push ---------------------------------------------------------------------------------------------


def test_push_then_pull_same_content_hash(hub: HubServer, library: Any, tmp_path: Path) -> None:
    emb = make_concept(hub, f"{ORG}/cat-toy", images=2)
    hubmod.pull(library, f"{ORG}/cat-toy")
    assert "alice/cat-toy" not in hub.state.repos

    pushed = hubmod.push(library, "cat-toy", "alice/cat-toy", include_bin=True)

    repo = hub.state.repos["alice/cat-toy"]
    assert len(repo.commits) == 2  # the repository's initial commit + ONE upload commit
    files = hub.files("alice/cat-toy")
    assert sorted(files) == sorted([
        ".gitattributes", "README.md", "learned_embeds.bin", "learned_embeds.safetensors",
        "token_identifier.txt", "type_of_concept.txt", "concept_images/0.png", "concept_images/1.png",
    ])
    assert pushed.commit == hub.head("alice/cat-toy")
    assert files["token_identifier.txt"] == b"<cat-toy>"
    assert files["type_of_concept.txt"] == b"object"
    card = files["README.md"].decode()
    front = card.split("---\n")[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["license"] == "mit"
    assert meta["base_model"] == "runwayml/stable-diffusion-v1-5"
    assert {"textual_inversion", "stable-diffusion", "stable-diffusion-diffusers", "text-to-image"} <= set(meta["tags"])
    assert meta["instance_prompt"] == "<cat-toy>"
    assert "![<cat-toy> 0](./concept_images/0.png)" in card

    other = Library.open(tmp_path / "elsewhere")
    back = hubmod.pull(other, "alice/cat-toy")
    assert back.content_hash == emb.content_hash() == pushed_hash(library, "cat-toy")
    assert back.layout == "sd-concepts-library"
    from conceptlib.formats import read_bytes

    assert read_bytes(files["learned_embeds.bin"], "learned_embeds.bin").content_hash() == emb.content_hash()


def pushed_hash(library: Any, name: str) -> str:
    return str(library.show(name).content_hash)


def test_push_unchanged_is_not_a_new_commit(hub: HubServer, library: Any) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    first = hubmod.push(library, "cat-toy", "alice/cat-toy")

    second = hubmod.push(library, "cat-toy", "alice/cat-toy")

    assert (first.status, second.status) == ("pushed", "unchanged")
    assert second.commit == first.commit == hub.head("alice/cat-toy")
    assert len(hub.state.repos["alice/cat-toy"].commits) == 2  # the initial commit + one upload


def test_cli_push_unchanged_says_nothing_was_pushed(hub: HubServer, library: Any, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    first = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--home", str(home))
    head = hub.head("alice/cat-toy")

    again = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--home", str(home))
    as_json = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--json", "--home", str(home))
    as_pr = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--create-pr", "--home", str(home))

    assert (first.exit_code, first.stdout) == (0, f"{hub.url}/alice/cat-toy/commit/{head}\n")
    assert first.stderr == f"Pushed cat-toy (6 files) to alice/cat-toy@main, commit {head[:7]}\n"
    assert (again.exit_code, again.stdout) == (0, "")
    assert again.stderr == "cat-toy is already up to date on alice/cat-toy@main (nothing pushed)\n"
    data = json.loads(as_json.stdout)
    assert (as_json.exit_code, data["status"], data["commit"], data["pr_url"]) == (0, "unchanged", head, None)
    assert (as_pr.exit_code, as_pr.stdout) == (0, "")
    assert as_pr.stderr == "cat-toy is already up to date on alice/cat-toy@main (nothing pushed, no pull request opened)\n"
    repo = hub.state.repos["alice/cat-toy"]
    assert (len(repo.commits), repo.prs, hub.head("alice/cat-toy")) == (2, {}, head)


def test_push_pull_request_prints_url(hub: HubServer, library: Any, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy", seed=1)
    hubmod.pull(library, f"{ORG}/cat-toy")
    hub.create_repo("acme/community", {"README.md": b"# community"})
    main_before = hub.head("acme/community")

    result = cli("push", "cat-toy", "--repo-id", "acme/community", "--create-pr", "--home", str(home))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{hub.url}/acme/community/discussions/1\n"
    assert json.loads(cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--json", "--home", str(home)).stdout)["status"] == "pushed"
    assert hub.head("acme/community") == main_before  # main untouched
    assert "learned_embeds.safetensors" in hub.files("acme/community", "refs/pr/1")


def test_push_removes_what_an_earlier_push_left(hub: HubServer, library: Library, cli: Any, home: Path, tmp_path: Path) -> None:
    from conceptlib.formats import write

    write(factory.sdxl(1, seed=3, token="<xl>"), tmp_path / "xl.safetensors")
    library.add(tmp_path / "xl.safetensors", name="xl").one()
    make_concept(hub, f"{ORG}/cat-toy", images=2)
    hubmod.pull(library, f"{ORG}/cat-toy")
    hub.create_repo("alice/mix", {"notes.ipynb": b"{}"})  # not conceptlib's: never touched
    hubmod.push(library, "xl", "alice/mix")
    assert "learned_embeds_2.safetensors" in hub.files("alice/mix")
    hubmod.push(library, "cat-toy", "alice/mix", include_bin=True)

    # SD 1.x now, with no images: the SDXL second file and the images of neither push stay.
    library.update("cat-toy", library.folder("cat-toy") / "embedding.safetensors", images=[])
    result = cli("push", "cat-toy", "--repo-id", "alice/mix", "--home", str(home))
    head = hub.head("alice/mix")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"Pushed cat-toy (4 files) to alice/mix@main, commit {head[:7]}, removed 3 left by an earlier push "
        "(concept_images/0.png, concept_images/1.png, learned_embeds.bin)\n"
    )
    assert sorted(hub.files("alice/mix")) == [
        ".gitattributes", "README.md", "learned_embeds.safetensors", "notes.ipynb", "token_identifier.txt", "type_of_concept.txt",
    ]  # fmt: skip
    with Library.open(tmp_path / "fresh") as fresh:
        assert hubmod.pull(fresh, "alice/mix").content_hash == pushed_hash(library, "cat-toy")


def test_push_to_a_pull_request_or_a_commit(hub: HubServer, library: Library, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy", seed=1)
    hubmod.pull(library, f"{ORG}/cat-toy")
    hub.create_repo("acme/community", {"README.md": b"# community"})
    opened = hubmod.push(library, "cat-toy", "acme/community", create_pr=True)
    assert opened.revision == "refs/pr/1"
    library.update("cat-toy", library.folder("cat-toy") / "embedding.safetensors", images=[])
    # refs/pr/1 adds a commit to the open pull request; it is no branch to create.
    more = hubmod.push(library, "cat-toy", "acme/community", revision="refs/pr/1")
    repo = hub.state.repos["acme/community"]
    assert set(repo.branches) == {"main"} and more.commit == repo.prs[1]
    assert "concept_images/0.png" not in hub.files("acme/community", "refs/pr/1")
    sha = hub.head("acme/community")
    refused = cli("push", "cat-toy", "--repo-id", "acme/community", "--revision", sha, "--home", str(home))
    assert (refused.exit_code, refused.stdout) == (2, "")
    assert refused.stderr == (
        f"Error: acme/community@{sha}: a commit id cannot be pushed to (commits are fixed) "
        "(hint: pass a branch with --revision, or refs/pr/N to add to an open pull request)\n"
    )


def test_push_json_and_branch(hub: HubServer, library: Any, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")

    result = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--revision", "v1", "--private", "--json", "--home", str(home))

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["revision"] == "v1"
    assert data["commit"] == hub.head("alice/cat-toy", "v1")
    assert "learned_embeds.safetensors" not in hub.files("alice/cat-toy", "main")
    assert hub.state.repos["alice/cat-toy"].private


def test_push_errors(hub: HubServer, library: Any, cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    hub.create_repo("bob/theirs")

    forbidden = cli("push", "cat-toy", "--repo-id", "bob/theirs", "--home", str(home))
    no_repo_pr = cli("push", "cat-toy", "--repo-id", "acme/missing", "--create-pr", "--home", str(home))
    pr_on_branch = cli("push", "cat-toy", "--repo-id", "acme/x", "--create-pr", "--revision", "dev", "--home", str(home))
    monkeypatch.delenv("HF_TOKEN")
    anonymous = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--home", str(home))

    assert forbidden.exit_code == 2 and "(403)" in forbidden.output and "--create-pr" in forbidden.output
    assert no_repo_pr.exit_code == 2
    assert no_repo_pr.stderr == (
        f"Error: repository acme/missing not found on {hub.url} (or it is private, and this token cannot see it) "
        "(hint: a pull request needs an existing repository: check the id, or push without --create-pr to create it)\n"
    )
    assert pr_on_branch.exit_code == 2 and "against main" in pr_on_branch.output
    assert anonymous.exit_code == 2 and "hf auth login" in anonymous.output


def test_push_other_4xx_is_a_one_line_hub_error(hub: HubServer, library: Any, cli: Any, home: Path) -> None:
    from conceptlib.errors import HubRequestError

    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    fault = hub.inject("POST", r"^/api/models/alice/cat-toy/commit/", status=409, message="Conflict: the branch moved", times=None)

    result = cli("push", "cat-toy", "--repo-id", "alice/cat-toy", "--home", str(home))
    with pytest.raises(HubRequestError) as caught:
        hubmod.push(library, "cat-toy", "alice/cat-toy")

    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: pushing cat-toy to alice/cat-toy: the Hub answered 409 Conflict: Conflict: the branch moved "
        "(hint: the Hub refused the request, so nothing changed there; if its reason points at conceptlib, "
        "rerun with CONCEPTLIB_DEBUG=1 and report it)\n"
    )
    assert fault.hits == 2  # a refusal is not retried
    assert (caught.value.status, caught.value.server_message, caught.value.repo_id) == (409, "Conflict: the branch moved", "alice/cat-toy")
    assert "learned_embeds.safetensors" not in hub.files("alice/cat-toy")


def test_push_retries_5xx_on_commit(hub: HubServer, library: Any) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    fault = hub.inject("POST", r"/commit/", status=502, times=2)

    pushed = hubmod.push(library, "cat-toy", "alice/cat-toy")

    assert fault.hits == 2
    assert pushed.commit == hub.head("alice/cat-toy")


def test_push_failure_hints_fit_push(hub: HubServer, library: Any, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    hubmod.pull(library, f"{ORG}/cat-toy")
    hub.create_repo("acme/community", {"README.md": b"# community"})
    args = ("cat-toy", "--home", str(home))

    hub.inject("POST", r"/commit/", status=503, times=None)
    refused = cli("push", *args, "--repo-id", "alice/cat-toy")
    refused_pr = cli("push", *args, "--repo-id", "acme/community", "--create-pr")
    hub.clear_faults()
    gateway = hub.inject("POST", r"/commit/", status=504, times=None)
    timed_out = cli("push", *args, "--repo-id", "alice/cat-toy")
    commits_tried = gateway.hits
    timed_out_pr = cli("push", *args, "--repo-id", "acme/community", "--create-pr")
    # A commit is safe to repeat; a pull request behind a gateway timeout may exist already.
    assert (commits_tried, gateway.hits - commits_tried) == (5, 1)
    hub.clear_faults()
    hub.inject("POST", r"^/api/repos/create", status=429, times=None)
    rate_limited = cli("push", *args, "--repo-id", "alice/other")

    assert [r.exit_code for r in (refused, refused_pr, timed_out, timed_out_pr, rate_limited)] == [1, 1, 1, 1, 1]
    assert refused.stderr == (
        "Error: pushing cat-toy to alice/cat-toy: the Hub answered 503 after 5 attempts "
        "(hint: nothing was committed; push again later)\n"
    )
    assert refused_pr.stderr == (
        "Error: pushing cat-toy to acme/community: the Hub answered 503 after 5 attempts "
        "(hint: no pull request was opened; push again later)\n"
    )
    assert timed_out.stderr == (
        "Error: pushing cat-toy to alice/cat-toy: the Hub answered 504 after 5 attempts (hint: the commit may have "
        "landed before the connection failed; push again, which commits nothing if it did)\n"
    )
    assert timed_out_pr.stderr.endswith(
        "(hint: a pull request may have been opened before the connection failed; "
        f"see {hub.url}/acme/community/discussions before pushing again)\n"
    )
    assert rate_limited.stderr == (
        "Error: pushing cat-toy to alice/other: rate limited by the Hub (429) (hint: nothing was committed; push again later)\n"
    )
    assert "pull again" not in "".join(r.stderr for r in (refused, refused_pr, timed_out, timed_out_pr, rate_limited))


# --- organisations ------------------------------------------------------------------------------------


def org_with_broken_repo(hub: HubServer) -> dict[str, Embedding]:
    hub.state.page_size = 2  # the listing pages through Link headers
    good = {name: make_concept(hub, f"{ORG}/{name}", seed=i, images=1) for i, name in enumerate(["alpha", "beta", "gamma"])}
    broken = sd_concepts_repo(factory.sd1(1, token="<broken>"), images=0)
    broken["learned_embeds.bin"] = b"<!doctype html><html>Not here</html>"
    hub.create_repo(f"{ORG}/broken", broken)
    hub.create_repo(f"{ORG}/empty", {"README.md": b"# nothing yet"})
    hub.create_repo("acme/elsewhere", sd_concepts_repo(factory.sd1(1, token="<x>")))
    return good


def test_org_sync_with_one_broken_repo(hub: HubServer, library: Any) -> None:
    good = org_with_broken_repo(hub)
    seen: list[tuple[int, int]] = []

    summary = hubmod.pull_author(library, ORG, jobs=3, progress=lambda done, total, item: seen.append((done, total)))

    assert summary.counts == {"added": 3, "updated": 0, "skipped": 1, "failed": 1}
    (failed,) = summary.of("failed")
    assert failed.repo_id == f"{ORG}/broken"
    assert failed.reason == f"{ORG}/broken@{hub.head(ORG + '/broken')[:7]}/learned_embeds.bin: is an HTML page, not an embedding"
    (skipped,) = summary.of("skipped")
    assert skipped.repo_id == f"{ORG}/empty" and "no textual-inversion embedding" in (skipped.reason or "")
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    for name, emb in good.items():
        assert library.show(name).content_hash == emb.content_hash()
    assert hubmod._find_concept(library, "broken") is None


def test_org_sync_cli_summary(hub: HubServer, cli: Any, home: Path) -> None:
    org_with_broken_repo(hub)

    result = cli("pull", "--author", ORG, "--jobs", "2", "--home", str(home))
    again = cli("pull", "--author", ORG, "--json", "--home", str(home))

    assert result.exit_code == 2  # the broken repository's content was refused: bad input
    assert f"failed    {ORG}/broken: " in result.stdout
    assert f"{ORG}: 3 added, 0 updated, 1 skipped, 1 failed" in result.stdout
    data = json.loads(again.stdout)
    assert (data["added"], data["skipped"], data["failed"]) == (0, 4, 1)
    assert {i["repo_id"] for i in data["items"] if i["status"] == "skipped" and i["reason"].startswith("unchanged")} == {
        f"{ORG}/alpha", f"{ORG}/beta", f"{ORG}/gamma"
    }


def test_org_sync_resumes_after_interruption(hub: HubServer, library: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # see where pulls stage their files
    good = org_with_broken_repo(hub)
    stop_after = 2

    def interrupt(done: int, total: int, item: Any) -> None:
        if done >= stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hubmod.pull_author(library, ORG, jobs=1, progress=interrupt)
    imported = [n for n in good if hubmod._find_concept(library, n) is not None]
    assert 1 <= len(imported) < 3
    for name in imported:  # whatever is there is whole
        assert library.show(name).content_hash == good[name].content_hash()
    hub.clear_log()

    summary = hubmod.pull_author(library, ORG, jobs=2)

    assert {i.repo_id.split("/")[1] for i in summary.of("added")} == set(good) - set(imported)
    assert {i.repo_id.split("/")[1] for i in summary.of("skipped") if (i.reason or "").startswith("unchanged")} == set(imported)
    for name in imported:  # resumed repositories cost no download
        assert hub.requests(contains=f"/{ORG}/{name}/") == []
    for name, emb in good.items():
        assert library.show(name).content_hash == emb.content_hash()
    assert list(staging.iterdir()) == []  # no staging folder left behind


def test_org_duplicates_are_skipped(hub: HubServer, library: Library) -> None:
    emb = factory.sd1(1, seed=7, token="<twin>")
    hub.create_repo("acme/twin-a", sd_concepts_repo(emb, images=0))
    hub.create_repo("acme/twin-b", sd_concepts_repo(emb, images=0))

    summary = hubmod.pull_author(library, "acme", jobs=1)

    assert summary.counts == {"added": 1, "updated": 0, "skipped": 1, "failed": 0}
    (skipped,) = summary.of("skipped")
    assert (skipped.repo_id, skipped.name) == ("acme/twin-b", "twin-a")
    assert skipped.reason == "the same vectors are already in the library as 'twin-a'"


def test_org_limit(hub: HubServer, library: Any) -> None:
    org_with_broken_repo(hub)

    summary = hubmod.pull_author(library, ORG, limit=2)

    assert [i.repo_id for i in summary.items] == [f"{ORG}/alpha", f"{ORG}/beta"]


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_pull_and_json(hub: HubServer, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    make_concept(hub, f"{ORG}/dog", seed=3)

    first = cli("pull", f"{ORG}/cat-toy", "--as", "kitty", "--home", str(home))
    both = cli("pull", f"{ORG}/cat-toy", f"{ORG}/dog", "--json", "--home", str(home))

    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("added     kitty")
    data = json.loads(both.stdout)
    assert [(d["name"], d["status"]) for d in data] == [("kitty", "unchanged"), ("dog", "added")]


def test_cli_pull_several_with_one_failure(hub: HubServer, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")

    result = cli("pull", f"{ORG}/nope", f"{ORG}/cat-toy", "--json", "--home", str(home))

    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [d["status"] for d in data] == ["failed", "added"]
    assert data[0]["error"].startswith(f"repository {ORG}/nope not found on {hub.url}")
    assert result.stderr.startswith(f"Error: repository {ORG}/nope not found on {hub.url}")


def test_cli_pull_json_is_a_list_even_for_one_failed_repository(hub: HubServer, cli: Any, home: Path) -> None:
    result = cli("pull", f"{ORG}/nope", "--json", "--home", str(home))
    assert result.exit_code == 2
    assert [(d["repo_id"], d["status"]) for d in json.loads(result.stdout)] == [(f"{ORG}/nope", "failed")]


def test_pull_token_of_a_concept_already_pulled_is_refused(hub: HubServer, cli: Any, home: Path) -> None:
    make_concept(hub, f"{ORG}/cat-toy")
    assert cli("pull", f"{ORG}/cat-toy", "--home", str(home)).exit_code == 0
    again = cli("pull", f"{ORG}/cat-toy", "--token", "<kitty>", "--home", str(home))
    assert (again.exit_code, again.stdout) == (2, "")
    assert again.stderr == (
        "Error: cat-toy is in the library already, with the token '<cat-toy>'; --token applies to a first pull "
        "(hint: change the token with `conceptlib rename cat-toy --token '<kitty>'`)\n"
    )
    assert cli("pull", f"{ORG}/cat-toy", "--token", "<cat-toy>", "--home", str(home)).exit_code == 0  # the same token


def test_org_force_reimports_unchanged_repositories(hub: HubServer, library: Library) -> None:
    make_concept(hub, "acme/one", seed=1)
    assert [i.status for i in hubmod.pull_author(library, "acme").items] == ["added"]
    assert [i.status for i in hubmod.pull_author(library, "acme").items] == ["skipped"]
    hub.clear_log()
    forced = hubmod.pull_author(library, "acme", force=True)
    assert [i.status for i in forced.items] == ["updated"]  # re-imported (from the cache: the files did not change)
    assert hub.requests(contains="/api/models/acme/one/revision/main")


def test_a_malformed_hf_endpoint_is_named_at_once(cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "notaurl")
    result = cli("pull", f"{ORG}/cat-toy", "--home", str(home))
    assert (result.exit_code, result.stderr) == (
        2, "Error: HF_ENDPOINT 'notaurl' is not a URL (it must start with http:// or https://) (hint: fix or unset HF_ENDPOINT)\n",
    )  # fmt: skip


def test_cli_pull_usage_errors(cli: Any) -> None:
    assert cli("pull").exit_code == 2
    assert cli("pull", "a/b", "c/d", "--as", "x").exit_code == 2
    assert cli("pull", "a/b", "--limit", "3").exit_code == 2
    assert cli("pull", "a/b", "--author", "org").exit_code == 2
    assert cli("pull", "a/b", "c/d", "--token", "<x>").exit_code == 2
    assert "not a Hub model repository id" in cli("pull", "just-a-name").output


def test_cli_does_not_import_huggingface_hub_at_start() -> None:
    import subprocess

    code = "import sys, conceptlib.cli.hub, conceptlib.hub; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_git_blob_sha1_matches_git() -> None:
    # `printf hello | git hash-object --stdin`
    assert git_blob_sha1(b"hello") == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"


def test_pull_reports_a_near_duplicate(hub: HubServer, library: Library, cli: Any, home: Path) -> None:
    # The same concept re-uploaded in float16: not the same vectors, nearly the same concept.
    emb = make_concept(hub, f"{ORG}/toy")
    copy = Embedding({k: Tensor.from_numpy(v.to_float32().astype(np.float16)) for k, v in emb.vectors.items()}, token="<toy16>")
    hub.create_repo(f"{ORG}/toy16", sd_concepts_repo(copy, images=0))
    assert hubmod.pull(library, f"{ORG}/toy").near_duplicates == {}
    result = hubmod.pull(library, f"{ORG}/toy16")
    assert list(result.near_duplicates) == ["toy"] and result.near_duplicates["toy"] > 0.9999
    assert result.to_dict()["near_duplicates"] == [{"existing": "toy", "score": 1.0}]
    # Through the command: a line under the pull's own (scaled vectors point the same way).
    louder = Embedding({k: Tensor.from_numpy(v.to_float32() * 1.5) for k, v in emb.vectors.items()}, token="<toy3>")
    hub.create_repo(f"{ORG}/toy-again", sd_concepts_repo(louder, images=0))
    run = cli("pull", f"{ORG}/toy-again", "--home", str(home))
    assert run.exit_code == 0, run.output
    assert "  toy-again: near-duplicate of toy (1.00)\n" in run.stderr
