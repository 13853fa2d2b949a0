"""Reading concepts against a model's vocabulary: nearest tokens, explanations, norms, the CLI.

Models are diffusers folders with a real tokenizer (the tiny one, or SD 1.5's from ../shared) and
seeded token matrices; neighbours are checked against a brute-force float64 reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_filecache import TOKEN_KEY, _write_safetensors, diffusers_folder

from conceptlib import analysis, models
from conceptlib.analysis import analyse, explain, load_vocabulary, nearest
from conceptlib.embedding import Embedding
from conceptlib.errors import ConceptDoesNotFitError, UsageError
from conceptlib.formats import write
from conceptlib.models import read_model
from conceptlib.tensor import Tensor


def _matrix(folder: Path) -> np.ndarray:
    header, _meta, start = models._safetensors_header(folder / "text_encoder" / "model.safetensors")
    return models._safetensors_tensor(folder / "text_encoder" / "model.safetensors", header, start, TOKEN_KEY).to_float32()


def _concept(vectors: np.ndarray, token: str = "<probe>", key: str = "clip_l") -> Embedding:
    return Embedding({key: Tensor.from_numpy(np.asarray(vectors, np.float32))}, token=token)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    return diffusers_folder(tmp_path / "model", seed=3)


def test_nearest_matches_brute_force(model_folder: Path) -> None:
    model = read_model(model_folder)
    vocabulary = load_vocabulary(model, "clip_l")
    rows = _matrix(model_folder).astype(np.float64)
    probes = np.random.default_rng(7).standard_normal((5, 768)).astype(np.float32)
    found = nearest(probes, vocabulary, 8)
    unit_rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    for probe, neighbours in zip(probes.astype(np.float64), found, strict=True):
        cosines = unit_rows @ (probe / np.linalg.norm(probe))
        expected = np.argsort(-cosines, kind="stable")[:8]
        assert [n.id for n in neighbours] == expected.tolist()
        assert [n.cosine for n in neighbours] == pytest.approx(cosines[expected].tolist(), abs=1e-5)
    # A vocabulary row is its own nearest token, at cosine 1, and reads as its word.
    cat = vocabulary.tokens.index("cat</w>")
    [[first, *_]] = nearest(rows[cat] * 3.0, vocabulary, 3)
    assert (first.id, first.word) == (cat, "cat") and first.cosine == pytest.approx(1.0, abs=1e-6)


def test_explain_recovers_a_mixture(model_folder: Path) -> None:
    vocabulary = load_vocabulary(read_model(model_folder), "clip_l")
    rows = _matrix(model_folder)
    cat, toy = vocabulary.tokens.index("cat</w>"), vocabulary.tokens.index("toy</w>")
    found = explain(0.7 * rows[cat] + 0.3 * rows[toy], vocabulary, terms=4)
    weights = {i: w for i, _word, w in found.terms}
    assert set(weights) == {cat, toy} and found.residual < 1e-3  # stops once exact
    assert weights[cat] == pytest.approx(0.7, abs=1e-4) and weights[toy] == pytest.approx(0.3, abs=1e-4)
    assert "0.70 × cat" in found.text() and "0.30 × toy" in found.text()
    # Noise is not explained away: the residual says how much is left.
    noise = np.random.default_rng(1).standard_normal(768).astype(np.float32)
    assert explain(noise, vocabulary, terms=2).residual > 0.5
    assert explain(np.zeros(768, np.float32), vocabulary).terms == []


def test_analyse_reports_norms_against_the_vocabulary(model_folder: Path) -> None:
    model = read_model(model_folder)
    rows = _matrix(model_folder)
    cat = json.loads((model_folder / "tokenizer" / "vocab.json").read_text())["cat</w>"]
    report = analyse(_concept([rows[cat], rows[cat] * 10]), model, neighbors=3, terms=2)
    [first, loud] = report["encoders"]["clip_l"]["vectors"]
    assert first["neighbors"][0]["word"] == "cat" and first["explanation"]["terms"][0]["word"] == "cat"
    assert loud["norm_percentile"] == 100.0 and 0 < first["norm_percentile"] < 100
    assert loud["norm"] == pytest.approx(10 * first["norm"], rel=1e-4)
    assert report["encoders"]["clip_l"]["mean"]["neighbors"][0]["word"] == "cat"
    assert report["encoders"]["clip_l"]["vocabulary"]["size"] == len(rows)


def test_models_without_weights_or_another_width_say_so(model_folder: Path) -> None:
    with pytest.raises(UsageError, match="sd1 is a family name: it has no weights") as caught:
        analyse(_concept(np.ones((1, 768))), read_model("sd1"))
    assert caught.value.hint is not None and "--model" in caught.value.hint
    with pytest.raises(ConceptDoesNotFitError, match=r"its vectors \(1024\) fit no encoder of .* \(768\)"):
        analyse(_concept(np.ones((1, 1024)), key="clip_h"), read_model(model_folder))


def test_the_vocabulary_is_cached_per_fingerprint(model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = read_model(model_folder)
    first = load_vocabulary(model, "clip_l")
    reads: list[str] = []
    original = analysis.token_matrix
    monkeypatch.setattr(analysis, "token_matrix", lambda m, k: reads.append(k) or original(m, k))
    again = load_vocabulary(model, "clip_l")
    assert reads == [] and np.array_equal(np.asarray(again.unit), first.unit)
    # A damaged cache file is not trusted: the matrix is read again and the file rewritten.
    from conceptlib.config import home

    folder = home() / "cache" / "vocabulary"
    for path in folder.glob("*.unit.npy"):
        path.write_bytes(b"not an array")
    rebuilt = load_vocabulary(model, "clip_l")
    assert reads == ["clip_l"] and np.array_equal(rebuilt.unit, first.unit)
    assert np.load(next(folder.glob("*.unit.npy"))).shape == first.unit.shape


def test_sd15_tokenizer_words(shared_models: Path, tmp_path: Path) -> None:
    # The real 49,408-token SD 1.5 vocabulary with a seeded float16 matrix (a checkpoint's dtype).
    folder = tmp_path / "sd15"
    shutil.copytree(shared_models / "sd15" / "tokenizer", folder / "tokenizer")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 768, "max_position_embeddings": 77, "vocab_size": 49408}))
    rows = (np.random.default_rng(0).standard_normal((49408, 768)) * 0.02).astype(np.float16)
    _write_safetensors(folder / "text_encoder" / "model.safetensors", {TOKEN_KEY: rows})
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model = read_model(folder)
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    water, color = vocab["water"], vocab["color</w>"]
    report = analyse(_concept(rows[[water, color]].astype(np.float32)), model, neighbors=1, terms=1)
    words = [v["neighbors"][0]["word"] for v in report["encoders"]["clip_l"]["vectors"]]
    assert words == ["water…", "color"]
    vocabulary = load_vocabulary(model, "clip_l")
    assert vocabulary.word(vocab["Ã©</w>"]) == "é"  # byte-level tokens read as their text


def test_cli_inspect_against_a_model(cli: Any, model_folder: Path, tmp_path: Path) -> None:
    rows = _matrix(model_folder)
    vocab = json.loads((model_folder / "tokenizer" / "vocab.json").read_text())
    concept = tmp_path / "probe.safetensors"
    write(_concept([0.6 * rows[vocab["cat</w>"]] + 0.4 * rows[vocab["toy</w>"]]]), concept)

    run = cli("inspect", str(concept), "--model", str(model_folder), "--explain", "--neighbors", "2")
    assert run.exit_code == 0, run.output
    assert f"  against {model_folder} (clip_l, {len(rows):,} tokens;" in run.stdout
    assert "≈ 0.60 × cat + 0.40 × toy (residual 0.00)" in run.stdout

    run = cli("inspect", str(concept), "--model", str(model_folder), "--json", "--terms", "2", "--explain")
    [info] = json.loads(run.stdout)
    terms = info["analysis"]["encoders"]["clip_l"]["vectors"][0]["explanation"]["terms"]
    assert [t["word"] for t in terms] == ["cat", "toy"]

    # A library concept by name, and a plot.
    assert cli("add", str(concept), "--name", "probe").exit_code == 0
    plot = tmp_path / "probe.png"
    run = cli("inspect", "probe", "--model", str(model_folder), "--plot", str(plot))
    assert run.exit_code == 0, run.output and f"Plot: {plot}" in run.stderr
    from PIL import Image

    assert Image.open(plot).size[0] > 400

    for argv, message in (
        (["--explain"], "Error: --explain reads the vectors against a model's vocabulary (hint: pass --model"),
        (["--model", str(model_folder), "--neighbors", "-1"], "Error: --neighbors: must be"),
        (["--model", "sd1"], "Error: sd1 is a family name: it has no weights"),
    ):
        run = cli("inspect", str(concept), *argv)
        assert run.exit_code == 2 and run.stderr.startswith(message), run.stderr


def test_sdxl_concepts_are_read_per_encoder(tmp_path: Path) -> None:
    from conceptlib.tiny import tiny_tokenizer_files

    folder = diffusers_folder(tmp_path / "xl", seed=4)
    vocab = json.loads(tiny_tokenizer_files()["vocab.json"])
    (folder / "text_encoder_2").mkdir()
    (folder / "text_encoder_2" / "config.json").write_text(json.dumps({"hidden_size": 1280, "max_position_embeddings": 77, "vocab_size": len(vocab)}))
    g_rows = np.random.default_rng(8).standard_normal((len(vocab), 1280)).astype(np.float32)
    _write_safetensors(folder / "text_encoder_2" / "model.safetensors", {TOKEN_KEY: g_rows})
    shutil.copytree(folder / "tokenizer", folder / "tokenizer_2")
    model = read_model(folder)
    assert model.encoder_keys == ["clip_l", "clip_g"]
    l_rows = _matrix(folder)
    cat, toy = vocab["cat</w>"], vocab["toy</w>"]
    concept = Embedding({"clip_l": Tensor.from_numpy(l_rows[[cat]]), "clip_g": Tensor.from_numpy(g_rows[[toy]])}, token="<xl>")
    report = analyse(concept, model, neighbors=1)
    assert report["encoders"]["clip_l"]["vectors"][0]["neighbors"][0]["word"] == "cat"
    assert report["encoders"]["clip_g"]["vectors"][0]["neighbors"][0]["word"] == "toy"


def test_heat_colours_follow_the_legend() -> None:
    # "blue < 0 < red", as the plot's legend and the gallery's alt text say.
    from conceptlib.analysis import heat_rgb

    assert heat_rgb(np.array([1.0, 0.5, 0.0, -1.0, -3.0])).tolist() == [
        [255, 0, 0], [255, 127, 127], [255, 255, 255], [0, 0, 255], [0, 0, 255],
    ]  # fmt: skip
