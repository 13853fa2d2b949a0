"""Sample concepts in every format, generated from fixed seeds, for the demo and for users' tests.

The vectors are random (seeded), so they teach a model nothing, but the files are real: each is
written by the same writers ``conceptlib convert`` uses and reads back in every tool that reads
that format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conceptlib.embedding import Embedding
from conceptlib.formats import write
from conceptlib.tensor import Tensor


def _vectors(n: int, width: int, seed: int) -> Tensor:
    # CLIP token embeddings have norms around 0.3-0.5; scale so validation sees plausible norms.
    values = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32) * 0.015
    return Tensor.from_numpy(values)


def _image(path: Path, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(40, 200, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        draw.ellipse((x, y, x + 24, y + 24), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_samples(folder: str | Path) -> list[Path]:
    """Write sample concepts into ``folder`` (created) and return the paths a user would add.

    Returns, in order: an sd-concepts-library folder with images (``cat-toy/``), a diffusers
    ``.safetensors`` style, an AUTOMATIC1111 negative ``.pt``, an AUTOMATIC1111 embedding PNG,
    a diffusers SDXL pair folder, a 1024-wide SD 2.x ``.pt``, a duplicate of the first concept
    under another name, and a Git LFS pointer saved in place of an embedding.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    cat = Embedding({"clip_l": _vectors(1, 768, 1)}, token="<cat-toy>", metadata={"concept_type": "object"})
    write(cat, root / "cat-toy", format="concepts-library", force=True)
    for i in range(3):
        _image(root / "cat-toy" / "concept_images" / f"{i}.png", seed=10 + i)
    birb = Embedding({"clip_l": _vectors(2, 768, 2)}, token="<birb-style>", step=3000)
    write(birb, root / "birb-style.safetensors", force=True)
    bad = Embedding({"clip_l": _vectors(2, 768, 3)}, name="bad-artist", step=1875, checkpoint_hash="a9263745", checkpoint_name="sd-1.5")
    write(bad, root / "bad-artist.pt", force=True)
    neg = Embedding({"clip_l": _vectors(8, 768, 4)}, name="easy-negative", step=12000)
    write(neg, root / "easy-negative.png", force=True)
    xl = Embedding({"clip_l": _vectors(2, 768, 5), "clip_g": _vectors(2, 1280, 6)}, token="<xl-detail>")
    write(xl, root / "xl-detail", format="diffusers-sdxl", force=True)
    sd2 = Embedding({"clip_h": _vectors(4, 1024, 7)}, name="nfixer")
    write(sd2, root / "nfixer.pt", force=True)
    write(cat.with_token("<cat-toy-again>"), root / "cat-toy-copy.safetensors", force=True)
    (root / "learned_embeds.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:1a8d5bb4bd7b1d9f5d4d5ae2a2c0c9e3b8c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5\nsize 3819\n"
    )
    return [
        root / "cat-toy",
        root / "birb-style.safetensors",
        root / "bad-artist.pt",
        root / "easy-negative.png",
        root / "xl-detail",
        root / "nfixer.pt",
        root / "cat-toy-copy.safetensors",
        root / "learned_embeds.bin",
    ]


def write_model_description(folder: str | Path) -> Path:
    """Write the built-in tiny SD 1.x model *without weights*: configs and its real tokenizer.

    Enough for validation (widths, context, vocabulary collisions) on a core install without
    torch; ``conceptlib models create-tiny`` writes the runnable model with weights.
    """
    from conceptlib.tiny import tiny_tokenizer_files

    root = Path(folder)
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name, text in tiny_tokenizer_files().items():
        (root / "tokenizer" / name).write_text(text, encoding="utf-8")
    vocab = len(json.loads(tiny_tokenizer_files()["vocab.json"]))
    (root / "text_encoder").mkdir(exist_ok=True)
    (root / "text_encoder" / "config.json").write_text(json.dumps({
        "architectures": ["CLIPTextModel"], "hidden_size": 768, "intermediate_size": 64,
        "max_position_embeddings": 77, "num_attention_heads": 4, "num_hidden_layers": 1,
        "vocab_size": vocab, "model_type": "clip_text_model",
    }, indent=2))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon"}))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }, indent=2))
    return root
