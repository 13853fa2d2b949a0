"""conceptlib.Library: the on-disk store, its index, and every operation, on synthesized and real files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conceptlib.concept import Concept
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    AmbiguousConceptError,
    BadInputError,
    ConceptDamagedError,
    ConceptExistsError,
    ConceptNotFoundError,
    DestinationExistsError,
    DuplicateConceptError,
    FormatCapabilityError,
    IndexDamagedError,
    InvalidNameError,
    TokenInUseError,
    UsageError,
)
from conceptlib.formats import read, write
from conceptlib.library import Library
from conceptlib.slug import is_slug, safe_stem, slugify
from factory import sd1, sd2, sdxl


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    library = Library.open(tmp_path / "home")
    yield library
    library.close()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


def make(path: Path, emb: Embedding, fmt: str | None = None) -> Path:
    write(emb, path, format=fmt)
    return path


def png(path: Path, color: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (color, 10, 20)).save(path)
    return path


def concepts_folder(folder: Path, emb: Embedding, concept_type: str = "object", images: int = 0) -> Path:
    write(emb, folder, format="concepts-library")
    (folder / "type_of_concept.txt").write_text(concept_type)
    for i in range(images):
        png(folder / "concept_images" / f"{i}.png", i)
    return folder


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- add ---------------------------------------------------------------------------------------


def test_add_one_file_writes_the_whole_layout(lib: Library, src: Path) -> None:
    emb = sd1(2, token="<cat-toy>", step=500, checkpoint_hash="abcd1234", checkpoint_name="v1-5")
    path = make(src / "learned_embeds.safetensors", emb, "diffusers")
    concept = lib.add(path, tags=["Toy"], license="mit", description="A toy cat").one()

    folder = lib.home / "concepts" / "cat-toy"
    assert concept.path == folder and concept.name == "cat-toy"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "concept.json", "embedding.safetensors", "original", "original/learned_embeds.safetensors",
    ]
    assert (folder / "original" / "learned_embeds.safetensors").read_bytes() == path.read_bytes()
    assert list((lib.home / ".staging").iterdir()) == []

    manifest = json.loads((folder / "concept.json").read_text(encoding="utf-8"))
    assert manifest["name"] == "cat-toy" and manifest["token"] == "<cat-toy>" and manifest["type"] == "object"
    assert manifest["family"] == "sd1" and manifest["encoders"] == {"clip_l": 768}
    assert manifest["vectors"] == 2 and manifest["dtype"] == "float32"
    assert manifest["content_hash"] == read(path).content_hash()
    assert manifest["file_sha256"] == sha(path)
    assert manifest["embedding_sha256"] == sha(folder / "embedding.safetensors")
    assert manifest["format"] == "diffusers"
    assert (manifest["steps"], manifest["checkpoint_hash"], manifest["checkpoint_name"]) == (500, "abcd1234", "v1-5")
    assert manifest["source"] == {"type": "local", "path": str(path.resolve())}
    assert manifest["tags"] == ["toy"] and manifest["license"] == "mit" and manifest["description"] == "A toy cat"
    assert manifest["files"] == [{"path": "original/learned_embeds.safetensors", "sha256": sha(path), "size": path.stat().st_size}]
    assert manifest["created"] == manifest["updated"] and manifest["history"] == []

    # The canonical file holds the vectors, bit for bit, and no token: the manifest owns it.
    canonical = read(folder / "embedding.safetensors")
    assert canonical.same_vectors(emb) and canonical.token is None and canonical.step == 500
    assert lib.embedding("cat-toy").token == "<cat-toy>"
    assert lib.show("cat-toy") == concept


@pytest.mark.parametrize(
    ("fmt", "filename", "factory_emb"),
    [
        ("diffusers", "x.safetensors", sd1(1, token="<x>")),
        ("diffusers-bin", "x.bin", sd1(1, token="<x>")),
        ("a1111", "x.pt", sd1(3, name="x")),
        ("emb-params", "x.safetensors", sd2(2, token="<x>")),
        ("png", "x.png", sd1(1, name="x")),
        ("sdxl", "x.safetensors", sdxl(2, token="<x>")),
        ("sdxl-pt", "x.pt", sdxl(1)),
        ("a1111", "x.pt", sd1(1, dtype="float16", name="x")),
        ("diffusers", "x.safetensors", sd1(1, dtype="bfloat16", token="<x>")),
    ],
)
def test_add_every_format(lib: Library, src: Path, fmt: str, filename: str, factory_emb: Embedding) -> None:
    path = make(src / filename, factory_emb, fmt)
    concept = lib.add(path).one()
    assert concept.content_hash == factory_emb.content_hash()
    assert concept.family == factory_emb.family.key  # type: ignore[union-attr]
    assert concept.dtype == factory_emb.dtype
    assert lib.embedding(concept.name).same_vectors(factory_emb)
    assert lib.verify().ok


def test_add_sd_concepts_library_folder(lib: Library, src: Path) -> None:
    emb = sd1(1, seed=4, token="<midjourney-style>")
    folder = concepts_folder(src / "midjourney-style", emb, "style", images=2)
    concept = lib.add(folder).one()
    assert (concept.name, concept.token, concept.type) == ("midjourney-style", "<midjourney-style>", "style")
    assert concept.format == "concepts-library"
    assert [i.path for i in concept.images] == ["images/0.png", "images/1.png"]
    assert concept.images[0].sha256 == sha(folder / "concept_images" / "0.png")
    # Every top-level file of the folder is kept; the embedding file is the one hashed.
    assert [f.path for f in concept.files] == [
        "original/learned_embeds.bin", "original/token_identifier.txt", "original/type_of_concept.txt",
    ]
    assert concept.file_sha256 == sha(folder / "learned_embeds.bin")
    # Image records resolve to real files (os.PathLike), for callers such as the Hub push.
    assert Path(concept.images[1]).read_bytes() == (folder / "concept_images" / "1.png").read_bytes()


def test_add_folder_with_a_learned_embeds_among_other_embeddings(lib: Library, src: Path) -> None:
    """A downloads folder holding one learned_embeds.bin and other embeddings: each is a concept,
    and the learned_embeds concept keeps only its own files."""
    folder = concepts_folder(src / "downloads", sd1(1, seed=4, token="<sj>"))
    make(folder / "eyeliner.pt", sd1(2, seed=5, name="eyeliner"), "a1111")
    make(folder / "deeper" / "nested" / "liner.safetensors", sd1(1, seed=6, token="<liner>"))
    concepts_folder(folder / "deeper" / "inner", sd1(1, seed=7, token="<inner>"))
    make(folder / "deeper" / "inner" / "beside.pt", sd1(1, seed=8, name="beside"), "a1111")
    report = lib.add(folder)
    assert report.rejected == [] and report.duplicates == []
    assert sorted(c.name for c in report.added) == ["beside", "eyeliner", "inner", "liner", "sj"]
    assert [f.path for f in lib.show("sj").files] == [
        "original/learned_embeds.bin", "original/token_identifier.txt", "original/type_of_concept.txt",
    ]
    assert [f.path for f in lib.show("inner").files] == [
        "original/learned_embeds.bin", "original/token_identifier.txt", "original/type_of_concept.txt",
    ]


def test_derived_names_too_long_for_a_suffix_are_shortened(lib: Library, src: Path) -> None:
    long = "猫" * 40  # 120 UTF-8 bytes: the slug is cut to 96, leaving no room for "-2"
    first = lib.add(make(src / "a.safetensors", sd1(1, seed=1, token=long + "A"))).one()
    second = lib.add(make(src / "b.safetensors", sd1(1, seed=2, token=long + "B"))).one()
    assert first.name == "猫" * 32
    assert second.name == "猫" * 31 + "-2" and is_slug(second.name)


def test_add_diffusers_sdxl_pair(lib: Library, src: Path) -> None:
    emb = sdxl(2, seed=9, token="<xl-toy>")
    write(emb, src / "pair", format="diffusers-sdxl")
    by_folder = lib.add(src / "pair").one()
    assert by_folder.family == "sdxl" and by_folder.encoders == {"clip_l": 768, "clip_g": 1280}
    assert [f.path for f in by_folder.files] == ["original/learned_embeds.safetensors", "original/learned_embeds_2.safetensors"]
    lib.remove(by_folder.name)
    by_file = lib.add(src / "pair" / "learned_embeds.safetensors").one()
    assert [f.path for f in by_file.files] == ["original/learned_embeds.safetensors", "original/learned_embeds_2.safetensors"]
    assert lib.embedding(by_file.name).same_vectors(emb)


def test_half_an_sdxl_pair_is_rejected(lib: Library, src: Path) -> None:
    write(sdxl(1, token="<t>"), src / "pair", format="diffusers-sdxl")
    alone = src / "second.safetensors"
    shutil.copy(src / "pair" / "learned_embeds_2.safetensors", alone)
    report = lib.add(alone)
    assert report.added == [] and "half of an SDXL embedding" in report.rejected[0].reason


def test_duplicate_is_reported_not_added(lib: Library, src: Path) -> None:
    emb = sd1(1, token="<a>")
    first = lib.add(make(src / "a.safetensors", emb)).one()
    # Same vectors in another container and with another token: still the same concept.
    report = lib.add(make(src / "a.pt", emb.with_token(None), "a1111"))
    assert report.added == [] and report.rejected == []
    [dup] = report.duplicates
    assert (dup.existing, dup.content_hash, dup.path) == (first.name, first.content_hash, str(src / "a.pt"))
    with pytest.raises(DuplicateConceptError):
        report.one()
    assert len(lib.list()) == 1


def test_token_in_use_in_the_same_family_asks_for_token(lib: Library, src: Path) -> None:
    lib.add(make(src / "one.safetensors", sd1(1, seed=1, token="<cat>")))
    report = lib.add(make(src / "two.safetensors", sd1(1, seed=2, token="<Cat>")))
    [rejected] = report.rejected
    assert "already used by 'cat'" in rejected.reason and "--token" in rejected.reason
    with pytest.raises(TokenInUseError) as info:
        report.one()
    assert info.value.used_by == "cat" and "--token" in (info.value.hint or "")
    # Another family may use the same word; a new token resolves the conflict.
    assert lib.add(make(src / "xl.safetensors", sdxl(2, token="<cat>"))).one().name == "cat-2"
    assert lib.add(src / "two.safetensors", token="<cat2>").one().token == "<cat2>"


def test_names_come_from_the_token_or_file(lib: Library, src: Path) -> None:
    assert lib.add(make(src / "learned_embeds.bin", sd1(1, seed=1, token="<Cat Toy>"), "diffusers-bin")).one().name == "cat-toy"
    # A1111 files store no token: the prompt word is the stored name (or the file stem).
    a1111 = lib.add(make(src / "EasyNegative.pt", sd1(2, seed=2, name="EasyNegative"), "a1111")).one()
    assert (a1111.name, a1111.token) == ("easynegative", "EasyNegative")
    named = lib.add(make(src / "z.safetensors", sd1(1, seed=3, token="<z>")), name="My Name!").one()
    assert named.name == "my-name"


def test_explicit_name_taken(lib: Library, src: Path) -> None:
    lib.add(make(src / "a.safetensors", sd1(1, seed=1, token="<a>")), name="mine")
    report = lib.add(make(src / "b.safetensors", sd1(1, seed=2, token="<b>")), name="mine")
    with pytest.raises(ConceptExistsError):
        report.one()
    with pytest.raises(InvalidNameError):
        lib.add(src / "b.safetensors", name="../..")


def test_bulk_folder_import(lib: Library, src: Path) -> None:
    make(src / "a.safetensors", sd1(1, seed=1, token="<a>"))
    make(src / "nested" / "deeper" / "b.pt", sd1(1, seed=2, name="b"), "a1111")
    concepts_folder(src / "nested" / "c-style", sd1(1, seed=3, token="<c>"), "style", images=1)
    make(src / "z-copy.safetensors", sd1(1, seed=1, token="<a>"))  # duplicate of a
    (src / "junk.pt").write_bytes(os.urandom(64))
    (src / "pointer.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 3\n")
    (src / "notes.txt").write_text("ignored: not an embedding suffix")
    (src / ".hidden").mkdir()
    make(src / ".hidden" / "h.safetensors", sd1(1, seed=5, token="<h>"))
    png(src / "images" / "sample.png")  # sample-image folders are not searched
    seen: list[tuple[int, int, str]] = []
    report = lib.add(src, tags=["bulk"], progress=lambda d, t, p: seen.append((d, t, p.name)))
    assert sorted(c.name for c in report.added) == ["a", "b", "c"]
    assert [Path(d.path).name for d in report.duplicates] == ["z-copy.safetensors"]
    reasons = {Path(r.path).name: r.reason for r in report.rejected}
    assert set(reasons) == {"junk.pt", "pointer.safetensors"}
    assert "Git LFS pointer" in reasons["pointer.safetensors"] and "git lfs pull" in reasons["pointer.safetensors"]
    assert [s[:2] for s in seen] == [(i, 6) for i in range(1, 7)]
    assert all(c.tags == ["bulk"] for c in lib.list())
    assert lib.show("c").type == "style" and len(lib.show("c").images) == 1


def test_vectors_another_process_adds_mid_check_are_a_duplicate_not_a_token_clash(
    lib: Library, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(src / "a.safetensors", sd1(1, seed=1, token="<a>"))
    reader = type(lib.index)
    real = reader.token_owner
    started: list[bool] = []

    def token_owner(self: object, family: str | None, token: str, *, exclude: str = "", kind: str = "embedding") -> str | None:
        if not started:
            # The other `conceptlib add` of the same file commits right after this one found
            # the vectors new and before it looks the token up.
            started.append(True)
            with Library.open(lib.home) as other:
                other.add(path).one()
        return real(self, family, token, exclude=exclude, kind=kind)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "token_owner", token_owner)
    report = lib.add(path)
    assert started and not report.rejected
    assert [d.existing for d in report.duplicates] == ["a"]


def test_missing_and_empty_inputs_are_rejected(lib: Library, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = lib.add([tmp_path / "nope.pt", tmp_path / "empty"])
    assert [r.reason for r in report.rejected] == [
        "no such file or folder",
        "the folder holds no embedding files (.pt, .bin, .safetensors, .png)",
    ]
    with pytest.raises(FileNotFoundError):
        lib.add(tmp_path / "nope.pt").one()


def test_per_concept_options_need_one_input(lib: Library, src: Path) -> None:
    make(src / "a.safetensors", sd1(1, seed=1, token="<a>"))
    make(src / "b.safetensors", sd1(1, seed=2, token="<b>"))
    for option in ({"name": "x"}, {"token": "<x>"}, {"images": src}):
        with pytest.raises(UsageError, match="apply to one concept"):
            lib.add(src, **option)  # type: ignore[arg-type]
    assert lib.list() == []


def test_images_option(lib: Library, src: Path, tmp_path: Path) -> None:
    path = make(src / "a.safetensors", sd1(1, token="<a>"))
    png(tmp_path / "imgs" / "one.png", 1)
    png(tmp_path / "imgs" / "two.PNG", 2)
    (tmp_path / "imgs" / "readme.txt").write_text("skipped")
    concept = lib.add(path, images=tmp_path / "imgs").one()
    assert [i.path for i in concept.images] == ["images/one.png", "images/two.png"]
    with pytest.raises(UsageError, match="no such image"):
        lib.add(path, images=tmp_path / "missing")
    with pytest.raises(UsageError, match="not an image"):
        lib.add(path, images=tmp_path / "imgs" / "readme.txt")


def test_bad_options(lib: Library, src: Path) -> None:
    path = make(src / "a.safetensors", sd1(1, token="<a>"))
    with pytest.raises(UsageError, match="unknown concept type"):
        lib.add(path, type="person")
    with pytest.raises(InvalidNameError):
        lib.add(path, token="  ")
    with pytest.raises(InvalidNameError):
        lib.add(path, token="<a\x00b>")
    with pytest.raises(InvalidNameError):
        lib.add(path, tags=["x" * 65])


def test_non_finite_vectors_are_rejected(lib: Library, src: Path) -> None:
    import numpy as np

    from conceptlib.tensor import Tensor

    values = np.zeros((1, 768), np.float32)
    values[0, 3] = np.nan
    path = make(src / "nan.safetensors", Embedding({"clip_l": Tensor.from_numpy(values)}, token="<nan>"))
    [rejected] = lib.add(path).rejected
    assert "NaN" in rejected.reason


# --- queries -----------------------------------------------------------------------------------


@pytest.fixture
def filled(lib: Library, src: Path) -> Library:
    lib.add(make(src / "a.safetensors", sd1(1, seed=1, token="<cat-toy>")), tags=["toy"], description="a plush cat")
    lib.add(make(src / "b.pt", sd1(2, seed=2, name="EasyNegative"), "a1111"), type="negative", tags=["quality"])
    lib.add(make(src / "c.safetensors", sdxl(2, seed=3, token="<watercolor>")), type="style", tags=["toy", "paint"])
    return lib


def test_list_filters(filled: Library) -> None:
    assert [c.name for c in filled.list()] == ["cat-toy", "easynegative", "watercolor"]
    assert [c.name for c in filled.list(type="negative")] == ["easynegative"]
    assert [c.name for c in filled.list(base="sdxl")] == ["watercolor"]
    assert [c.name for c in filled.list(base="SD 1.x")] == ["cat-toy", "easynegative"]
    assert [c.name for c in filled.list(base="sd15", tag="TOY")] == ["cat-toy"]
    assert filled.list(type="style", base="sd1") == []
    with pytest.raises(UsageError, match="unknown base family"):
        filled.list(base="flux")
    summary = filled.list(base="xl")[0]
    assert summary.to_dict()["encoders"] == {"clip_l": 768, "clip_g": 1280} and summary.tags == ["paint", "toy"]


def test_rows_are_the_table_fields_of_list(filled: Library) -> None:
    """``rows`` (what the ``list`` table prints from) finds what ``list`` finds, field for field."""
    filters: list[dict[str, str]] = [{}, {"type": "negative"}, {"base": "SD 1.x"}, {"base": "sd15", "tag": "TOY"}, {"type": "style", "base": "sd1"}]
    for kw in filters:
        expected = [(c.name, c.token, c.type, c.family, c.vectors, c.tags, c.family_label) for c in filled.list(**kw)]
        assert [(*r, r.family_label) for r in filled.rows(**kw)] == expected
    assert filled.rows(base="xl")[0].tags == ["paint", "toy"]
    with pytest.raises(UsageError, match="unknown base family"):
        filled.rows(base="flux")


def test_search(filled: Library) -> None:
    assert [c.name for c in filled.search("plush")] == ["cat-toy"]
    assert [c.name for c in filled.search("toy")][0] == "cat-toy"  # name and tag beat tag alone
    assert {c.name for c in filled.search("toy")} == {"cat-toy", "watercolor"}
    assert [c.name for c in filled.search("easyneg")] == ["easynegative"]
    assert filled.search("zebra") == []


def test_show_by_name_slug_or_token(filled: Library) -> None:
    assert filled.show("cat-toy").name == "cat-toy"
    assert filled.show("Cat Toy").name == "cat-toy"
    assert filled.show("<watercolor>").name == "watercolor"
    with pytest.raises(ConceptNotFoundError) as info:
        filled.show("cat-tyo")
    assert isinstance(info.value, KeyError) and isinstance(info.value, BadInputError)
    assert info.value.suggestions == ["cat-toy"] and "cat-toy" in (info.value.hint or "")


def test_a_token_names_its_own_concept_before_a_slug_names_another(cli: Any, lib: Library, src: Path, tmp_path: Path) -> None:
    lib.add(make(src / "a.safetensors", sd1(1, seed=1, token="<x>")), name="kitty").one()
    lib.add(make(src / "b.safetensors", sd1(1, seed=2, token="<kitty>")), name="other").one()
    # `<kitty>` slugifies to `kitty`, another concept's name: the token's owner is meant.
    assert lib.show("<kitty>").name == "other"
    assert lib.show("kitty").name == "kitty"
    lib.remove(["<kitty>"])
    assert [c.name for c in lib.list()] == ["kitty"]

    # One token per family: both SD 1.x and SD 2.x may use `<dup>`, so `<dup>` alone is unclear.
    lib.add(make(src / "p.safetensors", sd1(1, seed=3, token="<dup>")), name="p").one()
    lib.add(make(src / "q.safetensors", sd2(1, seed=4, token="<dup>")), name="q").one()
    with pytest.raises(AmbiguousConceptError) as info:
        lib.show("<dup>")
    assert str(info.value) == "'<dup>' is the token of 2 concepts: p (SD 1.x), q (SD 2.x)"
    lib.close()
    for command in (["show", "<dup>"], ["remove", "<dup>", "--yes"]):
        assert cli(*command, "--home", str(lib.home)).exit_code == 2
    with Library.open(lib.home) as again:
        assert [c.name for c in again.list()] == ["kitty", "p", "q"]


def test_find_by_source(lib: Library, src: Path) -> None:
    source = {"type": "huggingface", "repo_id": "org/cat", "revision": "main", "commit": "c0ffee", "url": "https://hub/org/cat"}
    lib.add(make(src / "a.safetensors", sd1(1, token="<a>")), source=source, metadata={"concept_type": "style", "base_model": "x/y"})
    found = lib.find_by_source("org/cat")
    assert found is not None and found.source == source and found.type == "style" and found.metadata["base_model"] == "x/y"
    assert lib.find_by_source("org/other") is None


# --- changes -----------------------------------------------------------------------------------


def test_tag(filled: Library) -> None:
    concept = filled.tag("cat-toy", add=["Cute", "new"], remove=["toy", "absent"])
    assert concept.tags == ["cute", "new"]
    manifest = json.loads((concept.path / "concept.json").read_text())  # type: ignore[operator]
    assert manifest["tags"] == ["cute", "new"] and manifest["updated"] >= manifest["created"]
    assert [c.name for c in filled.list(tag="cute")] == ["cat-toy"]
    assert [c.name for c in filled.search("cute")] == ["cat-toy"]
    assert filled.list(tag="toy") == [filled.list(tag="toy")[0]] and filled.list(tag="toy")[0].name == "watercolor"
    assert filled.verify().ok


def test_rename(filled: Library) -> None:
    old_folder = filled.home / "concepts" / "cat-toy"
    concept = filled.rename("cat-toy", "Kitty", token="<kitty>")
    assert (concept.name, concept.token) == ("kitty", "<kitty>")
    assert not old_folder.exists() and (filled.home / "concepts" / "kitty" / "concept.json").is_file()
    assert filled.show("kitty").token == "<kitty>" and filled.show("<kitty>").name == "kitty"
    with pytest.raises(ConceptNotFoundError):
        filled.show("cat-toy")
    assert filled.rename("kitty", token="<kitty2>").token == "<kitty2>"  # token only
    assert filled.rename("kitty", "kat").token == "<kitty2>"  # name only
    with pytest.raises(ConceptExistsError):
        filled.rename("kat", "easynegative")
    with pytest.raises(TokenInUseError):
        filled.rename("kat", token="EasyNegative")
    with pytest.raises(UsageError, match="already has that name"):
        filled.rename("kat", "kat")
    with pytest.raises(InvalidNameError):
        filled.rename("kat", "///")
    assert filled.verify().ok


def test_remove(filled: Library) -> None:
    with pytest.raises(ConceptNotFoundError):
        filled.remove(["cat-toy", "typo"])
    assert len(filled.list()) == 3  # a typo removes nothing
    assert filled.remove(["cat-toy", "<watercolor>", "cat-toy"]) == ["cat-toy", "watercolor"]
    assert [c.name for c in filled.list()] == ["easynegative"]
    assert sorted(p.name for p in (filled.home / "concepts").iterdir()) == ["easynegative"]
    assert list((filled.home / ".staging").iterdir()) == []
    assert filled.verify().ok


def test_update_keeps_history(filled: Library, src: Path) -> None:
    before = filled.show("cat-toy")
    new = make(src / "v2.safetensors", sd1(1, seed=77, token="<cat-toy>"))
    source = {"type": "huggingface", "repo_id": "org/cat-toy", "commit": "b" * 40}
    after = filled.update("cat-toy", new, source=source)
    assert after.content_hash == read(new).content_hash() != before.content_hash
    assert after.history == [{"content_hash": before.content_hash, "replaced": after.history[0]["replaced"], "source": before.source}]
    assert (after.tags, after.description, after.created) == (before.tags, before.description, before.created)
    assert after.source == source and filled.show("cat-toy").source == source
    assert not (after.path / ".replaces").exists()  # type: ignore[operator]
    assert list((filled.home / ".staging").iterdir()) == []
    assert filled.embedding("cat-toy").same_vectors(read(new))
    with pytest.raises(DuplicateConceptError):
        filled.update("cat-toy", make(src / "dup.pt", sd1(2, seed=2, name="EasyNegative"), "a1111"))
    assert filled.verify().ok


def test_update_interrupted_between_renames_is_rolled_back(filled: Library, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlib.library._store as library_module  # the store makes the renames

    before = filled.show("cat-toy")
    real_rename = os.rename
    calls = {"n": 0}

    def flaky_rename(a: object, b: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the new folder moving in
            raise KeyboardInterrupt
        real_rename(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(library_module.os, "rename", flaky_rename)
    with pytest.raises(KeyboardInterrupt):
        filled.update("cat-toy", make(src / "v2.safetensors", sd1(1, seed=77, token="<cat-toy>")))
    monkeypatch.setattr(library_module.os, "rename", real_rename)
    assert filled.show("cat-toy").content_hash == before.content_hash
    assert filled.verify().ok


def test_reindex_finishes_an_update_cut_between_its_renames(filled: Library) -> None:
    """The state a kill -9 between an update's two renames leaves: the new folder wins."""
    folder = filled.home / "concepts" / "cat-toy"
    staged = filled.home / ".staging" / "update-x"
    shutil.copytree(folder, staged)
    manifest = json.loads((staged / "concept.json").read_text())
    manifest["description"] = "the new version"
    (staged / "concept.json").write_text(json.dumps(manifest))
    (staged / ".replaces").write_text("cat-toy")
    os.rename(folder, filled.home / ".staging" / "old-x")
    report = filled.reindex()
    assert "finished replacing cat-toy" in report.cleaned
    assert filled.show("cat-toy").description == "the new version"
    assert list((filled.home / ".staging").iterdir()) == []
    assert filled.verify().ok


