"""Hypernetwork files: read AUTOMATIC1111, NovelAI and kohya layouts, write .pt and safetensors.

A hypernetwork holds, for each attention width it touches (768 for SD 1.x cross-attention,
320/640/1280 for the UNet's own), a pair of small networks: the first transforms what feeds the
attention's key projection, the second what feeds its value projection. AUTOMATIC1111 saves it
with ``torch.save`` as a dict::

    {768: [key_state_dict, value_state_dict], 320: [...], ...,
     "layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": False,
     "weight_initialization": "Normal", "activate_output": False, "use_dropout": False,
     "dropout_structure": [...], "last_layer_dropout": False, "optional_info": None,
     "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5", "step": 3000, "name": "..."}

where each state dict holds ``linear.N.weight``/``bias`` (N also counts activation, LayerNorm
and dropout slots). NovelAI's original files use ``linear1``/``linear2`` (read as ``linear.0``
and ``linear.1``, as AUTOMATIC1111 does); kohya's carry the pairs without the fields. Missing
fields take AUTOMATIC1111's defaults on load (:data:`A1111_DEFAULTS`), which :attr:`Hypernetwork.missing`
lists. ComfyUI defaults ``activate_output`` to False where AUTOMATIC1111 takes True: a file that
does not say builds another network there, and :meth:`Hypernetwork.warnings` says so.

Reading goes through conceptlib's bounded allowlist pickle reader (nothing in the file runs);
the safetensors form keeps the tensors as ``WIDTH.0|1.linear.N.weight`` and the fields as JSON
in the ``hypernetwork`` metadata entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.errors import HypernetworkStructureError
from conceptlib.formats._interpret import HYPERNETWORK_KEY
from conceptlib.tensor import Tensor

__all__ = ["A1111_DEFAULTS", "FIELDS", "Hypernetwork", "describe_optimizer_state", "dumps", "family_of", "interpret", "read", "write"]

#: What AUTOMATIC1111's ``Hypernetwork.load`` takes for a field the file lacks.
A1111_DEFAULTS: dict[str, Any] = {
    "layer_structure": [1.0, 2.0, 1.0],
    "activation_func": "linear",
    "is_layer_norm": False,
    "weight_initialization": "Normal",
    "activate_output": True,
    "use_dropout": False,
    "dropout_structure": None,
    "last_layer_dropout": False,
    "optional_info": None,
}
#: The fields of an AUTOMATIC1111 file, in the order it writes them.
FIELDS = (
    "layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "activate_output", "use_dropout",
    "dropout_structure", "last_layer_dropout", "optional_info", "sd_checkpoint", "sd_checkpoint_name", "step", "name",
)  # fmt: skip
#: The safetensors form's metadata entry holding the fields as JSON (the embedding reader knows
#: it too, to say such a file is a hypernetwork).
METADATA_KEY = HYPERNETWORK_KEY
_NOVELAI_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias", "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}
_SAFETENSORS_KEY = re.compile(r"^(\d{1,5})\.([01])\.(linear\.\d{1,3}\.(?:weight|bias))$")
_LINEAR_KEY = re.compile(r"^linear\.(\d{1,3})\.(weight|bias)$")


@dataclass
class Hypernetwork:
    """A hypernetwork as read: its module pairs and its fields.

    Attributes:
        modules: attention width -> (key module, value module), each ``linear.N.weight/bias``
            -> tensor.
        fields: every field of :data:`FIELDS`, the file's value or AUTOMATIC1111's default.
        missing: the fields the file did not hold (their defaults are in ``fields``).
        layout: ``a1111``, ``novelai``, ``kohya`` or ``safetensors``.
        source_path: the file read, when there is one.
    """

    modules: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]]
    fields: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    layout: str = "a1111"
    source_path: str | None = None

    @property
    def widths(self) -> list[int]:
        """The attention widths it transforms, ascending."""
        return sorted(self.modules)

    @property
    def parameters(self) -> int:
        """Number of values in all its tensors."""
        total = 0
        for pair in self.modules.values():
            for module in pair:
                for tensor in module.values():
                    size = 1
                    for d in tensor.shape:
                        size *= d
                    total += size
        return total

    def content_hash(self) -> str:
        """sha256 of the tensors alone (widths, sides, keys, shapes, dtypes and bytes, in order),
        whatever the container and the fields: the library's duplicate check."""
        digest = hashlib.sha256(b"conceptlib-hypernetwork-1\0")
        for width, pair in sorted(self.modules.items()):
            for side, module in enumerate(pair):
                for key in sorted(module):
                    tensor = module[key]
                    digest.update(f"{width}.{side}.{key}\0{','.join(map(str, tensor.shape))}\0{tensor.dtype}\0".encode())
                    digest.update(tensor.tobytes())
        return digest.hexdigest()

    def non_finite(self) -> dict[str, int]:
        """Count of NaN/Inf values per module (``"768.0"``: width 768, key side), only where any."""
        import numpy as np

        counts: dict[str, int] = {}
        for width, pair in self.modules.items():
            for side, module in enumerate(pair):
                bad = sum(int(np.count_nonzero(~np.isfinite(t.to_float32()))) for t in module.values())
                if bad:
                    counts[f"{width}.{side}"] = bad
        return counts

    def linear_layers(self, width: int) -> int:
        """Linear layers of each of ``width``'s modules (2-D weights)."""
        return sum(1 for k, t in self.modules[width][0].items() if k.endswith(".weight") and t.ndim == 2)

    def warnings(self) -> list[str]:
        """What another tool would read differently, or what the file leaves in doubt."""
        found = []
        if "activate_output" in self.missing and self.fields["activation_func"] not in ("linear", None):
            found.append(
                "the file does not say activate_output: AUTOMATIC1111 takes True (the last layer's output "
                "activated), ComfyUI False, so the two build different networks from it"
            )
        return found

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (what ``inspect --json`` prints for a hypernetwork)."""
        dtypes = sorted({t.dtype for pair in self.modules.values() for module in pair for t in module.values()})
        return {
            "kind": "hypernetwork",
            "layout": self.layout,
            "name": self.fields.get("name"),
            "widths": self.widths,
            "linear_layers": {str(w): self.linear_layers(w) for w in self.widths},
            "parameters": self.parameters,
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "fields": {k: self.fields.get(k) for k in FIELDS},
            "defaulted": list(self.missing),
            "warnings": self.warnings(),
        }


def family_of(widths: list[int]) -> str | None:
    """The base-model family a hypernetwork was most likely made for, from its widths.

    A network touches the text encoder's width in cross-attention: 768 for SD 1.x, 1024 for
    SD 2.x, 2048 for SDXL. AUTOMATIC1111 creates modules for 768 *and* 1024 by default (its
    ``enable_sizes``), so 768 wins over 1024: an SD 2.x network has no reason to carry 768.
    """
    for width, family in ((768, "sd1"), (1024, "sd2"), (2048, "sdxl")):
        if width in widths:
            return family
    return None


def _module(value: Any, path: str, where: str, novelai: bool) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not value:
        raise HypernetworkStructureError(f"{where} is not a module's state dict", path=path)
    module: dict[str, Tensor] = {}
    for key, tensor in value.items():
        name = _NOVELAI_KEYS.get(key, key) if novelai else key
        if not isinstance(name, str) or not _LINEAR_KEY.match(name) or not isinstance(tensor, Tensor):
            raise HypernetworkStructureError(f"{where} holds {key!r}, not a linear.N weight or bias tensor", path=path)
        if tensor.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise HypernetworkStructureError(f"{where}[{key!r}] is {tensor.dtype}, not a float tensor", path=path)
        module[name] = tensor
    return module


def _check_chain(width: int, module: dict[str, Tensor], path: str, where: str) -> None:
    """The module's Linear layers map ``width`` values back to ``width`` values, layer after layer."""
    layers = sorted(int(_LINEAR_KEY.match(k).group(1)) for k, t in module.items() if k.endswith(".weight") and t.ndim == 2)  # type: ignore[union-attr]
    if not layers:
        raise HypernetworkStructureError(f"{where} has no linear layer", path=path)
    size = width
    for index in layers:
        weight = module[f"linear.{index}.weight"]
        out, inp = weight.shape
        if inp != size:
            raise HypernetworkStructureError(f"{where}: linear.{index} takes {inp} values where {size} arrive", path=path)
        bias = module.get(f"linear.{index}.bias")
        if bias is not None and bias.shape != (out,):
            raise HypernetworkStructureError(f"{where}: linear.{index}.bias has shape {list(bias.shape)}, expected [{out}]", path=path)
        size = out
    if size != width:
        raise HypernetworkStructureError(f"{where} ends with {size} values, not the {width} it must give back", path=path)


