"""Check whether a concept fits a base model, why not, and what to do about it.

>>> from conceptlib.formats import read
>>> from conceptlib.models import resolve_model
>>> from conceptlib.validate import validate
>>> for f in validate(read("EasyNegative.safetensors"), resolve_model("sdxl")):  # doctest: +SKIP
...     print(f.severity, f.code, f.message)
error width-mismatch embedding width 768 fits SD 1.x, this model is SDXL (768 + 1280): ...

Each check yields :class:`Finding` objects with a severity:

* ``error``: the concept will not load, or will do something else than intended (wrong
  encoder widths, a token the tokenizer already has, NaN/Inf, more vectors than the context).
* ``warning``: it loads, but probably not as hoped (a prompt word that is an ordinary word,
  more than 60 vectors, a vector whose norm dwarfs the vocabulary's, float64).
* ``info``: worth knowing (the checkpoint it was trained on, bfloat16 storage, strong vectors).

Tokens are compared as the CLIP tokenizer sees them: lowercased, whitespace collapsed, and
against both vocabulary forms (``cat`` is a word piece, ``cat</w>`` the whole word). A
multi-vector concept loaded by diffusers becomes ``tok``, ``tok_1`` ... ``tok_{n-1}``, and
diffusers refuses any token whose ``tok_1`` is already known, so those names are checked too.

Nothing here imports torch; the vocabulary comes from the model's ``vocab.json`` (or the copy
``conceptlib models add`` stored).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from conceptlib.embedding import Embedding
from conceptlib.families import FAMILIES, family_for_encoders
from conceptlib.models import ModelInfo, resolve_model
from conceptlib.slug import safe_stem

__all__ = [
    "CONTEXT_WARNING",
    "Finding",
    "Severity",
    "a1111_file_word",
    "concept_word",
    "coverage",
    "exit_status",
    "expansions",
    "summarize",
    "suggest_token",
    "validate",
    "validate_many",
]

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

#: More vectors than this leaves little room for the rest of a prompt.
CONTEXT_WARNING = 60
#: Norm heuristics, as multiples of the vocabulary's median vector norm. Trained embeddings are
#: routinely 5-20x stronger than ordinary words (diffusers' script gives about 8x on SD 1.5)
#: and work; past 100x a single vector swamps the prompt; below 1/20 it does nothing.
NORM_INFO_RATIO = 20.0
NORM_WARN_RATIO = 100.0
NORM_LOW_RATIO = 0.05
_NORMAL_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Finding:
    """One result of a check.

    Attributes:
        code: a stable identifier (``width-mismatch``, ``token-in-vocabulary`` ...) for
            scripts and CI filters.
        severity: ``error``, ``warning`` or ``info``.
        message: what is wrong and what to do, in one sentence a user can act on.
        encoder: the encoder concerned (``clip_l``, ``clip_g`` ...), when there is one.
    """

    code: str
    severity: Severity
    message: str
    encoder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"code": self.code, "severity": self.severity, "message": self.message, "encoder": self.encoder}


# --- tokens ------------------------------------------------------------------------------------


def _norm(token: str) -> str:
    """A token as the CLIP tokenizer matches it: lowercased, whitespace collapsed."""
    return " ".join(token.split()).lower()


def expansions(token: str, vectors: int) -> list[str]:
    """The tokens diffusers adds for a concept: ``tok``, ``tok_1`` ... ``tok_{n-1}``.

    Args:
        token: the concept's token.
        vectors: its number of vectors.

    Returns:
        One token per vector.

    Example:
        >>> expansions("<cat-toy>", 3)
        ['<cat-toy>', '<cat-toy>_1', '<cat-toy>_2']
    """
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def concept_word(embedding: Embedding, token: str | None = None) -> tuple[str | None, bool]:
    """The word a user types for a concept, and whether it was chosen on purpose.

    Args:
        embedding: the concept.
        token: a token that overrides the file's (e.g. the library's token for the concept).

    Returns:
        ``(word, explicit)``: ``explicit`` is True for a stored or given token (it becomes a
        tokenizer entry when loaded) and False for a word derived from the ``name`` field or
        the file name (AUTOMATIC1111 style).
    """
    if token:
        return token, True
    if embedding.token:
        return embedding.token, True
    return embedding.prompt_word(), False


def _collides(name: str, vocabularies: Iterable[frozenset[str]]) -> str | None:
    """``piece`` or ``word`` when ``name`` is in a vocabulary, else None."""
    norm = _norm(name)
    for vocab in vocabularies:
        if norm in vocab or name in vocab:
            return "piece"
    for vocab in vocabularies:
        if norm + "</w>" in vocab:
            return "word"
    return None


def _names(word: str, vectors: int) -> set[str]:
    return {_norm(t) for t in expansions(word, vectors)}


def _swallows(word: str, other: str) -> bool:
    """Whether diffusers would read ``other`` as part of ``word``'s multi-vector expansion."""
    return re.fullmatch(re.escape(_norm(word)) + r"_\d+", _norm(other)) is not None