def test_reindex_finishes_an_interrupted_rename(filled: Library) -> None:
    folder = filled.home / "concepts" / "cat-toy"
    manifest = json.loads((folder / "concept.json").read_text())
    manifest["name"] = "kitty"  # the manifest is written first, then the folder moves
    (folder / "concept.json").write_text(json.dumps(manifest))
    assert [(p.kind, p.repairable) for p in filled.verify().problems] == [("name", True)]
    filled.reindex()
    assert (filled.home / "concepts" / "kitty").is_dir() and filled.show("kitty").token == "<cat-toy>"
    assert filled.verify().ok


@pytest.mark.parametrize(("steps", "kept"), [(2**64, None), (-1, None), (True, None), ("12", 12), (1.5, None), (2**63 - 1, 2**63 - 1)])
def test_reindex_reads_a_hand_edited_step_count_as_the_readers_do(filled: Library, steps: object, kept: int | None) -> None:
    # 2**64 does not fit the index's INTEGER column: it overflowed SQLite on reindex.
    folder = filled.home / "concepts" / "cat-toy"
    manifest = json.loads((folder / "concept.json").read_text())
    manifest["steps"] = steps
    (folder / "concept.json").write_text(json.dumps(manifest))
    filled.reindex()
    assert filled.show("cat-toy").steps == kept
    assert [c.name for c in filled.list()] == ["cat-toy", "easynegative", "watercolor"]


