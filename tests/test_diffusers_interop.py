"""diffusers' own ``load_textual_inversion`` accepts every diffusers-loadable file conceptlib writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.embedding import Embedding
from conceptlib.formats import write
from factory import sd1, sdxl

pytestmark = pytest.mark.torch


def tiny_tokenizer(folder: Path) -> Any:
    """conceptlib's built-in tiny CLIP tokenizer (byte-level BPE, generated in code)."""
    from transformers import CLIPTokenizer

    from conceptlib.tiny import tiny_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tiny_tokenizer_files().items():
        (folder / name).write_text(text, encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def text_encoder(width: int, vocab: int, seed: int, projection: bool = False) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
        vocab_size=vocab, max_position_embeddings=77, projection_dim=32,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    folder = tmp_path_factory.mktemp("tok")
    tokenizer = tiny_tokenizer(folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=768, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(32,), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder(768, len(tokenizer), 0), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def rows(pipe_tokenizer: Any, encoder: Any, token: str, n: int) -> np.ndarray:
    tokens = [token] + [f"{token}_{i}" for i in range(1, n)]
    ids = pipe_tokenizer.convert_tokens_to_ids(tokens)
    weight = encoder.get_input_embeddings().weight.detach().float().numpy()
    return weight[ids]


# format -> (file or folder name, token= argument diffusers needs, or None when the file names it)
CASES = {
    "diffusers": ("learned_embeds.safetensors", None),
    "diffusers-bin": ("learned_embeds.bin", None),
    "concepts-library": ("concept", None),
    "a1111": ("concept.pt", "<{case}>"),
    "emb-params": ("concept.safetensors", "<{case}>"),
    "emb-params-pt": ("concept.pt", "<{case}>"),
}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("fmt", list(CASES))
def test_load_textual_inversion(pipe: Any, tmp_path: Path, fmt: str, n: int) -> None:
    case = f"{fmt}-{n}"
    emb = sd1(n, token=f"<{case}>", seed=n)
    name, token = CASES[fmt]
    path = tmp_path / name
    write(emb, path, format=fmt)
    kwargs = {"token": token.format(case=case)} if token else {}
    pipe.load_textual_inversion(str(path), **kwargs)
    got = rows(pipe.tokenizer, pipe.text_encoder, f"<{case}>", n)
    np.testing.assert_array_equal(got, emb.vectors["clip_l"].to_float32())
    # The token now expands and changes the prompt encoding.
    prompt = pipe.maybe_convert_prompt(f"a photo of <{case}>", pipe.tokenizer)
    assert prompt.count(f"<{case}>") == n


def test_sdxl_pair_loads_into_both_encoders(pipe: Any, tmp_path: Path) -> None:
    emb = sdxl(2, token="<xl>", seed=7)
    first, second = write(emb, tmp_path / "learned_embeds.safetensors")
    tokenizer_2 = tiny_tokenizer(tmp_path / "tok2")
    encoder_2 = text_encoder(1280, len(tokenizer_2), 1, projection=True)
    pipe.load_textual_inversion(str(first))
    pipe.load_textual_inversion(str(second), text_encoder=encoder_2, tokenizer=tokenizer_2)
    np.testing.assert_array_equal(rows(pipe.tokenizer, pipe.text_encoder, "<xl>", 2), emb.vectors["clip_l"].to_float32())
    np.testing.assert_array_equal(rows(tokenizer_2, encoder_2, "<xl>", 2), emb.vectors["clip_g"].to_float32())


def test_fp16_file_keeps_its_values(pipe: Any, tmp_path: Path) -> None:
    emb = Embedding({"clip_l": sd1(2, dtype="float16", seed=3).vectors["clip_l"]}, token="<half>")
    write(emb, tmp_path / "half.safetensors")
    pipe.load_textual_inversion(str(tmp_path / "half.safetensors"))
    np.testing.assert_array_equal(rows(pipe.tokenizer, pipe.text_encoder, "<half>", 2), emb.vectors["clip_l"].to_float32())
