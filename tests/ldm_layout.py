"""Write a diffusers model folder as one single-file checkpoint in the original LDM key layout.

AUTOMATIC1111, ComfyUI and most model sites hand out Stable Diffusion as one ``.safetensors``
file laid out as the original CompVis/Stability code named things (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*``). diffusers reads
that layout (``from_single_file``) but only writes its own, so the tests build their single-file
fixtures here: a tiny seeded model from :mod:`conceptlib.tiny`, renamed key by key.

The mapping is the inverse of diffusers' LDM -> diffusers conversion; a test proves it by loading
the file back through diffusers and comparing every tensor with the folder's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_RESNET_UNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_OPEN_CLIP_LAYER = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


def _swap(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for new, old in pairs:
        if name.startswith(new + ".") or name == new:
            return old + name[len(new):]
    return name


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in the ``model.diffusion_model.`` layout."""
    per = config["layers_per_block"] + 1  # LDM input blocks per level: the layers plus a downsampler
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "time_embedding":
            name = f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[parts[1]] }.{parts[2]}"
        elif parts[0] == "add_embedding":
            name = f"label_emb.0.{ {'linear_1': 0, 'linear_2': 2}[parts[1]] }.{parts[2]}"
        elif parts[0] == "conv_in":
            name = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "conv_norm_out":
            name = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            name = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":  # the level's last input block: its conv is named "op"
                name = f"input_blocks.{level * per + per}.0.op.{rest.removeprefix('conv.')}"
            else:
                block = 1 + level * per + index
                name = f"input_blocks.{block}.{0 if kind == 'resnets' else 1}.{_swap(rest, _RESNET_UNET) if kind == 'resnets' else rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            name = f"middle_block.{2 * index if kind == 'resnets' else 1}.{_swap(rest, _RESNET_UNET) if kind == 'resnets' else rest}"
        elif parts[0] == "up_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":  # after the level's last resnet, and after its attention if any
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
                name = f"output_blocks.{level * per + per - 1}.{2 if has_attention else 1}.{rest}"
            else:
                block = level * per + index
                name = f"output_blocks.{block}.{0 if kind == 'resnets' else 1}.{_swap(rest, _RESNET_UNET) if kind == 'resnets' else rest}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + name] = value
    return out


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the ``first_stage_model.`` layout."""
    levels = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        side, rest = parts[0], parts[1:]
        if side in ("quant_conv", "post_quant_conv") or rest[0] in ("conv_in", "conv_out"):
            name = key
        elif rest[0] == "conv_norm_out":
            name = f"{side}.norm_out.{rest[1]}"
        elif rest[0] in ("down_blocks", "up_blocks"):
            level = int(rest[1])
            ldm_level = level if rest[0] == "down_blocks" else levels - 1 - level
            ldm_side = "down" if rest[0] == "down_blocks" else "up"
            if rest[2] == "resnets":
                name = f"{side}.{ldm_side}.{ldm_level}.block.{rest[3]}.{'.'.join(rest[4:]).replace('conv_shortcut', 'nin_shortcut')}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                name = f"{side}.{ldm_side}.{ldm_level}.{'downsample' if ldm_side == 'down' else 'upsample'}.{'.'.join(rest[4:])}"
        elif rest[0] == "mid_block" and rest[1] == "resnets":
            name = f"{side}.mid.block_{int(rest[2]) + 1}.{'.'.join(rest[3:]).replace('conv_shortcut', 'nin_shortcut')}"
        elif rest[0] == "mid_block" and rest[1] == "attentions":
            layer = ".".join(rest[3:])
            layer = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[layer.rsplit(".", 1)[0]] + "." + layer.rsplit(".", 1)[1]
            name = f"{side}.mid.attn_1.{layer}"
            if value.ndim == 2:  # the original attention used 1x1 convolutions
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + name] = value
    return out


def clip_to_ldm(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """An OpenAI CLIP text encoder (transformers layout) under ``prefix`` + ``text_model.*``."""
    out = {}
    for key, value in state.items():
        if key.startswith("text_projection"):
            continue
        out[prefix + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


def open_clip_to_ldm(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """An OpenCLIP text tower (SD 2.x, SDXL's second encoder): fused q/k/v, ``resblocks``."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: dict[str, Any] = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for n in layers:
        here = f"encoder.layers.{n}."
        there = f"{prefix}transformer.resblocks.{n}."
        for what in ("weight", "bias"):
            out[there + f"attn.in_proj_{what}"] = torch.cat([state.pop(here + f"self_attn.{p}_proj.{what}") for p in "qkv"])
        for key in [k for k in state if k.startswith(here)]:
            out[there + _swap(key[len(here):], _OPEN_CLIP_LAYER)] = state.pop(key)
    if state:
        raise KeyError(f"no LDM name for text encoder keys {sorted(state)}")
    return out


def write_single_file(folder: str | Path, out: str | Path) -> Path:
    """Write the diffusers model ``folder`` (SD 1.x, 2.x or XL) as one LDM-layout safetensors file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    state = unet_to_ldm(unet.state_dict(), dict(unet.config)) | vae_to_ldm(vae.state_dict(), dict(vae.config))
    first = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    if (folder / "text_encoder_2").is_dir():  # SDXL: OpenAI CLIP-L plus OpenCLIP bigG
        second = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").state_dict()
        state |= clip_to_ldm(first, "conditioner.embedders.0.transformer.")
        state |= open_clip_to_ldm(second, "conditioner.embedders.1.model.")
    elif json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"] == 1024:  # SD 2.x
        state |= open_clip_to_ldm(first, "cond_stage_model.model.")
    else:
        state |= clip_to_ldm(first, "cond_stage_model.transformer.")
    out = Path(out)
    save_file({k: v.contiguous() for k, v in state.items()}, out)
    return out
