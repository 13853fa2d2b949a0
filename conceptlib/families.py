"""Text encoders and base-model families, keyed by vector width.

A textual-inversion vector lives in one text encoder's token-embedding space, so its width
names the encoder: 768 for CLIP ViT-L/14 (SD 1.x, and SDXL's first encoder), 1024 for
OpenCLIP ViT-H/14 (SD 2.x), 1280 for OpenCLIP ViT-bigG/14 (SDXL's second encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

#: encoder key -> width; the order is the canonical order of encoders everywhere.
ENCODERS: dict[str, int] = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280}
WIDTH_TO_ENCODER: dict[int, str] = {width: key for key, width in ENCODERS.items()}

#: Widths of text encoders that are *not* Stable Diffusion CLIP encoders, for clearer errors.
FOREIGN_WIDTHS: dict[int, str] = {
    4096: "a T5-XXL encoder (Flux, SD3): not a Stable Diffusion 1.x/2.x/XL embedding",
    2048: "two SDXL encoders concatenated (768+1280) in one tensor",
    512: "a CLIP ViT-B encoder, which no Stable Diffusion model uses",
}


@dataclass(frozen=True)
class Family:
    """A base-model family as far as embeddings are concerned."""

    key: str
    label: str
    encoders: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "SD 1.x", ("clip_l",)),
    "sd2": Family("sd2", "SD 2.x", ("clip_h",)),
    "sdxl": Family("sdxl", "SDXL", ("clip_l", "clip_g")),
}


#: The model kinds a family name alone can describe -> their family (SD 2.x has two).
FAMILY_MODEL_KEYS: dict[str, str] = {"sd1": "sd1", "sd2": "sd2", "sd2-v": "sd2", "sdxl": "sdxl"}

#: Every other spelling of a family a user may type, lowercase -> a key of FAMILY_MODEL_KEYS.
#: One table, so `list --base`, `--compatible-with` and `--model` accept the same names.
FAMILY_ALIASES: dict[str, str] = {
    "sd1.x": "sd1", "sd 1.x": "sd1", "sd1x": "sd1", "1": "sd1", "sd15": "sd1", "sd1.5": "sd1",
    "sd-1.5": "sd1", "sd14": "sd1", "sd1.4": "sd1",
    "sd2.x": "sd2", "sd 2.x": "sd2", "sd2x": "sd2", "2": "sd2", "sd21": "sd2", "sd2.1": "sd2",
    "sd2-base": "sd2", "sd21-base": "sd2",
    "sd21-v": "sd2-v", "sd2.1-v": "sd2-v", "sd2-768": "sd2-v",
    "xl": "sdxl", "sd xl": "sdxl", "sdxl-base": "sdxl", "sdxl1": "sdxl", "sdxl-1.0": "sdxl",
}  # fmt: skip


def family_model_key(name: str) -> str | None:
    """``sd1``, ``sd2``, ``sd2-v`` or ``sdxl`` for a family name or alias (``sd15``, ``SD 1.x``), else None."""
    key = name.strip().lower()
    key = FAMILY_ALIASES.get(key, key)
    return key if key in FAMILY_MODEL_KEYS else None


def family_key_of(name: str) -> str | None:
    """``sd1``, ``sd2`` or ``sdxl`` for a family name or alias (``sd2-v`` is SD 2.x), else None."""
    key = family_model_key(name)
    return FAMILY_MODEL_KEYS[key] if key is not None else None


def family_label(key: str | None) -> str:
    """``SD 1.x``, ``SD 2.x``, ``SDXL``, or ``unknown`` for no or an unknown family key."""
    family = FAMILIES.get(key or "")
    return family.label if family else "unknown"


def sort_encoders(keys: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """Encoder keys in canonical order (clip_l, clip_h, clip_g)."""
    order = list(ENCODERS)
    return sorted(keys, key=lambda k: order.index(k) if k in order else len(order))


def family_for_encoders(keys: list[str] | tuple[str, ...] | set[str]) -> Family | None:
    """The family whose encoders are exactly ``keys``; a lone clip_g counts as (partial) SDXL."""
    wanted = tuple(sort_encoders(keys))
    for family in FAMILIES.values():
        if family.encoders == wanted:
            return family
    if wanted == ("clip_g",):
        return FAMILIES["sdxl"]
    return None


def describe_widths(widths: dict[str, int]) -> str:
    """Human description such as ``768`` or ``768 + 1280``."""
    return " + ".join(str(widths[k]) for k in sort_encoders(list(widths)))
