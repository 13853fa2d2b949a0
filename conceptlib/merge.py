"""New concepts from old ones: weighted sums, slices, concatenation, words and prompts.

``conceptlib merge EXPRESSION --name NEW`` evaluates an expression over the library's concepts
and adds the result with its lineage. The language, smallest first::

    atom     := NUMBER | <token> | name | 'words' | "words" | ( expr )
              | concat(expr, expr, ...)          the vectors of each, one after the other
              | norm(expr)                       each vector scaled to the vocabulary's median norm
              | {clip_l: expr, clip_g: expr}     an SDXL concept from parts of any source
    postfix  := atom [i:j] | atom [i] | atom .clip_l   vectors i..j-1, vector i, one encoder
    unary    := -unary | postfix
    product  := unary (* unary | / NUMBER)*      a concept times a number, never a concept
    expr     := product (+ product | - product)*

* ``<token>`` is the concept whose token it is; a bare ``name`` is a concept's name.
* Sums take concepts with the same encoders and either the same number of vectors or one
  vector, which is then added to each of the other's (``<style> + 0.2*'watercolor'``).
* ``'words'`` are the vocabulary vectors of the words' tokens, read from ``--model``'s text
  encoder (each token one vector; a whole prompt becomes a concept). SDXL models give both
  encoders. ``norm`` needs the model too.
* Arithmetic runs in float32. The result keeps its parents' dtype when they all share one (so
  ``1*<a>`` is ``<a>`` bit for bit), float32 otherwise.

Every mistake is one line naming the column and what is wrong there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import UsageError

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding
    from conceptlib.models import ModelInfo

__all__ = ["MAX_VECTORS", "MergeResult", "evaluate", "parse"]

#: Vectors a merged concept may have: a prompt holds 75 tokens besides its start and end.
MAX_VECTORS = 75
#: Longest expression read (a longer one is no hand-written formula).
MAX_EXPRESSION = 4000
#: Nesting depth of parentheses and calls.
MAX_DEPTH = 64

_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
#: A concept name is a slug: word characters and hyphens (so a minus between two names needs spaces).
_NAME = re.compile(r"\w[\w-]*")
_OPERATORS = "+-*/()[]{}:,."


class MergeExpressionError(UsageError):
    """A merge expression that cannot be read or evaluated; the message names the column."""


@dataclass
class _Node:
    kind: str
    column: int
    value: Any = None
    children: list[_Node] = field(default_factory=list)


def _fail(expression: str, column: int, problem: str) -> MergeExpressionError:
    shown = expression if len(expression) <= 120 else expression[:117] + "..."
    return MergeExpressionError(f"merge expression, column {column + 1}: {problem} (in: {shown})")


def _tokens(expression: str) -> list[tuple[str, str, int]]:
    """(kind, text, column) of each token: number, token (``<...>``), quoted, name or op."""
    found: list[tuple[str, str, int]] = []
    at = 0
    while at < len(expression):
        char = expression[at]
        if char.isspace():
            at += 1
            continue
        if char == "<":
            end = expression.find(">", at + 1)
            if end < 0 or any(c.isspace() for c in expression[at + 1 : end]) or end == at + 1:
                raise _fail(expression, at, "a <token> is not closed with > (tokens hold no spaces)")
            found.append(("token", expression[at : end + 1], at))
            at = end + 1
            continue
        if char in "'\"":
            end = expression.find(char, at + 1)
            if end < 0:
                raise _fail(expression, at, f"the words opened with {char} are not closed")
            found.append(("quoted", expression[at : end + 1], at))
            at = end + 1
            continue
        number = _NUMBER.match(expression, at)
        name = _NAME.match(expression, at)
        # "2d-style" is a name; "2", "0.5" and "1e-3" are numbers.
        if number is not None and (name is None or name.end() <= number.end()):
            found.append(("number", number.group(0), at))
            at = number.end()
            continue
        if name is not None and name.end() > at:
            found.append(("name", name.group(0), at))
            at = name.end()
            continue
        if char in _OPERATORS:
            found.append(("op", char, at))
            at += 1
            continue
        raise _fail(expression, at, f"unexpected {char!r}")
    return found


def parse(expression: str) -> _Node:
    """Read ``expression`` into a tree (see the module docstring for the language).

    Raises:
        MergeExpressionError: the column and what is wrong there.
    """
    if not expression.strip():
        raise MergeExpressionError("merge expression is empty", hint="for example: 0.6*<cat-toy> + 0.4*<birb-style>")
    if len(expression) > MAX_EXPRESSION:
        raise MergeExpressionError(f"merge expression is {len(expression):,} characters; at most {MAX_EXPRESSION:,}")
    tokens = _tokens(expression)
    pos = 0

    def peek(*ops: str) -> bool:
        return pos < len(tokens) and tokens[pos][0] == "op" and tokens[pos][1] in ops

    def column() -> int:
        return tokens[pos][2] if pos < len(tokens) else len(expression)

    def expect(op: str) -> None:
        nonlocal pos
        if not peek(op):
            found = repr(tokens[pos][1]) if pos < len(tokens) else "the end"
            raise _fail(expression, column(), f"expected {op!r}, found {found}")
        pos += 1

    def chain(depth: int, ops: tuple[str, str], operand: Callable[[int], _Node]) -> _Node:
        """``operand (op operand)*``, left to right."""
        nonlocal pos
        node = operand(depth)
        while peek(*ops):
            op, at = tokens[pos][1], tokens[pos][2]
            pos += 1
            node = _Node(op, at, children=[node, operand(depth)])
        return node

    def expr(depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise _fail(expression, column(), f"nested more than {MAX_DEPTH} deep")
        return chain(depth, ("+", "-"), product)

    def product(depth: int) -> _Node:
        return chain(depth, ("*", "/"), unary)

    def unary(depth: int) -> _Node:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise _fail(expression, column(), f"nested more than {MAX_DEPTH} deep")
        if peek("-"):
            at = tokens[pos][2]
            pos += 1
            return _Node("neg", at, children=[unary(depth + 1)])
        return postfix(depth)

    def postfix(depth: int) -> _Node:
        nonlocal pos
        node = atom(depth)
        while True:
            if peek("["):
                at = tokens[pos][2]
                pos += 1
                start = stop = None
                if pos < len(tokens) and tokens[pos][0] == "number":
                    start = _index(tokens[pos])
                    pos += 1
                if peek(":"):
                    pos += 1
                    if pos < len(tokens) and tokens[pos][0] == "number":
                        stop = _index(tokens[pos])
                        pos += 1
                    node = _Node("slice", at, (start, stop), [node])
                else:
                    if start is None:
                        raise _fail(expression, column(), "expected a vector index or i:j")
                    node = _Node("slice", at, (start, start + 1), [node])
                expect("]")
            elif peek(".") and pos + 1 < len(tokens) and tokens[pos + 1][0] == "name":
                pos += 1
                node = _Node("encoder", tokens[pos][2], tokens[pos][1], [node])
                pos += 1
            else:
                return node

    def _index(token: tuple[str, str, int]) -> int:
        if not token[1].isdigit():
            raise _fail(expression, token[2], f"a vector index is a whole number, not {token[1]}")
        return int(token[1])

    def atom(depth: int) -> _Node:
        nonlocal pos
        if pos >= len(tokens):
            raise _fail(expression, len(expression), "the expression ends where a concept, word or number should be")
        kind, text, at = tokens[pos]
        pos += 1
        if kind == "number":
            value = float(text)
            if not np.isfinite(value):
                raise _fail(expression, at, f"{text} is not a finite number")
            return _Node("number", at, value)
        if kind == "token":
            return _Node("token", at, text)
        if kind == "quoted":
            if not text[1:-1].strip():
                raise _fail(expression, at, "empty words")
            return _Node("words", at, text[1:-1])
        if kind == "name":
            if text in ("concat", "norm") and peek("("):
                pos += 1
                args = [expr(depth + 1)]
                while peek(","):
                    pos += 1
                    args.append(expr(depth + 1))
                expect(")")
                if text == "norm" and len(args) != 1:
                    raise _fail(expression, at, "norm() takes one expression")
                return _Node(text, at, children=args)
            return _Node("name", at, text)
        if text == "(":
            node = expr(depth + 1)
            expect(")")
            return node
        if text == "{":
            parts: list[_Node] = []
            while True:
                if pos >= len(tokens) or tokens[pos][0] != "name":
                    raise _fail(expression, column(), "expected an encoder name (clip_l, clip_g) inside { }")
                key, key_at = tokens[pos][1], tokens[pos][2]
                pos += 1
                expect(":")
                parts.append(_Node("part", key_at, key, [expr(depth + 1)]))
                if peek(","):
                    pos += 1
                    continue
                expect("}")
                return _Node("encoders", at, children=parts)
        raise _fail(expression, at, f"unexpected {text!r}")

    tree = expr(0)
    if pos < len(tokens):
        raise _fail(expression, tokens[pos][2], f"unexpected {tokens[pos][1]!r} after a whole expression")
    return tree


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class _Value:
    vectors: dict[str, np.ndarray]  # encoder -> [n, width] float64
    dtypes: set[str]


@dataclass
class MergeResult:
    """What an expression gave.

    Attributes:
        embedding: the new concept's vectors.
        parents: name -> content hash of every library concept the expression used.
        words: the quoted words and prompts it used.
    """

    embedding: Embedding
    parents: dict[str, str]
    words: list[str]


class _Context:
    def __init__(self, expression: str, library: Any, model: ModelInfo | None, home: Any) -> None:
        self.expression = expression
        self.library = library
        self.model = model
        self.home = home
        self.parents: dict[str, str] = {}
        self.words: list[str] = []
        # Per encoder, read once however many words the expression holds.
        self.matrices: dict[str, Any] = {}
        self.vocabularies: dict[str, tuple[dict[str, int], dict[tuple[str, str], int]] | None] = {}

    def fail(self, node: _Node, problem: str) -> MergeExpressionError:
        return _fail(self.expression, node.column, problem)

    def matrix(self, key: str) -> Any:
        """The model's token matrix for ``key``."""
        from conceptlib.models import token_matrix

        if key not in self.matrices:
            assert self.model is not None
            self.matrices[key] = token_matrix(self.model, key)
        return self.matrices[key]

    def vocabulary(self, key: str) -> tuple[dict[str, int], dict[tuple[str, str], int]] | None:
        """token -> id and the BPE merges' ranks of ``key``'s tokenizer (no merges: empty), or None."""
        from pathlib import Path

        from conceptlib.models import tokens_by_id

        if key not in self.vocabularies:
            assert self.model is not None
            tokens = tokens_by_id(self.model, key, home=self.home)
            if tokens is None:
                self.vocabularies[key] = None
                return None
            enc = self.model.encoder(key)
            merges = Path(enc.tokenizer.path) / "merges.txt" if enc is not None and enc.tokenizer is not None and enc.tokenizer.path else None
            ranks: dict[tuple[str, str], int] = {}
            if merges is not None and merges.is_file():
                lines = merges.read_text(encoding="utf-8").splitlines()
                for rank, line in enumerate(line for line in lines[1:] if line and not line.startswith("#version")):
                    parts = line.split()
                    if len(parts) == 2:
                        ranks[(parts[0], parts[1])] = rank
            self.vocabularies[key] = ({token: i for i, token in enumerate(tokens) if token}, ranks)
        return self.vocabularies[key]