def interpret(state: Any, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> Hypernetwork:
    """A hypernetwork from a decoded file: a torch dict, or a safetensors form's tensors.

    Raises:
        HypernetworkStructureError: no module pair, a module that is no chain of linear layers
            from the width back to it, or a field of the wrong type.
    """
    path = os.fspath(path)
    if not isinstance(state, dict):
        raise HypernetworkStructureError(f"holds a {type(state).__name__}, not a hypernetwork dict", path=path)
    pairs: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
    fields: dict[str, Any] = {}
    layout = "a1111"
    if metadata is not None and METADATA_KEY in metadata:
        layout = "safetensors"
        try:
            loaded = json.loads(metadata[METADATA_KEY])
        except ValueError:
            raise HypernetworkStructureError("its hypernetwork metadata is not JSON", path=path) from None
        fields = {k: v for k, v in loaded.items() if k in FIELDS} if isinstance(loaded, dict) else {}
        grouped: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
        for key, tensor in state.items():
            match = _SAFETENSORS_KEY.match(key)
            if match is None:
                raise HypernetworkStructureError(f"holds {key!r}, not WIDTH.0|1.linear.N.weight|bias", path=path)
            grouped.setdefault(int(match.group(1)), ({}, {}))[int(match.group(2))][match.group(3)] = tensor
        pairs = grouped
    else:
        novelai = False
        for key, value in state.items():
            if isinstance(key, int) and not isinstance(key, bool):
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise HypernetworkStructureError(f"width {key} holds a {type(value).__name__}, not a pair of modules", path=path)
                novelai = novelai or any(isinstance(m, dict) and "linear1.weight" in m for m in value)
                pairs[key] = (_module(value[0], path, f"{key}[0]", novelai), _module(value[1], path, f"{key}[1]", novelai))
            elif key in FIELDS:
                fields[key] = value
        if novelai:
            layout = "novelai"
        elif not fields:
            layout = "kohya"
    if not pairs:
        raise HypernetworkStructureError("holds no module pair (no integer width keys)", path=path)
    for width, (first, second) in pairs.items():
        if not 1 <= width <= 8192:
            raise HypernetworkStructureError(f"width {width} is no attention width", path=path)
        _check_chain(width, first, path, f"width {width}, key module")
        _check_chain(width, second, path, f"width {width}, value module")
    missing = [k for k in A1111_DEFAULTS if k not in fields]
    merged = {**A1111_DEFAULTS, **fields}
    if layout == "novelai" and "layer_structure" in missing:
        merged["layer_structure"] = [1.0, 2.0, 1.0]
    structure = merged["layer_structure"]
    if not isinstance(structure, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in structure):
        raise HypernetworkStructureError(f"layer_structure is {structure!r}, not a list of numbers", path=path)
    if merged["activation_func"] is None:
        merged["activation_func"] = "linear"
    for key in ("activation_func", "weight_initialization", "name", "sd_checkpoint", "sd_checkpoint_name"):
        if merged.get(key) is not None and not isinstance(merged[key], str):
            raise HypernetworkStructureError(f"{key} is a {type(merged[key]).__name__}, not text", path=path)
    step = merged.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63):
        merged["step"] = None  # a number no training reaches: read as no step, as for embeddings
    return Hypernetwork(dict(sorted(pairs.items())), merged, missing, layout, path)


