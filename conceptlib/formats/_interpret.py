"""Turn a decoded container (a dict of tensors and plain values) into an :class:`Embedding`.

Every container (torch pickle, safetensors, PNG payload) decodes to the same kind of nested
dict; the layout of that dict says which tool wrote it. The rules, in order, follow what the
anchors accept (formats.md b.14), and every refusal says exactly what was found.

Numbers from files, field by field (they reach the index, whose INTEGER columns hold
-2**63..2**63-1, and messages, which must stay one short line):

* ``step`` (A1111 ``step``, conceptlib's ``conceptlib.step`` metadata) only describes training,
  so a value conceptlib cannot store never refuses the vectors: it becomes None, silently. Kept
  are integers 0..2**63-1 given as an int, an integral finite float, a one-element integer or
  float tensor, or a string of at most 19 ASCII digits. Dropped are bools, negatives, larger
  values, NaN/inf, fractions, and digit strings ``str.isdigit`` accepts but that are not ASCII
  ('²', '①', '١٢'): superscripts would crash ``int``, and other scripts' digits would show one
  number and store another.
* ``string_to_token`` ids are never converted: only whether the id is a tensor matters (it
  tells the original paper's files from A1111's).
* Widths and vector counts come from the shapes of tensors actually present in the file, so
  they are bounded by its size; safetensors shapes are checked in :mod:`._safetensors` before
  any array is built.
* JSON (safetensors headers, PNG payloads, ``conceptlib.metadata``) goes through
  :func:`load_json`: integers of more than :data:`MAX_JSON_INT_DIGITS` digits stay unparsed
  (:class:`LongInt`, which no check accepts as a number), which keeps parsing linear and out
  of Python's int-to-text digit limit, and a raw-byte budget of containers and values bounds
  the Python objects parsing can build.
* Dict keys from pickles that are not strings (an int key, say) are shown through
  :func:`show`, which never calls ``str`` on an int longer than Python will print.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from conceptlib._terminal import printable
from conceptlib.concept import step_or_none
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    EmbeddingStructureError,
    IsHypernetworkError,
    IsOptimizerStateError,
    UnknownEncoderError,
)
from conceptlib.families import ENCODERS, FOREIGN_WIDTHS, WIDTH_TO_ENCODER
from conceptlib.tensor import FLOAT_DTYPES, Tensor

#: Prefix of the safetensors metadata keys conceptlib writes to keep fields like name/step.
META_PREFIX = "conceptlib."
#: Metadata marking conceptlib's canonical layout (one tensor per encoder key).
CANONICAL_KEY = "conceptlib.layout"
CANONICAL_VALUE = "encoders-v1"
#: The safetensors metadata entry of conceptlib's hypernetwork form (:mod:`conceptlib.hypernet`).
HYPERNETWORK_KEY = "hypernetwork"
#: Metadata keys that only describe the container, dropped on reading.
_CONTAINER_META = {"format", CANONICAL_KEY}

#: JSON integers longer than this (sign included) are not parsed: int64 needs 20 at most, and
#: ``int()`` of a long digit string is quadratic when ``sys.set_int_max_str_digits(0)`` is set.
MAX_JSON_INT_DIGITS = 20
#: Arrays plus objects a JSON text may open, counted on the raw bytes before parsing. Each costs
#: ~60 bytes of Python memory for a 3-byte ``[],``; an SDXL 75-vector PNG payload opens ~160,
#: an SDXL checkpoint's safetensors header ~7,500.
MAX_JSON_CONTAINERS = 65_536
#: Commas a JSON text may hold (about its values), counted the same way. The largest honest PNG
#: payload (75 SDXL vectors) holds ~154,000 numbers; a 4-byte ``1e1,`` costs ~40 bytes parsed.
MAX_JSON_VALUES = 1 << 20
#: Keys longer than this many bits are shown by size: ``str`` of a 4,300-digit int raises.
_SHOWN_INT_BITS = 256
#: Items per container and container levels :func:`show` renders.
_SHOWN_ITEMS = 8
_SHOWN_DEPTH = 3


class JSONBudgetError(ValueError):
    """A JSON text would build more Python objects than any embedding file needs."""


def check_json_budget(raw: bytes | str, what: str, start: int = 0, end: int | None = None) -> None:
    """Refuse JSON that opens too many arrays/objects or holds too many values, before parsing.

    Counting raw bytes also counts brackets and commas inside strings, which only makes the
    check stricter for files whose strings are full of them; honest ones stay far below.

    Args:
        raw: the JSON text, or a buffer holding it between ``start`` and ``end`` (counted in
            place, without a copy).
        what: names the text in the message ("the safetensors header").
        start: where the text begins in ``raw``.
        end: where it ends (default: the end of ``raw``).

    Raises:
        JSONBudgetError: a count is over its limit.
    """
    stop = len(raw) if end is None else end
    if isinstance(raw, str):
        containers = raw.count("[", start, stop) + raw.count("{", start, stop)
        values = raw.count(",", start, stop)
    else:
        containers = raw.count(b"[", start, stop) + raw.count(b"{", start, stop)
        values = raw.count(b",", start, stop)
    if containers > MAX_JSON_CONTAINERS:
        raise JSONBudgetError(
            f"{what} opens {containers:,} arrays and objects, more than any embedding file "
            f"({MAX_JSON_CONTAINERS:,})"
        )
    if values > MAX_JSON_VALUES:
        raise JSONBudgetError(
            f"{what} holds {values:,} values, more than any embedding file ({MAX_JSON_VALUES:,})"
        )


class LongInt:
    """A JSON integer longer than :data:`MAX_JSON_INT_DIGITS` characters, left unparsed.

    It is no int, float or str, so every field check refuses it (a step becomes None, a
    safetensors shape is invalid, a PNG tensor holds non-numbers), and messages show its size.

    Attributes:
        digits: how many digits it has.
    """

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<a {self.digits:,}-digit integer>"


def json_int(text: str) -> int | LongInt:
    """``parse_int`` for :func:`json.loads`: an int, or a :class:`LongInt` past the limit."""
    if len(text) > MAX_JSON_INT_DIGITS:
        return LongInt(text)
    return int(text)


def load_json(
    raw: bytes | str,
    what: str,
    *,
    object_hook: Callable[[dict[str, Any]], Any] | None = None,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """:func:`json.loads` within :func:`check_json_budget`, with :func:`json_int` for integers.

    Args:
        raw: the JSON text; bytes must be UTF-8 (safetensors allows nothing else; callers
            that follow ``json.loads``' encoding detection decode first).
        what: names the text in budget messages.
        object_hook: passed to ``json.loads``.
        object_pairs_hook: passed to ``json.loads``.

    Raises:
        JSONBudgetError: over budget (nothing was parsed).
        ValueError: not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``) or a hook
            refused a value.
        RecursionError: nested deeper than Python's parser goes.
    """
    check_json_budget(raw, what)
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return json.loads(
        text, parse_int=json_int, object_hook=object_hook, object_pairs_hook=object_pairs_hook
    )


def _brief(value: object, depth: int = 0) -> str:
    """Text for a non-string value, built from at most a few levels and items of it.

    ``str`` would walk all of a container, and a pickle can make one whose ``str`` never ends
    (a tuple holding the same tuple twice, 60 levels deep, has 2**60 leaves).
    """
    if value is None or isinstance(value, (bool, float, LongInt)):
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= _SHOWN_INT_BITS else f"<a {value.bit_length():,}-bit integer>"
    if isinstance(value, str):
        return repr(value[:_SHOWN_ITEMS * 8])
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        if depth >= _SHOWN_DEPTH:
            return f"<a {type(value).__name__} of {len(value)}>"
        items = [_brief(item, depth + 1) for item in value[:_SHOWN_ITEMS]]
        if len(value) > _SHOWN_ITEMS:
            items.append("…")
        return ("[{}]" if isinstance(value, list) else "({})").format(", ".join(items))
    if isinstance(value, (dict, set, frozenset, bytes)):
        return f"<a {type(value).__name__} of {len(value)}>"
    return f"<a {type(value).__name__}>"


def show(value: object) -> str:
    """A file-controlled value for a message, escaped and cut by ``printable``; never raises.

    Strings and plain values are quoted (``'<cat-toy>'``, ``'[1, 768]'``); an int too long to
    print is described by its size, unquoted; containers show a few items of a few levels.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _SHOWN_INT_BITS:
        return _brief(value)
    text = value if isinstance(value, str) else _brief(value)
    return f"'{printable(text)}'"


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, dict):
        return f"dict of {len(value)}"
    return type(value).__name__