def suggest_token(
    token: str,
    vectors: int,
    vocabularies: Iterable[frozenset[str]] = (),
    taken: Mapping[str, int] | None = None,
) -> str:
    """A collision-free token close to ``token``: ``<token>``, then ``<token-2>``, ...

    Args:
        token: the token or word that collides.
        vectors: the concept's number of vectors (its expansions must be free too).
        vocabularies: the tokenizer vocabularies to avoid.
        taken: other concepts' tokens -> their number of vectors.

    Returns:
        The first candidate whose expansions, and diffusers' ``_1`` probe, collide with nothing.

    Example:
        >>> suggest_token("cat", 1, [frozenset({"cat", "cat</w>"})])
        '<cat>'
    """
    vocabs = list(vocabularies)
    others = dict(taken or {})
    base = _norm(token).strip("<>").strip()
    base = re.sub(r"[^\w.+-]+", "-", base).strip("-") or "concept"
    used: set[str] = set()
    for word, n in others.items():
        used |= _names(word, n)
    for i in itertools.count(1):
        candidate = f"<{base}>" if i == 1 else f"<{base}-{i}>"
        names = expansions(candidate, max(vectors, 2))  # diffusers probes tok_1 even for one vector
        if any(_collides(name, vocabs) for name in names):
            continue
        if _names(candidate, vectors) & used:
            continue
        if any(_swallows(candidate, w) or _swallows(w, candidate) for w in others):
            continue
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def a1111_file_word(embedding: Embedding) -> str | None:
    """AUTOMATIC1111's prompt word for a file, where it differs from :func:`concept_word`'s.

    For ``.pt``, ``.bin`` and ``.safetensors`` files AUTOMATIC1111 uses the file name and
    ignores the stored ``name`` (images use the name). conceptlib prefers the name, often the
    better word after a download was renamed; both words meet the tokenizer, in different tools.

    Returns:
        The file stem, or None when the file has a token, no name, is an image, or its stem
        is the name.
    """
    if embedding.token or not embedding.name or not embedding.source_path:
        return None
    path = Path(embedding.source_path)
    if path.is_dir() or path.suffix.lower() not in (".pt", ".bin", ".safetensors"):
        return None
    return path.stem if _norm(path.stem) != _norm(embedding.name) else None


