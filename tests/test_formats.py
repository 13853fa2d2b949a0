"""Every writable format round-trips synthesized embeddings bit for bit, with its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.embedding import Embedding
from conceptlib.errors import DestinationExistsError, FormatCapabilityError, UsageError
from conceptlib.formats import FORMATS, WRITABLE, convert, format_for_path, read, write
from factory import sd1, sd2, sdxl, vectors

FIELDS = {
    "token": "<cat-toy>",
    "name": "cat-toy",
    "step": 3000,
    "checkpoint_hash": "a9263745",
    "checkpoint_name": "sd-1.5",
    "metadata": {"concept_type": "object", "modelspec.title": "Cat toy"},
}

EMBEDDINGS = {
    "sd1-1v-fp32": sd1(1, **FIELDS),
    "sd1-8v-fp16": sd1(8, dtype="float16", seed=1, **FIELDS),
    "sd2-3v-bf16": sd2(3, dtype="bfloat16", seed=2, **FIELDS),
    "sd1-75v-fp32": sd1(75, seed=3, **FIELDS),
    "sdxl-2v-fp32": sdxl(2, seed=4, **FIELDS),
    "sdxl-mixed": Embedding(
        {"clip_l": vectors(1, 768, seed=5), "clip_g": vectors(1, 1280, dtype="float16", seed=6)}, **FIELDS  # type: ignore[arg-type]
    ),
}

# What each format reads back as (SDXL a1111 files are AUTOMATIC1111's bare clip_l/clip_g dict).
READS_AS = {"a1111": {"sdxl": "sdxl-pt"}}


def target(tmp_path: Path, fmt: str) -> Path:
    suffix = FORMATS[fmt].suffix
    return tmp_path / ("concept" if not suffix else f"concept{suffix}")


def held(fmt: str, emb: Embedding) -> frozenset[str]:
    if emb.is_sdxl and fmt in ("a1111", "png"):
        return frozenset()
    return FORMATS[fmt].holds


@pytest.mark.parametrize("fmt", WRITABLE)
@pytest.mark.parametrize("case", list(EMBEDDINGS))
def test_round_trip(tmp_path: Path, fmt: str, case: str) -> None:
    emb = EMBEDDINGS[case]
    spec = FORMATS[fmt]
    path = target(tmp_path, fmt)
    if not (spec.sdxl if emb.is_sdxl else spec.single):
        with pytest.raises(FormatCapabilityError):
            write(emb, path, format=fmt)
        assert not any(tmp_path.iterdir()), "a refused write must leave nothing behind"
        return
    written = write(emb, path, format=fmt)
    assert all(p.is_file() for p in written)
    back = read(path)
    assert back.same_vectors(emb), f"{fmt} changed the vectors"
    assert back.content_hash() == emb.content_hash()
    assert back.dtype == emb.dtype
    expected_format = READS_AS.get(fmt, {}).get("sdxl" if emb.is_sdxl else "single", fmt)
    assert back.source_format == expected_format
    fields = held(fmt, emb)
    for field in ("token", "name", "step", "checkpoint_hash", "checkpoint_name"):
        if field in fields:
            assert getattr(back, field) == getattr(emb, field), field
    if "metadata" in fields:
        assert back.metadata == emb.metadata
    if fmt == "concepts-library":
        assert back.metadata["concept_type"] == "object"
        assert (path / "token_identifier.txt").read_text() == "<cat-toy>"


def test_a1111_name_is_the_prompt_word(tmp_path: Path) -> None:
    emb = sd1(2, token="<bad-hands>")
    write(emb, tmp_path / "x.pt")
    back = read(tmp_path / "x.pt")
    assert back.token is None and back.name == "<bad-hands>" and back.prompt_word() == "<bad-hands>"
    # With no token and no name, the file stem is the prompt word, as in AUTOMATIC1111.
    write(sd1(1), tmp_path / "my-style.pt", format="emb-params-pt")
    assert read(tmp_path / "my-style.pt").prompt_word() == "my-style"


def test_sd_concepts_single_vector_is_one_dimensional(tmp_path: Path) -> None:
    from conceptlib.formats import _torchpickle

    write(sd1(1, token="<t>"), tmp_path / "c", format="concepts-library")
    state = _torchpickle.load(tmp_path / "c" / "learned_embeds.bin")
    assert isinstance(state, dict) and state["<t>"].shape == (768,)


def test_sdxl_pair_is_read_as_one_concept(tmp_path: Path) -> None:
    emb = sdxl(3, token="<xl>")
    files = write(emb, tmp_path / "learned_embeds.safetensors")
    assert [p.name for p in files] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    for path in (files[0], files[1], tmp_path):
        back = read(path)
        assert back.source_format == "diffusers-sdxl" and back.same_vectors(emb) and back.token == "<xl>"


def test_sdxl_pair_with_mismatched_tokens_is_refused(tmp_path: Path) -> None:
    write(sd1(1, token="<a>"), tmp_path / "learned_embeds.safetensors")
    write(Embedding({"clip_g": vectors(1, 1280)}, token="<b>"), tmp_path / "learned_embeds_2.safetensors", format="diffusers")
    with pytest.raises(Exception, match="disagrees on the token"):
        read(tmp_path)


@pytest.mark.parametrize(
    ("name", "sdxl_emb", "expected"),
    [
        ("a.safetensors", False, "diffusers"),
        ("a.safetensors", True, "sdxl"),
        ("learned_embeds.safetensors", True, "diffusers-sdxl"),
        ("a.pt", False, "a1111"),
        ("a.bin", False, "diffusers-bin"),
        ("a.PNG", False, "png"),
        ("folder", False, "concepts-library"),
        ("folder", True, "diffusers-sdxl"),
    ],
)
def test_format_from_name(name: str, sdxl_emb: bool, expected: str) -> None:
    assert format_for_path(name, sdxl() if sdxl_emb else sd1()) == expected


def test_unknown_suffix_asks_for_to() -> None:
    with pytest.raises(UsageError, match="a.ckpt") as info:
        format_for_path("a.ckpt", sd1())
    assert "--to" in (info.value.hint or "")


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    write(sd1(token="<a>"), path)
    before = path.read_bytes()
    with pytest.raises(DestinationExistsError):
        write(sd1(2, token="<a>"), path)
    assert path.read_bytes() == before
    write(sd1(2, token="<a>"), path, force=True)
    assert read(path).num_vectors == 2


def test_sdxl_pair_refuses_if_either_file_exists(tmp_path: Path) -> None:
    (tmp_path / "learned_embeds_2.safetensors").write_bytes(b"keep")
    with pytest.raises(DestinationExistsError):
        write(sdxl(token="<x>"), tmp_path / "learned_embeds.safetensors")
    assert not (tmp_path / "learned_embeds.safetensors").exists()
    assert (tmp_path / "learned_embeds_2.safetensors").read_bytes() == b"keep"


def test_token_needed_where_stored(tmp_path: Path) -> None:
    with pytest.raises(FormatCapabilityError, match="has none") as info:
        write(sd1(), tmp_path / "a.safetensors")
    assert info.value.hint == "pass --token"


def test_convert_sets_token_and_verifies(tmp_path: Path) -> None:
    write(sd1(2, name="bad-artist", step=1875), tmp_path / "bad-artist.pt")
    result = convert(tmp_path / "bad-artist.pt", tmp_path / "out.safetensors", token="<bad-artist>")
    assert result.format == "diffusers" and result.source_format == "a1111"
    back = read(tmp_path / "out.safetensors")
    # The A1111 name was the source's prompt word: the new token replaces it.
    assert back.token == "<bad-artist>" and back.step == 1875 and back.name == "<bad-artist>"
    assert (result.token, result.token_stored) == ("<bad-artist>", True)


@pytest.mark.parametrize("fmt", ["a1111", "png"])
def test_convert_token_reaches_formats_that_store_only_a_name(tmp_path: Path, fmt: str) -> None:
    # AUTOMATIC1111 reads an image's prompt word from its name: the token must land there.
    write(sd1(2, name="rick"), tmp_path / "rick.png")
    out = target(tmp_path / "out", fmt)
    result = convert(tmp_path / "rick.png", out, to=fmt, token="<rick>")
    assert (result.token, result.token_stored) == ("<rick>", True)
    assert read(out).name == "<rick>" and read(out).prompt_word() == "<rick>"


def test_convert_says_when_a_format_stores_no_token(tmp_path: Path, cli: Any) -> None:
    write(sd1(2, name="bad-artist"), tmp_path / "bad-artist.pt")
    result = convert(tmp_path / "bad-artist.pt", tmp_path / "ba.pt", to="emb-params-pt", token="<tok>")
    assert (result.token, result.token_stored) == ("ba", False)
    run = cli("convert", str(tmp_path / "bad-artist.pt"), str(tmp_path / "x.pt"), "--to", "emb-params-pt", "--token", "<tok>")
    assert run.exit_code == 0
    assert run.stderr == (
        f"Converted {tmp_path / 'bad-artist.pt'} (a1111) to emb-params-pt: 2 × 768, float32, "
        "no token stored (the file name 'x' is the prompt word)\n"
    )
    run = cli("convert", str(tmp_path / "bad-artist.pt"), str(tmp_path / "y.pt"), "--to", "emb-params-pt", "--token", "<tok>", "--json")
    assert json.loads(run.stdout)["token"] == "y" and json.loads(run.stdout)["token_stored"] is False
    assert run.stderr == (
        "Note: the emb-params-pt format stores no token; tools use the file name, 'y', as the prompt word "
        "(rename the file to change it)\n"
    )


def test_content_hash_ignores_container_and_metadata(tmp_path: Path) -> None:
    emb = sd1(3, token="<a>")
    hashes = set()
    for fmt in ("conceptlib", "diffusers", "a1111", "emb-params-pt", "png", "diffusers-bin"):
        path = target(tmp_path / fmt, fmt)
        write(emb, path, format=fmt)
        hashes.add(read(path).content_hash())
    assert len(hashes) == 1
    assert sd1(3, token="<b>", step=5).content_hash() == emb.content_hash()
    assert sd1(3, seed=9).content_hash() != emb.content_hash()
    assert sd1(3, dtype="float16").content_hash() != emb.content_hash()


def test_safetensors_output_loads_with_the_safetensors_library(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    write(sd1(2, token="<a>"), tmp_path / "a.safetensors")
    loaded = load_file(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(loaded["<a>"], sd1(2).vectors["clip_l"].array)


@pytest.mark.torch
def test_bf16_safetensors_loads_with_safetensors_torch(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    emb = sd2(2, dtype="bfloat16", token="<b>")
    write(emb, tmp_path / "b.safetensors")
    loaded = load_file(str(tmp_path / "b.safetensors"))["<b>"]
    assert loaded.dtype == torch.bfloat16
    assert loaded.view(torch.int16).numpy().view(np.uint16).tobytes() == emb.vectors["clip_h"].tobytes()


def test_png_too_large_for_readers_is_a_capability_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More vectors than any PNG reader accepts: refused as the format's limit, nothing written."""
    from conceptlib.formats import _png

    monkeypatch.setattr(_png, "MAX_JSON_BYTES", 10_000)
    with pytest.raises(FormatCapabilityError, match="png format cannot hold this embedding"):
        write(sd1(8, name="big"), tmp_path / "big.png")
    assert list(tmp_path.iterdir()) == []
