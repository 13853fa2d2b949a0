"""Hypernetwork training (``train --hypernetwork``) on the tiny models: CPU, 32 px, a few steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_train import _make_images

from conceptlib import hypernet
from conceptlib.errors import UsageError
from conceptlib.library import Library
from conceptlib.train import TrainConfig, _check_config, hypernetwork_fields, load_checkpoint, train

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("hypertrain")
    return {"sd1": create_tiny(base / "sd1", "sd1", seed=0), "images": _make_images(base / "images")}


def _config(setup: dict[str, Path], out: Path, **kw: Any) -> TrainConfig:
    options: dict[str, Any] = dict(
        model=str(setup["sd1"]), images=str(setup["images"]), token="inkling", hypernetwork=True, resolution=32,
        steps=4, save_every=2, lr=1e-3, activation="relu", layer_norm=True, dropout_structure="0,0.3,0",
        out=str(out), home=str(out.parent / "home"), add_to_library=False,
    )  # fmt: skip
    options.update(kw)
    return TrainConfig(**options)


def test_settings_are_checked_before_anything_loads() -> None:
    base = dict(model="m", images="i", token="w", hypernetwork=True)
    for change, message in [
        ({"layer_structure": "2,1"}, "must start and end with 1"),
        ({"layer_structure": "1,x,1"}, "not a comma-separated list of numbers"),
        ({"layer_structure": "1,100,1"}, "at most 16 layers"),
        ({"activation": "sparkle"}, "--activation: activation 'sparkle' is none AUTOMATIC1111 knows"),
        ({"weight_init": "Zeros"}, "unknown --weight-init 'Zeros'"),
        ({"dropout_structure": "0,1,0"}, "one probability per layer boundary"),
        ({"dropout_structure": "0.1,0.3,0"}, "0 first and last"),
        ({"hypernet_widths": "768,12.5"}, "whole numbers"),
    ]:
        with pytest.raises(UsageError, match=message):
            _check_config(TrainConfig(**{**base, **change}))  # type: ignore[arg-type]
    fields = hypernetwork_fields(TrainConfig(**{**base, "layer_structure": "1,1.5,1.5,1", "dropout_structure": "0,0.3,0.3,0"}))  # type: ignore[arg-type]
    assert fields["layer_structure"] == [1.0, 1.5, 1.5, 1.0] and fields["use_dropout"] and fields["last_layer_dropout"]


def test_trained_resumed_exactly_added_and_rendered(setup: dict[str, Path], tmp_path: Path, cli: Any) -> None:
    import torch

    whole = train(_config(setup, tmp_path / "whole"))
    assert whole.kind == "hypernetwork" and whole.embedding is None and whole.hypernetwork_path == tmp_path / "whole" / "inkling.pt"
    network = hypernet.read(whole.hypernetwork_path)
    # Every attention width of the tiny UNet (self 32, text 768), AUTOMATIC1111's layout and fields.
    assert network.widths == [32, 768] and network.layout == "a1111" and network.missing == []
    assert network.fields["layer_structure"] == [1.0, 2.0, 1.0] and network.fields["activation_func"] == "relu"
    assert network.fields["is_layer_norm"] is True and network.fields["dropout_structure"] == [0.0, 0.3, 0.0] and network.fields["step"] == 4
    # Linear, ReLU, LayerNorm, Dropout, Linear, LayerNorm: the slots AUTOMATIC1111 numbers.
    assert sorted(network.modules[768][0]) == ["linear.0.bias", "linear.0.weight", "linear.2.bias", "linear.2.weight", "linear.4.bias", "linear.4.weight", "linear.5.bias", "linear.5.weight"]
    assert (tmp_path / "whole" / "hypernetworks" / "inkling-000002.pt").is_file()
    assert len(whole.losses) == 4 and all(np.isfinite(whole.losses))
    # Only the modules are trained and held by the optimizer.
    state = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    parameters = sum(t.numel() for m in state["modules"].values() for t in m.values())
    held = sum(v.numel() for s in state["optimizer"]["state"].values() for k, v in s.items() if k == "exp_avg")
    assert held == parameters == network.parameters

    # Two steps, then two more from the checkpoint: the same network, bit for bit.
    first = train(_config(setup, tmp_path / "split", steps=2))
    assert first.steps == 2
    resumed = train(_config(setup, tmp_path / "split", resume=True))
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    again = hypernet.read(resumed.hypernetwork_path)  # type: ignore[arg-type]
    assert again.content_hash() == network.content_hash()
    changed = _config(setup, tmp_path / "split", resume=True, layer_structure="1,1,1")
    with pytest.raises(UsageError, match="layer_structure differ"):
        train(changed)
    templates = tmp_path / "templates.txt"
    templates.write_text("a drawing of [name]\n")
    train(_config(setup, tmp_path / "edited", steps=1, save_every=1, templates=str(templates)))
    templates.write_text("a painting of [name]\n")  # the same file, other prompts
    with pytest.raises(UsageError, match="the prompts differ"):
        train(_config(setup, tmp_path / "edited", steps=2, save_every=1, templates=str(templates), resume=True))

    # Into the library, then rendered: the network changes the image, multiplier 0 does not.
    run = cli(
        "train", "--hypernetwork", "--name", "inkling", "-m", str(setup["sd1"]), "-i", str(setup["images"]), "--resolution", "32",
        "--steps", "2", "--lr", "1e-3", "--activation", "relu", "--out", str(tmp_path / "cli"), "--json",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert (report["kind"], report["concept"], report["token"], report["embedding_path"]) == ("hypernetwork", "inkling", "inkling", None)
    with Library.open() as lib:
        assert lib.show("inkling").kind == "hypernetwork" and lib.show("inkling").metadata["train_steps"] == "2"
    from PIL import Image

    rendered = {}
    for label, prompt in (("plain", "a toy"), ("off", "a toy<hypernet:inkling:0>"), ("on", "a toy<hypernet:inkling:1>")):
        result = cli("render", prompt, "-m", str(setup["sd1"]), "--steps", "2", "--size", "32", "--out", str(tmp_path / label))
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / label / "00000-0.png") as image:
            rendered[label] = np.asarray(image.convert("RGB")).astype(int)
    assert np.array_equal(rendered["plain"], rendered["off"]) and np.abs(rendered["on"] - rendered["plain"]).max() > 0
    taken = cli("train", "--hypernetwork", "--name", "inkling", "-m", str(setup["sd1"]), "-i", str(setup["images"]), "--steps", "1", "--out", str(tmp_path / "again"))
    assert taken.exit_code == 2 and "inkling" in taken.stderr
    missing = cli("train", "--hypernetwork", "-m", str(setup["sd1"]), "-i", str(setup["images"]))
    assert missing.exit_code == 2 and "--hypernetwork needs --name (or --token)" in missing.stderr
    assert torch.get_num_threads() >= 1


def test_widths_the_model_lacks_are_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="this model's attention widths are 32, 768, not 1024"):
        train(_config(setup, tmp_path / "w", hypernet_widths="768,1024"))
    only_text = train(_config(setup, tmp_path / "t", hypernet_widths="768", steps=1, save_every=0, dropout_structure=None, layer_norm=False))
    assert hypernet.read(only_text.hypernetwork_path).widths == [768]  # type: ignore[arg-type]