def _token_findings(
    word: str,
    explicit: bool,
    vectors: int,
    vocabularies: list[frozenset[str]],
    others: Mapping[str, tuple[str, int]],
) -> list[Finding]:
    findings: list[Finding] = []
    severity: Severity = "error" if explicit else "warning"
    taken = {w: n for w, n in others.values()}
    suggestion = suggest_token(word, vectors, vocabularies, taken)
    what = f"token {word!r}" if explicit else f"prompt word {word!r} (the file has no token: its name)"
    fix = (
        f"load it as {suggestion!r} instead (diffusers: load_textual_inversion(..., token={suggestion!r}); "
        f"conceptlib: convert --token {suggestion!r})"
    )
    if vocabularies:
        kind = _collides(word, vocabularies)
        if kind == "piece":
            findings.append(Finding(
                "token-in-vocabulary", severity,
                f"{what} is already in the tokenizer's vocabulary: diffusers refuses to load it "
                f"('Token {word} already in tokenizer vocabulary') and other tools would take over "
                f"every {_norm(word)!r} in a prompt; {fix}",
            ))  # fmt: skip
        elif kind == "word":
            findings.append(Finding(
                "token-is-word", severity,
                f"{what} is the ordinary word {_norm(word)!r}: once loaded, every {_norm(word)!r} "
                f"in a prompt turns into this concept; {fix}",
            ))  # fmt: skip
        # diffusers refuses a token whose "_1" form exists, even for a single vector.
        for i, name in enumerate(expansions(word, max(vectors, 2))[1:], start=1):
            if _collides(name, vocabularies) == "piece":
                part = f"vector {i + 1} of {vectors}" if i < vectors else "diffusers' multi-vector probe"
                findings.append(Finding(
                    "expansion-in-vocabulary", severity,
                    f"{name!r} ({part} of {word!r}) is already in the tokenizer's vocabulary: "
                    f"diffusers refuses to load this concept ('Multi-vector Token ... already in "
                    f"tokenizer vocabulary'); {fix}",
                ))  # fmt: skip
    mine = _names(word, vectors)
    for label, (other, n) in others.items():
        clash = sorted(mine & _names(other, n))
        if _norm(other) == _norm(word):
            detail = "both use this token"
        elif clash:
            detail = f"{clash[0]!r} is in both concepts' multi-vector expansions"
        elif _swallows(word, other):
            detail = f"diffusers would read {other!r} as part of {word!r}'s multi-vector expansion"
        elif _swallows(other, word):
            detail = f"diffusers would read {word!r} as part of {other!r}'s multi-vector expansion"
        else:
            continue
        findings.append(Finding(
            "token-conflict", severity,
            f"{what} clashes with {label} (token {other!r}, {n} vector{'s' if n != 1 else ''}): "
            f"{detail}; give one of them another token, e.g. {suggestion!r}",
        ))  # fmt: skip
    return findings


# --- the checks --------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _width_findings(embedding: Embedding, model: ModelInfo) -> list[Finding]:
    have, need = embedding.encoders, model.encoder_keys
    if have == need:
        return []
    model_desc = f"this model is {model.family_label} ({model.width_label})"
    if model.variant == "refiner" and "clip_g" in have and set(have) <= {"clip_l", "clip_g"}:
        return [Finding("refiner-uses-clip-g", "info", "the SDXL refiner uses only the clip_g vectors of this concept")]
    if set(have) == {"clip_g"} and "clip_g" in need:
        return [Finding(
            "sdxl-incomplete", "error",
            f"embedding has only clip_g (1280) vectors, {model_desc}: SDXL concepts need vectors for "
            "both text encoders (clip_l 768 and clip_g 1280); find the clip_l half (diffusers saves "
            "it as learned_embeds.safetensors beside learned_embeds_2.safetensors)",
            encoder="clip_g",
        )]  # fmt: skip
    family = family_for_encoders(have)
    widths = embedding.width_label
    many = len(have) > 1
    fits = f"fit{'' if many else 's'} {family.label}" if family else "fit no Stable Diffusion family"
    if family and family.key == "sdxl" and set(have) != set(FAMILIES["sdxl"].encoders):
        fits += " (incomplete)"
    message = f"embedding width{'s' if many else ''} {widths} {fits}, {model_desc}"
    if model.family == "sdxl":
        message += (
            ": SDXL concepts need vectors for both text encoders (clip_l 768 + clip_g 1280); "
            "use an SDXL version of this concept"
        )
    elif family:
        message += f": use it with an {family.label} model, or find the {model.family_label} version of this concept"
    return [Finding("width-mismatch", "error", message)]


