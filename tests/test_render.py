"""conceptlib.render and conceptlib.preview on the built-in tiny models (CPU, 32 px, 2 steps)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import factory
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    ConceptDoesNotFitError,
    ConceptNotFoundError,
    ModelNotFoundError,
    UsageError,
)
from conceptlib.tensor import Tensor

pytestmark = pytest.mark.torch

STEPS = 2
SIZE = (32, 32)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny SD 1.x and SDXL models, a library of concepts, and their loaded pipelines."""
    from conceptlib.formats import write
    from conceptlib.library import Library
    from conceptlib.models import resolve_model
    from conceptlib.render import load_pipeline
    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("render")
    sd1 = create_tiny(base / "tiny-sd1", "sd1", seed=0)
    sdxl = create_tiny(base / "tiny-sdxl", "sdxl", seed=0)
    home = base / "home"
    src = base / "src"
    src.mkdir()
    # Vectors as strong as trained ones (about 8x the tiny vocabulary's norms), so each concept
    # visibly moves the encoder output.
    specs = [
        ("cat-toy", "<cat-toy>", "object", factory.sd1(2, seed=1)),
        ("fancy-chair", "<fancy-chair>", "object", factory.sd1(1, seed=2)),
        ("birb-style", "<birb-style>", "style", factory.sd1(3, seed=3)),
        ("easynegative", "easynegative", "negative", factory.sd1(2, seed=4)),
        ("wide-thing", "<wide-thing>", "object", factory.sd2(1, seed=5)),
        ("xl-toy", "<xl-toy>", "object", factory.sdxl(2, seed=6)),
    ]
    with Library.open(home) as lib:
        for name, token, concept_type, emb in specs:
            vectors = {k: Tensor.from_numpy(v.to_float32() * 8) for k, v in emb.vectors.items()}
            path = src / f"{name}.safetensors"
            write(Embedding(vectors, token=token), path)
            lib.add(path, name=name, token=token, type=concept_type).one()
    return {
        "home": home,
        "sd1": sd1,
        "sdxl": sdxl,
        "sd1_model": resolve_model(sd1),
        "sdxl_model": resolve_model(sdxl),
        "sd1_pipe": load_pipeline(resolve_model(sd1, hash_files=False)),
        "sdxl_pipe": load_pipeline(resolve_model(sdxl, hash_files=False)),
    }


def run(world: dict[str, Any], tmp_path: Path, prompts: list[str] | None = None, *, xl: bool = False, **kw: Any) -> Any:
    """Render with the shared pipelines and small defaults."""
    from conceptlib.render import RenderConfig, render

    options: dict[str, Any] = {"steps": STEPS, "size": SIZE, "out": tmp_path / "out", "home": world["home"]}
    options.update(kw)
    model = world["sdxl_model"] if xl else world["sd1_model"]
    pipe = world["sdxl_pipe"] if xl else world["sd1_pipe"]
    return render(RenderConfig(model=model.path, prompts=prompts or [], **options), pipeline=pipe)


