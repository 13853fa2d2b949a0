"""Folders from the wild cannot leak: no link leads out of a folder that add, validate, preview,
pull or push reads, and nothing outside it reaches the library, a token, a report or the Hub.

Every test builds real folders with real symbolic links (and one FIFO) on disk, and looks for the
bytes of a "secret" file outside them everywhere they could have gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conceptlib.errors import ConceptDamagedError, LibraryCorruptError
from conceptlib.formats import write
from conceptlib.library import Library
from factory import sd1

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- hunter2 -----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Library]:
    with Library.open(tmp_path / "home") as library:
        yield library


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A private file outside every folder the tests hand to conceptlib."""
    path = tmp_path / "dot-ssh" / "id_rsa"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def png(path: Path, color: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (color, 10, 20)).save(path)
    return path


def concept_folder(folder: Path, token: str = "<cat-toy>", seed: int = 1) -> Path:
    write(sd1(1, seed=seed, token=token), folder, format="concepts-library")
    return folder


def leaked(root: Path) -> list[Path]:
    """Files under ``root`` holding the secret's bytes (links included, as a reader sees them)."""
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink():
                found.append(path)  # a link in the library is a leak waiting to happen
                continue
            if SECRET in path.read_bytes() or b"hunter2" in path.read_bytes():
                found.append(path)
    return found


def no_links(root: Path) -> bool:
    return not any(Path(d, n).is_symlink() for d, dirs, names in os.walk(root) for n in [*dirs, *names])


# --- add -----------------------------------------------------------------------------------------


def test_a_token_file_linked_out_of_the_folder_is_never_read(lib: Library, tmp_path: Path, secret: Path) -> None:
    folder = concept_folder(tmp_path / "cat-toy", token="<own-token>")
    (folder / "token_identifier.txt").unlink()
    (folder / "token_identifier.txt").symlink_to(secret)
    (folder / "README.md").symlink_to(secret)
    report = lib.add(folder)
    [concept] = report.added
    assert concept.token == "<own-token>"  # the embedding's own token, not the linked file
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [
        ("README.md", f"is a symbolic link leading out of cat-toy/ (to {secret}): not read"),
        ("token_identifier.txt", f"is a symbolic link leading out of cat-toy/ (to {secret}): not read"),
    ]
    assert [f.path for f in concept.files] == ["original/learned_embeds.bin", "original/type_of_concept.txt"]
    assert leaked(lib.home) == []


