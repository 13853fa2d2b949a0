"""Turn a decoded container (a dict of tensors and plain values) into an :class:`Embedding`.

Every container (torch pickle, safetensors, PNG payload) decodes to the same kind of nested
dict; the layout of that dict says which tool wrote it. The rules, in order, follow what the
anchors accept (formats.md b.14), and every refusal says exactly what was found.
"""

from __future__ import annotations

import json
import os
from typing import Any

from conceptlib.embedding import Embedding
from conceptlib.errors import EmbeddingStructureError, UnknownEncoderError
from conceptlib.families import ENCODERS, FOREIGN_WIDTHS, WIDTH_TO_ENCODER
from conceptlib.tensor import FLOAT_DTYPES, Tensor

#: Prefix of the safetensors metadata keys conceptlib writes to keep fields like name/step.
META_PREFIX = "conceptlib."
#: Metadata marking conceptlib's canonical layout (one tensor per encoder key).
CANONICAL_KEY = "conceptlib.layout"
CANONICAL_VALUE = "encoders-v1"
#: Metadata keys that only describe the container, dropped on reading.
_CONTAINER_META = {"format", CANONICAL_KEY}


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, dict):
        return f"dict of {len(value)}"
    return type(value).__name__


def _keys(state: dict[str, Any], limit: int = 4) -> str:
    names = [str(k) for k in state]
    more = f", … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _as_vectors(value: Any, what: str, path: str, *, encoder: str | None = None) -> tuple[str, Tensor]:
    """Check one vector tensor and return (encoder key, [n, width] tensor)."""
    if not isinstance(value, Tensor):
        raise EmbeddingStructureError(f"{what} is a {_describe(value)}, not a tensor of vectors", path=path)
    if value.dtype not in FLOAT_DTYPES and value.dtype != "float64":
        raise EmbeddingStructureError(f"{what} holds {value.dtype} values, not floating-point vectors", path=path)
    tensor = value
    if tensor.ndim == 1:
        tensor = tensor.reshape(1, tensor.shape[0])
    elif tensor.ndim != 2:
        raise EmbeddingStructureError(
            f"{what} has rank {tensor.ndim} (shape {list(tensor.shape)}); an embedding is [vectors, width] or [width]",
            path=path,
        )
    rows, width = tensor.shape
    if rows == 0 or width == 0:
        raise EmbeddingStructureError(f"{what} holds zero vectors (shape {list(value.shape)})", path=path)
    if tensor.dtype == "float64":
        # No SD tool writes float64; narrowing would change the values, so refuse rather than guess.
        raise EmbeddingStructureError(f"{what} is float64; conceptlib keeps float32, float16 and bfloat16 exactly", path=path)
    key = encoder or WIDTH_TO_ENCODER.get(width)
    if key is None:
        hint = None
        if rows in WIDTH_TO_ENCODER:
            hint = f"shape {list(tensor.shape)} looks transposed: vectors are rows of width {rows}"
        known = FOREIGN_WIDTHS.get(width)
        reason = f"width {width} is {known}" if known else (
            f"width {width} fits no Stable Diffusion text encoder (768 SD 1.x, 1024 SD 2.x, 768 + 1280 SDXL)"
        )
        raise UnknownEncoderError(f"{what}: {reason}", path=path, hint=hint)
    if ENCODERS[key] != width:
        raise EmbeddingStructureError(
            f"{what} should be {ENCODERS[key]} wide for {key}, got {width}", path=path
        )
    return key, tensor


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, Tensor) and value.shape in ((), (1,)):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _common_fields(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": _str_or_none(state.get("name")),
        "step": _int_or_none(state.get("step")),
        "checkpoint_hash": _str_or_none(state.get("sd_checkpoint")),
        "checkpoint_name": _str_or_none(state.get("sd_checkpoint_name")),
    }


