"""``add`` and ``validate`` find the same concepts in the same folders (one walker: conceptlib.layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conceptlib.formats import write
from conceptlib.layout import (
    SKIP_THUMBNAIL,
    find_inputs,
    folder_files,
    is_thumbnail,
    read_with_partner,
)
from conceptlib.library import Library
from factory import sd1, sdxl


def _tree(base: Path) -> Path:
    """One folder with every layout the walker knows, distinct vectors everywhere."""
    root = base / "inputs"
    beside = root / "beside"  # a .pt beside learned_embeds.bin: two concepts
    beside.mkdir(parents=True)
    write(sd1(seed=1, token="<one>"), beside / "learned_embeds.bin", format="diffusers-bin")
    write(sd1(seed=2), beside / "bad-artist.pt", format="a1111")
    thumbs = root / "thumbs"  # an AUTOMATIC1111 thumbnail beside its .pt: skipped
    thumbs.mkdir()
    write(sd1(seed=3), thumbs / "style.pt", format="a1111")
    (thumbs / "style.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n not an embedding")
    pair = root / "nested" / "deeper"  # an SDXL pair, two folders down: one concept
    pair.mkdir(parents=True)
    write(sdxl(seed=4, token="<x>"), pair / "x.safetensors", format="diffusers-sdxl")
    assert (pair / "x_2.safetensors").is_file()
    concept = root / "nested" / "cat-toy"  # an sd-concepts-library folder: one concept
    (concept / "concept_images").mkdir(parents=True)
    write(sd1(seed=5, token="<cat-toy>"), concept / "learned_embeds.bin", format="diffusers-bin")
    (concept / "token_identifier.txt").write_text("<cat-toy>")
    outside = base / "outside.pt"
    write(sd1(seed=6), outside, format="a1111")
    (root / "nested" / "out.pt").symlink_to(outside)  # a link out: skipped, never read
    return root


def _added(cli: Any, root: Path) -> tuple[set[Path], set[Path]]:
    result = cli("add", str(root), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not report["rejected"] and not report["duplicates"]
    with Library.open(os.environ["CONCEPTLIB_HOME"]) as lib:
        sources = {Path(lib.show(c["name"]).source["path"]) for c in report["added"]}
    return sources, {Path(os.path.abspath(s["path"])) for s in report["skipped"]}


def _validated(cli: Any, root: Path) -> tuple[set[Path], set[Path]]:
    result = cli("validate", str(root), "--model", "sd1", "--json")
    report = json.loads(result.stdout)
    assert all(r["path"] for r in report["results"]), report
    found = {Path(os.path.abspath(r["path"])) for r in report["results"]}
    return found, {Path(os.path.abspath(s["path"])) for s in report["skipped"]}


def test_add_and_validate_find_the_same_concepts(cli: Any, tmp_path: Path) -> None:
    root = _tree(tmp_path)
    r = Path(os.path.abspath(root))
    expected = {
        r / "beside", r / "beside" / "bad-artist.pt", r / "thumbs" / "style.pt",
        r / "nested" / "deeper" / "x.safetensors", r / "nested" / "cat-toy",
    }  # fmt: skip
    skipped = {r / "thumbs" / "style.preview.png", r / "nested" / "out.pt"}
    assert _validated(cli, root) == (expected, skipped)
    assert _added(cli, root) == (expected, skipped)


def test_a_concept_folder_named_directly(cli: Any, tmp_path: Path) -> None:
    # The case: `validate f` checked 1 concept where `add f` added 2.
    root = _tree(tmp_path) / "beside"
    assert _validated(cli, root)[0] == _added(cli, root)[0] == {Path(os.path.abspath(root)), Path(os.path.abspath(root / "bad-artist.pt"))}


def test_find_inputs_plain_data(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    inputs = find_inputs([root, tmp_path / "missing.pt"])
    kinds = {f.path.relative_to(root).as_posix(): f.kind for f in inputs.concepts}
    assert kinds == {
        "beside": "folder", "beside/bad-artist.pt": "file", "thumbs/style.pt": "file",
        "nested/deeper/x.safetensors": "sdxl-pair", "nested/cat-toy": "folder",
    }  # fmt: skip
    assert all(f.within == root for f in inputs.concepts)
    assert (str(root / "thumbs" / "style.preview.png"), SKIP_THUMBNAIL) in {(s.path, s.reason) for s in inputs.skipped}
    assert [(r.path, r.reason) for r in inputs.rejected] == [(str(tmp_path / "missing.pt"), "no such file or folder")]


@pytest.mark.parametrize(
    ("name", "names", "thumb", "partner"),
    [
        ("a.preview.png", {"a.pt"}, True, False),
        ("a_2.safetensors", {"a.safetensors", "a_2.safetensors"}, False, True),
        ("lone_2.safetensors", {"lone_2.safetensors"}, False, False),
    ],
)
def test_name_rules(name: str, names: set[str], thumb: bool, partner: bool) -> None:
    assert is_thumbnail(name) is thumb
    assert read_with_partner(name, names) is partner


def test_folder_files() -> None:
    assert folder_files({"learned_embeds.bin", "token_identifier.txt", "x.pt"}) == {"learned_embeds.bin"}
