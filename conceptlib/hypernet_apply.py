"""Hypernetworks applied to a diffusers UNet, as AUTOMATIC1111 applies them (torch extra).

AUTOMATIC1111 runs, in every attention layer of the UNet, the context (the text for
cross-attention, the hidden states themselves for self-attention) through each active
hypernetwork's module pair of the context's width, one network after the other::

    context_k = context_v = context
    for network in networks:                         # in prompt order
        k_module, v_module = network[context_k.shape[-1]]   # no module of that width: unchanged
        context_k = context_k + mlp_k(context_k) * multiplier
        context_v = context_v + mlp_v(context_v) * multiplier
    key, value = to_k(context_k), to_v(context_v)    # the query is untouched

:func:`applied` does exactly that by putting a wrapper in front of each attention's ``to_k`` and
``to_v`` while the block runs, and puts the originals back afterwards: no weight is ever
changed, so the UNet is bit-identical after, and a multiplier of 0 gives exactly the image
without the network.

Each module is rebuilt from its state dict and the file's fields, in AUTOMATIC1111's order: for
every step of ``layer_structure`` a Linear, then the activation (not after the last Linear
unless ``activate_output``), then LayerNorm when the file has one; dropout is off at inference.
AUTOMATIC1111 maps ``swish`` to ``Hardswish``, and so does this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conceptlib.errors import HypernetworkStructureError

if TYPE_CHECKING:
    from conceptlib.hypernet import Hypernetwork

__all__ = ["a1111_module", "applied", "dropout_structure", "initialise", "module_function", "wrapped"]

#: AUTOMATIC1111's weight initialisations (``weight_initialization``).
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def _activation(name: str) -> Any:
    import torch

    if name in ("linear", "", None):
        return None
    if name == "swish":  # AUTOMATIC1111's choice, kept for the same network
        return torch.nn.Hardswish()
    classes = {n.lower(): getattr(torch.nn.modules.activation, n) for n in dir(torch.nn.modules.activation)}
    cls = classes.get(name.lower())
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise HypernetworkStructureError(f"activation {name!r} is none AUTOMATIC1111 knows")
    return cls()


def module_function(network: Hypernetwork, width: int, side: int, dtype: Any, device: Any) -> Any:
    """``x -> mlp(x)`` of one module of ``network`` (``side`` 0: key, 1: value), as torch."""
    import torch
    import torch.nn.functional as F

    state = network.modules[width][side]
    indices = sorted({int(k.split(".")[1]) for k in state})
    layers: list[tuple[str, Any, Any]] = []
    for index in indices:
        weight = torch.from_numpy(state[f"linear.{index}.weight"].to_float32().copy()).to(device=device, dtype=dtype)
        bias_tensor = state.get(f"linear.{index}.bias")
        bias = torch.from_numpy(bias_tensor.to_float32().copy()).to(device=device, dtype=dtype) if bias_tensor is not None else None
        layers.append(("linear" if weight.ndim == 2 else "norm", weight, bias))
    activation = _activation(str(network.fields.get("activation_func") or "linear"))
    linears = sum(1 for kind, _w, _b in layers if kind == "linear")
    activate_output = bool(network.fields.get("activate_output", True))

    def forward(x: Any) -> Any:
        done = 0
        for kind, weight, bias in layers:
            if kind == "linear":
                x = F.linear(x, weight, bias)
                done += 1
                if activation is not None and (done < linears or activate_output):
                    x = activation(x)
            else:
                x = F.layer_norm(x, (weight.shape[0],), weight, bias)
        return x

    return forward


class _WithHypernetworks:
    """Stands in front of an attention's ``to_k`` or ``to_v``: the context goes through every
    network's module of its width first (key and value keep their own chains)."""

    def __init__(self, original: Any, steps: Chain) -> None:
        self.original = original
        self.steps = steps

    def __call__(self, context: Any) -> Any:
        for functions, multiplier in self.steps:
            function = functions.get(context.shape[-1])
            if function is not None:
                context = context + function(context) * multiplier
        return self.original(context)