# --- export ------------------------------------------------------------------------------------


def test_export_in_a_format(filled: Library, tmp_path: Path) -> None:
    out = tmp_path / "out"
    [result] = filled.export(["cat-toy"], "diffusers", out)
    assert result.files == [out / "cat-toy.safetensors"] and result.prompt_word == "<cat-toy>"
    back = read(out / "cat-toy.safetensors")
    assert back.token == "<cat-toy>" and back.same_vectors(filled.embedding("cat-toy"))
    [a1111] = filled.export("easynegative", "a1111", out)
    assert a1111.files == [out / "EasyNegative.pt"] and a1111.prompt_word == "EasyNegative"
    [folder] = filled.export(["cat-toy"], "concepts-library", out)
    assert (out / "cat-toy" / "token_identifier.txt").read_text() == "<cat-toy>"
    assert {p.name for p in folder.files} == {"learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt"}
    with pytest.raises(FormatCapabilityError, match=r"^watercolor: .*SDXL") as caught:
        filled.export(["cat-toy", "watercolor"], "diffusers", out / "both")
    assert "write it as sdxl" in (caught.value.hint or "")
    assert not (out / "both").exists()  # all or nothing
    with pytest.raises(DestinationExistsError):
        filled.export(["cat-toy"], "diffusers", out)
    assert filled.export(["cat-toy"], "diffusers", out, force=True)[0].files == [out / "cat-toy.safetensors"]
    with pytest.raises(UsageError, match="one of --format and --for"):
        filled.export(["cat-toy"], None, out)
    with pytest.raises(UsageError, match="unknown or read-only"):
        filled.export(["cat-toy"], "ldm", out)
    with pytest.raises(UsageError, match="unknown --for"):
        filled.export(["cat-toy"], None, out, target="fooocus")