def encode(pipe: Any, text: str, tokenizer: str = "tokenizer", encoder: str = "text_encoder") -> Any:
    """The text encoder's last hidden state for ``text`` (what the UNet sees)."""
    import torch

    tok = getattr(pipe, tokenizer)
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return getattr(pipe, encoder)(ids)[0]


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Parse AUTOMATIC1111 infotext as its ``parse_generation_parameters`` does.

    The last line holds ``Key: value`` pairs (values with commas JSON-quoted); lines before it
    are the prompt until one starts with ``Negative prompt:``.
    """
    re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    *lines, last = text.strip().split("\n")
    params: dict[str, str] = {}
    for key, value in re_param.findall(last):
        params[key] = json.loads(value) if value.startswith('"') else value
    assert len(params) >= 3, last
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), params


@contextlib.contextmanager
def library_logs(world: dict[str, Any]) -> Iterator[list[logging.LogRecord]]:
    """The records transformers and diffusers log inside the block (their handlers stay as they are)."""
    world["sd1_pipe"].tokenizer.deprecation_warnings.clear()  # transformers warns once per tokenizer
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).addHandler(handler)
    try:
        yield records
    finally:
        for name in ("transformers", "diffusers"):
            logging.getLogger(name).removeHandler(handler)


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


# --- concepts in prompts -------------------------------------------------------------------------


def test_three_concepts_composed_each_change_the_encoder_output(world: dict[str, Any]) -> None:
    from conceptlib.render import (
        encoder_components,
        load_concepts,
        resolve_concepts,
        unload_concepts,
    )

    model, pipe = world["sd1_model"], world["sd1_pipe"]
    prompt = "a photo of <cat-toy> on a <fancy-chair> in the style of <birb-style>"
    concepts = resolve_concepts([prompt], model, home=world["home"])
    assert [c.name for c in concepts.used] == ["cat-toy", "fancy-chair", "birb-style"]
    expanded, names = concepts.expand(prompt)
    assert names == ["cat-toy", "fancy-chair", "birb-style"]
    # Multi-vector tokens are written out, one token per vector.
    assert "<cat-toy> <cat-toy>_1 on" in expanded
    assert "<birb-style> <birb-style>_1 <birb-style>_2" in expanded

    loaded = load_concepts(pipe, concepts.used, encoder_components(model))
    try:
        ids = pipe.tokenizer(expanded).input_ids
        assert set(loaded.ids("tokenizer")) <= set(ids)  # every vector's token reaches the encoder
        full = encode(pipe, expanded)
        for concept in concepts.used:
            without = expanded.replace(" ".join(concept.tokens), "")
            assert not np.allclose(encode(pipe, without).numpy(), full.numpy(), atol=1e-4), concept.name
    finally:
        unload_concepts(loaded)


def test_embedding_syntax_bare_tokens_and_negative_embeddings(world: dict[str, Any], tmp_path: Path) -> None:
    result = run(world, tmp_path, ["embedding:cat-toy, a chair"], negative="easynegative, blurry")
    assert [c.name for c in result.concepts] == ["cat-toy", "easynegative"]
    image = result.images[0]
    assert image.concepts == ["cat-toy", "easynegative"]
    prompt, negative, params = parse_parameters(image.parameters)
    assert prompt == "embedding:cat-toy, a chair"  # as written, not expanded
    assert negative == "easynegative, blurry"
    assert [h.split(": ")[0] for h in params["TI hashes"].split(", ")] == ["cat-toy", "easynegative"]


def test_unknown_token_names_the_closest_concepts(world: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConceptNotFoundError) as info:
        run(world, tmp_path, ["a <cat-toi> on a table"])
    assert info.value.name == "<cat-toi>"
    assert "<cat-toy>" in info.value.suggestions
    with pytest.raises(ConceptNotFoundError) as info:
        run(world, tmp_path, ["a embedding:fancy-chiar"])
    assert "fancy-chair" in info.value.suggestions
    assert not (tmp_path / "out").exists()  # nothing rendered before the error


def test_width_mismatch_gets_the_validation_message(world: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConceptDoesNotFitError) as info:
        run(world, tmp_path, ["a <wide-thing> in a garden"])
    assert info.value.name == "wide-thing"
    assert "embedding width 1024 fits SD 2.x, this model is SD 1.x (768)" in str(info.value)
    assert any(f.code == "width-mismatch" for f in info.value.findings)


# --- loading and unloading ---------------------------------------------------------------------


def test_unloading_restores_tokenizer_and_embedding_exactly(world: dict[str, Any], tmp_path: Path) -> None:
    import torch

    pipe = world["sd1_pipe"]
    tok, enc = pipe.tokenizer, pipe.text_encoder
    before = {
        "len": len(tok),
        "added": tok.get_added_vocab(),
        "ids": tok("a <cat-toy> on a chair").input_ids,
        "backend": tok._tokenizer.to_str(),
        "module": enc.get_input_embeddings(),
        "weight": enc.get_input_embeddings().weight.detach().clone(),
        "scheduler": pipe.scheduler,
    }
    run(world, tmp_path, ["a <cat-toy> on a <fancy-chair>"], negative="easynegative", scheduler="euler_a")
    assert len(tok) == before["len"]
    assert tok.get_added_vocab() == before["added"]
    assert tok("a <cat-toy> on a chair").input_ids == before["ids"]
    assert tok._tokenizer.to_str() == before["backend"]
    assert enc.get_input_embeddings() is before["module"]
    assert torch.equal(enc.get_input_embeddings().weight, before["weight"])
    assert pipe.scheduler is before["scheduler"]
    assert "maybe_convert_prompt" not in vars(pipe)


def test_failed_load_leaves_nothing_behind(world: dict[str, Any]) -> None:
    from conceptlib.render import UsedConcept, load_concepts

    pipe = world["sd1_pipe"]
    n = len(pipe.tokenizer)
    emb = factory.sd1(1, seed=9)
    # "cat" is an ordinary word of the tiny vocabulary: loading must refuse it and undo.
    clash = UsedConcept("clash", "cat", "object", "sd1", "0" * 64, "x", emb)
    ok = UsedConcept("fine", "<fine>", "object", "sd1", "1" * 64, "y", emb)
    with pytest.raises(ConceptDoesNotFitError, match="already in the model's tokenizer vocabulary"):
        load_concepts(pipe, [ok, clash], {"clip_l": ("tokenizer", "text_encoder")})
    assert len(pipe.tokenizer) == n
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == n


def test_sdxl_concept_goes_to_both_encoders(world: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from conceptlib.render import (
        encoder_components,
        load_concepts,
        resolve_concepts,
        unload_concepts,
    )

    model, pipe = world["sdxl_model"], world["sdxl_pipe"]
    assert encoder_components(model) == {"clip_l": ("tokenizer", "text_encoder"), "clip_g": ("tokenizer_2", "text_encoder_2")}
    concepts = resolve_concepts(["a <xl-toy>"], model, home=world["home"])
    (concept,) = concepts.used
    loaded = load_concepts(pipe, concepts.used, encoder_components(model))
    try:
        for key, tok_attr, enc_attr in (("clip_l", "tokenizer", "text_encoder"), ("clip_g", "tokenizer_2", "text_encoder_2")):
            ids = getattr(pipe, tok_attr).convert_tokens_to_ids(concept.tokens)
            assert ids == loaded.ids(tok_attr)
            rows = getattr(pipe, enc_attr).get_input_embeddings().weight[ids]
            assert torch.equal(rows, torch.from_numpy(concept.embedding.vectors[key].to_float32()))
    finally:
        unload_concepts(loaded)
    result = run(world, tmp_path, ["a <xl-toy> on a table"], xl=True)
    assert result.images[0].path.is_file()
    assert len(pipe.tokenizer_2) == len(pipe.tokenizer)  # both back to the tiny vocabulary


# --- batching, seeds, output -------------------------------------------------------------------


def same_image(a: Path, b: Path) -> bool:
    """Equal pixels, up to one rounding step.

    Seeds and noise are identical whatever the batch size (one generator per image), but CPU
    and GPU kernels (convolution, GroupNorm) sum in a different order for a different batch
    size, which moves latents by about 1e-5: after decoding, a pixel channel can land on the
    other side of a rounding boundary. Any real difference of seed or prompt moves them by far
    more than 1/255.
    """
    diff = np.abs(pixels(a).astype(int) - pixels(b).astype(int))
    return int(diff.max()) <= 1 and float(diff.mean()) < 0.05


def test_seeds_do_not_depend_on_batch_size(world: dict[str, Any], tmp_path: Path) -> None:
    prompts = ["a <cat-toy> on a table", "a <fancy-chair> in a room"]
    one = run(world, tmp_path, prompts, images_per_prompt=2, seed=100, batch_size=1, out=tmp_path / "b1")
    three = run(world, tmp_path, prompts, images_per_prompt=2, seed=100, batch_size=3, out=tmp_path / "b3")
    assert [i.seed for i in one.images] == [i.seed for i in three.images] == [100, 101, 102, 103]
    assert [i.path.name for i in one.images] == [i.path.name for i in three.images]
    for a, b in zip(one.images, three.images, strict=True):
        assert same_image(a.path, b.path), a.path.name
    # Any image can be reproduced alone from its seed.
    alone = run(world, tmp_path, [prompts[1]], seed=103, out=tmp_path / "alone")
    assert same_image(alone.images[0].path, one.images[3].path)
    assert not same_image(one.images[0].path, one.images[1].path)


def test_parameters_chunk_and_manifest(world: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    result = run(
        world, tmp_path, ["a <cat-toy>, on a chair"], negative="easynegative", seed=7,
        guidance=6.5, scheduler="euler_a", grid=True,
    )  # fmt: skip
    (image,) = result.images
    with Image.open(image.path) as im:
        text = im.text["parameters"]  # type: ignore[attr-defined]
        assert im.size == SIZE
    assert text == image.parameters
    prompt, negative, params = parse_parameters(text)
    assert prompt == "a <cat-toy>, on a chair"
    assert negative == "easynegative"
    assert params["Steps"] == str(STEPS)
    assert params["Sampler"] == "Euler a"
    assert params["CFG scale"] == "6.5"
    assert params["Seed"] == "7"
    assert params["Size"] == "32x32"
    assert re.fullmatch(r"[0-9a-f]{10}", params["Model hash"])
    hashes = dict(h.split(": ") for h in params["TI hashes"].split(", "))
    concepts = {c.name: c for c in result.concepts}
    assert hashes == {"cat-toy": concepts["cat-toy"].sha256[:12], "easynegative": concepts["easynegative"].sha256[:12]}

    manifest = json.loads(result.manifest.read_text())
    assert manifest["format"] == "conceptlib-render"
    assert manifest["images"][0]["file"] == image.path.name
    assert manifest["images"][0]["seed"] == 7
    assert [c["name"] for c in manifest["concepts"]] == ["cat-toy", "easynegative"]
    assert manifest["settings"]["sampler"] == "Euler a"
    assert result.grid is not None
    with Image.open(result.grid) as grid:
        assert grid.width == SIZE[0] and grid.height > SIZE[1]  # room for the label


def test_jsonl_overrides(world: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "# a comment\n"
        "a plain <cat-toy> line\n"
        + json.dumps({"prompt": "a <fancy-chair>", "seed": 50, "n": 2, "steps": 1, "size": "48x32", "negative": "easynegative"}) + "\n"
        + json.dumps({"prompt": "a red car", "guidance": 3}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    result = run(world, tmp_path, ["first"], prompts_file=prompts, seed=10, batch_size=4)
    got = [(i.prompt, i.seed, i.steps, i.width, i.height, i.guidance, i.negative) for i in result.images]
    assert got == [
        ("first", 10, STEPS, 32, 32, 7.5, ""),
        ("a plain <cat-toy> line", 11, STEPS, 32, 32, 7.5, ""),
        ("a <fancy-chair>", 50, 1, 48, 32, 7.5, "easynegative"),
        ("a <fancy-chair>", 51, 1, 48, 32, 7.5, "easynegative"),
        ("a red car", 14, STEPS, 32, 32, 3.0, ""),
    ]
    with Image.open(result.images[2].path) as im:
        assert im.size == (48, 32)


def test_bad_prompt_files_and_options(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.render import parse_size, read_prompts

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "sede": 1}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="line 1: unknown key"):
        read_prompts(bad)
    assert parse_size("768x512") == (768, 512)
    assert parse_size(64) == (64, 64)
    with pytest.raises(UsageError):
        parse_size("30x30")
    with pytest.raises(UsageError, match="unknown scheduler"):
        run(world, tmp_path, ["a cat"], scheduler="eulr")
    with pytest.raises(UsageError, match="nothing to render"):
        run(world, tmp_path, [])
    # A NaN guidance would render without guidance and write NaN (not JSON) into render.json.
    with pytest.raises(UsageError, match=r"^--guidance: must be a number from 0 to 100, got nan$"):
        run(world, tmp_path, ["a cat"], guidance=float("nan"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match="is a file; renders go into a folder"):
        run(world, tmp_path, ["a cat"], out=tmp_path / "afile")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x", "steps": -3}', '"steps" must be a whole number from 1 to 1000, got -3'),
        ('{"prompt": "x", "steps": 0}', '"steps" must be a whole number from 1 to 1000, got 0'),
        ('{"prompt": "x", "steps": 100000000000}', '"steps" must be a whole number from 1 to 1000, got 100000000000'),
        ('{"prompt": "x", "seed": 2.9}', '"seed" must be a whole number from 0 to 9223372036854775807, got 2.9'),
        ('{"prompt": "x", "seed": true}', '"seed" must be a whole number from 0 to 9223372036854775807, got true'),
        ('{"prompt": "x", "seed": 1e30}', '"seed" must be a whole number from 0 to 9223372036854775807, got 1e+30'),
        ('{"prompt": "x", "n": 1e400}', '"n" must be a whole number from 0 to 10000, got Infinity'),
        ('{"prompt": "x", "negative": ["a", "b"]}', '"negative" must be a string, got ["a", "b"]'),
        ('{"prompt": "x", "guidance": "7"}', '"guidance" must be a number from 0 to 100, got "7"'),
        # json.loads reads NaN, Infinity and 1e400: numbers to Python, never a CFG scale.
        ('{"prompt": "x", "guidance": NaN}', '"guidance" must be a number from 0 to 100, got NaN'),
        ('{"prompt": "x", "guidance": 1e400}', '"guidance" must be a number from 0 to 100, got Infinity'),
        ('{"prompt": "x", "guidance": 1e308}', '"guidance" must be a number from 0 to 100, got 1e+308'),
        ('{"prompt": "x", "guidance": -1}', '"guidance" must be a number from 0 to 100, got -1'),
        # Sizes are whole numbers in range: int(1e400) raised OverflowError, 512.5 became 512.
        ('{"prompt": "x", "size": [1e400, 8]}', "size '[inf, 8]' is not WIDTHxHEIGHT"),
        ('{"prompt": "x", "size": [512.5, 512]}', "size '[512.5, 512]' is not WIDTHxHEIGHT"),
        ('{"prompt": "x", "size": [true, 8]}', "size '[True, 8]' is not WIDTHxHEIGHT"),
        ('{"prompt": "x", "size": [16392, 512]}', "size 16392x512: width and height must be multiples of 8 from 8 to 16384"),
        ('{"prompt": "x", "size": "99999999999999999999x8"}', "size 99999999999999999999x8: width and height must be multiples of 8 from 8 to 16384"),
    ],
)
def test_prompt_file_values_are_checked_like_the_options(tmp_path: Path, line: str, message: str) -> None:
    from conceptlib.render import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine", "seed": 3, "steps": 2}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        read_prompts(path)
    assert str(info.value) == f"{path}, line 2: {message}"


def test_seeds_and_files_that_cannot_render_are_refused_before_any_image(world: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    common = ["--model", str(world["sd1"]), "--home", str(world["home"]), "--steps", "1", "--size", "32x32"]
    for seed, n in (("99999999999999999999", "1"), ("-1", "1"), ("9223372036854775807", "2")):
        run_ = cli("render", "x", *common, "--seed", seed, "-n", n, "--out", str(tmp_path / "r"))
        assert run_.exit_code == 2 and run_.stderr.startswith("Error: "), run_.stderr
        assert not (tmp_path / "r").exists()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    run_ = cli("render", "--prompts", str(tmp_path / "latin1.txt"), *common, "--out", str(tmp_path / "r"))
    assert (run_.exit_code, run_.stderr) == (
        2, f"Error: {tmp_path / 'latin1.txt'}: is not UTF-8 text (expected one prompt, or one JSON object, a line) "
        "(hint: save the prompt file as UTF-8)\n",
    )  # fmt: skip


# --- previews for pull requests ------------------------------------------------------------------


def test_preview_markdown_and_exit_code(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.preview import preview

    out = tmp_path / "preview"
    result = preview(
        ["cat-toy", "birb-style", "easynegative", "wide-thing"],
        model=world["sd1"], out=out, home=world["home"], steps=1, size=SIZE,
        pipeline=world["sd1_pipe"],
    )  # fmt: skip
    assert result.exit_code == 1  # wide-thing is an SD 2.x concept
    items = {i.name: i for i in result.items}
    assert not items["cat-toy"].failed and items["cat-toy"].grid is not None
    assert len(items["birb-style"].images) == 4
    assert items["wide-thing"].failed and items["wide-thing"].grid is None
    md = result.markdown.read_text(encoding="utf-8")
    assert md.startswith("## conceptlib preview")
    assert "**3 of 4 concepts fit the model**, 1 failed." in md
    assert "| cat-toy | `<cat-toy>` | object | SD 1.x | ✅ fits | [<img src=\"cat-toy/thumb.png\"" in md
    assert "| wide-thing | `<wide-thing>` | object | SD 2.x | ❌ embedding width 1024 fits SD 2.x" in md
    assert (out / "cat-toy" / "thumb.png").is_file()
    # Style and negative concepts get their own prompt sets.
    birb = json.loads((out / "birb-style" / "render.json").read_text())
    assert birb["images"][0]["prompt"] == "a painting in the style of <birb-style>"
    neg = json.loads((out / "easynegative" / "render.json").read_text())
    assert neg["images"][0]["negative"] == "easynegative"


def test_preview_stopped_midway_leaves_no_summary(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.preview import preview

    out = tmp_path / "preview"
    common: dict[str, Any] = {"model": world["sd1"], "out": out, "home": world["home"], "steps": 1, "size": SIZE,
                              "pipeline": world["sd1_pipe"]}  # fmt: skip
    preview(["cat-toy"], **common)
    assert "| cat-toy |" in (out / "preview.md").read_text(encoding="utf-8")

    def stop_after_first(done: int, total: int, message: str) -> None:
        if done == 1:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) while the second concept is up next

    with pytest.raises(KeyboardInterrupt):
        preview(["birb-style", "easynegative"], progress=stop_after_first, **common)
    # The first concept's grid is whole; the earlier run's summary is not left to describe this one.
    assert (out / "birb-style" / "grid.png").is_file()
    assert not (out / "easynegative").exists()
    assert not (out / "preview.md").exists()

    # A run that fails before rendering anything leaves none either.
    preview(["cat-toy"], **common)
    with pytest.raises(UsageError, match="unknown scheduler"):
        preview(["cat-toy"], **{**common, "scheduler": "nope"})
    assert not (out / "preview.md").exists()
    preview(["cat-toy"], **common)
    with pytest.raises(ModelNotFoundError):
        preview(["cat-toy"], **{**common, "model": "no-such-model", "pipeline": None})
    assert not (out / "preview.md").exists()


def test_preview_reports_a_damaged_concept_in_its_row(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.library import Library
    from conceptlib.preview import preview

    home = tmp_path / "home"
    shutil.copytree(world["home"], home)
    with Library.open(home) as lib:
        stored = lib.folder("fancy-chair") / "embedding.safetensors"
    data = bytearray(stored.read_bytes())
    data[-5] ^= 1  # a flipped bit: still decodes, no longer the recorded vectors
    stored.write_bytes(bytes(data))
    result = preview(["cat-toy", "fancy-chair"], model=world["sd1"], out=tmp_path / "pv", home=home, steps=1,
                     size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    assert result.exit_code == 2  # as `show` exits for a damaged concept
    items = {i.source: i for i in result.items}
    assert items["cat-toy"].grid is not None
    assert items["fancy-chair"].error is not None and "verify --repair" in items["fancy-chair"].error
    assert items["fancy-chair"].rejected and not items["cat-toy"].rejected
    assert "| fancy-chair | – | – | – | ❌ " in result.markdown.read_text(encoding="utf-8")


def test_preview_changed_files_in_a_concepts_repository(world: dict[str, Any], tmp_path: Path) -> None:
    import shutil
    import subprocess

    from conceptlib.formats import write
    from conceptlib.preview import Skipped, changed_concepts, preview

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "concepts"
    (repo / "old").mkdir(parents=True)
    write(factory.sd1(1, seed=20, token="<old>"), repo / "old" / "learned_embeds.safetensors")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "base")
    # The pull request: a new sd-concepts-library folder, a loose file, a README.
    (repo / "new-toy" / "concept_images").mkdir(parents=True)
    write(factory.sd1(2, seed=21, token="<new-toy>"), repo / "new-toy" / "learned_embeds.safetensors")
    (repo / "new-toy" / "token_identifier.txt").write_text("<new-toy>")
    (repo / "new-toy" / "concept_images" / "0.jpeg").write_bytes(b"not really")
    write(factory.sd2(1, seed=22, token="<too-wide>"), repo / "too-wide.safetensors")
    (repo / "README.md").write_text("hello")
    git("add", ".")
    git("commit", "-qm", "pr")

    inputs, skipped = changed_concepts("HEAD~1...HEAD", repo=repo)
    assert [p.name for p in inputs] == ["new-toy", "too-wide.safetensors"]
    assert skipped == [Skipped("README.md", "holds no concept")]
    result = preview(changed="HEAD~1...HEAD", repo=repo, model=world["sd1"], out=tmp_path / "pv",
                     steps=1, size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    assert [(i.source, i.failed) for i in result.items] == [("new-toy", False), ("too-wide.safetensors", True)]
    assert result.exit_code == 1
    assert "`README.md`" in result.markdown.read_text(encoding="utf-8")


def concepts_repo(path: Path) -> Any:
    """An empty git repository at ``path``; returns ``git(*args)`` run inside it."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path.mkdir(parents=True)

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True, text=True)
        return done.stdout

    git("init", "-q")
    return git


