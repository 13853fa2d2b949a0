"""Single-file checkpoints (AUTOMATIC1111/ComfyUI layout): loading, training and rendering.

The fixtures are the tiny seeded models written as one LDM-layout file by ``ldm_layout``; the
configs they are built with are separate folders without any weights, or a repository on the
local Hub server, as a user's would be.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hubserver import HubServer
from ldm_layout import write_single_file

from conceptlib.errors import ModelConfigError
from conceptlib.hub import MODEL_CONFIG_PATTERNS
from conceptlib.models import resolve_model
from conceptlib.pipelines import load_single_file
from conceptlib.single_file import DEFAULT_CONFIG_REPOS, resolve_configs

pytestmark = pytest.mark.torch

COMPONENTS = {"sd1": ["unet", "vae", "text_encoder"], "sd2-v": ["unet", "vae", "text_encoder"], "sdxl": ["unet", "vae", "text_encoder", "text_encoder_2"]}


def _configs_only(folder: Path, out: Path) -> Path:
    """A copy of a diffusers folder without weights: what --model-config needs."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per family: the seed-0 folder, it as one file, and configs-only copies of a seed-1 model."""
    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("single")
    out: dict[str, dict[str, Path]] = {}
    for family in COMPONENTS:
        folder = create_tiny(base / family, family, seed=0)
        other = create_tiny(base / f"{family}-seed1", family, seed=1)
        out[family] = {
            "folder": folder,
            "file": write_single_file(folder, base / f"{family}.safetensors"),
            "configs": _configs_only(other, base / f"{family}-configs"),
        }
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(COMPONENTS))
def test_weights_come_from_the_file_and_configs_from_the_folder(tiny: dict[str, dict[str, Path]], family: str) -> None:
    import torch
    from diffusers import DiffusionPipeline

    paths = tiny[family]
    model = resolve_model(paths["file"])
    assert model.kind == "checkpoint"
    configs = resolve_configs(model, paths["configs"])
    assert configs.sample_size == 64 and configs.source == str(paths["configs"])
    # The SD 2.x file says nothing about its prediction type: the configs' scheduler decides.
    assert configs.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    pipe = load_single_file(model, configs, torch.float32)
    reference = DiffusionPipeline.from_pretrained(paths["folder"])
    for component in COMPONENTS[family]:
        ours, theirs = getattr(pipe, component).state_dict(), getattr(reference, component).state_dict()
        assert ours.keys() == theirs.keys(), component
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), component  # seed 0, not the configs' seed 1
    assert pipe.scheduler.config.prediction_type == configs.prediction_type


def test_a_ckpt_file_loads_like_the_safetensors_one(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    # The .ckpt layout of the original releases: the state dict under "state_dict", plus extras.
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(tiny["sd1"]["file"]), "global_step": 470000}, ckpt)
    model = resolve_model(ckpt)  # read by conceptlib's allowlist reader first
    assert model.kind == "checkpoint" and model.family == "sd1"
    ours = load_single_file(model, resolve_configs(model, tiny["sd1"]["configs"]), torch.float32)
    reference = load_single_file(resolve_model(tiny["sd1"]["file"]), resolve_configs(model, tiny["sd1"]["configs"]), torch.float32)
    for component in COMPONENTS["sd1"]:
        a, b = getattr(ours, component).state_dict(), getattr(reference, component).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), component