def test_export_for_a1111_and_comfyui(filled: Library, src: Path, tmp_path: Path) -> None:
    # Same word in two families: both get a file, the second with the family in its name.
    filled.add(make(src / "xlcat.safetensors", sdxl(1, seed=9, token="<cat-toy>")))
    out = tmp_path / "webui" / "embeddings"
    results = filled.export(["cat-toy", "cat-toy-2", "easynegative", "watercolor"], target="a1111", out_dir=out)
    assert [(r.name, r.format, [p.name for p in r.files], r.prompt_word) for r in results] == [
        ("cat-toy", "emb-params", ["cat-toy.safetensors"], "cat-toy"),
        ("cat-toy-2", "sdxl", ["cat-toy-sdxl.safetensors"], "cat-toy-sdxl"),
        ("easynegative", "emb-params", ["EasyNegative.safetensors"], "EasyNegative"),
        ("watercolor", "sdxl", ["watercolor.safetensors"], "watercolor"),
    ]
    from safetensors.numpy import load_file

    assert list(load_file(out / "cat-toy.safetensors")) == ["emb_params"]
    assert sorted(load_file(out / "watercolor.safetensors")) == ["clip_g", "clip_l"]
    for r in results:
        assert read(r.files[0]).same_vectors(filled.embedding(r.name))
    comfy = filled.export(["cat-toy"], target="comfyui", out_dir=tmp_path / "comfy")
    assert comfy[0].files == [tmp_path / "comfy" / "cat-toy.safetensors"]