def _context_findings(embedding: Embedding, model: ModelInfo) -> list[Finding]:
    context = min((e.context_length for e in model.encoders), default=77)
    usable = context - 2  # BOS and EOS take two of the context's positions
    n = embedding.num_vectors
    if n > usable:
        return [Finding(
            "context-overflow", "error",
            f"{_plural(n, 'vector')} do not fit the {context}-token context ({usable} after BOS/EOS): "
            "diffusers truncates the prompt and AUTOMATIC1111 splits the concept across chunks; "
            "use a version trained with fewer vectors",
        )]  # fmt: skip
    if n > CONTEXT_WARNING:
        return [Finding(
            "context-tight", "warning",
            f"{_plural(n, 'vector')} use {n} of the {usable} prompt tokens, leaving {usable - n} for "
            "everything else: longer prompts get truncated (diffusers) or split into a second chunk "
            "(AUTOMATIC1111); keep the rest of the prompt short",
        )]  # fmt: skip
    return []


def _finite_findings(embedding: Embedding) -> list[Finding]:
    return [
        Finding(
            "non-finite", "error",
            f"{_plural(count, 'NaN/Inf value')} in {key}: the concept is damaged (training diverged "
            "or an fp16 overflow) and would break every image; retrain or use an earlier checkpoint",
            encoder=key,
        )  # fmt: skip
        for key, count in embedding.non_finite().items()
    ]


def _norm_findings(embedding: Embedding, model: ModelInfo, word: str | None) -> list[Finding]:
    findings: list[Finding] = []
    bad = embedding.non_finite()
    all_norms = embedding.norms()
    for key, norms in all_norms.items():
        enc = model.encoder(key)
        if enc is None or enc.norms is None or key in bad or not norms or enc.norms.median <= 0:
            continue
        median = enc.norms.median
        top = max(range(len(norms)), key=norms.__getitem__)
        low = min(range(len(norms)), key=norms.__getitem__)
        ratio = norms[top] / median
        if ratio > NORM_WARN_RATIO:
            findings.append(Finding(
                "norm-outlier", "warning",
                f"vector {top + 1} of {key} has norm {norms[top]:.3g}, {ratio:.0f}x the vocabulary's "
                f"median {median:.3g}: it will swamp the rest of the prompt; use a low prompt weight, "
                f"e.g. ({word or 'word'}:0.5), or retrain with a lower learning rate",
                encoder=key,
            ))  # fmt: skip
        elif ratio > NORM_INFO_RATIO:
            findings.append(Finding(
                "norm-high", "info",
                f"largest {key} vector norm {norms[top]:.3g} is {ratio:.0f}x the vocabulary's median "
                f"{median:.3g}: a strong concept; lower its prompt weight if it overpowers the image",
                encoder=key,
            ))  # fmt: skip
        if norms[low] < NORM_LOW_RATIO * median:
            findings.append(Finding(
                "norm-tiny", "warning",
                f"vector {low + 1} of {key} has norm {norms[low]:.3g}, next to nothing beside the "
                f"vocabulary's median {median:.3g}: it adds almost nothing to a prompt; the file may "
                "be untrained or damaged",
                encoder=key,
            ))  # fmt: skip
    return findings


def _checkpoint_findings(checkpoint_hash: str | None, name: str | None, model: ModelInfo, *, what: str = "concepts") -> list[Finding]:
    """Whether the checkpoint a file says it was trained on (AUTOMATIC1111 records its hash: the
    legacy 8 hex, AutoV2's 10 or more of the sha256) is ``model``'s."""
    recorded = (checkpoint_hash or "").strip().lower()
    hash_sets = model.all_hashes()
    if not recorded or not hash_sets or not re.fullmatch(r"[0-9a-f]{8,64}", recorded):
        return []
    trained = f"{name} [{recorded}]" if name else f"[{recorded}]"
    for hashes in hash_sets:
        if hashes.get("sha256", "").startswith(recorded) or hashes.get("autov1") == recorded:
            return [Finding("trained-on-this", "info", f"trained on this very checkpoint ({trained})")]
    short = model.hashes.get("autov2") if model.hashes else None
    this = f" [{short}]" if short else ""
    return [Finding(
        "trained-on-other", "info",
        f"trained on {trained}, not on this checkpoint{this}: {what} usually carry over within a "
        "family, but check a sample image",
    )]  # fmt: skip