def test_the_file_declares_its_prediction_type(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    import torch

    file = tmp_path / "sd21.safetensors"
    shutil.copy(tiny["sd2-v"]["file"], file)
    with pytest.raises(ModelConfigError, match="512-base .epsilon. or 768-v") as caught:
        resolve_configs(resolve_model(file))
    assert "sd21.yaml" in str(caught.value.hint) and DEFAULT_CONFIG_REPOS[("sd2", "epsilon")] in str(caught.value.hint)
    # AUTOMATIC1111's convention: a .yaml beside the file. It wins over the configs' scheduler.
    file.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "eps"\n')
    configs = resolve_configs(resolve_model(file), tiny["sd2-v"]["configs"])
    assert configs.prediction_type == "epsilon"
    assert load_single_file(resolve_model(file), configs, torch.float32).scheduler.config.prediction_type == "epsilon"


def test_configs_of_another_family_are_refused(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    model = resolve_model(tiny["sd1"]["file"])
    with pytest.raises(ModelConfigError, match=r"configs in .*sdxl-configs are SDXL .*the checkpoint is SD 1.x"):
        resolve_configs(model, tiny["sdxl"]["configs"])
    with pytest.raises(ModelConfigError, match="no model_index.json"):
        resolve_configs(model, tmp_path)
    for wrong in (tmp_path / "no" / "such" / "thing", "./sd15", tiny["sd1"]["file"]):
        with pytest.raises(ModelConfigError, match="neither a diffusers folder nor a Hub repository"):
            resolve_configs(model, wrong)


def test_weights_that_do_not_fit_the_configs_are_one_error(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    import torch

    configs = _configs_only(tiny["sd1"]["configs"], tmp_path / "wider")
    unet_config = configs / "unet" / "config.json"
    unet_config.write_text(json.dumps(json.loads(unet_config.read_text()) | {"block_out_channels": [32, 64]}))
    model = resolve_model(tiny["sd1"]["file"])
    with pytest.raises(ModelConfigError, match="cannot be built with the configs of") as caught:
        load_single_file(model, resolve_configs(model, configs), torch.float32)
    assert str(tiny["sd1"]["file"]) in str(caught.value)


# --- training and rendering ----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_training_from_the_file_equals_training_from_the_folder(
    tiny: dict[str, dict[str, Path]], images: Path, tmp_path: Path, family: str
) -> None:
    from conceptlib.train import TrainConfig, train

    def run(model: Path, out: str, **kw: Any) -> Any:
        return train(TrainConfig(
            model=str(model), images=str(images), token="<toy>", init_word="toy", steps=3, lr=0.02,
            save_every=0, out=str(tmp_path / out), add_to_library=False, **kw,
        ))  # fmt: skip

    folder = run(tiny[family]["folder"], "folder")
    single = run(tiny[family]["file"], "file", model_config=str(tiny[family]["configs"]))
    assert folder.embedding.vectors.keys() == single.embedding.vectors.keys()
    for key in folder.embedding.vectors:
        # Equal up to rounding only: the weights are the same, but they sit in memory-mapped
        # files at other offsets, and CPU kernels round differently at other alignments.
        a, b = folder.embedding.vectors[key].to_float32(), single.embedding.vectors[key].to_float32()
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)  # Adam moves each element up to 0.06 here
    np.testing.assert_allclose(single.losses, folder.losses, rtol=1e-5)
    meta = single.embedding.metadata
    assert meta["train_resolution"] == "64"  # the configs' native size, not the family's 512/1024
    assert meta["base_model_fingerprints"] == folder.embedding.metadata["base_model_fingerprints"]
    # The concept records the file's AUTOMATIC1111 hash, as A1111 writes for the checkpoint.
    assert single.embedding.checkpoint_hash == hashlib.sha256(tiny[family]["file"].read_bytes()).hexdigest()[:10]
    if family == "sd1":
        # Mixed precision loads the file at bf16 and brings only the VAE back to fp32; the VAE's
        # weights were rounded on the way, so the losses agree to bf16 precision only.
        folder_bf16 = run(tiny[family]["folder"], "folder-bf16", mixed_precision="bf16")
        single_bf16 = run(tiny[family]["file"], "file-bf16", mixed_precision="bf16", model_config=str(tiny[family]["configs"]))
        np.testing.assert_allclose(single_bf16.losses, folder_bf16.losses, rtol=1e-2)


def test_rendering_from_the_file_equals_rendering_from_the_folder(tiny: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    from PIL import Image

    from conceptlib.render import RenderConfig, render

    def run(model: Path, out: str, **kw: Any) -> tuple[np.ndarray, str]:
        result = render(RenderConfig(model=str(model), prompts=["a red toy"], steps=2, out=tmp_path / out, **kw))
        with Image.open(result.images[0].path) as image:
            return np.asarray(image), image.text["parameters"]  # type: ignore[attr-defined]

    from_folder, _ = run(tiny["sd1"]["folder"], "folder")
    from_file, parameters = run(tiny["sd1"]["file"], "file", model_config=str(tiny["sd1"]["configs"]))
    assert from_file.shape == (64, 64, 3)  # the configs' native size
    assert np.array_equal(from_folder, from_file)
    # AUTOMATIC1111's infotext names the file by its AutoV2 hash, as the webui does.
    autov2 = hashlib.sha256(tiny["sd1"]["file"].read_bytes()).hexdigest()[:10]
    assert f"Model hash: {autov2}, Model: sd1," in parameters


# --- the family's reference configs, from the Hub ------------------------------------------------


def test_reference_configs_are_fetched_once_then_used_offline(
    tiny: dict[str, dict[str, Path]], images: Path, local_hub: HubServer, tmp_path: Path,
    cli: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # The reference repository holds the full model; only configs and tokenizer may come down.
    folder = tiny["sd1"]["folder"]
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    repo = DEFAULT_CONFIG_REPOS[("sd1", "epsilon")]
    hub = local_hub
    hub.create_repo(repo, files)
    file = str(tiny["sd1"]["file"])

    code, out, err = cli("train", "--model", file, "--images", str(images), "--token", "<hubtoy>",
                          "--steps", "1", "--save-every", "0", "--out", str(tmp_path / "run"), "--no-add", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["steps"] == 1
    downloads = [r for r in hub.requests("GET") if "/resolve/" in r]
    assert downloads and not any(r.endswith((".safetensors", ".bin")) for r in downloads)
    assert {re.sub(r"^.*?/resolve/[^/]+/", "", r) for r in downloads} == {
        p for p in files if any(Path(p).match(g) for g in MODEL_CONFIG_PATTERNS)
    }

    # --model-config as a repository, at a revision.
    hub.create_repo("acme/tiny-sd1", files)
    configs = resolve_configs(resolve_model(file), "acme/tiny-sd1@main")
    assert configs.source == "acme/tiny-sd1@main" and (configs.folder / "tokenizer" / "vocab.json").is_file()
    assert not list(configs.folder.rglob("*.safetensors"))

    # Offline, the cached configs serve; nothing is requested.
    hub.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli("render", "-m", file, "a red toy", "--steps", "1", "--out", str(tmp_path / "r"), "--json")
    assert code == 0, err
    assert hub.requests() == []

    # A fresh cache offline: one line that says what is missing and what to do.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    code, out, err = cli("render", "-m", file, "a red toy", "--steps", "1", "--out", str(tmp_path / "r2"))
    assert code == 2 and out == ""
    assert err.startswith(f"Error: the configs of {repo} are not in the local cache (HF_HUB_OFFLINE is set)")
    assert "--model-config" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sd2_file_without_prediction_is_a_cli_error(tiny: dict[str, dict[str, Path]], images: Path, tmp_path: Path, cli: Any) -> None:
    code, out, err = cli("train", "--model", str(tiny["sd2-v"]["file"]), "--images", str(images),
                          "--token", "<t>", "--steps", "1", "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"Error: {tiny['sd2-v']['file']}: is SD 2.x and does not say whether")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_registered_checkpoint_remembers_its_configs(tiny: dict[str, dict[str, Path]], images: Path, tmp_path: Path, cli: Any) -> None:
    file = tiny["sd2-v"]["file"]
    code, out, err = cli("models", "inspect", str(file), "--json")
    unregistered = json.loads(out)
    assert unregistered["prediction_type"] is None and unregistered["encoders"][0]["tokenizer"] is None

    code, out, err = cli("models", "add", str(file), "--name", "mine", "--model-config", str(tiny["sd2-v"]["configs"]))
    assert code == 0, err
    code, out, err = cli("models", "inspect", "mine", "--json")
    record = json.loads(out)
    assert record["model_config"] == str(tiny["sd2-v"]["configs"].resolve())
    # What the file lacks comes from the configs: the prediction type, the size, the vocabulary.
    assert record["prediction_type"] == "v_prediction" and record["sample_size"] == 64
    assert record["encoders"][0]["tokenizer"]["vocab_size"] > 0
    assert not any("does not say" in n or "no tokenizer" in n for n in record["notes"])

    # The registered name needs no --model-config, and the configs' vocabulary checks tokens.
    code, out, err = cli("render", "-m", "mine", "a red toy", "--steps", "1", "--out", str(tmp_path / "r"), "--json")
    assert code == 0, err
    from PIL import Image

    with Image.open(json.loads(out)["images"][0]) as image:
        assert image.size == (64, 64)
    code, out, err = cli("train", "-m", "mine", "--images", str(images), "--token", "cat", "--out", str(tmp_path / "t"))
    assert code == 2 and "cat" in err and "Traceback" not in err

    code, out, err = cli("models", "add", str(tiny["sd1"]["folder"]), "--model-config", str(tiny["sd1"]["configs"]))
    assert code == 2 and "--model-config is for single-file checkpoints" in err


def test_reference_configs_survive_a_hub_outage(tiny: dict[str, dict[str, Path]], local_hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny["sd1"]["configs"]
    local_hub.create_repo(DEFAULT_CONFIG_REPOS[("sd1", "epsilon")], {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    model = resolve_model(tiny["sd1"]["file"])
    cached = resolve_configs(model).folder

    outage = local_hub.inject(None, ".", status=503, times=None)
    assert resolve_configs(model).folder == cached  # the client falls back to its cache at once
    assert outage.hits >= 1

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    with pytest.raises(ModelConfigError, match=rf"not in the local cache \(fetching them from {re.escape(local_hub.url)}: the Hub answered 503 after \d attempts\)"):
        resolve_configs(model)


def test_no_reference_configs_for_variants_or_non_diffusers_repos(tiny: dict[str, dict[str, Path]], local_hub: HubServer) -> None:
    import dataclasses

    model = resolve_model(tiny["sd1"]["file"])
    with pytest.raises(ModelConfigError, match="there are no reference configs for .* inpainting checkpoints") as caught:
        resolve_configs(dataclasses.replace(model, variant="inpainting", label="SD 1.x inpainting"))
    assert "--model-config" in str(caught.value.hint)
    local_hub.create_repo("acme/just-a-readme", {"README.md": b"# nothing here\n"})
    with pytest.raises(ModelConfigError, match="acme/just-a-readme has no model_index.json: not a diffusers model repository"):
        resolve_configs(model, "acme/just-a-readme")