# --- reindex and verify ------------------------------------------------------------------------


def test_a_lost_index_is_rebuilt_on_first_use(filled: Library, caplog: pytest.LogCaptureFixture) -> None:
    shown = {c.name: filled.show(c.name) for c in filled.list()}
    filled.close()
    for suffix in ("", "-wal", "-shm"):
        (filled.home / f"index.sqlite{suffix}").unlink(missing_ok=True)
    fresh = Library.open(filled.home)
    # Not an empty library (which would also let `add` duplicate every concept): the index is
    # derived data, rebuilt from the manifests, with a warning saying so.
    with caplog.at_level("WARNING", logger="conceptlib"):
        assert {c.name: fresh.show(c.name) for c in fresh.list()} == shown
    assert [r.getMessage() for r in caplog.records] == [f"{filled.home}: the index was missing; rebuilt it from 3 concept folders"]
    assert [c.name for c in fresh.search("plush")] == ["cat-toy"]
    report = fresh.reindex()
    assert report.indexed == 3 and report.problems == []
    assert fresh.verify().ok
    fresh.close()


def test_a_lost_index_is_rebuilt_before_add_checks_duplicates(filled: Library, src: Path) -> None:
    filled.close()
    for suffix in ("", "-wal", "-shm"):
        (filled.home / f"index.sqlite{suffix}").unlink(missing_ok=True)
    fresh = Library.open(filled.home)
    report = fresh.add([src / "a.safetensors"])
    assert report.added == [] and [d.existing for d in report.duplicates] == ["cat-toy"]
    assert len(fresh.list()) == 3
    fresh.close()


