"""``inspect``, ``convert`` and ``formats`` through the CLI: exact output, exit codes, no tracebacks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.formats import read, write
from factory import sd1, sdxl


@pytest.fixture
def cat_toy(tmp_path: Path) -> Path:
    path = tmp_path / "learned_embeds.safetensors"
    write(sd1(1, token="<cat-toy>"), path)
    return path


def test_inspect_exact_output(cli: Any, cat_toy: Path) -> None:
    result = cli("inspect", str(cat_toy))
    assert result.exit_code == 0, result.output
    emb = read(cat_toy)
    data = cat_toy.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    header = int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[8 + header :]).hexdigest()
    # AUTOMATIC1111's checksum, computed here from its definition (formats.md c.4).
    r = 0
    for v in (emb.vectors["clip_l"].array.reshape(-1) * np.float32(100)).tolist():
        r = ((r * 281) ^ (int(v) * 997)) & 0xFFFFFFFF
    assert result.stdout == (
        f"{cat_toy}\n"
        "  format        diffusers: diffusers learned_embeds.safetensors: {token: [n, width]}\n"
        "  token         <cat-toy>\n"
        "  vectors       1 × 768 (clip_l 768)\n"
        "  dtype         float32\n"
        "  family        SD 1.x\n"
        f"  content hash  {emb.content_hash()}\n"
        f"  file sha256   {sha} (AutoV2 {sha[:10]}, A1111 {sha[:12]})\n"
        f"  addnet hash   {addnet}\n"
        f"  checksum      [{r & 0xFFFF:04x}] (AUTOMATIC1111)\n"
    )


def test_inspect_json(cli: Any, cat_toy: Path) -> None:
    result = cli("inspect", str(cat_toy), "--json")
    assert result.exit_code == 0
    [info] = json.loads(result.stdout)
    assert info["token"] == "<cat-toy>" and info["vectors"] == 1 and info["family"] == "sd1"
    assert info["encoders"] == {"clip_l": {"width": 768, "dtype": "float32"}}
    assert info["file"]["sha256"][:10] == info["file"]["autov2"]


def test_inspect_sdxl_family(cli: Any, tmp_path: Path) -> None:
    write(sdxl(2), tmp_path / "xl.safetensors")
    result = cli("inspect", str(tmp_path / "xl.safetensors"), "--json")
    [info] = json.loads(result.stdout)
    assert info["family"] == "sdxl" and info["complete"] is True and info["vectors"] == 2


def test_inspect_bad_file_is_one_line_exit_2(cli: Any, tmp_path: Path, cat_toy: Path) -> None:
    bad = tmp_path / "page.bin"
    bad.write_text("<html><body>404</body></html>")
    run = cli("inspect", str(cat_toy), str(bad))
    assert run.exit_code == 2
    assert str(cat_toy) in run.stdout  # the good file is still shown
    lines = run.stderr.strip().splitlines()
    assert lines == [
        f"Error: {bad}: is an HTML page, not an embedding "
        "(hint: download the raw file (on the Hub use the /resolve/ link, not /blob/))"
    ]
    assert "Traceback" not in run.stderr


def test_convert_and_refuse_overwrite(cli: Any, tmp_path: Path, cat_toy: Path) -> None:
    dst = tmp_path / "cat-toy.pt"
    run = cli("convert", str(cat_toy), str(dst))
    assert run.exit_code == 0
    assert run.stdout == f"{dst}\n"
    assert run.stderr.startswith(f"Converted {cat_toy} (diffusers) to a1111: 1 × 768, float32")
    before = dst.read_bytes()
    run = cli("convert", str(cat_toy), str(dst))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {dst}: already exists (hint: pass --force to overwrite it)\n"
    assert dst.read_bytes() == before
    assert cli("convert", str(cat_toy), str(dst), "--force", "--token", "<other>").exit_code == 0
    assert read(dst).name == "<other>"


def test_convert_json(cli: Any, tmp_path: Path, cat_toy: Path) -> None:
    result = cli("convert", str(cat_toy), str(tmp_path / "c"), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["format"] == "concepts-library"
    assert sorted(Path(p).name for p in data["files"]) == ["learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt"]


def test_convert_sdxl_to_single_encoder_format_explains(cli: Any, tmp_path: Path) -> None:
    write(sdxl(1), tmp_path / "xl.safetensors")
    run = cli("convert", str(tmp_path / "xl.safetensors"), str(tmp_path / "out.safetensors"), "--to", "emb-params")
    err = run.stderr
    assert run.exit_code == 2
    assert "SDXL embedding (768 + 1280)" in err and "write it as sdxl" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_unknown_format_name(cli: Any, tmp_path: Path, cat_toy: Path) -> None:
    run = cli("convert", str(cat_toy), str(tmp_path / "x.pt"), "--to", "ckpt")
    assert run.exit_code == 2
    assert "unknown format 'ckpt'" in run.stderr


def test_missing_file(cli: Any, tmp_path: Path) -> None:
    run = cli("inspect", str(tmp_path / "nope.pt"))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {tmp_path / 'nope.pt'}: no such file or folder (hint: check the path)\n"


def test_a_file_where_a_folder_is_needed(cli: Any, tmp_path: Path, cat_toy: Path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    run = cli("convert", str(cat_toy), str(tmp_path / "afile" / "x.pt"))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {tmp_path / 'afile'}: is a file, where a folder is needed (hint: check the path)\n"
    run = cli("list", "--home", str(tmp_path / "afile"))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {tmp_path / 'afile' / 'concepts'}: a part of this path is a file, not a folder (hint: check the path)\n"


def test_traceback_only_with_debug(tmp_path: Path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"PK\x03\x04garbage")
    cmd = [sys.executable, "-m", "conceptlib", "convert", str(bad), str(tmp_path / "y.pt")]
    quiet = subprocess.run(cmd, capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    loud = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "CONCEPTLIB_DEBUG": "1"})
    assert "Traceback" in loud.stderr


def test_formats_lists_writable(cli: Any) -> None:
    result = cli("formats", "--json")
    names = {row["name"]: row["writable"] for row in json.loads(result.stdout)}
    assert names["png"] and names["diffusers-sdxl"] and not names["ldm"]


def test_version(cli: Any) -> None:
    result = cli("--version")
    assert result.stdout.startswith("conceptlib ")
