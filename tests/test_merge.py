"""Merge expressions: the parser, the arithmetic's properties, words from a vocabulary, the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_filecache import diffusers_folder

from conceptlib.embedding import Embedding
from conceptlib.formats import write
from conceptlib.library import Library
from conceptlib.merge import MergeExpressionError, evaluate, parse
from conceptlib.models import read_model, token_matrix
from conceptlib.tensor import Tensor


def _rows(seed: int, n: int, width: int = 768) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.02).astype(np.float32)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    """a: 4 x 768 float32, b: 4 x 768, one: 1 x 768, half: 2 x 768 float16, xl: SDXL 2 x (768 + 1280)."""
    folder = tmp_path_factory.mktemp("merge")
    lib = Library.open(folder / "home")
    concepts = {
        "a": {"clip_l": Tensor.from_numpy(_rows(0, 4))},
        "b": {"clip_l": Tensor.from_numpy(_rows(1, 4))},
        "one": {"clip_l": Tensor.from_numpy(_rows(2, 1))},
        "half": {"clip_l": Tensor.from_numpy(_rows(3, 2).astype(np.float16))},
        "xl": {"clip_l": Tensor.from_numpy(_rows(4, 2)), "clip_g": Tensor.from_numpy(_rows(5, 2, 1280))},
    }
    for name, vectors in concepts.items():
        write(Embedding(vectors, token=f"<{name}>"), folder / f"{name}.safetensors")
        lib.add(folder / f"{name}.safetensors", name=name)
    return lib


def _vectors(lib: Library, expression: str, **kw: Any) -> dict[str, np.ndarray]:
    return {k: t.array for k, t in evaluate(expression, lib, **kw).embedding.vectors.items()}


@pytest.mark.parametrize(("expression", "column", "problem"), [
    ("", None, "merge expression is empty"),
    ("0.6*<a> +", 10, "the expression ends where a concept, word or number should be"),
    ("<a> <b>", 5, "unexpected '<b>' after a whole expression"),
    ("(<a> + <b>", 11, "expected ')', found the end"),
    ("<a", 1, "a <token> is not closed with >"),
    ("'water", 1, "the words opened with ' are not closed"),
    ("<a>[x]", 5, "expected a vector index or i:j"),
    ("<a> ^ 2", 5, "unexpected '^'"),
    ("{clip_l <a>}", 9, "expected ':', found '<a>'"),
    ("(" * 70 + "<a>" + ")" * 70, 66, "nested more than 64 deep"),
    ("-" * 3000 + "<a>", 66, "nested more than 64 deep"),
    ("concat(" * 70 + "<a>" + ")" * 70, None, "nested more than 64 deep"),
])  # fmt: skip
def test_parse_errors_name_the_column(expression: str, column: int | None, problem: str) -> None:
    with pytest.raises(MergeExpressionError) as caught:
        parse(expression)
    message = caught.value.message
    assert problem in message
    if column is not None:
        assert message.startswith(f"merge expression, column {column}: ")


@pytest.mark.parametrize(("expression", "column", "problem"), [
    ("<nope>", 1, "no concept has the token <nope>"),
    ("nope", 1, "no concept named 'nope' in the library"),
    ("a * b", 3, "two concepts cannot be multiplied"),
    ("a + 2", 3, "a number cannot be added to a concept"),
    ("a / b", 3, "divide by a number, not by a concept"),
    ("a / 0", 3, "division by zero"),
    ("a + half", 3, "4 vectors and 2 vectors: a sum takes equal counts, or one vector added to each"),
    ("a + xl", 3, "the two sides have different encoders (clip_l 4x768 and clip_l 2x768 + clip_g 2x1280)"),
    ("a[7:9]", 2, "the slice [7:9] of 4 vectors is empty"),
    ("a.clip_g", 3, "no clip_g here (clip_l 4x768)"),
    ("concat(a, xl)", 1, "concat() takes concepts with the same encoders"),
    ("{clip_l: a, clip_g: b}", 13, "clip_g vectors are 1280 wide; this part is 768"),
    ("{clip_l: xl.clip_g}", 2, "clip_l vectors are 768 wide; this part is 1280"),
    ("{clip_h: xl}", 2, "which part of clip_l 2x768 + clip_g 2x1280 is clip_h? write .clip_h after it"),
    ("2 * 3", 1, "the expression is a number, not a concept"),
    ("{clip_l: a, clip_g: xl.clip_g}", 1, "the encoders have different vector counts"),
    ("'watercolor'", 1, "words ('watercolor') are read from a model's vocabulary: pass --model"),
    ("concat(a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a)", 1, "the result has 80 vectors; a prompt holds at most 75"),
])  # fmt: skip
def test_evaluation_errors_name_the_column(library: Library, expression: str, column: int, problem: str) -> None:
    with pytest.raises(MergeExpressionError) as caught:
        evaluate(expression, library)
    assert caught.value.message.startswith(f"merge expression, column {column}: {problem}"), caught.value.message


def test_what_expressions_make(library: Library) -> None:
    a, b, one = (library.embedding(n).vectors["clip_l"].array for n in ("a", "b", "one"))
    got = _vectors(library, "0.6*<a> + 0.4*b")["clip_l"]
    assert np.array_equal(got, (0.6 * a.astype(np.float64) + 0.4 * b.astype(np.float64)).astype(np.float32))
    # One vector is added to each of the other's; slices and concatenation count vectors.
    assert np.array_equal(_vectors(library, "a + one")["clip_l"], (a.astype(np.float64) + one.astype(np.float64)).astype(np.float32))
    assert _vectors(library, "concat(a[1:3], b[0], one)")["clip_l"].shape == (4, 768)
    assert np.array_equal(_vectors(library, "-a / 2")["clip_l"], (-a.astype(np.float64) / 2).astype(np.float32))
    # SDXL from parts of any source, each encoder checked.
    xl = _vectors(library, "{clip_l: a[0:2], clip_g: xl.clip_g}")
    assert xl["clip_l"].shape == (2, 768) and xl["clip_g"].shape == (2, 1280)
    result = evaluate("0.5*a + 0.5*<b>", library)
    assert result.parents == {"a": library.show("a").content_hash, "b": library.show("b").content_hash}


def test_the_parents_dtype_is_kept(library: Library) -> None:
    half = library.embedding("half")
    same = evaluate("1*half", library).embedding.vectors["clip_l"]
    assert (same.dtype, same.tobytes()) == ("float16", half.vectors["clip_l"].tobytes())
    assert evaluate("concat(half, a[0:2])", library).embedding.vectors["clip_l"].dtype == "float32"  # mixed: float32


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.floats(-4, 4, allow_nan=False, width=32),
    st.floats(-4, 4, allow_nan=False, width=32),
    st.sampled_from(["a", "<a>", "half", "one", "xl"]),
)
def test_properties(library: Library, w1: float, w2: float, name: str) -> None:
    original = library.embedding(name.strip("<>"))
    # 1*x is x, bit for bit, in its own dtype; so are x/1 and (x).
    for expression in (f"1*{name}", f"{name}/1", f"({name})", f"{name}*1"):
        assert evaluate(expression, library).embedding.content_hash() == original.content_hash()
    # Sums commute, bit for bit.
    left = evaluate(f"{w1!r}*a + {w2!r}*b", library).embedding
    right = evaluate(f"{w2!r}*b + {w1!r}*a", library).embedding
    assert left.content_hash() == right.content_hash()


def test_words_and_norm_come_from_the_model(library: Library, tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path / "model", seed=1)
    (folder / "tokenizer" / "merges.txt").read_text()
    model = read_model(folder)
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    matrix = token_matrix(model, "clip_l").array
    got = _vectors(library, "'Cat'", model=model)["clip_l"]
    assert np.array_equal(got, matrix[[vocab["cat</w>"]]])
    prompt = _vectors(library, '"a red cat"', model=model)["clip_l"]
    assert np.array_equal(prompt, matrix[[vocab["a</w>"], vocab["red</w>"], vocab["cat</w>"]]])
    mixed = evaluate("a + 0.1*'cat'", library, model=model)
    assert mixed.words == ["cat"] and mixed.embedding.num_vectors == 4
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    scaled = _vectors(library, "norm(a)", model=model)["clip_l"]
    assert np.linalg.norm(scaled.astype(np.float64), axis=1) == pytest.approx(np.full(4, np.median(norms)), rel=1e-5)
    # Without merges.txt a word must be one token of the vocabulary.
    (folder / "tokenizer" / "merges.txt").unlink()
    assert np.array_equal(_vectors(library, "'cat'", model=read_model(folder))["clip_l"], matrix[[vocab["cat</w>"]]])
    with pytest.raises(MergeExpressionError, match=r"'qzqzqz' is not in clip_l's vocabulary as one token \(no merges.txt"):
        evaluate("'qzqzqz'", library, model=read_model(folder))


def test_cli_merge_adds_with_its_lineage(cli: Any, library: Library, tmp_path: Path) -> None:
    home = str(library.home)
    run = cli("merge", "0.6*<a> + 0.4*b", "--name", "ab", "--home", home)
    assert run.exit_code == 0 and run.stdout == "merged     ab  (<ab>, SD 1.x, 4 vectors)\n"
    show = cli("show", "ab", "--home", home).stdout
    assert "  merged from   0.6*<a> + 0.4*b\n" in show
    assert f"  parents       a ({library.show('a').content_hash[:12]}), b ({library.show('b').content_hash[:12]})\n" in show
    source = json.loads(cli("show", "ab", "--json", "--home", home).stdout)["source"]
    assert source["type"] == "merge" and [p["name"] for p in source["parents"]] == ["a", "b"]
    # A merged concept exports like any other.
    assert cli("export", "ab", "--for", "a1111", "--out", str(tmp_path / "ui"), "--home", home).exit_code == 0
    assert (tmp_path / "ui" / "ab.safetensors").is_file()
    # The same vectors again: refused as a duplicate, naming the concept, not a temporary file.
    run = cli("merge", "1*a", "--name", "again", "--home", home)
    assert run.exit_code == 2 and run.stderr == "Error: the same vectors are already in the library as 'a' (hint: see `conceptlib show a`)\n"
    run = cli("merge", "a *", "--name", "bad", "--home", home)
    assert run.exit_code == 2 and run.stderr.startswith("Error: merge expression, column 4: the expression ends where")
    run = cli("merge", "0.9*a + 0.1*b", "--name", "close", "--home", home)
    assert "near-dup   close  (near-duplicate of a (" in run.stdout


def test_words_tokenize_as_clip_does(shared_models: Path, library: Library, tmp_path: Path) -> None:
    # SD 1.5's real tokenizer (49,408 tokens and their merges) against transformers' own.
    transformers = pytest.importorskip("transformers")
    import shutil

    folder = tmp_path / "sd15"
    shutil.copytree(shared_models / "sd15" / "tokenizer", folder / "tokenizer")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 768, "max_position_embeddings": 77, "vocab_size": 49408}))
    from test_filecache import TOKEN_KEY, _write_safetensors

    rows = np.zeros((49408, 768), np.float32)
    rows[:, 0] = np.arange(49408)  # row i says i
    _write_safetensors(folder / "text_encoder" / "model.safetensors", {TOKEN_KEY: rows})
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model = read_model(folder)
    reference = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    for prompt in ("a red fox in the snow", "Watercolor, pastel!! cats' 2 dogs", "an über-café at night"):
        expected = reference(prompt, add_special_tokens=False).input_ids
        got = _vectors(library, f'"{prompt}"', model=model)["clip_l"][:, 0]
        assert got.astype(np.int64).tolist() == expected, prompt


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>ab01.-+*/()[]{}:,'\" cat_lgc")), max_size=80) | st.text(max_size=60))
def test_any_text_parses_or_says_where_not(text: str) -> None:
    try:
        parse(text)
    except MergeExpressionError as exc:
        assert exc.message.startswith("merge expression")