def read(path: str | os.PathLike[str], *, data: bytes | None = None) -> Hypernetwork:
    """Read a hypernetwork file (``.pt`` in any of the three layouts, or the safetensors form).

    ``data``: the file's bytes when the caller has read them already (they are not read again;
    ``path`` then only names the file in errors).

    Raises:
        HypernetworkStructureError: see :func:`interpret`.
        EmbeddingFileError: the file cannot be read (its subclasses name why).
    """
    from conceptlib._inputs import read_named
    from conceptlib.errors import ConceptlibError, EmbeddingFileError
    from conceptlib.formats import MAX_FILE_SIZE, _unforeseen, detect_container

    if data is None:
        data = read_named(Path(path), limit=MAX_FILE_SIZE, what="hypernetwork file", error=EmbeddingFileError)
    where = os.fspath(path)
    try:
        kind = detect_container(data)
        if kind == "safetensors":
            from conceptlib.formats import _safetensors

            tensors, metadata = _safetensors.read(data, where)
            return interpret(tensors, where, metadata=metadata)
        if kind in ("pickle-zip", "pickle-legacy"):
            from conceptlib.formats import _torchpickle

            return interpret(_torchpickle.load(where, data), where)
    except ConceptlibError:
        raise
    except Exception as exc:
        raise _unforeseen(exc, where) from exc
    raise HypernetworkStructureError(f"is a {kind} file, not a hypernetwork (.pt or .safetensors)", path=where)