def test_an_embedding_linked_out_rejects_the_folder_and_says_why(lib: Library, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(sd1(1, seed=3, token="<stolen>"), elsewhere / "learned_embeds.bin", format="diffusers-bin")
    folder = tmp_path / "thief"
    folder.mkdir()
    (folder / "learned_embeds.bin").symlink_to(elsewhere / "learned_embeds.bin")
    (folder / "token_identifier.txt").write_text("<thief>")
    report = lib.add(folder)
    assert report.added == []
    [rejected] = report.rejected
    assert rejected.reason == (
        f"learned_embeds.bin: is a symbolic link leading out of thief/ (to {elsewhere / 'learned_embeds.bin'}): not read"
    )
    assert lib.list() == []


def test_links_that_stay_inside_the_folder_are_followed_and_stored_as_files(lib: Library, tmp_path: Path) -> None:
    folder = tmp_path / "versioned"
    folder.mkdir()
    # (A hidden folder: a visible one holding a learned_embeds file would be a concept too.)
    write(sd1(1, seed=4, token="<v2>"), folder / ".v2" / "learned_embeds.bin", format="diffusers-bin")
    (folder / "learned_embeds.bin").symlink_to(".v2/learned_embeds.bin")
    (folder / "token_identifier.txt").symlink_to(".v2/../.v2/token.txt")
    (folder / ".v2" / "token.txt").write_text("<versioned>")
    png(folder / "shots" / "a.png")
    (folder / "concept_images").symlink_to("shots")
    concept = lib.add(folder).one()
    assert concept.token == "<versioned>"
    assert [i.path for i in concept.images] == ["images/a.png"]
    assert no_links(lib.home)


def test_concept_images_linked_out_are_skipped(lib: Library, tmp_path: Path, secret: Path) -> None:
    outside = png(tmp_path / "outside.png", 9)
    folder = concept_folder(tmp_path / "cat")
    png(folder / "concept_images" / "0.png", 1)
    (folder / "concept_images" / "1.png").symlink_to(outside)
    (folder / "concept_images" / "2.png").symlink_to(secret)
    report = lib.add(folder)
    [concept] = report.added
    assert [i.path for i in concept.images] == ["images/0.png"]
    assert sorted(Path(s.path).name for s in report.skipped) == ["1.png", "2.png"]
    assert leaked(lib.home) == []

    # The whole concept_images/ as a link out: nothing of it is read.
    other = concept_folder(tmp_path / "dog", token="<dog>", seed=2)
    (other / "concept_images").symlink_to(outside.parent)
    report = lib.add(other)
    assert report.added[0].images == []
    assert [Path(s.path).name for s in report.skipped] == ["concept_images"]


def test_a_folder_scan_skips_links_out_and_links_to_nowhere(tmp_path: Path, secret: Path, cli: Any) -> None:
    src = tmp_path / "downloads"
    src.mkdir()
    write(sd1(1, seed=5, name="good"), src / "good.pt")
    outside = tmp_path / "outside.pt"
    write(sd1(1, seed=6, name="outside"), outside)
    (src / "linked.pt").symlink_to(outside)
    (src / "dangling.pt").symlink_to(src / "missing.pt")
    (src / "loop").symlink_to(".")  # a link to a folder inside: not descended (no loop, no duplicates)
    run = cli("add", str(src))
    assert run.exit_code == 0, run.output
    assert run.stdout == (
        "added      good  (good, SD 1.x, 1 vector)\n"
        f"skipped    {src / 'dangling.pt'}: is a symbolic link to nothing (to {src / 'missing.pt'}): not read\n"
        f"skipped    {src / 'linked.pt'}: is a symbolic link leading out of downloads/ (to {outside}): not read\n"
    )
    assert run.stderr == "Added 1 concept, 0 duplicates, 0 rejected, 2 skipped.\n"


def test_a_link_inside_a_scanned_folder_is_read(lib: Library, tmp_path: Path) -> None:
    src = tmp_path / "downloads"
    write(sd1(1, seed=7, name="real"), src / "store" / "real.pt")
    (src / "alias.pt").symlink_to("store/real.pt")
    report = lib.add(src)
    # Both names lead to the same file: one concept, one duplicate; no link in the library.
    assert (len(report.added), len(report.duplicates), report.rejected) == (1, 1, [])
    assert no_links(lib.home)


def test_a_fifo_in_a_folder_is_skipped_without_waiting_for_a_writer(lib: Library, tmp_path: Path) -> None:
    folder = concept_folder(tmp_path / "cat")
    os.mkfifo(folder / "README.md")
    os.mkfifo(tmp_path / "pipe.pt")
    report = lib.add([folder, tmp_path / "pipe.pt"])
    assert len(report.added) == 1
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [
        ("README.md", "is not a regular file (a FIFO, socket or device): not read")
    ]
    assert [(Path(r.path).name, r.reason) for r in report.rejected] == [
        ("pipe.pt", "is not a regular file (a FIFO, socket or device): not read")
    ]


def test_a_link_swapped_in_while_reading_is_never_followed(tmp_path: Path, secret: Path) -> None:
    """A race: another process swaps a file and a link to the secret as fast as it can while
    the folder is read. The check and the open are one step (O_NOFOLLOW from the folder's
    descriptor), so every read gives the file or an error, never the secret."""
    from conceptlib._inputs import Folder
    from conceptlib.errors import UnsafeLinkError

    folder = tmp_path / "racy"
    folder.mkdir()
    target = folder / "token_identifier.txt"
    target.write_bytes(b"<honest>")
    as_file = folder / ".file"
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            as_file.write_bytes(b"<honest>")
            os.replace(as_file, target)
            with_link = folder / ".tmp-link"
            with_link.unlink(missing_ok=True)
            with_link.symlink_to(secret)
            os.replace(with_link, target)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes: set[str] = set()
    try:
        with Folder(folder) as reader:
            for i in range(50_000):
                if i > 1000 and {"read", "refused"} <= outcomes:
                    break
                try:
                    data = reader.read_bytes("token_identifier.txt", limit=4096)
                except UnsafeLinkError:
                    outcomes.add("refused")
                except FileNotFoundError:
                    outcomes.add("gone")  # caught between the two renames
                else:
                    assert data == b"<honest>"
                    outcomes.add("read")
    finally:
        stop.set()
        swapper.join()
    assert "read" in outcomes and "refused" in outcomes


def test_the_library_never_holds_links_and_verify_names_one_put_there(lib: Library, tmp_path: Path, secret: Path, cli: Any) -> None:
    folder = concept_folder(tmp_path / "cat")
    png(folder / "concept_images" / "0.png")
    concept = lib.add(folder).one()
    assert no_links(lib.home)
    image = lib.folder(concept.name) / "images" / "0.png"
    image.unlink()
    image.symlink_to(secret)  # by hand, or by a tool that knows nothing of conceptlib
    run = cli("verify", "--home", str(lib.home))
    assert run.exit_code == 1
    assert "link       cat-toy: images/0.png is a symbolic link; a library holds only regular files (not repairable)" in run.stdout


def test_manifest_paths_cannot_leave_the_concept_folder(lib: Library, tmp_path: Path, secret: Path) -> None:
    concept = lib.add(concept_folder(tmp_path / "cat")).one()
    manifest = lib.folder(concept.name) / "concept.json"
    data = json.loads(manifest.read_text())
    data["images"] = [{"path": "images/../../../../dot-ssh/id_rsa", "sha256": "0" * 64, "size": 1}]
    manifest.write_text(json.dumps(data))
    with pytest.raises(LibraryCorruptError, match="not a plain path inside the concept folder"):
        lib.show(concept.name)
    problems = lib.verify().problems
    assert [(p.kind, p.where) for p in problems] == [("manifest", concept.name)]


# --- validate and preview ------------------------------------------------------------------------


def test_validate_reads_no_link_out_of_a_folder(tmp_path: Path, secret: Path, cli: Any) -> None:
    folder = concept_folder(tmp_path / "repo" / "cat", token="<own>")
    (folder / "token_identifier.txt").unlink()
    (folder / "token_identifier.txt").symlink_to(secret)
    run = cli("validate", str(tmp_path / "repo"), "--model", "sd1")
    assert run.exit_code == 0, run.output
    assert "hunter2" not in run.output
    assert f"Skipped {folder / 'token_identifier.txt'}: is a symbolic link leading out of cat/ (to {secret}): not read\n" in run.stderr
    assert run.stdout == f"{folder}: ok\n"
    from conceptlib._snapshots import read_input

    emb, skipped = read_input(folder)
    assert emb.token == "<own>" and len(skipped) == 1


def test_preview_skips_a_changed_file_linked_out_of_the_repository(tmp_path: Path, secret: Path) -> None:
    from conceptlib.preview import SKIP_LINK_OUT, Skipped, changed_concepts

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "concepts"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)

    git("init", "-q")
    (repo / "README.md").write_text("concepts")
    git("add", ".")
    git("commit", "-qm", "base")
    (repo / "evil.pt").symlink_to(secret)  # git stores the link itself; the CI checkout recreates it
    concept_folder(repo / "cat")
    git("add", ".")
    git("commit", "-qm", "pr")
    inputs, skipped = changed_concepts("HEAD~1...HEAD", repo=repo)
    assert inputs == [repo / "cat"]
    assert skipped == [Skipped("evil.pt", SKIP_LINK_OUT)]