def _dtype_findings(embedding: Embedding) -> list[Finding]:
    findings: list[Finding] = []
    by_dtype: dict[str, list[str]] = {}
    for key, tensor in embedding.vectors.items():
        if tensor.dtype not in _NORMAL_DTYPES:
            by_dtype.setdefault(tensor.dtype, []).append(key)
    for dtype, keys in by_dtype.items():
        which = " and ".join(keys)
        encoder = keys[0] if len(keys) == 1 else None
        if dtype == "bfloat16":
            findings.append(Finding(
                "dtype-bfloat16", "info",
                f"{which} vectors are bfloat16: loaders cast them to the text encoder's dtype, so "
                "they work, but some older tools expect float16 or float32",
                encoder=encoder,
            ))  # fmt: skip
        elif dtype == "float64":
            findings.append(Finding(
                "dtype-unusual", "warning",
                f"{which} vectors are float64, which no text encoder uses: loaders cast them down; "
                "re-save them as float32 to halve the file and avoid surprises",
                encoder=encoder,
            ))  # fmt: skip
        else:
            findings.append(Finding(
                "dtype-invalid", "error",
                f"{which} vectors are {dtype}, not floating point: this is not a usable embedding",
                encoder=encoder,
            ))  # fmt: skip
    return findings


def validate(
    embedding: Embedding,
    model: ModelInfo | str | os.PathLike[str],
    *,
    token: str | None = None,
    others: Mapping[str, tuple[str, int]] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> list[Finding]:
    """Check a concept against a base model.

    Args:
        embedding: the concept's vectors and metadata.
        model: a :class:`~conceptlib.models.ModelInfo`, or a path, registered name or family
            name (resolved with :func:`conceptlib.models.resolve_model`).
        token: the token the concept will be loaded under, when it differs from the file's
            (e.g. the library's token). Without it the file's token is used, else the word
            AUTOMATIC1111 would use (the ``name`` field or the file name).
        others: other concepts loaded alongside, ``label -> (token, vectors)``, to catch
            tokens and multi-vector expansions that clash with each other.
        home: the library folder, where stored vocabularies live (default: ``CONCEPTLIB_HOME``).

    Returns:
        The findings, errors first; an empty list means the concept fits cleanly.

    Raises:
        ModelNotFoundError: ``model`` names nothing (see ``resolve_model``).

    Example:
        >>> import numpy as np
        >>> from conceptlib.tensor import Tensor
        >>> emb = Embedding({"clip_h": Tensor.from_numpy(np.zeros((1, 1024), np.float32) + 0.01)}, token="<x>")
        >>> [f.message for f in validate(emb, "sd1")][0]
        'embedding width 1024 fits SD 2.x, this model is SD 1.x (768): use it with an SD 2.x model, or find the SD 1.x version of this concept'
    """
    info = resolve_model(model, home=home, hash_files=False) if not isinstance(model, ModelInfo) else model
    word, explicit = concept_word(embedding, token)
    findings: list[Finding] = []
    findings += _width_findings(embedding, info)
    if word:
        vocabularies: list[frozenset[str]] = []
        for enc in info.encoders:
            vocab = info.vocabulary(enc.key, home=home)
            if vocab is not None and all(vocab is not v for v in vocabularies):
                vocabularies.append(vocab)
        findings += _token_findings(word, explicit, embedding.num_vectors, vocabularies, others or {})
        stem = a1111_file_word(embedding) if token is None else None
        if stem and _collides(stem, vocabularies):
            suffix = Path(embedding.source_path or "").suffix
            better = safe_stem(embedding.name or "") or f"{safe_stem(stem) or 'concept'}-embedding"
            findings.append(Finding(
                "file-name-in-vocabulary", "warning",
                f"AUTOMATIC1111 takes this file's prompt word from its file name, {stem!r}, not from its "
                f"name {embedding.name!r}, and {_norm(stem)!r} is already in the tokenizer's vocabulary: "
                f"there every {_norm(stem)!r} in a prompt would turn into this concept; rename the file, "
                f"e.g. to {better + suffix!r}",
            ))  # fmt: skip
    findings += _context_findings(embedding, info)
    findings += _finite_findings(embedding)
    findings += _norm_findings(embedding, info, word)
    findings += _checkpoint_findings(embedding.checkpoint_hash, embedding.checkpoint_name, info)
    findings += _dtype_findings(embedding)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: order[f.severity])


