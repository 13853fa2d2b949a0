"""Hypernetwork files: the three layouts tools write, read without running them; written back."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib import hypernet
from conceptlib.errors import HypernetworkStructureError, IsHypernetworkError
from conceptlib.formats import _torchpickle, read
from conceptlib.tensor import Tensor


def _module(width: int, structure: tuple[float, ...] = (1, 2, 1), seed: int = 0, *, norm: bool = False) -> OrderedDict[str, Tensor]:
    """A module as AUTOMATIC1111 numbers it: Linear, [LayerNorm], activation, ..., Linear."""
    rng = np.random.default_rng(seed)
    state: OrderedDict[str, Tensor] = OrderedDict()
    slot = 0
    for i in range(len(structure) - 1):
        out, inp = int(width * structure[i + 1]), int(width * structure[i])
        state[f"linear.{slot}.weight"] = Tensor.from_numpy((rng.standard_normal((out, inp)) * 0.01).astype(np.float32))
        state[f"linear.{slot}.bias"] = Tensor.from_numpy(np.zeros(out, np.float32))
        slot += 1
        if norm and i < len(structure) - 2:
            state[f"linear.{slot}.weight"] = Tensor.from_numpy(np.ones(out, np.float32))  # LayerNorm
            state[f"linear.{slot}.bias"] = Tensor.from_numpy(np.zeros(out, np.float32))
            slot += 1
        slot += 1  # the activation's slot
    return state


def _a1111(**fields: Any) -> dict[Any, Any]:
    obj: dict[Any, Any] = {w: [_module(w, seed=w), _module(w, seed=w + 1)] for w in (320, 768)}
    obj.update({
        "layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": False, "weight_initialization": "Normal",
        "activate_output": False, "use_dropout": False, "dropout_structure": [0, 0, 0], "last_layer_dropout": False,
        "optional_info": None, "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5-pruned", "step": 3000, "name": "anime",
    })  # fmt: skip
    obj.update(fields)
    return obj


def _save(tmp_path: Path, obj: Any, name: str = "hn.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(_torchpickle.dumps(obj))
    return path


def test_the_automatic1111_layout(tmp_path: Path) -> None:
    network = hypernet.read(_save(tmp_path, _a1111()))
    assert (network.layout, network.widths, network.missing) == ("a1111", [320, 768], [])
    assert network.fields["activation_func"] == "relu" and network.fields["step"] == 3000
    assert network.linear_layers(768) == 2 and network.parameters == 2 * sum(2 * (w * 2 * w) + 2 * w + w for w in (320, 768))
    assert network.warnings() == []
    # The embedding reader names it for what it is.
    with pytest.raises(IsHypernetworkError, match=r"is a hypernetwork \(attention widths 320, 768\)"):
        read(tmp_path / "hn.pt")


def test_layer_norm_slots_and_other_structures(tmp_path: Path) -> None:
    obj = {1280: [_module(1280, (1, 1.5, 1), norm=True), _module(1280, (1, 1.5, 1), norm=True)], "layer_structure": [1, 1.5, 1], "is_layer_norm": True}
    network = hypernet.read(_save(tmp_path, obj))
    assert network.widths == [1280] and network.linear_layers(1280) == 2 and network.fields["is_layer_norm"] is True


def test_novelai_and_kohya_layouts(tmp_path: Path) -> None:
    novelai = {768: [{"linear1.weight": Tensor.from_numpy(np.zeros((1536, 768), np.float32)), "linear1.bias": Tensor.from_numpy(np.zeros(1536, np.float32)),
                      "linear2.weight": Tensor.from_numpy(np.zeros((768, 1536), np.float32)), "linear2.bias": Tensor.from_numpy(np.zeros(768, np.float32))}] * 2}  # fmt: skip
    network = hypernet.read(_save(tmp_path, novelai, "nai.pt"))
    assert network.layout == "novelai" and set(network.modules[768][0]) == {"linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"}
    assert network.fields["layer_structure"] == [1.0, 2.0, 1.0]
    kohya = {w: [_module(w), _module(w)] for w in (640,)}
    network = hypernet.read(_save(tmp_path, kohya, "kohya.pt"))
    assert network.layout == "kohya" and network.missing == list(hypernet.A1111_DEFAULTS)
    assert network.fields["activate_output"] is True  # AUTOMATIC1111's default
    # An activation without activate_output: AUTOMATIC1111 and ComfyUI build different networks.
    unsaid = _a1111()
    del unsaid["activate_output"]
    [warning] = hypernet.read(_save(tmp_path, unsaid, "unsaid.pt")).warnings()
    assert "AUTOMATIC1111 takes True" in warning and "ComfyUI False" in warning


@pytest.mark.parametrize(("change", "message"), [
    (lambda o: o[768][0].__setitem__("linear.0.weight", Tensor.from_numpy(np.zeros((1536, 700), np.float32))), "linear.0 takes 700 values where 768 arrive"),
    (lambda o: o[768][1].pop("linear.2.weight"), "ends with 1536 values, not the 768 it must give back"),
    (lambda o: o.__setitem__(768, [o[768][0]]), "width 768 holds a list, not a pair of modules"),
    (lambda o: o[320][0].__setitem__("weight", Tensor.from_numpy(np.zeros(3, np.float32))), "holds 'weight', not a linear.N weight or bias tensor"),
    (lambda o: o.__setitem__("layer_structure", "1,2,1"), "layer_structure is '1,2,1', not a list of numbers"),
])  # fmt: skip
def test_structure_errors(tmp_path: Path, change: Any, message: str) -> None:
    obj = _a1111()
    change(obj)
    with pytest.raises(HypernetworkStructureError, match=message):
        hypernet.read(_save(tmp_path, obj))


def test_written_back_in_both_forms(tmp_path: Path) -> None:
    network = hypernet.read(_save(tmp_path, _a1111()))
    for name in ("again.pt", "again.safetensors"):
        copy = hypernet.read(hypernet.write(network, tmp_path / name))
        assert copy.fields == network.fields and copy.widths == network.widths
        for width, pair in network.modules.items():
            for side in (0, 1):
                assert all(pair[side][k].equal(copy.modules[width][side][k]) for k in pair[side])
    with pytest.raises(Exception, match="already exists"):
        hypernet.write(network, tmp_path / "again.pt")


@pytest.mark.torch
def test_what_torch_writes_and_reads(tmp_path: Path) -> None:
    import torch

    def module(width: int) -> OrderedDict[str, Any]:
        return OrderedDict([("linear.0.weight", torch.randn(2 * width, width)), ("linear.0.bias", torch.zeros(2 * width)),
                            ("linear.2.weight", torch.randn(width, 2 * width)), ("linear.2.bias", torch.zeros(width))])  # fmt: skip

    saved = {768: [module(768), module(768)], "layer_structure": [1, 2, 1], "activation_func": "swish", "name": "t", "step": 7}
    torch.save(saved, tmp_path / "torch.pt")
    network = hypernet.read(tmp_path / "torch.pt")
    assert network.linear_layers(768) == 2 and network.fields["activation_func"] == "swish"
    # What conceptlib writes, AUTOMATIC1111 and ComfyUI load with torch (weights only).
    hypernet.write(network, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(loaded[768][1]["linear.2.weight"], saved[768][1]["linear.2.weight"]) and loaded["step"] == 7


def test_the_commands(cli: Any, tmp_path: Path) -> None:
    path = _save(tmp_path, _a1111())
    run = cli("inspect", str(path))
    assert run.exit_code == 0, run.output
    assert "  kind          hypernetwork (a1111 layout)\n  name          anime\n  widths        320, 768\n" in run.stdout
    assert "  trained on    v1-5-pruned [a9263745]\n" in run.stdout
    [info] = json.loads(cli("inspect", str(path), "--json").stdout)
    assert info["kind"] == "hypernetwork" and info["file"]["sha256"] and info["widths"] == [320, 768]
    run = cli("convert", str(path), str(tmp_path / "anime.safetensors"))
    assert run.exit_code == 0 and run.stdout == f"{tmp_path / 'anime.safetensors'}\n"
    assert hypernet.read(tmp_path / "anime.safetensors").fields["name"] == "anime"
    assert cli("convert", str(path), str(tmp_path / "x.png"), "--to", "png").stderr.startswith("Error: ")
    # The library keeps embeddings only: refused, saying what it is.
    run = cli("add", str(path))
    assert run.exit_code == 2 and "is a hypernetwork (attention widths 320, 768), not a textual-inversion embedding" in run.stderr
    # AUTOMATIC1111's optimizer sidecar.
    _save(tmp_path, {"hash": "0123456789", "optimizer_name": "AdamW", "optimizer_state_dict": {"state": {}}}, "hn.pt.optim")
    run = cli("inspect", str(tmp_path / "hn.pt.optim"))
    assert run.exit_code == 2 and "the optimizer state AUTOMATIC1111 saves beside a hypernetwork" in run.stderr