def _keys(state: dict[Any, Any], limit: int = 4) -> str:
    names = [show(k) for k in list(state)[:limit]]
    more = f", … ({len(state)} in all)" if len(state) > limit else ""
    return ", ".join(names) + more


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


def _step_or_none(value: Any) -> int | None:
    """The ``step`` field by the module's policy (:func:`conceptlib.concept.step_or_none`).

    A one-value tensor counts as its value (torch saves ``step`` as one in some trainers).
    """
    if isinstance(value, Tensor):
        if value.array.size != 1 or value.dtype == "bool":
            return None
        value = value.item()
    return step_or_none(value)


def _key_text(key: Any, path: str) -> str:
    """A dict key as the text it names (a token, a placeholder).

    Pickles allow any hashable key: a small int reads as its digits (a token such as ``5``
    still works in a prompt); anything else (a tuple, bytes, a 100-digit int) is no token.
    """
    if isinstance(key, str):
        if not is_text(key):
            raise EmbeddingStructureError(
                f"a key is {show(key)}, which holds a lone surrogate (\\ud800-\\udfff) and is not text", path=path
            )
        return key
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() <= 64:
        return str(key)
    raise EmbeddingStructureError(f"a key is {show(key)}, not a token", path=path)


def is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (JSON ``"\\ud800"``, a pickle's
    ``surrogatepass`` text): no file format, UTF-8 output or prompt can carry it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _str_or_none(value: Any) -> str | None:
    # A descriptive field that is not text is dropped, like a step conceptlib cannot store.
    return value if isinstance(value, str) and value != "" and is_text(value) else None