def _describe(value: _Value) -> str:
    return " + ".join(f"{key} {rows.shape[0]}x{rows.shape[1]}" for key, rows in value.vectors.items())


def _concept(ctx: _Context, node: _Node) -> _Value:
    from conceptlib.errors import ConceptNotFoundError

    if node.kind == "token":
        names = ctx.library.index.by_token(node.value)
        if not names:
            raise ctx.fail(node, f"no concept has the token {node.value}")
        if len(names) > 1:
            raise ctx.fail(node, f"the token {node.value} names {len(names)} concepts ({', '.join(names)}): write one's name instead")
        name = names[0]
    else:
        name = node.value
    try:
        emb = ctx.library.embedding(name)
    except ConceptNotFoundError:
        raise ctx.fail(node, f"no concept named {name!r} in the library") from None
    concept = ctx.library.show(name)
    ctx.parents[concept.name] = concept.content_hash
    rows = {k: (t.array.astype(np.float64) if t.dtype == "float64" else t.to_float32().astype(np.float64)).reshape(t.shape[0], -1) for k, t in emb.vectors.items()}
    return _Value(rows, {t.dtype for t in emb.vectors.values()})


def _words(ctx: _Context, node: _Node) -> _Value:
    from conceptlib.analysis import check_model
    from conceptlib.tensor import Tensor

    if ctx.model is None:
        raise ctx.fail(node, f"words ('{node.value}') are read from a model's vocabulary: pass --model")
    check_model(ctx.model)
    found: dict[str, np.ndarray] = {}
    for key in ctx.model.encoder_keys:
        ids = _encode(ctx, node, key)
        matrix = ctx.matrix(key)
        if any(i >= matrix.shape[0] for i in ids):
            raise ctx.fail(node, f"a token of '{node.value}' is past the end of {key}'s vocabulary matrix")
        found[key] = np.concatenate([Tensor(matrix.array[i : i + 1], matrix.dtype).to_float32() for i in ids]).astype(np.float64)
    ctx.words.append(node.value)
    return _Value(found, set())


