"""Built-in tiny Stable Diffusion models: real text widths, everything else as small as possible.

:func:`create_tiny` writes a diffusers folder that ``StableDiffusionPipeline`` (``sd1``, ``sd2``,
``sd2-v``) or ``StableDiffusionXLPipeline`` (``sdxl``) load with ``from_pretrained`` and run in
about a second on a CPU. The project's tests, the README demo and CI previews use these models
because they need no download and no GPU.

What is real and what is tiny:

* The text encoders keep the real widths (768 for CLIP ViT-L, 1024 for OpenCLIP ViT-H, 768 +
  1280 for SDXL) and the real 77-token context, so every real textual-inversion file loads into
  them. They have one transformer layer and a small MLP.
* The tokenizer is a CLIP-style byte-level BPE (``</w>`` marks word ends) generated here, in code,
  from a list of common English and prompt words: about 900 entries instead of 49,408, with
  enough merges that those words are single tokens. No data file is shipped.
* The UNet and VAE are a few thousand parameters with the real latent layout (4 channels, 8x
  downsampling), so 64 px images are 8x8 latents.

The same ``seed`` gives bit-identical weights: every component is initialised from its own
seeded generator on the CPU and saved as safetensors in a fixed order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from conceptlib._terminal import printable
from conceptlib.errors import DestinationExistsError, UsageError

__all__ = ["TINY_FAMILIES", "TINY_WORDS", "create_tiny", "tiny_tokenizer_files"]

#: family key -> (pipeline class, encoder widths, prediction type, image size in pixels)
TINY_FAMILIES: dict[str, tuple[str, tuple[int, ...], str, int]] = {
    "sd1": ("StableDiffusionPipeline", (768,), "epsilon", 64),
    "sd2": ("StableDiffusionPipeline", (1024,), "epsilon", 64),
    "sd2-v": ("StableDiffusionPipeline", (1024,), "v_prediction", 64),
    "sdxl": ("StableDiffusionXLPipeline", (768, 1280), "epsilon", 64),
}

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77

#: Words the tiny tokenizer knows whole. Ordinary prompt vocabulary, so tests can build
#: collisions ("cat" is a word here as in the real CLIP vocabulary) and prompts tokenize into a
#: handful of tokens rather than dozens of bytes. Order matters only for determinism.
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "by", "from", "for", "to",
    "is", "as", "it", "this", "that", "very", "no", "not", "up", "out", "over", "under",
    "photo", "photograph", "painting", "picture", "image", "portrait", "drawing", "sketch",
    "illustration", "render", "style", "art", "artist", "oil", "canvas", "digital", "anime",
    "cartoon", "realistic", "detailed", "high", "quality", "best", "worst", "low", "bad", "good",
    "blurry", "sharp", "ugly", "beautiful", "cute", "happy", "sad", "old", "young", "small", "big",
    "cat", "dog", "bird", "fish", "horse", "man", "woman", "person", "people", "child", "face",
    "hand", "hands", "eyes", "hair", "house", "tree", "car", "city", "street", "sky", "sun",
    "moon", "water", "sea", "mountain", "forest", "flower", "garden", "room", "table", "chair",
    "toy", "hat", "shirt", "dress", "background", "front", "view", "close", "light", "dark",
    "red", "blue", "green", "yellow", "black", "white", "gold", "silver", "pink", "purple",
    "standing", "sitting", "wearing", "holding", "looking", "night", "day", "winter", "summer",
    "sculpture", "statue", "poster", "watercolor", "pencil", "ink", "neon", "studio", "lighting",
    "cinematic", "masterpiece", "extra", "fingers", "missing", "text", "watermark", "signature",
)


# --- tokenizer ---------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's byte -> printable character table, in vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    # CLIP lists the 256 characters in the order of the byte table, printable ranges first.
    return [chr(c) for c in chars]


def byte_decoder() -> dict[str, int]:
    """The inverse of CLIP/GPT-2's byte table: a vocabulary character -> the byte it stands for.

    A token such as ``Ã©`` is the two bytes of ``é``; decoding a token's characters through this
    table and the bytes as UTF-8 gives the text it covers.
    """
    printable_bytes = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    order = printable_bytes + [b for b in range(256) if b not in printable_bytes]
    return dict(zip(_bytes_to_unicode(), order, strict=True))


def join_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """``symbols`` with every adjacent occurrence of ``pair`` joined into one, left to right:
    one BPE merge, as training learns it and as encoding applies it."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _train_bpe(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Learn merges until every word in ``words`` is one symbol.

    Classic BPE training (most frequent adjacent pair first, ties broken by the pair's text so
    the result never depends on hash order). Because each merge is applied to every word before
    the next one is chosen, replaying the merges by rank, as the CLIP tokenizer does, rebuilds
    each training word as a single token.
    """
    corpus: dict[tuple[str, ...], int] = {}
    for rank, word in enumerate(words):
        symbols = (*word[:-1], word[-1] + "</w>")
        # Earlier words are more common: weight them higher so shared prefixes merge first.
        corpus[symbols] = corpus.get(symbols, 0) + len(words) - rank
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, weight in corpus.items():
            for left, right in zip(symbols[:-1], symbols[1:], strict=True):
                pairs[(left, right)] += weight
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, weight in corpus.items():
            out = tuple(join_pair(list(symbols), best))
            merged[out] = merged.get(out, 0) + weight
        corpus = merged


def tiny_tokenizer_files() -> dict[str, str]:
    """The tiny CLIP tokenizer's files, generated deterministically.

    Returns:
        File name -> text for ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
        ``special_tokens_map.json``, in the layout of the real SD tokenizers.

    Example:
        >>> files = tiny_tokenizer_files()
        >>> "cat</w>" in json.loads(files["vocab.json"])
        True
    """
    return dict(_tokenizer_files())


@lru_cache(maxsize=1)
def _tokenizer_files() -> tuple[tuple[str, str], ...]:
    base = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for symbol in base + [c + "</w>" for c in base]:
        vocab.setdefault(symbol, len(vocab))
    merges = _train_bpe(TINY_WORDS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        **special,
    }
    return (
        ("vocab.json", json.dumps(vocab, ensure_ascii=False, indent=0) + "\n"),
        # The CLIP loaders skip the first line of merges.txt: it must be the version header.
        ("merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)),
        ("tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n"),
        ("special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n"),
    )


# --- model -------------------------------------------------------------------------------------


def _text_encoder(width: int, vocab_size: int, *, projection: bool, seed: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        # One layer: enough for SDXL's "penultimate hidden state" (the embedding output) and
        # for real embeddings to change the output, while keeping the file a few MB.
        num_hidden_layers=1,
        num_attention_heads=width // 64,
        intermediate_size=64,
        max_position_embeddings=CONTEXT_LENGTH,
        projection_dim=32 if projection else width,
        hidden_act="quick_gelu" if width == 768 else "gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config)


def _unet(cross_attention_dim: int, *, sdxl: bool, seed: int) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    extra: dict[str, Any] = {}
    if sdxl:
        # SDXL conditions on the pooled text embedding (projection_dim 32) plus six size/crop
        # numbers, each embedded in addition_time_embed_dim channels.
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
        }
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=cross_attention_dim != 768,
        **extra,
    )


def _vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # Four blocks give the real 8x downsampling, so pipelines compute the usual latent size.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _scheduler(prediction_type: str) -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        steps_offset=1,
        timestep_spacing="leading",
    )


#: The largest seed torch's generators take (a signed 64-bit integer).
MAX_TINY_SEED = 2**63 - 1


def create_tiny(
    out_dir: str | os.PathLike[str],
    family: str = "sd1",
    seed: int = 0,
    *,
    force: bool = False,
) -> Path:
    """Write a tiny, runnable Stable Diffusion model as a diffusers folder.

    Args:
        out_dir: the folder to create. It must not exist (or be empty) unless ``force``.
        family: ``sd1``, ``sd2`` (epsilon, like SD 2.1-base), ``sd2-v`` (v-prediction, like
            SD 2.1 768) or ``sdxl``.
        seed: weights are a pure function of ``(family, seed)``, bit for bit.
        force: replace an existing non-empty ``out_dir``.

    Returns:
        The folder written (absolute).

    Raises:
        UsageError: unknown family, or a seed outside 0..2**63-1.
        DestinationExistsError: ``out_dir`` exists, is not empty and ``force`` is False.
        MissingDependencyError: torch, diffusers or transformers is not installed.

    Example:
        >>> path = create_tiny("/tmp/tiny-sd1", "sd1", seed=0)  # doctest: +SKIP
        >>> from diffusers import StableDiffusionPipeline  # doctest: +SKIP
        >>> pipe = StableDiffusionPipeline.from_pretrained(path)  # doctest: +SKIP
        >>> pipe("a photo of a cat", num_inference_steps=2, height=64, width=64)  # doctest: +SKIP
    """
    from conceptlib._atomic import fsync_dir
    from conceptlib._deps import require

    if family not in TINY_FAMILIES:
        raise UsageError(
            f"unknown family {family!r} for a tiny model",
            hint=f"choose one of {', '.join(TINY_FAMILIES)}",
        )
    # torch.manual_seed takes a signed 64-bit value; past it the seed fails deep inside torch.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_TINY_SEED:
        raise UsageError(f"--seed: must be a whole number from 0 to {MAX_TINY_SEED}, got {printable(seed)}")
    target = Path(out_dir).expanduser().resolve()
    if target.exists() and not target.is_dir():
        # --force replaces a folder's contents, never a file: the hint must not promise otherwise.
        raise DestinationExistsError(
            "exists and is a file; a tiny model is a folder", path=target, hint="choose another path, or move the file away"
        )
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DestinationExistsError("exists and is not empty", path=target)
    require("torch", "diffusers", "transformers", purpose="creating a tiny model")

    import diffusers
    import torch
    from transformers.utils import logging as transformers_logging

    pipeline_class, widths, prediction_type, _size = TINY_FAMILIES[family]
    sdxl = family == "sdxl"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename at the end, so an interrupted run leaves nothing
    # half-written under the requested name.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # transformers draws a progress bar for every save; four tiny files need none.
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        files = tiny_tokenizer_files()
        vocab_size = len(json.loads(files["vocab.json"]))
        index: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__}
        with torch.no_grad():
            # Distinct, fixed seeds per component: adding a component never shifts the others.
            suffixes = ("", "_2") if sdxl else ("",)
            for n, (suffix, width) in enumerate(zip(suffixes, widths, strict=True)):
                projection = sdxl and suffix == "_2"
                encoder = _text_encoder(width, vocab_size, projection=projection, seed=seed * 16 + n)
                encoder.save_pretrained(staging / f"text_encoder{suffix}")
                tok_dir = staging / f"tokenizer{suffix}"
                tok_dir.mkdir()
                for name, text in files.items():
                    (tok_dir / name).write_text(text, encoding="utf-8")
                index[f"text_encoder{suffix}"] = [
                    "transformers",
                    "CLIPTextModelWithProjection" if projection else "CLIPTextModel",
                ]
                index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
            unet = _unet(sum(widths), sdxl=sdxl, seed=seed * 16 + 8)
            unet.save_pretrained(staging / "unet", safe_serialization=True)
            _vae(seed * 16 + 9).save_pretrained(staging / "vae", safe_serialization=True)
        _scheduler(prediction_type).save_pretrained(staging / "scheduler")
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
        index["vae"] = ["diffusers", "AutoencoderKL"]
        index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
        if sdxl:
            index["force_zeros_for_empty_prompt"] = True
            index["add_watermarker"] = False
        else:
            index["safety_checker"] = [None, None]
            index["feature_extractor"] = [None, None]
            index["requires_safety_checker"] = False
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    fsync_dir(target.parent)
    return target