def _common_fields(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": _str_or_none(state.get("name")),
        "step": _step_or_none(state.get("step")),
        "checkpoint_hash": _str_or_none(state.get("sd_checkpoint")),
        "checkpoint_name": _str_or_none(state.get("sd_checkpoint_name")),
    }


def _extra_metadata(value: str) -> dict[str, str] | None:
    """conceptlib's ``conceptlib.metadata`` JSON: a flat object of strings, or None if it is not."""
    try:
        extra = load_json(value, "conceptlib.metadata")
    except (ValueError, RecursionError):
        return None
    # conceptlib writes only str -> str; anything else is someone else's edit, kept verbatim.
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        return None
    return extra


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
                fields["step"] = _step_or_none(value)
            elif field in ("token", "name", "checkpoint_hash", "checkpoint_name"):
                fields[field] = value
            elif field == "metadata":
                extra = _extra_metadata(value)
                if extra is None:
                    rest[key] = value
                else:
                    rest.update(extra)
            else:
                rest[key] = value
        else:
            rest[key] = value
    return fields, rest


def _snapshot_list(state: list[Any]) -> bool:
    """True for XL-Textual-Inversion's ``all*.pt`` progress files: a list of {emb, emb2} dicts."""
    return bool(state) and all(
        isinstance(item, dict) and set(item) == {"emb", "emb2"} for item in state
    )