def describe_optimizer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an AUTOMATIC1111 ``NAME.pt.optim`` file holds, and whether it belongs to ``NAME.pt``.

    AUTOMATIC1111 saves the optimizer beside each hypernetwork (and embedding) it trains, with
    ``hash``: the first 10 hex of that file's sha256, to refuse resuming with another one.
    Read through the bounded allowlist pickle reader; nothing in it runs.

    Returns:
        ``kind`` (``optimizer-state``), ``hash``, ``optimizer_name``, ``parameters`` (entries
        of its state), ``belongs_to`` (the file beside it, when there is one) and ``matches``
        (whether that file's sha256 starts with ``hash``; None without the file).

    Raises:
        EmbeddingStructureError: not an optimizer-state file.
    """
    from conceptlib._inputs import read_named
    from conceptlib.errors import EmbeddingFileError, EmbeddingStructureError
    from conceptlib.formats import MAX_FILE_SIZE, _torchpickle
    from conceptlib.hashing import sha256_file

    where = Path(path)
    state = _torchpickle.load(os.fspath(where), read_named(where, limit=MAX_FILE_SIZE, what="optimizer file", error=EmbeddingFileError))
    if not isinstance(state, dict) or "optimizer_state_dict" not in state or not isinstance(state.get("hash"), str):
        raise EmbeddingStructureError("is no AUTOMATIC1111 optimizer state (hash and optimizer_state_dict)", path=where)
    inner = state["optimizer_state_dict"]
    entries = inner.get("state") if isinstance(inner, dict) else None
    sibling = where.with_name(where.name[: -len(".optim")]) if where.name.endswith(".optim") else None
    matches = None
    if sibling is not None and sibling.is_file():
        matches = sha256_file(sibling).startswith(state["hash"].lower())
    return {
        "kind": "optimizer-state",
        "hash": state["hash"],
        "optimizer_name": state.get("optimizer_name") if isinstance(state.get("optimizer_name"), str) else None,
        "parameters": len(entries) if isinstance(entries, dict) else None,
        "belongs_to": sibling.name if sibling is not None and sibling.is_file() else None,
        "matches": matches,
    }


def dumps(hypernetwork: Hypernetwork, format: str) -> bytes:
    """The bytes of ``hypernetwork`` as ``a1111`` (a ``torch.save`` file AUTOMATIC1111 and
    ComfyUI load) or ``safetensors`` (tensors and the fields as JSON metadata)."""
    fields = {k: hypernetwork.fields.get(k) for k in FIELDS}
    if format == "a1111":
        from conceptlib.formats import _torchpickle

        obj: dict[Any, Any] = {width: [dict(pair[0]), dict(pair[1])] for width, pair in hypernetwork.modules.items()}
        obj.update(fields)
        return _torchpickle.dumps(obj)
    if format == "safetensors":
        from conceptlib.formats import _safetensors

        tensors = {f"{width}.{side}.{key}": tensor for width, pair in hypernetwork.modules.items() for side in (0, 1) for key, tensor in pair[side].items()}
        return _safetensors.dumps(tensors, {METADATA_KEY: json.dumps(fields, sort_keys=True)})
    raise ValueError(f"unknown hypernetwork format {format!r} (a1111 or safetensors)")


def write(hypernetwork: Hypernetwork, path: str | os.PathLike[str], *, format: str | None = None, force: bool = False) -> Path:
    """Write ``hypernetwork`` atomically; the format comes from the suffix unless given
    (``.pt`` -> a1111, ``.safetensors`` -> safetensors). The bytes are read back and compared
    before anything is written.

    Raises:
        DestinationExistsError: ``path`` exists and ``force`` is False.
        UsageError: a suffix that names no hypernetwork format.
    """
    from conceptlib._atomic import atomic_write_bytes
    from conceptlib.errors import DestinationExistsError, UsageError

    target = Path(path)
    chosen = format or {".pt": "a1111", ".safetensors": "safetensors"}.get(target.suffix.lower())
    if chosen not in ("a1111", "safetensors"):
        raise UsageError("a hypernetwork is written as .pt (AUTOMATIC1111) or .safetensors", path=target)
    if target.exists() and not force:
        raise DestinationExistsError("already exists", path=target, hint="pass --force to replace it")
    data = dumps(hypernetwork, chosen)
    again = _decode_again(data, target)
    for width, pair in hypernetwork.modules.items():
        for side in (0, 1):
            if any(not pair[side][k].equal(again.modules[width][side][k]) for k in pair[side]):
                raise AssertionError(f"{target}: width {width} does not read back as written")  # pragma: no cover
    atomic_write_bytes(target, data)
    return target


def _decode_again(data: bytes, target: Path) -> Hypernetwork:
    from conceptlib.formats import _safetensors, _torchpickle, detect_container

    if detect_container(data) == "safetensors":
        tensors, metadata = _safetensors.read(data, target)
        return interpret(tensors, target, metadata=metadata)
    return interpret(_torchpickle.load(target, data), target)
