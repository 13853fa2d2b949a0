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