def _hypernetwork_widths(state: dict[Any, Any]) -> list[int]:
    """The attention widths of an AUTOMATIC1111/NovelAI/kohya hypernetwork dict, or [] for anything else.

    Such a dict maps integer widths (320, 640, 768, 1024, 1280) to a pair of module state dicts
    (``linear.N.weight``/``bias``; NovelAI's ``linear1``/``linear2``), beside metadata fields.
    """

    def module_pair(value: object) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(m, dict) and m and all(isinstance(k, str) and k.startswith("linear") for k in m) for m in value
        )

    ints = [k for k in state if isinstance(k, int) and not isinstance(k, bool)]
    return sorted(ints) if ints and all(module_pair(state[k]) for k in ints) else []


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
    if isinstance(state, list) and _snapshot_list(state):
        # ComfyUI concatenates such a list into len(state) vectors, but its entries are one
        # token saved at successive training steps: as vectors they would put every stage of
        # training into the prompt at once. The last entry is the trained token.
        raise EmbeddingStructureError(
            f"holds a list of {len(state)} {{emb, emb2}} SDXL snapshots: a training-progress file "
            "(XL-Textual-Inversion's all*.pt), one token saved at successive steps, not "
            f"{len(state)} vectors",
            path=path,
            hint="use the file saved without the 'all' prefix (the final {emb, emb2}), or save the "
            "list's last entry alone with torch and read that",
        )
    if not isinstance(state, dict):
        raise EmbeddingStructureError(
            f"holds a {_describe(state)}, not a dict of embedding vectors", path=path
        )
    if not state:
        raise EmbeddingStructureError(
            "holds an empty dict: there are no vectors in this file", path=path,
            hint="the file was saved before training produced anything; get the real file",
        )
    widths = _hypernetwork_widths(state)
    if not widths and (metadata or {}).get(HYPERNETWORK_KEY) is not None:  # conceptlib's safetensors form
        widths = sorted({int(k.split(".", 1)[0]) for k in state if isinstance(k, str) and k.split(".", 1)[0].isdigit()})
    if widths:
        # AUTOMATIC1111 users keep these beside their embeddings: say what it is, not "no tensors".
        raise IsHypernetworkError(
            f"is a hypernetwork (attention widths {', '.join(str(w) for w in widths[:8])}{', ...' if len(widths) > 8 else ''}), not a textual-inversion embedding",
            path=path,
            hint="AUTOMATIC1111 loads it from models/hypernetworks/ and calls it as <hypernet:NAME:1>; "
            "`conceptlib add` keeps it as a hypernetwork, and `inspect`, `convert` and `validate` read it",
        )
    if "optimizer_state_dict" in state and "hash" in state:
        raise IsOptimizerStateError(
            "is the optimizer state AUTOMATIC1111 saves beside a hypernetwork or embedding (NAME.pt.optim), not an embedding",
            path=path,
            hint="it only resumes training in AUTOMATIC1111; `conceptlib inspect` says which file it belongs to",
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
                    k, t = _as_vectors(value[enc], f"string_to_param[{show(placeholder)}][{enc!r}]", path, encoder=enc)
                    vectors[k] = t
        else:
            k, t = _as_vectors(value, f"string_to_param[{show(placeholder)}]", path)
            vectors[k] = t
        fields.update(_common_fields(state))
        s2t = state.get("string_to_token")
        token_id = next(iter(s2t.values()), None) if isinstance(s2t, dict) else None
        # The original paper's EmbeddingManager stores the CLIP id as a 0-d tensor and has no
        # name/step; AUTOMATIC1111 stores a plain int and always writes name and step.
        is_ldm = isinstance(token_id, Tensor) and "name" not in state
        source_format = "png" if container == "png" else ("ldm" if is_ldm else "a1111")
        if placeholder not in ("*",):
            fields.setdefault("metadata", {})["placeholder"] = _key_text(placeholder, path)
    elif "clip_l" in state or "clip_g" in state:
        for enc in ("clip_l", "clip_g"):
            if enc in state:
                k, t = _as_vectors(state[enc], enc, path, encoder=enc)
                vectors[k] = t
        others = [k for k, v in state.items() if k not in ("clip_l", "clip_g") and isinstance(v, Tensor)]
        if others:
            raise EmbeddingStructureError(
                f"holds clip_l/clip_g and other tensors ({', '.join(show(k) for k in others[:4])}); cannot tell the embedding apart",
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
            k, t = _as_vectors(value, f"tensor {show(token)}", path)
            vectors[k] = t
            fields["token"] = _key_text(token, path)
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