def dropout_structure(layers: int, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """AUTOMATIC1111's dropout per layer boundary (``parse_dropout_structure``): 0.3 after every
    hidden layer, after the last one too with ``last_layer_dropout``, never on the input or output.

    Example:
        >>> dropout_structure(4, True, False)
        [0.0, 0.3, 0.0, 0.0]
    """
    if not use_dropout:
        return [0.0] * layers
    return [0.0, *([0.3] * (layers - 3)), 0.3 if last_layer_dropout else 0.0, 0.0]


def a1111_module(width: int, fields: dict[str, Any]) -> Any:
    """One trainable module (``torch.nn.Sequential``) laid out as AUTOMATIC1111's
    ``HypernetworkModule.linear``: per step of ``layer_structure`` a Linear, the activation (not
    after the last unless ``activate_output``), a LayerNorm with ``is_layer_norm``, a Dropout
    where ``dropout_structure`` says; so its ``state_dict`` keys are the file's ``N.weight``.

    Raises:
        HypernetworkStructureError: an unknown activation or a dropout outside [0, 1).
    """
    import torch

    structure = [float(x) for x in fields["layer_structure"]]
    dropout = fields.get("dropout_structure") or [0.0] * len(structure)
    layers: list[Any] = []
    for i in range(len(structure) - 1):
        out = int(width * structure[i + 1])
        layers.append(torch.nn.Linear(int(width * structure[i]), out))
        last = i >= len(structure) - 2
        activation = _activation(str(fields.get("activation_func") or "linear"))
        if activation is not None and (not last or fields.get("activate_output")):
            layers.append(activation)
        if fields.get("is_layer_norm"):
            layers.append(torch.nn.LayerNorm(out))
        if dropout[i + 1] > 0:
            if not 0 < dropout[i + 1] < 1:
                raise HypernetworkStructureError(f"dropout {dropout[i + 1]} is not a probability below 1")
            layers.append(_seeded_dropout(float(dropout[i + 1])))
    return torch.nn.Sequential(*layers)


def _seeded_dropout(p: float) -> Any:
    """``torch.nn.Dropout(p)`` whose masks come from its ``generator`` attribute (set by the
    trainer per micro-batch) instead of torch's global one: a run's masks are then a function
    of (seed, step), like every other draw, and a resumed run ends bit-identical."""
    import torch

    class SeededDropout(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = p
            self.generator: Any = None

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0:
                return x
            keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=torch.float32) >= self.p
            return x * keep.to(x.dtype) / (1 - self.p)

    return SeededDropout()


def initialise(module: Any, weight_init: str, generator: Any) -> None:
    """Initialise a new module as AUTOMATIC1111 does: ``Normal`` draws N(0, 0.01) weights (for
    LayerNorm too) and zero biases; the Xavier and Kaiming choices zero the biases. Draws come
    from ``generator``, so a run's start is a function of its seed."""
    import torch

    for layer in module:
        if not isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm)):
            continue
        with torch.no_grad():
            if weight_init == "Normal" or isinstance(layer, torch.nn.LayerNorm):
                layer.weight.normal_(0.0, 0.01, generator=generator)
            else:
                fan_out, fan_in = layer.weight.shape
                if weight_init == "XavierUniform":
                    bound = (6.0 / (fan_in + fan_out)) ** 0.5
                    layer.weight.uniform_(-bound, bound, generator=generator)
                elif weight_init == "XavierNormal":
                    layer.weight.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5, generator=generator)
                elif weight_init == "KaimingUniform":
                    bound = (6.0 / fan_in) ** 0.5
                    layer.weight.uniform_(-bound, bound, generator=generator)
                elif weight_init == "KaimingNormal":
                    layer.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                else:
                    raise HypernetworkStructureError(f"weight initialisation {weight_init!r} is none of {', '.join(WEIGHT_INITS)}")
            layer.bias.zero_()


Chain = list[tuple[dict[int, Callable[[Any], Any]], float]]


@contextlib.contextmanager
def wrapped(unet: Any, keys: Chain, values: Chain) -> Iterator[None]:
    """Put ``keys``/``values`` (per network: width -> ``x -> mlp(x)``, and its multiplier) in
    front of every attention's ``to_k``/``to_v`` for the block; the originals are back after.

    What :func:`applied` does with networks read from files, and training with live modules.
    """
    from diffusers.models.attention_processor import Attention

    swapped: list[tuple[Any, Any, Any]] = []
    try:
        for module in unet.modules():
            if isinstance(module, Attention):
                swapped.append((module, module.to_k, module.to_v))
                # Plain attributes, not submodules: nothing is registered, saved or moved.
                object.__setattr__(module, "to_k", _WithHypernetworks(module.to_k, keys))
                object.__setattr__(module, "to_v", _WithHypernetworks(module.to_v, values))
        yield
    finally:
        for module, to_k, to_v in swapped:
            object.__delattr__(module, "to_k")
            object.__delattr__(module, "to_v")
            assert module.to_k is to_k and module.to_v is to_v


@contextlib.contextmanager
def applied(unet: Any, networks: Sequence[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """Apply ``networks`` (each with its multiplier, in order) to every attention of ``unet``.

    The originals of ``to_k``/``to_v`` are back when the block ends, whatever happens in it.

    Example:
        >>> with applied(pipe.unet, [(read("anime.pt"), 0.8)]):  # doctest: +SKIP
        ...     image = pipe("a portrait").images[0]
    """
    if not networks:
        yield
        return
    parameter = next(unet.parameters())
    dtype, device = parameter.dtype, parameter.device
    keys: Chain = [({w: module_function(n, w, 0, dtype, device) for w in n.widths}, float(m)) for n, m in networks]
    values: Chain = [({w: module_function(n, w, 1, dtype, device) for w in n.widths}, float(m)) for n, m in networks]
    with wrapped(unet, keys, values):
        yield
