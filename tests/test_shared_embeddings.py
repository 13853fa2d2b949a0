"""The real third-party files in ../shared/data/embeddings (skipped in a fresh clone)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from conceptlib.errors import EmbeddingStructureError
from conceptlib.formats import FORMATS, WRITABLE, read, write

# file -> (format, {encoder: (vectors, width)}, dtype, prompt word, PROVENANCE shape text)
EXPECTED = {
    "JarrentWu1031+SingleInsert+learned_embeds.bin": ("concepts-library", {"clip_l": (1, 768)}, "float32", "_*_", "(768,)"),
    "Kaleidia+Embeddings-for-AI-Imagery+SD1.5-HairDetail.pt": ("a1111", {"clip_l": (3, 768)}, "float32", "_EmbeddingMerge_temp", "(3, 768)"),
    "Kaleidia+Embeddings-for-AI-Imagery+SDXL-Detail.safetensors": ("sdxl", {"clip_l": (2, 768), "clip_g": (2, 1280)}, "float32", None, "clip_g=(2, 1280)"),
    "KoAlbert+SD_Textual_Inversion+learned_embeds.safetensors": ("diffusers", {"clip_l": (1, 768)}, "float32", "<cat-toy>", "(1, 768)"),
    "eastonhill+stable-diffusion+embeddings.pt": ("ldm", {"clip_l": (1, 768)}, "float32", None, "(1,768)"),
    "fastai+diffusion-nbs+learned_embeds.bin": ("concepts-library", {"clip_l": (1, 768)}, "float32", None, "tensor(768,)"),
    "fgjd4j23423f+sd+EasyNegative.pt": ("emb-params-pt", {"clip_l": (8, 768)}, "float32", None, "emb_params=(8, 768)"),
    "fgjd4j23423f+sd+negative_hand-neg.pt": ("a1111", {"clip_l": (8, 768)}, "float32", "negative_hand", "(8, 768)"),
    "fgjd4j23423f+sd+test_embedding.png": ("png", {"clip_l": (8, 768)}, "float32", "rick", "(8, 768)"),
    "lazealia+Stable_Diff_WebUI_with_Ext+nfixer.pt": ("a1111", {"clip_h": (15, 1024)}, "float32", "nfixer-271", "(15, 1024)"),
    "lazealia+Stable_Diff_WebUI_with_Ext+ng_deepnegative_v1_75t.pt": ("a1111", {"clip_l": (75, 768)}, "float32", "NG_DeepNegative_V1_T75", "(75, 768)"),
    "mayaru-ai+stable-diffusion-bestconfig+EasyNegative.safetensors": ("emb-params", {"clip_l": (8, 768)}, "float32", None, "emb_params=(8, 768)"),
    "mayaru-ai+stable-diffusion-bestconfig+bad-artist.pt": ("a1111", {"clip_l": (2, 768)}, "float32", "bad-artist", "(2, 768)"),
    "mayaru-ai+stable-diffusion-bestconfig+bad_prompt_version2.pt": ("a1111", {"clip_l": (8, 768)}, "float32", "bad_prompt_version2", "(8, 768)"),
    "mayaru-ai+stable-diffusion-bestconfig+eyeliner2.pt": ("a1111", {"clip_l": (3, 768)}, "float32", "eyeliner2", "(3, 768)"),
    "oss-roettger+XL-Textual-Inversion+myPuppet768.pt": ("sdxl-emb", {"clip_l": (1, 768), "clip_g": (1, 1280)}, "bfloat16", None, "emb=(768,) bfloat16"),
    "soejrd+aiTests+learned_embeds.bin": ("concepts-library", {"clip_l": (1, 768)}, "float32", None, "tensor(768,)"),
}
REJECTED = {
    "fgjd4j23423f+sd+empty.pt": (EmbeddingStructureError, "empty dict"),
}
NOT_EMBEDDINGS = {"KoAlbert+SD_Textual_Inversion+hparams.yml", "PROVENANCE.tsv"}

METADATA = {
    "fgjd4j23423f+sd+negative_hand-neg.pt": {"step": 8000, "checkpoint_hash": "08d6be750b", "checkpoint_name": "NegTIModel"},
    "lazealia+Stable_Diff_WebUI_with_Ext+nfixer.pt": {"step": 270, "checkpoint_hash": "cae1bee30e", "checkpoint_name": "illuminatidiffusion_v1.1"},
    "mayaru-ai+stable-diffusion-bestconfig+bad-artist.pt": {"step": 1875, "checkpoint_hash": "7ab762a7", "checkpoint_name": "blossom-extract"},
    "fgjd4j23423f+sd+test_embedding.png": {"step": 60, "checkpoint_hash": None},
}


def provenance(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "PROVENANCE.tsv", newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


def test_every_shared_file_is_covered(shared_embeddings: Path) -> None:
    names = {p.name for p in shared_embeddings.iterdir()}
    assert names == set(EXPECTED) | set(REJECTED) | NOT_EMBEDDINGS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reads_with_provenance_shapes(shared_embeddings: Path, name: str) -> None:
    path = shared_embeddings / name
    row = provenance(shared_embeddings)[name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], "not the file PROVENANCE describes"
    fmt, shapes, dtype, word, shape_text = EXPECTED[name]
    assert shape_text.replace(" ", "") in row["what it is"].replace(" ", "")
    emb = read(path)
    assert emb.source_format == fmt
    assert {k: t.shape for k, t in emb.vectors.items()} == shapes
    assert emb.dtype == dtype
    if word is not None:
        assert emb.prompt_word() == word
    for field, value in METADATA.get(name, {}).items():
        assert getattr(emb, field) == value, field
    assert not emb.non_finite()


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_clear_message(shared_embeddings: Path, name: str) -> None:
    error, message = REJECTED[name]
    with pytest.raises(error, match=message) as info:
        read(shared_embeddings / name)
    assert name in str(info.value)


def test_png_containers_agree(shared_embeddings: Path) -> None:
    from conceptlib.formats import _png

    data = (shared_embeddings / "fgjd4j23423f+sd+test_embedding.png").read_bytes()
    text_payload, where = _png.read_payload("t.png", data)
    assert where == "text"
    # Drop the text chunk so only the pixels remain.
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
    pixel_payload, where = _png.read_payload("p.png", buffer.getvalue())
    assert where == "pixels"
    assert text_payload["string_to_param"]["*"].equal(pixel_payload["string_to_param"]["*"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trips_through_every_writable_format(shared_embeddings: Path, tmp_path: Path, name: str) -> None:
    emb = read(shared_embeddings / name)
    if emb.prompt_word() is None or emb.token is None:
        emb = emb.with_token(emb.prompt_word() or "<concept>")
    for fmt in WRITABLE:
        spec = FORMATS[fmt]
        if not (spec.sdxl if emb.is_sdxl else spec.single):
            continue
        out = tmp_path / fmt / (f"concept{spec.suffix}" if spec.suffix else "concept")
        write(emb, out, format=fmt)
        back = read(out)
        assert back.same_vectors(emb), f"{name} through {fmt}"
        if "name" in spec.holds and not (emb.is_sdxl and fmt in ("a1111", "png")):
            # A1111 files and PNGs always carry a name: the prompt word when there was none.
            expected = emb.name or emb.prompt_word() if fmt in ("a1111", "png") else emb.name
            assert back.name == expected, fmt
        if "step" in spec.holds and not (emb.is_sdxl and fmt in ("a1111", "png")):
            assert back.step == emb.step, fmt