# --- inspect and convert: one read, no report to skip into -----------------------------------------


def test_inspect_and_convert_refuse_a_token_file_linked_out_of_the_folder(tmp_path: Path, secret: Path, cli: Any) -> None:
    folder = concept_folder(tmp_path / "cat", token="<own>")
    token_file = folder / "token_identifier.txt"
    token_file.unlink()
    token_file.symlink_to(secret)
    expected = f"Error: {token_file}: is a symbolic link leading out of cat/ (to {secret}): not read\n"

    inspected = cli("inspect", str(folder))
    converted = cli("convert", str(folder), str(tmp_path / "out.safetensors"))

    assert (inspected.exit_code, inspected.stdout, inspected.stderr) == (2, "", expected)
    assert (converted.exit_code, converted.stdout, converted.stderr) == (2, "", expected)
    assert not (tmp_path / "out.safetensors").exists()
    assert "hunter2" not in inspected.output + converted.output


def test_read_refuses_links_out_of_a_folder_and_follows_those_inside(tmp_path: Path, secret: Path) -> None:
    from conceptlib.errors import UnsafeLinkError
    from conceptlib.formats import read

    dangling = concept_folder(tmp_path / "dangling")
    (dangling / "type_of_concept.txt").unlink()
    (dangling / "type_of_concept.txt").symlink_to("nowhere.txt")
    with pytest.raises(UnsafeLinkError, match=r"type_of_concept.txt: is a symbolic link to nothing"):
        read(dangling)

    # The other file of an SDXL pair was not named: the folder's rule applies to it.
    from factory import sdxl

    pair = tmp_path / "pair"
    write(sdxl(1, seed=8, token="<xl>"), pair, format="diffusers-sdxl")
    elsewhere = tmp_path / "elsewhere.safetensors"
    (pair / "learned_embeds_2.safetensors").rename(elsewhere)
    (pair / "learned_embeds_2.safetensors").symlink_to(elsewhere)
    with pytest.raises(UnsafeLinkError, match="learned_embeds_2.safetensors: is a symbolic link leading out of pair/"):
        read(pair / "learned_embeds.safetensors")

    # A link that stays inside is read as its target.
    inside = concept_folder(tmp_path / "inside", token="<x>")
    (inside / "words").mkdir()
    (inside / "words" / "token.txt").write_text("<linked-inside>")
    (inside / "token_identifier.txt").unlink()
    (inside / "token_identifier.txt").symlink_to("words/token.txt")
    assert read(inside).token == "<linked-inside>"


