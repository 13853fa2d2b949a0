"""Hypernetwork files: the three layouts tools write, read without running them; written back."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib import hypernet
from conceptlib.errors import HypernetworkStructureError, IsHypernetworkError, IsOptimizerStateError
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
    # The embedding reader names the safetensors form for what it is too.
    with pytest.raises(IsHypernetworkError, match=r"is a hypernetwork \(attention widths 320, 768\)"):
        read(tmp_path / "again.safetensors")


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
    # Where an embedding is needed, refused saying what it is (the library keeps it as one).
    run = cli("validate", str(path), "--model", "sd1", "--json")
    assert run.exit_code == 0 and json.loads(run.stdout)["results"][0]["kind"] == "hypernetwork"
    with pytest.raises(IsHypernetworkError, match=r"is a hypernetwork \(attention widths 320, 768\), not a textual-inversion embedding"):
        read(path)
    # AUTOMATIC1111's optimizer sidecar: what it holds and whether it is the one of the file beside it.
    _save(tmp_path, {"hash": "0123456789", "optimizer_name": "AdamW", "optimizer_state_dict": {"state": {}}}, "hn.pt.optim")
    with pytest.raises(IsOptimizerStateError, match="the optimizer state AUTOMATIC1111 saves beside a hypernetwork"):
        read(tmp_path / "hn.pt.optim")
    run = cli("inspect", str(tmp_path / "hn.pt.optim"))
    assert run.exit_code == 0, run.output
    assert "  optimizer     AdamW\n" in run.stdout and "  belongs to    hn.pt by name only: its sha256 does not start with 0123456789" in run.stdout
    own = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    _save(tmp_path, {"hash": own, "optimizer_name": "AdamW", "optimizer_state_dict": {"state": {0: {}, 1: {}}}}, "hn.pt.optim")
    [info] = json.loads(cli("inspect", str(tmp_path / "hn.pt.optim"), "--json").stdout)
    assert (info["kind"], info["belongs_to"], info["matches"], info["parameters"]) == ("optimizer-state", "hn.pt", True, 2)


# --- applied to a UNet, as AUTOMATIC1111 applies them ----------------------------------------


def _a1111_sequential(network: hypernet.Hypernetwork, width: int, side: int) -> Any:
    """An independent build: AUTOMATIC1111's HypernetworkModule layer list, loaded by slot number."""
    import torch

    fields = network.fields
    structure = fields["layer_structure"]
    layers: list[Any] = []
    for i in range(len(structure) - 1):
        layers.append(torch.nn.Linear(int(width * structure[i]), int(width * structure[i + 1])))
        if not (fields["activation_func"] in ("linear", None) or (i >= len(structure) - 2 and not fields["activate_output"])):
            layers.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "swish": torch.nn.Hardswish}[fields["activation_func"]]())
        if fields["is_layer_norm"]:
            layers.append(torch.nn.LayerNorm(int(width * structure[i + 1])))
    sequential = torch.nn.Sequential(*layers)
    sequential.load_state_dict({k.removeprefix("linear."): torch.from_numpy(v.to_float32().copy()) for k, v in network.modules[width][side].items()})
    return sequential.eval()


def _unet_network(widths: tuple[int, ...], seed: int, activation: str, *, norm: bool = False, activate_output: bool = True) -> hypernet.Hypernetwork:
    obj: dict[Any, Any] = {}
    for w in widths:
        pair = []
        for side in (0, 1):
            rng = np.random.default_rng(seed * 10 + side + w)
            module: OrderedDict[str, Tensor] = OrderedDict()
            slot = 0
            for i, (out, inp) in enumerate(((2 * w, w), (w, 2 * w))):
                module[f"linear.{slot}.weight"] = Tensor.from_numpy((rng.standard_normal((out, inp)) * 0.05).astype(np.float32))
                module[f"linear.{slot}.bias"] = Tensor.from_numpy((rng.standard_normal(out) * 0.05).astype(np.float32))
                slot += 1
                if activation != "linear" and (i == 0 or activate_output):
                    slot += 1
                if norm:
                    module[f"linear.{slot}.weight"] = Tensor.from_numpy((1 + rng.standard_normal(out) * 0.1).astype(np.float32))
                    module[f"linear.{slot}.bias"] = Tensor.from_numpy((rng.standard_normal(out) * 0.1).astype(np.float32))
                    slot += 1
            pair.append(module)
        obj[w] = pair
    obj.update({"layer_structure": [1, 2, 1], "activation_func": activation, "is_layer_norm": norm, "activate_output": activate_output})
    return hypernet.interpret(obj, "unet-network.pt")


@pytest.mark.torch
def test_applied_as_automatic1111_applies_them(tmp_path: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    from conceptlib.hypernet_apply import applied
    from conceptlib.tiny import create_tiny

    unet = UNet2DConditionModel.from_pretrained(create_tiny(tmp_path / "tiny", "sd1", seed=0) / "unet").eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 4, 8, 8), generator=generator)
    text = torch.randn((2, 77, 768), generator=generator)

    def run() -> Any:
        with torch.no_grad():
            return unet(sample, 10, encoder_hidden_states=text).sample

    plain = run()
    first = _unet_network((32, 768), 1, "relu", norm=True, activate_output=False)
    second = _unet_network((768,), 2, "swish")
    # Multiplier 0: exactly the image without it.
    with applied(unet, [(first, 0.0)]):
        assert torch.equal(run(), plain)
    with applied(unet, [(first, 0.7), (second, 0.4)]):
        ours = run()
    assert not torch.allclose(ours, plain)
    # Removed: the UNet is what it was, bit for bit, and gives the same output.
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items()) and torch.equal(run(), plain)
    assert not any("to_k" in vars(m) for m in unet.modules() if isinstance(m, Attention))

    # The same output from AUTOMATIC1111's own layer lists, applied one network after the other.
    originals = {}
    for module in unet.modules():
        if isinstance(module, Attention):
            originals[module] = (module.to_k, module.to_v)

            def chain(side: int, to: Any) -> Any:
                def call(context: Any) -> Any:
                    for network, multiplier in ((first, 0.7), (second, 0.4)):
                        if context.shape[-1] in network.modules:
                            context = context + _a1111_sequential(network, context.shape[-1], side)(context) * multiplier
                    return to(context)

                return call

            object.__setattr__(module, "to_k", chain(0, module.to_k))
            object.__setattr__(module, "to_v", chain(1, module.to_v))
    reference = run()
    for module in originals:
        object.__delattr__(module, "to_k")
        object.__delattr__(module, "to_v")
    assert torch.allclose(ours, reference, atol=1e-6, rtol=1e-5)