def validate_many(
    items: Sequence[tuple[str, Embedding, str | None]],
    model: ModelInfo | str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
) -> list[list[Finding]]:
    """Check several concepts against one model, and against each other (token clashes).

    Args:
        items: ``(label, embedding, token or None)`` per concept; the label names it in
            messages (a file name or concept name).
        model: as for :func:`validate` (resolved once).
        home: the library folder (default: ``CONCEPTLIB_HOME``).

    Returns:
        One findings list per item, in order.

    Example:
        >>> validate_many([("a.pt", emb_a, None), ("b.pt", emb_b, None)], "sd1")  # doctest: +SKIP
    """
    info = resolve_model(model, home=home, hash_files=False) if not isinstance(model, ModelInfo) else model
    words: dict[int, tuple[str, int]] = {}
    for i, (_label, emb, token) in enumerate(items):
        word, _explicit = concept_word(emb, token)
        if word:
            words[i] = (word, emb.num_vectors)
    results = []
    for i, (_label, emb, token) in enumerate(items):
        others = {items[j][0]: words[j] for j in words if j != i}
        results.append(validate(emb, info, token=token, others=others, home=home))
    return results


def _structure_findings(network: Any) -> list[Finding]:
    """Whether the weights are the network the fields declare: AUTOMATIC1111 builds its modules
    from ``layer_structure`` and ``is_layer_norm`` and then loads the weights into them, so a
    file whose weights disagree loads here (conceptlib builds from the weights) but not there."""
    structure = network.fields.get("layer_structure") or []
    norm = bool(network.fields.get("is_layer_norm"))
    for width in network.widths:
        module = network.modules[width][0]
        weights = sorted((int(k.split(".")[1]), t) for k, t in module.items() if k.endswith(".weight"))
        sizes = [t.shape[0] for _i, t in weights if t.ndim == 2]
        expected = [int(width * float(x)) for x in structure[1:]]
        has_norm = any(t.ndim == 1 for _i, t in weights)
        if sizes != expected or has_norm != norm:
            declared = f"layer_structure {structure}{' with layer norm' if norm else ''}"
            found = f"layers {', '.join(map(str, sizes))} wide{' with layer norm' if has_norm else ''}"
            return [Finding(
                "structure-mismatch", "warning",
                f"width {width} has {found}, not what its {declared} makes: AUTOMATIC1111 builds the network from "
                "those fields and cannot load these weights (conceptlib and ComfyUI read the weights)",
            )]  # fmt: skip
    return []