def _encode(ctx: _Context, node: _Node, key: str) -> list[int]:
    """The token ids of the node's words: CLIP's lower-cased pieces, each a BPE of its bytes."""
    from conceptlib.tiny import byte_decoder

    assert ctx.model is not None
    vocabulary = ctx.vocabulary(key)
    if vocabulary is None:
        raise ctx.fail(node, f"{ctx.model.display_name} has no {key} vocabulary at hand to read words with")
    ids, ranks = vocabulary
    to_char = {b: c for c, b in byte_decoder().items()}
    found: list[int] = []
    for piece in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", " ".join(node.value.lower().split())):
        chars = "".join(to_char[b] for b in piece.encode("utf-8"))
        # Without the merges a word can only be read as one whole token.
        for part in _bpe(chars, ranks) if ranks else [chars + "</w>"]:
            if part not in ids:
                raise ctx.fail(node, f"'{piece}' is not in {key}'s vocabulary" + ("" if ranks else " as one token (no merges.txt beside it to split it)"))
            found.append(ids[part])
    if not found:
        raise ctx.fail(node, f"'{node.value}' holds no word")
    return found


def _bpe(chars: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one pre-token: the lowest-ranked adjacent pair is joined until none is known."""
    from conceptlib.tiny import join_pair

    parts = [*chars[:-1], chars[-1] + "</w>"]
    while len(parts) > 1:
        best = min(((ranks.get(pair, -1), i) for i, pair in enumerate(zip(parts, parts[1:], strict=False)) if pair in ranks), default=None)
        if best is None:
            break
        parts = join_pair(parts, (parts[best[1]], parts[best[1] + 1]))
    return parts


def _eval(ctx: _Context, node: _Node) -> _Value | float:
    kind = node.kind
    if kind == "number":
        return float(node.value)
    if kind in ("token", "name"):
        return _concept(ctx, node)
    if kind == "words":
        return _words(ctx, node)
    if kind == "neg":
        inner = _eval(ctx, node.children[0])
        return -inner if isinstance(inner, float) else _Value({k: -v for k, v in inner.vectors.items()}, inner.dtypes)
    if kind in ("+", "-"):
        left, right = (_eval(ctx, c) for c in node.children)
        if isinstance(left, float) and isinstance(right, float):
            return left + right if kind == "+" else left - right
        if isinstance(left, float) or isinstance(right, float):
            raise ctx.fail(node, "a number cannot be added to a concept: scale it instead (0.5*<a>)")
        if set(left.vectors) != set(right.vectors):
            raise ctx.fail(node, f"the two sides have different encoders ({_describe(left)} and {_describe(right)})")
        out = {}
        for key in left.vectors:
            a, b = left.vectors[key], right.vectors[key]
            if a.shape[1] != b.shape[1]:
                raise ctx.fail(node, f"{key} widths differ ({a.shape[1]} and {b.shape[1]})")
            if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
                raise ctx.fail(node, f"{a.shape[0]} vectors and {b.shape[0]} vectors: a sum takes equal counts, or one vector added to each")
            out[key] = a + b if kind == "+" else a - b
        return _Value(out, left.dtypes | right.dtypes)
    if kind in ("*", "/"):
        left, right = (_eval(ctx, c) for c in node.children)
        if kind == "/":
            if not isinstance(right, float):
                raise ctx.fail(node, "divide by a number, not by a concept")
            if right == 0:
                raise ctx.fail(node, "division by zero")
            return left / right if isinstance(left, float) else _Value({k: v / right for k, v in left.vectors.items()}, left.dtypes)
        if isinstance(left, float) and isinstance(right, float):
            return left * right
        if not isinstance(left, float) and not isinstance(right, float):
            raise ctx.fail(node, "two concepts cannot be multiplied: multiply a concept by a number")
        scale, value = (left, right) if isinstance(left, float) else (right, left)
        assert isinstance(scale, float) and isinstance(value, _Value)
        return _Value({k: scale * v for k, v in value.vectors.items()}, value.dtypes)
    if kind == "slice":
        value = _value(ctx, node.children[0], "a slice")
        start, stop = node.value
        n = min(rows.shape[0] for rows in value.vectors.values())
        out = {k: v[start:stop] for k, v in value.vectors.items()}
        if any(rows.shape[0] == 0 for rows in out.values()):
            raise ctx.fail(node, f"the slice [{'' if start is None else start}:{'' if stop is None else stop}] of {n} vectors is empty")
        return _Value(out, value.dtypes)
    if kind == "encoder":
        value = _value(ctx, node.children[0], f".{node.value}")
        if node.value not in value.vectors:
            raise ctx.fail(node, f"no {node.value} here ({_describe(value)})")
        return _Value({node.value: value.vectors[node.value]}, value.dtypes)
    if kind == "concat":
        parts = [_value(ctx, c, "concat()") for c in node.children]
        keys = set(parts[0].vectors)
        if any(set(p.vectors) != keys for p in parts):
            raise ctx.fail(node, "concat() takes concepts with the same encoders (" + "; ".join(_describe(p) for p in parts) + ")")
        return _Value({k: np.concatenate([p.vectors[k] for p in parts]) for k in parts[0].vectors}, set().union(*(p.dtypes for p in parts)))
    if kind == "norm":
        from conceptlib.analysis import load_vocabulary

        value = _value(ctx, node.children[0], "norm()")
        if ctx.model is None:
            raise ctx.fail(node, "norm() scales to the vocabulary's norm: pass --model")
        out = {}
        for key, rows in value.vectors.items():
            if key not in ctx.model.encoder_keys:
                raise ctx.fail(node, f"{ctx.model.display_name} has no {key} encoder")
            target = float(np.median(load_vocabulary(ctx.model, key, home=ctx.home).norms))
            lengths = np.linalg.norm(rows, axis=1, keepdims=True)
            out[key] = np.where(lengths > 0, rows / np.where(lengths > 0, lengths, 1) * target, rows)
        return _Value(out, value.dtypes)
    if kind == "encoders":
        out = {}
        dtypes: set[str] = set()
        for part in node.children:
            value = _value(ctx, part.children[0], "{ }")
            key = part.value
            if key in out:
                raise ctx.fail(part, f"{key} is given twice")
            if key in value.vectors:
                rows = value.vectors[key]
            elif len(value.vectors) == 1:
                rows = next(iter(value.vectors.values()))
            else:
                raise ctx.fail(part, f"which part of {_describe(value)} is {key}? write .{key} after it")
            from conceptlib.families import ENCODERS

            if key not in ENCODERS:
                raise ctx.fail(part, f"{key!r} is no encoder (clip_l, clip_h, clip_g)")
            if rows.shape[1] != ENCODERS[key]:
                raise ctx.fail(part, f"{key} vectors are {ENCODERS[key]} wide; this part is {rows.shape[1]}")
            out[key] = rows
            dtypes |= value.dtypes
        return _Value(out, dtypes)
    raise ctx.fail(node, f"cannot evaluate {kind}")  # pragma: no cover - the parser makes no other node


def _value(ctx: _Context, node: _Node, where: str) -> _Value:
    value = _eval(ctx, node)
    if isinstance(value, float):
        raise ctx.fail(node, f"{where} takes a concept, not a number")
    return value


def evaluate(
    expression: str, library: Any, *, model: ModelInfo | None = None, home: Any = None
) -> MergeResult:
    """Evaluate a merge expression over ``library``'s concepts.

    Args:
        expression: see the module docstring.
        library: the :class:`~conceptlib.library.Library` the concepts come from.
        model: the model whose vocabulary gives words their vectors and ``norm`` its scale.
        home: the library folder (its caches).

    Returns:
        The vectors, the parents' content hashes and the words used.

    Raises:
        MergeExpressionError: the column and what is wrong there (an unknown concept, a width
            or count mismatch, an empty or too long result).
    """
    from conceptlib.embedding import Embedding
    from conceptlib.families import family_for_encoders

    tree = parse(expression)
    ctx = _Context(expression, library, model, home)
    value = _eval(ctx, tree)
    if isinstance(value, float):
        raise _fail(expression, 0, "the expression is a number, not a concept")
    counts = {rows.shape[0] for rows in value.vectors.values()}
    if len(counts) != 1:
        raise _fail(expression, 0, f"the encoders have different vector counts ({_describe(value)}); SDXL concepts need the same count in each")
    (count,) = counts
    if count > MAX_VECTORS:
        raise _fail(expression, 0, f"the result has {count} vectors; a prompt holds at most {MAX_VECTORS}")
    if family_for_encoders(list(value.vectors)) is None:
        raise _fail(expression, 0, f"the result ({_describe(value)}) fits no Stable Diffusion family")
    if not all(np.isfinite(rows).all() for rows in value.vectors.values()):
        raise _fail(expression, 0, "the result holds NaN or Inf values")
    dtype = next(iter(value.dtypes)) if len(value.dtypes) == 1 and not ctx.words else "float32"
    return MergeResult(Embedding({key: _cast(rows, dtype) for key, rows in value.vectors.items()}), ctx.parents, ctx.words)


def _cast(rows: np.ndarray, dtype: str) -> Any:
    """float64 values stored as ``dtype`` (float32 unless every parent shared another)."""
    from conceptlib.tensor import Tensor

    if dtype == "float64":
        return Tensor.from_numpy(rows.astype(np.float64))
    if dtype == "float16":
        return Tensor.from_numpy(rows.astype(np.float16))
    values = np.ascontiguousarray(rows.astype(np.float32))
    if dtype == "bfloat16":
        # Round to nearest even on the upper 16 bits, as torch does.
        bits = values.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return Tensor(rounded, "bfloat16")
    return Tensor.from_numpy(values)


def merge_into(
    library: Any,
    expression: str,
    *,
    name: str,
    token: str | None = None,
    type: str | None = None,
    model: ModelInfo | None = None,
    description: str | None = None,
    tags: tuple[str, ...] = (),
) -> Any:
    """Evaluate ``expression`` and add the result to ``library`` as ``name``, with its lineage.

    The concept's source records the expression, each parent's name and content hash, the
    words used and the model they were read from; ``conceptlib show`` prints it.

    Returns:
        The library's :class:`~conceptlib.library.AddReport` for the new concept.

    Raises:
        MergeExpressionError: see :func:`evaluate`.
        ConceptDoesNotFitError: with ``model``, the result does not fit it (validation's words).
        DuplicateConceptError: the result's vectors are already a concept (``1*<a>`` is ``<a>``).
    """
    import tempfile
    from pathlib import Path

    from conceptlib.errors import ConceptDoesNotFitError, ConceptlibError
    from conceptlib.formats import write
    from conceptlib.validate import validate

    result = evaluate(expression, library, model=model, home=library.home)
    word = token or f"<{name}>"
    result.embedding.token = word
    result.embedding.name = name
    if model is not None:
        errors = [f for f in validate(result.embedding, model, token=word, home=library.home) if f.severity == "error"]
        if errors:
            raise ConceptDoesNotFitError(name, errors[0].message, findings=list[object](errors))
    source: dict[str, Any] = {
        "type": "merge",
        "expression": expression,
        "parents": [{"name": parent, "content_hash": content_hash} for parent, content_hash in sorted(result.parents.items())],
        "words": list(result.words),
    }
    if model is not None and result.words:
        source["model"] = {"name": model.display_name, "fingerprints": model.fingerprints()}
    with tempfile.TemporaryDirectory(dir=library.staging_dir, prefix="merge-") as folder:
        path = Path(folder) / f"{name}.safetensors"
        write(result.embedding, path, format="conceptlib")
        report = library.add(path, name=name, token=word, type=type, source=source, description=description, tags=tags)
    try:
        report.one()  # a duplicate or a refused token is the command's error
    except ConceptlibError as exc:
        if exc.path is not None and Path(exc.path).is_relative_to(library.staging_dir):
            exc.path = None  # the temporary file is no one's business: the expression is the input
        raise
    return report