def test_preview_changed_loose_file_beside_a_concept_folder(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.formats import write
    from conceptlib.preview import changed_concepts, preview

    repo = tmp_path / "concepts"
    git = concepts_repo(repo)
    # An old folder with an unchanged loose file beside its learned_embeds.
    (repo / "old").mkdir()
    write(factory.sd1(1, seed=30, token="<old>"), repo / "old" / "learned_embeds.safetensors")
    write(factory.sd1(1, seed=31, token="<old-extra>"), repo / "old" / "unchanged.safetensors")
    git("add", ".")
    git("commit", "-qm", "base")
    # The pull request: a diffusers folder with a loose embedding beside learned_embeds, and a
    # token file for the old folder.
    (repo / "new-toy").mkdir()
    write(factory.sd1(2, seed=32, token="<new-toy>"), repo / "new-toy" / "learned_embeds.safetensors")
    write(factory.sd1(1, seed=33, token="<new-extra>"), repo / "new-toy" / "extra.safetensors")
    (repo / "old" / "token_identifier.txt").write_text("<old>")
    git("add", ".")
    git("commit", "-qm", "pr")

    inputs, skipped = changed_concepts("HEAD~1...HEAD", repo=repo)
    assert [p.relative_to(repo.resolve()).as_posix() for p in inputs] == ["new-toy", "new-toy/extra.safetensors", "old"]
    assert skipped == []
    result = preview(changed="HEAD~1...HEAD", repo=repo, model=world["sd1"], out=tmp_path / "pv",
                     steps=1, size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    # Every concept the change adds, and only those (not old/unchanged.safetensors).
    assert [(i.source, i.token, i.failed) for i in result.items] == [
        ("new-toy", "<new-toy>", False),
        ("new-toy/extra.safetensors", "<new-extra>", False),
        ("old", "<old>", False),
    ]
    assert all(i.grid is not None and i.grid.is_file() for i in result.items)


def test_preview_range_without_concepts_writes_a_summary(world: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    from conceptlib.formats import write

    repo = tmp_path / "concepts"
    git = concepts_repo(repo)
    (repo / "old").mkdir()
    write(factory.sd1(1, seed=40, token="<old>"), repo / "old" / "learned_embeds.safetensors")
    (repo / "README.md").write_text("hello")
    git("add", ".")
    git("commit", "-qm", "base")
    write(factory.sd1(1, seed=41, token="<gone>"), repo / "gone.safetensors")
    git("add", ".")
    git("commit", "-qm", "add gone")
    git("rm", "-rq", "old", "gone.safetensors")
    (repo / "README.md").write_text("hello again")
    git("commit", "-qam", "delete a concept, edit the README")

    out = tmp_path / "pv"
    common = ["--model", str(world["sd1"]), "--home", str(world["home"]), "--repo", str(repo), "--out", str(out)]
    run = cli("preview", "--changed", "HEAD~1...HEAD", *common)
    assert (run.exit_code, run.stdout) == (0, "")
    assert run.stderr == (
        "skipped README.md: holds no concept\n"
        "skipped gone.safetensors: deleted by the change\n"
        "skipped old/learned_embeds.safetensors: deleted by the change\n"
        "no concepts to preview\n"
        f"summary: {out / 'preview.md'}\n"
    )
    md = (out / "preview.md").read_text(encoding="utf-8")
    assert "**No concepts changed in `HEAD~1...HEAD`**: nothing to preview." in md
    assert "| Concept |" not in md
    assert md.endswith(
        "Skipped changed files:\n\n"
        "- `README.md`: holds no concept\n"
        "- `gone.safetensors`: deleted by the change\n"
        "- `old/learned_embeds.safetensors`: deleted by the change\n"
    )

    # A range whose files the working tree no longer has: listed, not dropped.
    run = cli("preview", "--changed", "HEAD~2...HEAD~1", *common, "--json")
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["items"] == [] and data["exit_code"] == 0
    assert data["skipped"] == [
        {"path": "gone.safetensors", "reason": "not in the working tree (check out the range's last commit)"}
    ]


def test_preview_refuses_a_range_that_git_would_read_as_an_option(world: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    from conceptlib.preview import changed_concepts

    repo = tmp_path / "concepts"
    git = concepts_repo(repo)
    git("commit", "-q", "--allow-empty", "-m", "base")
    written = tmp_path / "written-by-git"
    run = cli("preview", f"--changed=--output={written}", "--model", str(world["sd1"]), "--repo", str(repo),
              "--out", str(tmp_path / "pv"))  # fmt: skip
    assert run.exit_code == 2
    assert run.stderr == (
        f"Error: --changed '--output={written}' is not a git range (it may not start with '-') "
        "(hint: pass a range such as origin/main...HEAD)\n"
    )
    assert not written.exists() and not (tmp_path / "pv").exists()
    with pytest.raises(UsageError, match="is not a git range"):
        changed_concepts("-p", repo=repo)


def test_preview_strict_fails_warnings_in_the_summary_too(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.formats import write
    from conceptlib.preview import preview

    # 75 vectors: the whole context, and a context-tight warning.
    write(factory.sd1(75, seed=50, token="<huge>"), tmp_path / "huge.safetensors")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'huge.safetensors'}\n")
    common: dict[str, Any] = {"model": world["sd1"], "home": world["home"], "steps": 1, "size": SIZE, "pipeline": world["sd1_pipe"]}

    lenient = preview(from_file=tmp_path / "list.txt", out=tmp_path / "lenient", **common)
    assert lenient.exit_code == 0
    md = lenient.markdown.read_text(encoding="utf-8")
    assert "**1 of 1 concepts fit the model**." in md
    assert "| huge | `<huge>` | object | SD 1.x | ⚠️ 75 vectors use 75 of the 75 prompt tokens" in md

    strict = preview(from_file=tmp_path / "list.txt", out=tmp_path / "strict", strict=True, **common)
    assert strict.exit_code == 1
    md = strict.markdown.read_text(encoding="utf-8")
    assert "**0 of 1 concepts fit the model**, 1 failed (--strict: warnings fail)." in md
    assert "| huge | `<huge>` | object | SD 1.x | ❌ 75 vectors use 75 of the 75 prompt tokens" in md
    assert "(warning, failed under --strict) |" in md
    assert lenient.to_dict()["items"][0]["verdict"] == "warning"
    assert strict.to_dict()["items"][0]["verdict"] == "failed"


def test_preview_prompts_fit_the_context(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.formats import write
    from conceptlib.preview import preview, preview_prompts

    # A 75-vector negative embedding typed "object" would overflow every template.
    write(factory.sd1(75, seed=51, token="bad-hands"), tmp_path / "bad-hands.safetensors")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'bad-hands.safetensors'}\n")
    result = preview(from_file=tmp_path / "list.txt", out=tmp_path / "pv", model=world["sd1"], home=world["home"],
                     steps=1, size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    assert not result.items[0].failed
    manifest = json.loads((tmp_path / "pv" / "bad-hands" / "render.json").read_text())
    assert [i["prompt"] for i in manifest["images"]] == ["bad-hands"] * 4
    # Templates stay where they fit, with the prompt budget counted after BOS/EOS.
    assert preview_prompts("<t>", "object", vectors=72)[0] == ["a photo of <t>", "<t>", "a painting of <t>", "<t>"]
    assert preview_prompts("<t>", "style", vectors=66)[0][0] == "a painting in the style of <t>"
    assert preview_prompts("neg", "negative", vectors=75) == (["a portrait of a woman", "a photo of a cat", "a house in a forest", "a city street at night"], "neg")
    with pytest.raises(UsageError, match="76 vectors do not fit the 77-token context"):
        preview_prompts("<t>", "object", vectors=76)


def test_preview_template_words_are_one_clip_token_each(shared_models: Path) -> None:
    from transformers import CLIPTokenizer

    from conceptlib.preview import NEGATIVE_PROMPTS, OBJECT_TEMPLATES, STYLE_TEMPLATES

    tokenizer = CLIPTokenizer.from_pretrained(shared_models / "sd15" / "tokenizer")
    for template in (*OBJECT_TEMPLATES, *STYLE_TEMPLATES, *NEGATIVE_PROMPTS):
        text = template.replace("{}", " ")
        assert len(tokenizer(text, add_special_tokens=False).input_ids) == len(text.split()), template


def test_preview_keeps_library_logs_out_of_the_output(world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib import preview as preview_module

    # Prompts too long for the context make transformers and diffusers log warnings.
    long = "a photo of " + "red " * 90 + "{}"
    monkeypatch.setattr(preview_module, "preview_prompts", lambda token, *a, **k: ([long.format(token)], ""))
    with library_logs(world) as records:
        preview_module.preview(["cat-toy"], model=world["sd1"], out=tmp_path / "pv", home=world["home"],
                               steps=1, size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    assert [r.getMessage()[:40] for r in records] == []


def test_preview_gives_concepts_with_one_name_their_own_grids(world: dict[str, Any], tmp_path: Path) -> None:
    from conceptlib.formats import write
    from conceptlib.preview import preview

    # A changed file whose concept is called cat-toy too, next to the library's cat-toy.
    write(factory.sd1(2, seed=60, token="<cat-toy>"), tmp_path / "cat-toy.safetensors")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'cat-toy.safetensors'}\n")
    out = tmp_path / "pv"
    result = preview(["cat-toy"], from_file=tmp_path / "list.txt", out=out, model=world["sd1"], home=world["home"],
                     steps=1, size=SIZE, pipeline=world["sd1_pipe"])  # fmt: skip
    assert [(i.name, i.failed) for i in result.items] == [("cat-toy", False), ("cat-toy", False)]
    assert [i.grid for i in result.items] == [out / "cat-toy" / "grid.png", out / "cat-toy-2" / "grid.png"]
    assert not np.array_equal(pixels(out / "cat-toy" / "00000-0.png"), pixels(out / "cat-toy-2" / "00000-0.png"))
    md = result.markdown.read_text(encoding="utf-8")
    assert '<img src="cat-toy/thumb.png"' in md and '<img src="cat-toy-2/thumb.png"' in md


def test_preview_from_a_list_file(world: dict[str, Any], tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.formats import write

    lists = tmp_path / "lists"
    lists.mkdir()
    write(factory.sd2(1, seed=70, token="<wide-one>"), tmp_path / "wide-one.safetensors")
    (lists / "list.txt").write_text("# relative to this file\n../wide-one.safetensors\nmissing.safetensors\nnot-a-concept\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the list's paths do not depend on where the command runs
    common = ["--model", str(world["sd1"]), "--home", str(world["home"]), "--out", str(tmp_path / "pv")]
    run = cli("preview", "--from", str(lists / "list.txt"), *common, "--json")
    # 2, as `add` and `validate` exit for a missing file or an unknown name (not 1: the SD 2.x
    # concept alone would give 1), with the summary written all the same.
    assert run.exit_code == 2, run.output
    data = json.loads(run.stdout)
    assert data["exit_code"] == 2 and Path(data["markdown"]).is_file()
    items = {i["source"]: i for i in data["items"]}
    assert items["../wide-one.safetensors"]["error"].startswith("embedding width 1024 fits SD 2.x")
    assert items["missing.safetensors"]["error"] == f"{lists / 'missing.safetensors'}: no such file or folder"
    assert items["not-a-concept"]["error"].startswith("no concept named 'not-a-concept' in the library")
    assert {s: i["rejected"] for s, i in items.items()} == {
        "../wide-one.safetensors": False, "missing.safetensors": True, "not-a-concept": True,
    }

    # The concept that does not fit, alone: 1.
    (lists / "wide.txt").write_text("../wide-one.safetensors\n")
    run = cli("preview", "--from", str(lists / "wide.txt"), *common)
    assert run.exit_code == 1, run.output

    # An empty list (a CI job found nothing to list) is like a range that changes nothing.
    (lists / "empty.txt").write_text("# no concepts this time\n\n")
    run = cli("preview", "--from", str(lists / "empty.txt"), *common)
    assert (run.exit_code, run.stdout) == (0, "")
    assert run.stderr == f"no concepts to preview\nsummary: {tmp_path / 'pv' / 'preview.md'}\n"
    md = (tmp_path / "pv" / "preview.md").read_text(encoding="utf-8")
    assert f"**No concepts listed in `{lists / 'empty.txt'}`**: nothing to preview." in md

    (lists / "latin1.txt").write_bytes("caf\xe9.safetensors\n".encode("latin-1"))
    run = cli("preview", "--from", str(lists / "latin1.txt"), *common)
    assert run.exit_code == 2
    assert run.stderr == (
        f"Error: {lists / 'latin1.txt'}: is not UTF-8 text (expected concept paths or names, one a line) "
        "(hint: save the list as UTF-8)\n"
    )


def test_preview_and_render_refuse_a_model_without_weights(shared_models: Path, tmp_path: Path, cli: Any) -> None:
    model = shared_models / "sd15"  # model_index.json and configs, no weight files
    expected = (
        f"Error: {model}: has configs but no weights (no weight files in unet, vae, text_encoder) "
        "(hint: download the weight files into it (e.g. unet/diffusion_pytorch_model.safetensors, "
        "text_encoder/model.safetensors), pass a .safetensors checkpoint, or try with a tiny model "
        "made by `conceptlib models create-tiny DIR`)\n"
    )
    run = cli("preview", "cat-toy", "--model", str(model), "--out", str(tmp_path / "pv"))
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", expected)
    assert not (tmp_path / "pv").exists()
    run = cli("render", "a photo of a cat", "--model", str(model), "--out", str(tmp_path / "r"))
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", expected)
    assert not (tmp_path / "r").exists()


# --- the commands ------------------------------------------------------------------------------


def test_cli_render_and_preview(world: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    common = ["--model", str(world["sd1"]), "--home", str(world["home"]), "--steps", "1", "--size", "32x32"]
    result = cli("render", "a <cat-toy>", "a red car", *common, "-n", "2", "--batch-size", "4",
                 "--out", str(tmp_path / "r"), "--grid", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["images"]) == 4 and data["concepts"] == ["cat-toy"]
    assert Path(data["grid"]).is_file()

    result = cli("preview", "cat-toy", "wide-thing", *common, "--out", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "wide-thing: failed: embedding width 1024" in result.stdout
    assert (tmp_path / "p" / "preview.md").is_file()


def test_a_run_without_a_grid_leaves_no_earlier_grid(world: dict[str, Any], tmp_path: Path) -> None:
    first = run(world, tmp_path, ["a red car"], grid=True)
    assert first.grid is not None and first.grid.is_file()
    second = run(world, tmp_path, ["a blue car"])
    assert second.grid is None and not (tmp_path / "out" / "grid.png").exists()


def test_render_warns_about_prompts_the_encoder_does_not_read_as_written(world: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    # 3 words + birb-style's 3 vectors + 69 = 75, CLIP's context without BOS/EOS: it fits.
    fits = "a photo of <birb-style> " + "red " * 69
    too_long = fits + "big blue car"
    with library_logs(world) as records:
        result = run(world, tmp_path, [fits.strip(), too_long, "a (small) chair", "a (red:1.3) car"], negative="(ugly:.5)")
    assert result.warnings == [
        "the negative prompt of line 1 uses an AUTOMATIC1111 attention weight, '(ugly:.5)': conceptlib does not "
        "weight prompts, so the text encoder reads the brackets and the number as words",
        "prompt line 2 is 78 tokens long: the text encoder reads the first 75, so 'big blue car' is left out (shorten it)",
        "prompt line 4 uses an AUTOMATIC1111 attention weight, '(red:1.3)': conceptlib does not "
        "weight prompts, so the text encoder reads the brackets and the number as words",
    ]
    assert [r.getMessage()[:40] for r in records] == []  # diffusers' own truncation lines are ours now

    sdxl = run(world, tmp_path, ["a <xl-toy> " + "red " * 80], xl=True, out=tmp_path / "xl")
    assert [w.split(":")[0] for w in sdxl.warnings] == ["prompt line 1 is 83 tokens long"]

    common = ["--model", str(world["sd1"]), "--home", str(world["home"]), "--steps", "1", "--size", "32x32"]
    done = cli("render", "a (red:1.3) car", *common, "--out", str(tmp_path / "cli"), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["warnings"] == [result.warnings[2].replace("line 4", "line 1")]
    done = cli("render", "a (red:1.3) car", *common, "--out", str(tmp_path / "cli"))
    assert done.stderr.splitlines()[-1] == "Warning: " + result.warnings[2].replace("line 4", "line 1")


def test_every_scheduler_name_builds(world: dict[str, Any]) -> None:
    import importlib.util

    from conceptlib.render import SCHEDULERS, _scheduler

    pipe = world["sd1_pipe"]
    for name, (class_name, _extra, sampler) in SCHEDULERS.items():
        if name == "lms" and importlib.util.find_spec("scipy") is None:
            continue  # diffusers' LMS needs scipy
        scheduler, a1111 = _scheduler(pipe, name)
        assert type(scheduler).__name__ == class_name and a1111 == sampler
    assert _scheduler(pipe, None) == (pipe.scheduler, "Euler")  # the tiny model's own
    assert _scheduler(pipe, "DPM++ 2M")[1] == "DPM++ 2M"  # A1111 spelling accepted