def validate_hypernetwork(
    network: Any,
    model: ModelInfo | str,
    *,
    home: str | os.PathLike[str] | None = None,
) -> list[Finding]:
    """Check a hypernetwork (:class:`conceptlib.hypernet.Hypernetwork`) against a base model.

    AUTOMATIC1111 applies a network's module of width W to every attention whose context is
    W wide and passes the others through, so a width the model lacks is harmless but a network
    with no width the model has changes nothing: that is the error.

    Args:
        network: the hypernetwork.
        model: a :class:`ModelInfo`, or a registered name, path or family name.
        home: the library folder, for registered model names.

    Returns:
        Findings: ``non-finite`` and ``width-mismatch`` errors; ``structure-mismatch`` and
        ``activate-output-ambiguous`` warnings; ``cross-attention-untouched``, ``widths-unused``, ``trained-on-this`` and
        ``trained-on-other`` infos.
    """
    from conceptlib.models import attention_widths

    info = model if isinstance(model, ModelInfo) else resolve_model(model, home=home, hash_files=False)
    cross, selves = attention_widths(info)
    findings: list[Finding] = []
    bad = network.non_finite()
    if bad:
        where = ", ".join(f"width {k.split('.')[0]} {'key' if k.endswith('.0') else 'value'} module ({n})" for k, n in sorted(bad.items())[:4])
        findings.append(Finding("non-finite", "error", f"holds NaN or infinite values: {where}; it would turn every image to noise"))
    known = ({cross} if cross else set()) | set(selves)
    widths = list(network.widths)
    used = [w for w in widths if w in known]
    described = f"cross-attention {cross}, self-attention {', '.join(map(str, selves)) or 'none'}" if cross else "its attention widths"
    if not used:
        family = FAMILIES.get(info.family)
        findings.append(Finding(
            "width-mismatch", "error",
            f"hypernetwork widths {', '.join(map(str, widths))} fit no attention of this {family.label if family else 'model'} model "
            f"({described}): it would change nothing",
        ))  # fmt: skip
    else:
        if cross and cross not in widths:
            findings.append(Finding("cross-attention-untouched", "info", f"it has no module for the text's width {cross}: only self-attention changes"))
        unused = [w for w in widths if w not in known]
        if unused:
            findings.append(Finding("widths-unused", "info", f"widths {', '.join(map(str, unused))} meet no attention of this model and pass through (AUTOMATIC1111 creates 1024 modules for SD 1.x networks too)"))
    findings += _structure_findings(network)
    findings += [Finding("activate-output-ambiguous", "warning", text) for text in network.warnings()]
    findings += _checkpoint_findings(network.fields.get("sd_checkpoint"), network.fields.get("sd_checkpoint_name"), info, what="hypernetworks")
    return findings


def coverage(model: ModelInfo, *, home: str | os.PathLike[str] | None = None) -> list[Finding]:
    """What validation against ``model`` cannot check, as ``info`` findings (print them once).

    Args:
        model: the model concepts are validated against.
        home: the library folder (default: ``CONCEPTLIB_HOME``).

    Returns:
        Notes about missing tokenizer, weights or hashes; empty when every check can run.
    """
    notes: list[Finding] = []
    if any(model.vocabulary(e.key, home=home) is None for e in model.encoders):
        notes.append(Finding(
            "no-vocabulary", "info",
            f"{model.display_name} has no tokenizer vocabulary at hand: token collisions are not "
            "checked; register a diffusers folder of this family once with `conceptlib models add` "
            "(it stores the vocabulary every SD model shares)",
        ))  # fmt: skip
    if not model.has_weights:
        notes.append(Finding(
            "no-weights", "info",
            f"{model.display_name} has no text-encoder weights at hand: vector norms are not "
            "compared with its vocabulary",
        ))  # fmt: skip
    if not model.all_hashes():
        notes.append(Finding(
            "no-hashes", "info",
            f"{model.display_name} has no file hashes: the checkpoint a concept was trained on is "
            "not compared",
        ))  # fmt: skip
    return notes


def exit_status(findings: Iterable[Finding], *, strict: bool = False) -> int:
    """The CLI exit code for findings: 1 on any error (or warning when ``strict``), else 0.

    Args:
        findings: every finding of the run.
        strict: treat warnings as errors.

    Returns:
        0 or 1.
    """
    severities = {f.severity for f in findings}
    if "error" in severities or (strict and "warning" in severities):
        return 1
    return 0


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    """Count findings per severity (``{"error": 1, "warning": 0, "info": 2}``)."""
    counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f.severity] += 1
    return counts