def test_inspect_reads_a_bom_token_file_without_the_bom(tmp_path: Path, cli: Any) -> None:
    from conceptlib.formats import read

    folder = concept_folder(tmp_path / "bom", token="<from-the-embedding>")
    (folder / "token_identifier.txt").write_bytes("\ufeff<bom-cat>\r\n".encode())
    (folder / "type_of_concept.txt").write_bytes("\ufeffStyle\n".encode())

    emb = read(folder)
    assert (emb.token, emb.metadata["concept_type"], emb.source_format) == ("<bom-cat>", "style", "concepts-library")
    run = cli("inspect", str(folder), "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)[0]["token"] == "<bom-cat>"

    # Not UTF-8: refused, naming the file (it was decoded with replacement characters before).
    (folder / "token_identifier.txt").write_bytes("<caf\xe9>".encode("latin-1"))
    run = cli("inspect", str(folder))
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == f"Error: {folder / 'token_identifier.txt'}: is not UTF-8 text (byte 0xe9 at offset 4) (hint: save it as UTF-8)\n"


# --- the Hub -------------------------------------------------------------------------------------


@pytest.fixture
def hub(local_hub: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    local_hub.add_user("hf_test", "alice", orgs=["acme"])
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return local_hub


def concept_repo(token: str = "<x>") -> dict[str, bytes]:
    from conceptlib.formats import plan

    _, planned = plan(sd1(1, seed=11, token=token), "folder", format="concepts-library")
    files = {p.name: data for p, data in planned}
    png_path = png(Path(os.environ["CONCEPTLIB_HOME"]).parent / "img.png")
    files["concept_images/0.png"] = png_path.read_bytes()
    return files


def test_pull_writes_nothing_outside_its_folder(hub: Any, lib: Library, tmp_path: Path, cli: Any) -> None:
    from conceptlib import hub as hubmod

    files = concept_repo()
    files["concept_images/../../../../escaped.png"] = files["concept_images/0.png"]
    files["concept_images/..\\..\\escaped.png"] = files["concept_images/0.png"]
    hub.create_repo("acme/x", files)
    result = hubmod.pull(lib, "acme/x")
    assert result.status == "added"
    assert result.skipped == {
        "concept_images/../../../../escaped.png": hubmod.SKIP_UNSAFE_PATH,
        "concept_images/..\\..\\escaped.png": hubmod.SKIP_UNSAFE_PATH,
    }
    assert [i.path for i in lib.show(result.name).images] == ["images/0.png"]
    assert not list(Path("/tmp").glob("escaped.png")) and not list(tmp_path.rglob("escaped.png"))

    hub.create_repo("acme/pick", {**concept_repo("<y>"), "../up.pt": b"x"})
    run = cli("pull", "acme/pick", "--file", "../up.pt", "--home", str(tmp_path / "other"))
    assert (run.exit_code, run.stderr) == (2, "Error: acme/pick: '../up.pt' is not a plain path inside the repository\n")


def test_push_never_uploads_a_file_linked_into_the_library(hub: Any, lib: Library, tmp_path: Path, secret: Path) -> None:
    from conceptlib import hub as hubmod

    folder = concept_folder(tmp_path / "cat")
    png(folder / "concept_images" / "0.png")
    concept = lib.add(folder).one()
    image = lib.folder(concept.name) / "images" / "0.png"
    image.unlink()
    image.symlink_to(secret)
    with pytest.raises(ConceptDamagedError, match=r"images/0.png: is a symbolic link \(to .*\), where conceptlib keeps only regular files"):
        hubmod.push(lib, concept.name, "alice/cat")
    assert hub.requests("POST", "/commit/") == []