@pytest.mark.parametrize("damage", ["not a database", "malformed page"])
def test_reindex_moves_a_damaged_index_aside_and_rebuilds_it(filled: Library, damage: str) -> None:
    shown = {c.name: filled.show(c.name) for c in filled.list()}
    filled.close()
    index = filled.home / "index.sqlite"
    data = bytearray(index.read_bytes())
    if damage == "not a database":
        data[:100] = bytes(range(100))
    else:
        assert len(data) > 4 * 4096
        # Pages past the schema: opening works, the error comes from a query.
        data[2 * 4096 :] = b"\xa5" * (len(data) - 2 * 4096)
    index.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (filled.home / f"index.sqlite{suffix}").unlink(missing_ok=True)
    lib = Library.open(filled.home)
    with pytest.raises(IndexDamagedError) as caught:
        lib.list()
        lib.search("plush")
    assert caught.value.exit_code == 2 and str(caught.value).startswith(f"{index}: the index is damaged (")
    assert "reindex" in (caught.value.hint or "")
    problems = lib.verify().problems
    assert [(p.kind, p.repairable) for p in problems] == [("index", True)]
    report = lib.reindex()
    assert report.indexed == 3 and len(report.cleaned) == 1
    assert report.cleaned[0].startswith("moved the damaged index aside to index.sqlite.damaged-")
    aside = lib.home / report.cleaned[0].rsplit(" ", 1)[1]
    assert aside.read_bytes() == bytes(data)  # kept as it was, for whoever wants to look
    assert {c.name: lib.show(c.name) for c in lib.list()} == shown
    assert lib.verify().ok
    lib.close()


