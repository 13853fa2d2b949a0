"""Built-in tiny models: they load in the diffusers pipelines, run on a CPU, and are reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conceptlib.errors import DestinationExistsError, UsageError
from conceptlib.tiny import TINY_WORDS, _bytes_to_unicode, create_tiny, tiny_tokenizer_files

# --- the tokenizer (pure Python) ---------------------------------------------------------------


def test_tokenizer_files_are_deterministic_and_consistent() -> None:
    files = tiny_tokenizer_files()
    assert files == tiny_tokenizer_files()
    vocab = json.loads(files["vocab.json"])
    lines = files["merges.txt"].splitlines()
    assert lines[0] == "#version: 0.2"  # CLIP loaders skip the first line
    merges = [tuple(line.split(" ")) for line in lines[1:]]
    assert 200 < len(merges) < 1000
    base = _bytes_to_unicode()
    assert len(set(base)) == 256 and base[:3] == ["!", '"', "#"]
    # CLIP layout: 256 byte symbols, the same with </w>, merge results, then BOS and EOS.
    assert [k for k, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:512] == base + [c + "</w>" for c in base]
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert sorted(vocab.values()) == list(range(len(vocab)))
    for left, right in merges:
        assert left in vocab and right in vocab and left + right in vocab
    for word in TINY_WORDS:
        assert word + "</w>" in vocab


# --- models (torch) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("tiny")
    return {family: create_tiny(root / family, family, seed=0) for family in ("sd1", "sd2", "sd2-v", "sdxl")}


def weight_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


@pytest.mark.torch
def test_tokenizer_loads_in_transformers(tiny_models: dict[str, Path]) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_models["sd1"] / "tokenizer")
    for word in TINY_WORDS:
        assert tok.tokenize(word) == [word + "</w>"], word
    ids = tok("a photo of a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 7
    assert tok.model_max_length == 77


@pytest.mark.torch
@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_pipeline_runs(tiny_models: dict[str, Path], family: str) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(tiny_models[family])
    pipe.set_progress_bar_config(disable=True)
    expected = {"sd1": [768], "sd2": [1024], "sd2-v": [1024], "sdxl": [768, 1280]}[family]
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    assert [e.get_input_embeddings().weight.shape[1] for e in encoders] == expected
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    images = pipe(
        "a photo of a cat", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


@pytest.mark.torch
def test_same_seed_same_bits(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    again = create_tiny(tmp_path / "again", "sdxl", seed=0)
    assert weight_hashes(again) == weight_hashes(tiny_models["sdxl"])
    assert (again / "tokenizer" / "vocab.json").read_bytes() == (tiny_models["sdxl"] / "tokenizer" / "vocab.json").read_bytes()
    other = create_tiny(tmp_path / "other", "sdxl", seed=1)
    assert set(weight_hashes(other).values()).isdisjoint(weight_hashes(again).values())


@pytest.mark.torch
def test_tiny_models_describe_themselves(tiny_models: dict[str, Path]) -> None:
    from conceptlib.models import read_model

    sd1 = read_model(tiny_models["sd1"])
    assert (sd1.family, sd1.prediction_type, sd1.sample_size, sd1.widths) == ("sd1", "epsilon", 64, {"clip_l": 768})
    [enc] = sd1.encoders
    assert enc.fingerprint and enc.norms and enc.tokenizer and enc.tokenizer.vocab_size == enc.vocab_size
    assert read_model(tiny_models["sd2-v"]).prediction_type == "v_prediction"
    xl = read_model(tiny_models["sdxl"])
    assert xl.family == "sdxl" and len(xl.fingerprints()) == 2
    assert sorted(xl.files) == [
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip


@pytest.mark.torch
def test_real_width_embeddings_load_and_validate(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from conceptlib.formats import write
    from conceptlib.models import read_model
    from conceptlib.validate import validate
    from factory import sd1

    emb = sd1(2, token="<cat-toy>")
    model = read_model(tiny_models["sd1"])
    assert validate(emb, model) == []
    assert [f.code for f in validate(sd1(1, token="cat"), model)] == ["token-is-word"]
    path = tmp_path / "learned_embeds.safetensors"
    write(emb, path)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd1"])
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(path))
    assert pipe.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"]) == [889, 890]
    out = pipe("a <cat-toy> toy", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.isfinite(out.images).all()


@pytest.mark.torch
def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(DestinationExistsError, match="not empty"):
        create_tiny(tmp_path / "m")
    path = create_tiny(tmp_path / "m", force=True)
    assert not (path / "keep.txt").exists() and (path / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    # A file in the way: --force replaces a folder's contents, never a file, and the hint says so.
    (tmp_path / "f").write_text("x")
    with pytest.raises(DestinationExistsError) as caught:
        create_tiny(tmp_path / "f", force=True)
    assert str(caught.value) == f"{(tmp_path / 'f').resolve()}: exists and is a file; a tiny model is a folder"
    assert caught.value.hint == "choose another path, or move the file away"
    assert (tmp_path / "f").read_text() == "x"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown family 'sd3'"):
        create_tiny(tmp_path / "m", "sd3")
    with pytest.raises(UsageError, match="seed"):
        create_tiny(tmp_path / "m", "sd1", seed=-1)
    assert not (tmp_path / "m").exists()
