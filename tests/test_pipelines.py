"""conceptlib.pipelines: the one loader of diffusers components, for render, preview and train.

Its contract: a diffusers folder and the same model as a single LDM-layout file load to the same
weights; rendering gets a whole pipeline at one dtype, training gets the parts at the
precisions it wants; and importing the module costs nothing (no torch until a load).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conceptlib.errors import UsageError
from conceptlib.pipelines import DTYPES, dtype_name

FAMILIES = {"sd1": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"]}
WEIGHTS = ("unet", "vae")


# --- torch-free ----------------------------------------------------------------------------------


def test_importing_the_module_loads_nothing_heavy() -> None:
    code = "import sys, conceptlib.pipelines, conceptlib.render; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dtype_names() -> None:
    assert {dtype_name(k.upper()) for k in DTYPES} == {"float32", "float16", "bfloat16"}
    assert dtype_name("half") == "float16" and dtype_name("bf16") == "bfloat16"
    with pytest.raises(UsageError, match="unknown dtype 'float64'") as caught:
        dtype_name("float64")
    assert caught.value.hint == "use float32, float16 or bfloat16"


def test_render_keeps_its_import_path() -> None:
    from conceptlib import pipelines, render

    assert render.load_pipeline is pipelines.load_pipeline
    assert "load_pipeline" in render.__all__


# --- loading (torch) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per family: a seed-0 folder, it as one file, and configs-only copies of a seed-1 model."""
    pytest.importorskip("torch")
    from ldm_layout import write_single_file

    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("pipelines")
    out: dict[str, dict[str, Path]] = {}
    for family in FAMILIES:
        folder = create_tiny(base / family, family, seed=0)
        other = create_tiny(base / f"{family}-seed1", family, seed=1)
        configs = base / f"{family}-configs"
        shutil.copytree(other, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        out[family] = {"folder": folder, "file": write_single_file(folder, base / f"{family}.safetensors"), "configs": configs}
    return out


def _same_weights(ours: Any, theirs: Any, what: str) -> None:
    import torch

    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys(), what
    assert all(torch.equal(a[k], b[k]) for k in a), what


@pytest.mark.torch
@pytest.mark.parametrize("family", list(FAMILIES))
def test_folder_and_file_render_pipelines_hold_the_folders_weights(tiny: dict[str, dict[str, Path]], family: str) -> None:
    from diffusers import DiffusionPipeline

    from conceptlib.models import resolve_model
    from conceptlib.pipelines import load_pipeline, load_single_file
    from conceptlib.single_file import resolve_configs

    paths = tiny[family]
    reference = DiffusionPipeline.from_pretrained(paths["folder"])
    folder = load_pipeline(resolve_model(paths["folder"], hash_files=False))
    model = resolve_model(paths["file"], hash_files=False)
    configs = resolve_configs(model, paths["configs"])
    single = load_pipeline(model, configs=configs)
    for component in FAMILIES[family] + list(WEIGHTS):
        _same_weights(getattr(folder, component), getattr(reference, component), f"folder {component}")
        _same_weights(getattr(single, component), getattr(reference, component), f"file {component}")  # seed 0, not the configs' seed 1
    # A rendering pipeline: progress bar off, no safety checker either way.
    for pipe in (folder, single):
        assert pipe._progress_bar_config == {"disable": True}
        assert getattr(pipe, "safety_checker", None) is None
    # load_pipeline builds the file as load_single_file does (which train uses too).
    import torch

    bare = load_single_file(model, configs, torch.float32)
    assert type(bare) is type(single)
    _same_weights(bare.unet, single.unet, "load_single_file unet")
    assert bare.scheduler.config == single.scheduler.config


@pytest.mark.torch
def test_render_dtype_applies_to_every_component(tiny: dict[str, dict[str, Path]]) -> None:
    import torch

    from conceptlib.models import resolve_model
    from conceptlib.pipelines import load_pipeline
    from conceptlib.single_file import resolve_configs

    folder = resolve_model(tiny["sd1"]["folder"], hash_files=False)
    file = resolve_model(tiny["sd1"]["file"], hash_files=False)
    for pipe in (load_pipeline(folder, dtype="bf16"), load_pipeline(file, dtype="bf16", configs=resolve_configs(file, tiny["sd1"]["configs"]))):
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}


@pytest.mark.torch
def test_render_refuses_a_family_name_and_an_unknown_dtype(tiny: dict[str, dict[str, Path]]) -> None:
    from conceptlib.models import family_model, resolve_model
    from conceptlib.pipelines import load_pipeline

    with pytest.raises(UsageError, match="^sd1 is a family name, without weights to render with$"):
        load_pipeline(family_model("sd1"))
    with pytest.raises(UsageError, match="unknown dtype 'fp64'"):
        load_pipeline(resolve_model(tiny["sd1"]["folder"], hash_files=False), dtype="fp64")


@pytest.mark.torch
@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_components_from_folder_and_file_agree(tiny: dict[str, dict[str, Path]], family: str) -> None:
    import torch
    from diffusers import DDPMScheduler, DiffusionPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from conceptlib.models import resolve_model
    from conceptlib.pipelines import load_training_components
    from conceptlib.single_file import resolve_configs

    paths = tiny[family]
    reference = DiffusionPipeline.from_pretrained(paths["folder"])
    model = resolve_model(paths["file"], hash_files=False)
    loads = {
        "folder": load_training_components(resolve_model(paths["folder"], hash_files=False), None, torch.bfloat16),
        "file": load_training_components(model, resolve_configs(model, paths["configs"]), torch.bfloat16),
    }
    for how, parts in loads.items():
        # Encoders and UNet at the training precision; the VAE in float32 whatever it is.
        assert [type(e) for e in parts.encoders] == [CLIPTextModel, CLIPTextModelWithProjection][: len(FAMILIES[family])], how
        assert {e.dtype for e in parts.encoders} | {parts.unet.dtype} == {torch.bfloat16}, how
        assert parts.vae.dtype == torch.float32, how
        for ours, component in zip(parts.encoders, FAMILIES[family], strict=True):
            _same_weights(ours.float(), getattr(reference, component).to(torch.bfloat16).float(), f"{how} {component}")
        _same_weights(parts.unet.float(), reference.unet.to(torch.bfloat16).float(), f"{how} unet")
        assert len(parts.tokenizers) == len(FAMILIES[family])
        assert [t.get_vocab() for t in parts.tokenizers] == [
            getattr(reference, c.replace("text_encoder", "tokenizer")).get_vocab() for c in FAMILIES[family]
        ], how
        assert DDPMScheduler.from_config(parts.scheduler_config).config.prediction_type == "epsilon", how
    # The folder's VAE is read at float32; the file's went through bf16 (it is loaded at the
    # training precision, then brought back), so it matches to bf16 rounding only.
    _same_weights(loads["folder"].vae, reference.vae, "folder vae")
    _same_weights(loads["file"].vae, reference.vae.to(torch.bfloat16).float(), "file vae")
    # A folder's text encoders attend through SDPA (asked for by name).
    assert all(e.config._attn_implementation == "sdpa" for e in loads["folder"].encoders)