def test_verify_reads_every_page_of_the_index(filled: Library) -> None:
    # One damaged page of the search index: list and count still work, only search would
    # fail. verify must find it without being told where to look.
    filled.close()
    index = filled.home / "index.sqlite"
    with contextlib.closing(sqlite3.connect(index)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'concepts_fts_idx'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(index.read_bytes())
    start = (root - 1) * page_size
    data[start + 8 : start + page_size] = b"\xa5" * (page_size - 8)
    index.write_bytes(bytes(data))
    lib = Library.open(filled.home)
    assert len(lib.list()) == 3
    with pytest.raises(IndexDamagedError):
        lib.search("plush")
    problems = lib.verify().problems
    assert [(p.kind, p.repairable) for p in problems] == [("index", True)]
    assert problems[0].message.startswith(f"the index is damaged (On tree page {root} ")
    report = lib.verify(repair=True)
    assert report.ok and any(line.startswith("moved the damaged index aside") for line in report.repaired)
    assert [c.name for c in lib.search("plush")] == ["cat-toy"]
    lib.close()


def test_verify_repair_rebuilds_a_damaged_index(filled: Library) -> None:
    filled.close()
    (filled.home / "index.sqlite").write_bytes(b"\0" * 8192)
    lib = Library.open(filled.home)
    report = lib.verify(repair=True)
    assert report.ok and report.checked == 3
    assert any(line.startswith("moved the damaged index aside") for line in report.repaired)
    assert len(lib.list()) == 3
    lib.close()


def test_embedding_refuses_vectors_that_no_longer_match_the_content_hash(filled: Library, tmp_path: Path) -> None:
    path = filled.home / "concepts" / "cat-toy" / "embedding.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a flipped bit in the last vector still decodes
    path.write_bytes(bytes(data))
    with pytest.raises(ConceptDamagedError, match=r"embedding\.safetensors: the vectors no longer match the concept's content hash") as caught:
        filled.embedding("cat-toy")
    assert caught.value.exit_code == 2 and "verify --repair" in (caught.value.hint or "")
    with pytest.raises(ConceptDamagedError):
        filled.export(["cat-toy"], format="a1111", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert filled.verify(repair=True).ok
    assert filled.embedding("cat-toy").content_hash() == filled.show("cat-toy").content_hash


def _damage(lib: Library) -> dict[str, Path]:
    concepts = lib.home / "concepts"
    return {name: concepts / name for name in ("cat-toy", "easynegative", "watercolor")}


def test_verify_finds_and_repairs_damage(filled: Library, src: Path) -> None:
    folders = _damage(filled)
    # 1. a damaged canonical embedding (repairable from the original)
    data = bytearray((folders["cat-toy"] / "embedding.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folders["cat-toy"] / "embedding.safetensors").write_bytes(bytes(data))
    # 2. a concept folder the index does not know (a crash after the rename, before the commit)
    with filled.registry.transaction() as tx:
        tx.delete("easynegative")
    # 3. an index row whose folder is gone
    shutil.rmtree(folders["watercolor"])
    # 4. a staging leftover
    (filled.home / ".staging" / "add-leftover").mkdir()
    (filled.home / ".staging" / "add-leftover" / "embedding.safetensors").write_bytes(b"partial")
    report = filled.verify()
    assert not report.ok
    assert sorted((p.kind, p.where) for p in report.problems) == [
        ("embedding", "cat-toy"),
        ("missing", "watercolor"),
        ("staging", ".staging/add-leftover"),
        ("unindexed", "easynegative"),
    ]
    assert all(p.repairable for p in report.problems)
    repaired = filled.verify(repair=True)
    assert repaired.ok, repaired.problems
    assert "rebuilt cat-toy/embedding.safetensors from original/a.safetensors" in repaired.repaired
    assert "deleted .staging/add-leftover" in repaired.repaired
    # easynegative was unindexed, watercolor's folder gone (cat-toy's record was right all along).
    assert "rebuilt the index: easynegative, watercolor were missing, stale or gone" in repaired.repaired
    assert [c.name for c in filled.list()] == ["cat-toy", "easynegative"]
    assert not any(line.startswith("rebuilt the index") for line in filled.verify(repair=True).repaired)
    assert filled.verify().ok


def test_verify_reports_what_it_cannot_repair(filled: Library) -> None:
    folders = _damage(filled)
    (folders["cat-toy"] / "original" / "a.safetensors").write_bytes(b"changed")
    (folders["easynegative"] / "concept.json").write_text("{ not json")
    manifest = json.loads((folders["watercolor"] / "concept.json").read_text())
    manifest["description"] = "edited by hand"
    (folders["watercolor"] / "concept.json").write_text(json.dumps(manifest))
    report = filled.verify()
    kinds = sorted((p.kind, p.where, p.repairable) for p in report.problems)
    assert kinds == [
        ("manifest", "easynegative", False),
        ("original", "cat-toy", False),
        ("stale", "watercolor", True),
    ]
    after = filled.verify(repair=True)
    assert sorted(p.kind for p in after.problems) == ["manifest", "original"]
    assert filled.show("watercolor").description == "edited by hand"  # the manifest is the truth


def test_verify_finds_token_conflicts_made_by_hand(filled: Library) -> None:
    folder = filled.home / "concepts" / "watercolor"
    manifest = json.loads((folder / "concept.json").read_text())
    manifest["token"], manifest["family"] = "<CAT-TOY>", "sd1"
    (folder / "concept.json").write_text(json.dumps(manifest))
    problems = filled.verify(repair=True).problems
    assert [(p.kind, p.where) for p in problems] == [("token", "watercolor")]


def test_database_url_can_point_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    db = tmp_path / "team" / "shared.sqlite"
    monkeypatch.setenv("CONCEPTLIB_DATABASE_URL", f"sqlite:///{db}")
    lib = Library.open(tmp_path / "home2")
    lib.add(make(src / "a.safetensors", sd1(1, token="<a>")))
    assert db.is_file() and not (tmp_path / "home2" / "index.sqlite").exists()
    assert sqlite3.connect(db).execute("SELECT name FROM concepts").fetchall() == [("a",)]
    lib.close()


def test_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCEPTLIB_HOME", str(tmp_path / "from-env"))
    assert Library.open().home == tmp_path / "from-env"
    assert Library.open(tmp_path / "explicit").home == tmp_path / "explicit"
    assert (tmp_path / "explicit" / "concepts").is_dir()


# --- records and names -------------------------------------------------------------------------


def test_concept_json_round_trip(filled: Library) -> None:
    concept = filled.show("cat-toy")
    again = Concept.from_json(concept.to_json())
    assert again == concept and again.to_json() == concept.to_json()
    data = concept.to_dict()
    with pytest.raises(ValueError, match="newer"):
        Concept.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="lacks 'token'"):
        Concept.from_dict({**data, "token": ""})
    assert "铃兰" in Concept(name="x", token="铃兰", content_hash="h").to_json()


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("<Cat Toy>", "cat-toy"),
        ("../../etc/passwd", "etc-passwd"),
        ("a/b\\c", "a-b-c"),
        ("..", ""),
        ("a\x00b", "a-b"),
        ("铃兰", "铃兰"),
        ("CON", "con-1"),
        ("ｆｕｌｌ width", "full-width"),
        ("x" * 300, "x" * 96),
        ("铃" * 100, "铃" * 32),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug
    assert slug == "" or is_slug(slug)


def test_safe_stem() -> None:
    assert safe_stem("bad/prompt:v2") == "bad-prompt-v2"
    assert safe_stem("EasyNegative") == "EasyNegative"
    assert safe_stem("../x") == "x" and safe_stem("..") == "" and safe_stem("nul") == "nul-1"
    assert len(safe_stem("é" * 300).encode()) <= 120


@pytest.mark.parametrize(
    ("text", "stem"),
    [
        # Windows reserves a device name whatever follows the first dot: con-1.v2 is a file.
        ("con.v2", "con-1.v2"),
        ("CON.tar.gz", "CON-1.tar.gz"),
        ("NUL .txt", "NUL -1.txt"),  # Windows ignores the spaces before the dot
        ("CONOUT$", "CONOUT$-1"),
        ("conin$.x", "conin$-1.x"),
        ("COM\u00b2.pt", "COM\u00b2-1.pt"),  # Windows reads COM² as COM2
        ("lpt\u00b9", "lpt\u00b9-1"),
        ("console.v2", "console.v2"),
        ("com10", "com10"),
        # Invisible format characters would make a file whose name no one can type.
        ("cat\u200btoy", "cat-toy"),
        ("evil\u202egnp.pt", "evil-gnp.pt"),
        ("\ufeffbom", "bom"),
        ("soft\u00adhyphen", "soft-hyphen"),
        ("a\x1b[2Jb", "a-[2Jb"),
        ("e\u0301t\u00e9", "\u00e9t\u00e9"),
        ("con." + "y" * 200, "con-1." + "y" * 114),  # the -1 still fits in 120 bytes
    ],
)
def test_safe_stem_is_portable(text: str, stem: str) -> None:
    assert safe_stem(text) == stem
    assert len(stem.encode()) <= 120 and safe_stem(stem) == stem


def test_export_words_and_stems_share_the_device_rule() -> None:
    from conceptlib.library import ui_word

    for text in ("con.v2", "CONOUT$", "COM\u00b3.x", "cat\u2066toy"):
        assert ui_word(text, "a1111") == safe_stem(text)


# --- real files --------------------------------------------------------------------------------


@pytest.mark.shared
def test_real_embeddings(lib: Library, shared_embeddings: Path) -> None:
    report = lib.add(shared_embeddings)
    assert report.added, report.rejected
    for rejected in report.rejected:
        assert rejected.reason and "\n" not in rejected.reason
    for concept in report.added:
        original = lib.home / "concepts" / concept.name / concept.files[0].path
        assert sha(original) == concept.file_sha256
        source = Path(concept.source["path"])
        if source.is_file():
            assert original.read_bytes() == source.read_bytes()
        assert lib.embedding(concept.name).content_hash() == concept.content_hash
    assert len(lib.list()) == len(report.added)
    assert lib.verify().ok
    # Everything added exports for AUTOMATIC1111 and reads back bit for bit.
    out = lib.home.parent / "a1111"
    for result in lib.export([c.name for c in report.added], target="a1111", out_dir=out):
        assert read(result.files[0]).same_vectors(lib.embedding(result.name))


def test_has_and_token_owner_answer_what_train_asks(tmp_path: Path) -> None:
    # train used to reach into library.index for these two questions.
    src = tmp_path / "cat.safetensors"
    write(sd1(1, seed=41, token="<Cat-Toy>"), src)
    with Library.open(tmp_path / "home") as lib:
        name = lib.add([src]).one().name
        assert lib.has(name) and not lib.has("nothing")
        assert lib.token_owner("sd1", "<cat-toy>") == name  # case-insensitive, as tokens clash
        assert lib.token_owner("sdxl", "<cat-toy>") is None