def _from_metadata(metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split safetensors metadata into Embedding fields (conceptlib.* keys) and the rest."""
    fields: dict[str, Any] = {}
    rest: dict[str, str] = {}
    for key, value in metadata.items():
        if key in _CONTAINER_META:
            continue
        if key.startswith(META_PREFIX):
            field = key[len(META_PREFIX) :]
            if field == "step":
                fields["step"] = _int_or_none(value)
            elif field in ("token", "name", "checkpoint_hash", "checkpoint_name"):
                fields[field] = value
            elif field == "metadata":
                try:
                    extra = json.loads(value)
                    if isinstance(extra, dict):
                        rest.update({str(k): str(v) for k, v in extra.items()})
                except json.JSONDecodeError:
                    rest[key] = value
            else:
                rest[key] = value
        else:
            rest[key] = value
    return fields, rest


def interpret(
    state: Any,
    path: str | os.PathLike[str],
    *,
    container: str,
    metadata: dict[str, str] | None = None,
) -> Embedding:
    """Recognise the layout of a decoded container.

    Args:
        state: what the container decoded to (normally a dict).
        path: the file, for messages.
        container: ``"pickle"``, ``"safetensors"`` or ``"png"``; decides some format names.
        metadata: safetensors header metadata, if any.

    Returns:
        The embedding, with ``source_format`` set to a key of ``FORMATS``.

    Raises:
        EmbeddingStructureError: empty, ambiguous, wrong rank, zero vectors, non-float.
        UnknownEncoderError: a width that belongs to no Stable Diffusion encoder.
    """
    path = os.fspath(path)
    meta_fields, meta_rest = _from_metadata(metadata or {})
    pickled = container == "pickle"

    if isinstance(state, Tensor):
        key, tensor = _as_vectors(state, "the bare tensor", path)
        return Embedding({key: tensor}, source_format="raw-tensor", source_path=path)
    if not isinstance(state, dict):
        raise EmbeddingStructureError(
            f"holds a {_describe(state)}, not a dict of embedding vectors", path=path
        )
    if not state:
        raise EmbeddingStructureError(
            "holds an empty dict: there are no vectors in this file", path=path,
            hint="the file was saved before training produced anything; get the real file",
        )

    fields: dict[str, Any] = {}
    vectors: dict[str, Tensor] = {}

    if not pickled and (metadata or {}).get(CANONICAL_KEY) == CANONICAL_VALUE:
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        unknown = [k for k in state if k not in ENCODERS]
        if unknown or not tensors:
            raise EmbeddingStructureError(
                f"conceptlib file with unexpected keys ({_keys(state)}); expected clip_l/clip_h/clip_g", path=path
            )
        for enc, value in tensors.items():
            k, t = _as_vectors(value, enc, path, encoder=enc)
            vectors[k] = t
        source_format = "conceptlib"
    elif "string_to_param" in state:
        params = state["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise EmbeddingStructureError(f"string_to_param is a {_describe(params)}, expected one entry", path=path)
        if len(params) != 1:
            raise EmbeddingStructureError(
                f"string_to_param holds {len(params)} placeholders ({_keys(params)}); conceptlib reads one concept per file",
                path=path, hint="split the file with the tool that made it",
            )
        placeholder, value = next(iter(params.items()))
        if isinstance(value, dict) and {"clip_l", "clip_g"} & set(value):
            for enc in ("clip_l", "clip_g"):
                if enc in value:
                    k, t = _as_vectors(value[enc], f"string_to_param[{placeholder!r}][{enc!r}]", path, encoder=enc)
                    vectors[k] = t
        else:
            k, t = _as_vectors(value, f"string_to_param[{placeholder!r}]", path)
            vectors[k] = t
        fields.update(_common_fields(state))
        s2t = state.get("string_to_token")
        token_id = next(iter(s2t.values()), None) if isinstance(s2t, dict) else None
        # The original paper's EmbeddingManager stores the CLIP id as a 0-d tensor and has no
        # name/step; AUTOMATIC1111 stores a plain int and always writes name and step.
        is_ldm = isinstance(token_id, Tensor) and "name" not in state
        source_format = "png" if container == "png" else ("ldm" if is_ldm else "a1111")
        if placeholder not in ("*",):
            fields.setdefault("metadata", {})["placeholder"] = str(placeholder)
    elif "clip_l" in state or "clip_g" in state:
        for enc in ("clip_l", "clip_g"):
            if enc in state:
                k, t = _as_vectors(state[enc], enc, path, encoder=enc)
                vectors[k] = t
        others = [k for k, v in state.items() if k not in ("clip_l", "clip_g") and isinstance(v, Tensor)]
        if others:
            raise EmbeddingStructureError(
                f"holds clip_l/clip_g and other tensors ({', '.join(map(str, others[:4]))}); cannot tell the embedding apart",
                path=path,
            )
        fields.update(_common_fields(state))
        source_format = "sdxl-pt" if pickled else ("png" if container == "png" else "sdxl")
    elif "emb_params" in state:
        if len([v for v in state.values() if isinstance(v, Tensor)]) != 1:
            raise EmbeddingStructureError(f"holds emb_params beside other tensors ({_keys(state)})", path=path)
        k, t = _as_vectors(state["emb_params"], "emb_params", path)
        vectors[k] = t
        source_format = "emb-params-pt" if pickled else "emb-params"
    elif set(state) == {"emb", "emb2"}:
        # A non-standard SDXL layout (one token, 1-D per encoder) seen in the wild.
        k1, t1 = _as_vectors(state["emb"], "emb", path, encoder="clip_l")
        k2, t2 = _as_vectors(state["emb2"], "emb2", path, encoder="clip_g")
        vectors = {k1: t1, k2: t2}
        source_format = "sdxl-emb"
    elif "text_encoders_0" in state and "text_encoders_1" in state:
        k1, t1 = _as_vectors(state["text_encoders_0"], "text_encoders_0", path, encoder="clip_l")
        k2, t2 = _as_vectors(state["text_encoders_1"], "text_encoders_1", path, encoder="clip_g")
        vectors = {k1: t1, k2: t2}
        source_format = "sdxl-pti"
    else:
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        if len(tensors) == 1 and len(state) == 1:
            token, value = next(iter(tensors.items()))
            k, t = _as_vectors(value, f"tensor {token!r}", path)
            vectors[k] = t
            fields["token"] = str(token)
            if pickled:
                source_format = "concepts-library" if value.ndim == 1 else "diffusers-bin"
            else:
                source_format = "diffusers"
        elif not tensors:
            raise EmbeddingStructureError(
                f"holds no tensors (keys: {_keys(state)}); not an embedding", path=path
            )
        else:
            raise EmbeddingStructureError(
                f"holds {len(tensors)} tensors ({_keys(tensors)}); an embedding file holds one "
                "(or clip_l + clip_g): this looks like a LoRA, a model or several concepts",
                path=path,
                hint="pass a file with a single concept",
            )

    if len({t.shape[0] for t in vectors.values()}) > 1:
        rows = ", ".join(f"{k} {t.shape[0]}" for k, t in vectors.items())
        raise EmbeddingStructureError(f"encoders hold different numbers of vectors ({rows})", path=path)

    extra = dict(meta_rest)
    extra.update(fields.pop("metadata", {}))
    for key, value in meta_fields.items():
        if value is not None and fields.get(key) is None:
            fields[key] = value
    return Embedding(vectors, source_format=source_format, metadata=extra, source_path=path, **fields)
