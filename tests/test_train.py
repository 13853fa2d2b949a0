"""Textual-inversion training on the built-in tiny models (CPU, 32 px, a few steps per run)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.errors import (
    ConceptExistsError,
    DestinationExistsError,
    TrainingDivergedError,
    TrainingImageError,
    TrainingInterrupted,
    TrainingTokenError,
    UsageError,
)
from conceptlib.train import (
    OBJECT_TEMPLATES,
    Progress,
    TrainConfig,
    TrainResult,
    _cache_latents,
    _caption,
    _check_config,
    _generator,
    _load_image,
    _resume_differences,
    _save_checkpoint,
    _splice,
    _vary_tags,
    load_checkpoint,
    lr_at,
    parse_lr_schedule,
    read_templates,
    spread,
)

pytestmark = pytest.mark.torch


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SD 1.x model, plus a v-prediction copy of it (only the scheduler config differs)."""
    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("models")
    sd1 = create_tiny(base / "sd1", "sd1", seed=0)
    v = base / "sdv"
    shutil.copytree(sd1, v)
    config_path = v / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return {"sd1": sd1, "sd1-v": v}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conceptlib.tiny import create_tiny

    return create_tiny(tmp_path_factory.mktemp("models") / "sdxl", "sdxl", seed=0)


def _make_images(folder: Path, n: int = 3) -> Path:
    """A toy concept: red, horizontally striped pictures of different sizes and modes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 40 + 8 * i, 48
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., 0] = 220
        pixels[::4] = 30
        pixels = (pixels + rng.integers(0, 20, pixels.shape)).astype(np.uint8)
        img = Image.fromarray(pixels)
        if i == 1:
            img = img.convert("RGBA")  # converted to RGB on a white background
        if i == 2:
            img = img.convert("P")
        img.save(folder / f"{i:03d}-red striped toy.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_images(tmp_path_factory.mktemp("images") / "toy")


def _config(model: Path, images: Path, out: Path, **kw: object) -> TrainConfig:
    defaults: dict[str, object] = dict(
        model=str(model), images=str(images), token="<toy>", init_word="watermark",
        steps=4, lr=0.02, resolution=32, save_every=0, out=str(out), add_to_library=False,
    )  # fmt: skip
    defaults.update(kw)
    return TrainConfig(**defaults)  # type: ignore[arg-type]


def _train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    from conceptlib.train import train

    return train(config, progress=progress)


# --- pure helpers (no model) ---------------------------------------------------------------------


def test_lr_schedule_syntax() -> None:
    pairs = parse_lr_schedule("0.005:100, 1e-3:1000, 1e-5", 3000)
    assert pairs == [(0.005, 100), (0.001, 1000), (1e-05, 3000)]
    assert [lr_at(pairs, s) for s in (0, 99, 100, 999, 1000, 2999)] == [0.005, 0.005, 0.001, 0.001, 1e-05, 1e-05]
    # -1 and steps past the end mean "until the end" and end the list.
    assert parse_lr_schedule("0.01:10, 0.001:-1, 5", 50) == [(0.01, 10), (0.001, 50)]
    assert parse_lr_schedule("0.01:10, 0.001:500", 50) == [(0.01, 10), (0.001, 50)]
    assert parse_lr_schedule("1e-4", 7) == [(1e-4, 7)]
    # A list that ends early: training stops at its last step.
    assert parse_lr_schedule("0.01:10", 50) == [(0.01, 10)]
    for bad in ("", "abc", "0.01:x", "0.01:10, 0.02:5", "-1:10", "0.01:10,,1e-3"):
        with pytest.raises(UsageError) as info:
            parse_lr_schedule(bad, 100)
        assert "0.005:100" in (info.value.hint or ""), bad


def test_templates_and_captions(tmp_path: Path) -> None:
    assert all("[name]" in t for t in OBJECT_TEMPLATES)
    file = tmp_path / "subject_filewords.txt"
    file.write_text("a photo of a [name], [filewords]\n\n  [filewords] by [name]  \n")
    assert read_templates(file) == ["a photo of a [name], [filewords]", "[filewords] by [name]"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="no templates"):
        read_templates(tmp_path / "empty.txt")
    (tmp_path / "none.txt").write_text("picture\n")
    with pytest.raises(UsageError, match=r"\[name\]"):
        read_templates(tmp_path / "none.txt")
    # filewords: AUTOMATIC1111 drops leading digits and dashes.
    image = tmp_path / "0012-a red_hat.png"
    assert _caption(image, None) == "a red hat"
    assert _caption(image, "filewords") == "a red hat"
    with pytest.raises(TrainingImageError, match="0012-a red_hat.txt"):
        _caption(image, "sidecar")
    image.with_suffix(".txt").write_text("  a knitted\n red hat ")
    assert _caption(image, "sidecar") == "a knitted red hat"
    assert spread(2, 3) == [0, 0, 1]
    assert spread(3, 2) == [0, 1]
    assert spread(1, 4) == [0, 0, 0, 0]


def test_tag_shuffle_and_dropout() -> None:
    import torch

    caption = "red, striped , toy,,plush"  # stray spaces and an empty tag are cleaned up
    tags = {"red", "striped", "toy", "plush"}
    g = torch.Generator().manual_seed(0)
    assert _vary_tags(caption, g, shuffle=False, dropout=0.0) == "red, striped, toy, plush"
    shuffled = [_vary_tags(caption, g, shuffle=True, dropout=0.0) for _ in range(30)]
    assert all(sorted(s.split(", ")) == sorted(tags) for s in shuffled)
    assert len(set(shuffled)) > 5  # orders really change
    kept = [s.split(", ") if s else [] for s in (_vary_tags(caption, g, shuffle=False, dropout=0.5) for _ in range(400))]
    assert all(set(k) <= tags for k in kept)
    share = sum(len(k) for k in kept) / (4 * len(kept))
    assert 0.4 < share < 0.6  # each tag stays with probability 1 - 0.5
    assert [_vary_tags(caption, torch.Generator().manual_seed(7), shuffle=True, dropout=0.3) for _ in range(2)] == [
        _vary_tags(caption, torch.Generator().manual_seed(7), shuffle=True, dropout=0.3)
    ] * 2  # a pure function of the generator
    assert _vary_tags("", g, shuffle=True, dropout=0.5) == ""
    with pytest.raises(UsageError, match="tag-dropout"):
        _check_config(TrainConfig(model="m", images="i", token="<t>", tag_dropout=1.0))


def test_resume_accepts_checkpoints_from_before_new_settings() -> None:
    config = TrainConfig(model="m", images="i", token="<t>")
    saved = config.to_dict()
    del saved["shuffle_tags"], saved["tag_dropout"]  # an older conceptlib did not write them
    assert _resume_differences(saved, config) == []
    assert _resume_differences(saved, TrainConfig(model="m", images="i", token="<t>", tag_dropout=0.1)) == ["tag_dropout"]


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """Pillow's convert("RGB") clips 16-bit and float images at 255 (white or black pictures)."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "i16.png")  # read back as I;16
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i32.tif")  # read back as I
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "f.tif")  # F, 0..1
    expected = np.round(ramp / 257) / 127.5 - 1.0
    for name in ("i16.png", "i32.tif", "f.tif"):
        pixels, _size, _crop = _load_image(tmp_path / name, 64)
        assert pixels.shape == (3, 64, 64)
        assert np.abs(pixels[0] - expected).max() <= 1.01 / 127.5, name
        assert (pixels[0] == pixels[2]).all()
    Image.fromarray((ramp / 100).astype(np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(TrainingImageError, match="hdr.tif: is a floating-point image with values from 0 to 655.35"):
        _load_image(tmp_path / "hdr.tif", 64)


def test_resume_compares_where_paths_lead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    saved = TrainConfig(model=str(tmp_path / "model"), images=str(tmp_path / "images"), token="<t>").to_dict()
    monkeypatch.chdir(tmp_path)
    assert _resume_differences(saved, TrainConfig(model="./model", images="images/", token="<t>")) == []
    (tmp_path / "other").mkdir()
    assert _resume_differences(saved, TrainConfig(model="other", images="images", token="<t>")) == ["model"]


def test_device_names_are_checked_before_anything_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from conceptlib._parallel import process_device

    assert process_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="--device 'foo' is not a device"):
        process_device("foo")
    if not torch.cuda.is_available():
        assert process_device("auto") == "cpu"
        with pytest.raises(UsageError, match="--device cuda: CUDA is not available"):
            process_device("cuda")
    # A machine with two GPUs (device-count queries only; nothing runs on them). A bare "cuda"
    # gets an index: torch.cuda.set_device refuses a device without one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    from torch.cuda._utils import _get_device_index

    assert process_device("cuda") == "cuda:0" and _get_device_index(torch.device(process_device("cuda"))) == 0
    assert process_device("auto") == "cuda:0" and process_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match=r"this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        process_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cuda") == "cuda:1"  # each launcher process its own GPU


# --- guard rails that run before any model is loaded -----------------------------------------------


def test_images_and_token_checked_first(models: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(TrainingImageError, match="holds no images"):
        _train(_config(models["sd1"], empty, tmp_path / "o1"))
    broken = _make_images(tmp_path / "broken", 1)
    (broken / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(TrainingImageError) as info:
        _train(_config(models["sd1"], broken, tmp_path / "o2"))
    assert info.value.path is not None and info.value.path.endswith("zz-broken.png")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    from PIL import Image

    Image.new("L", (8, 8)).save(tiny / "dot.png")
    with pytest.raises(TrainingImageError, match="too small"):
        _train(_config(models["sd1"], tiny, tmp_path / "o3"))
    # "cat" is a word of the tiny vocabulary, as in CLIP's: refused before any step.
    with pytest.raises(TrainingTokenError, match="cat"):
        _train(_config(models["sd1"], broken / "000-red striped toy.png", tmp_path / "o4", token="cat"))
    with pytest.raises(UsageError, match="training needs weights; .sd1. is a family name"):
        _train(_config(Path("sd1"), broken, tmp_path / "o5"))
    with pytest.raises(UsageError, match="--lr-schedule"):
        _train(_config(models["sd1"], broken, tmp_path / "o6", lr_schedule="0.1", scheduler="cosine"))
    with pytest.raises(UsageError, match="no checkpoint"):
        _train(_config(models["sd1"], broken, tmp_path / "o7", resume=True))
    with pytest.raises(UsageError, match="--warmup-steps needs a scheduler that warms up"):
        _train(_config(models["sd1"], broken, tmp_path / "o8", warmup_steps=5))
    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match="afile: is a file; the run folder must be a folder"):
        _train(_config(models["sd1"], broken, tmp_path / "afile"))
    with pytest.raises(UsageError, match="--preview-steps: must be a whole number from 1 to 1000, got -1"):
        _train(_config(models["sd1"], broken, tmp_path / "o9", preview_every=1, preview_steps=-1))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 [name]\n".encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.txt: is not UTF-8 text"):
        _train(_config(models["sd1"], broken / "000-red striped toy.png", tmp_path / "o10", templates=str(latin1)))
    # Templates of captions alone never show the token: nothing to learn from.
    filewords = tmp_path / "filewords.txt"
    filewords.write_text("[filewords]\n")
    with pytest.raises(UsageError, match="no template uses \\[name\\] and no caption holds the token '<toy>'"):
        _train(_config(models["sd1"], broken / "000-red striped toy.png", tmp_path / "o11", templates=str(filewords)))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 12))


def test_a_training_image_that_is_no_image_is_refused_before_anything_loads(cli: Any, models: dict[str, Path], tmp_path: Path) -> None:
    images = _make_images(tmp_path / "imgs", 1)
    (images / "zz-evil.png").write_bytes(b"#!/bin/sh\nrm -rf ~\n")
    run = tmp_path / "run"
    args = ["train", "-m", str(models["sd1"]), "-i", str(images), "--token", "<x>", "--resolution", "32", "--out", str(run)]
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {images / 'zz-evil.png'}: is not an image, though named .png: it holds a script "
        "(hint: remove it from the training images)\n"
    )
    assert not run.exists()


def _images_the_library_does_not_keep(folder: Path, *, tiff: bool = True) -> Path:
    """Two kept PNGs, a TIFF and a JPEG named .png: all four train, the library keeps two."""
    from PIL import Image

    _make_images(folder, 2)
    picture = Image.open(folder / "000-red striped toy.png").convert("RGB")
    if tiff:
        picture.save(folder / "002-toy.tif")
    picture.save(folder / "003-toy.png", format="JPEG")
    return folder


def test_training_images_the_library_does_not_keep_are_warnings(cli: Any, models: dict[str, Path], tmp_path: Path) -> None:
    from conceptlib.library import Library

    images = _images_the_library_does_not_keep(tmp_path / "imgs")
    args = ["train", "-m", str(models["sd1"]), "-i", str(images), "--token", "<kept>", "--init-word", "toy",
            "--steps", "1", "--resolution", "32", "--save-every", "0", "--name", "kept", "--out", str(tmp_path / "run")]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0
    err = result.stderr.splitlines()
    assert "Warning: 002-toy.tif is trained on but not kept with the concept: the library keeps only .png, .jpg, .jpeg, .webp, .gif, .bmp images" in err
    assert "Warning: 003-toy.png is trained on but not kept with the concept: is named .png but holds a JPEG image" in err
    with Library.open() as lib:
        assert [i.name for i in lib.show("kept").images] == ["000-red striped toy.png", "001-red striped toy.png"]


def test_images_the_library_leaves_out_are_in_the_warnings(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlib.train as train_module

    # Whatever passes the check above and is still refused by the library (a file changed
    # while training ran) is reported from the add's skipped list, not dropped.
    monkeypatch.setattr(train_module, "_check_image_file", lambda path: None)
    images = _images_the_library_does_not_keep(tmp_path / "imgs", tiff=False)
    result = _train(_config(models["sd1"], images, tmp_path / "run", steps=1, add_to_library=True, name="left-out"))
    assert "003-toy.png is not kept with the concept: is named .png but holds a JPEG image (hint: give it the suffix of the format it holds, if you trust it)" in result.warnings
    assert result.concept is not None and len(result.concept.images) == 2


def test_tokens_with_backslashes_and_path_settings(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    # re.sub once read the token as a replacement template ("bad escape \w").
    result = _train(_config(models["sd1"], images, tmp_path / "bs", token="<a\\w\\1>", steps=1, preview_every=1, preview_steps=1))
    assert result.embedding.token == "<a\\w\\1>" and len(result.previews) == 2
    # pathlib paths work wherever text paths do (the checkpoint stores them as text).
    run = _train(TrainConfig(model=models["sd1"], images=images, token="<p>", init_word="red", steps=2, resolution=32,
                             save_every=0, out=tmp_path / "paths", add_to_library=False))  # fmt: skip
    assert load_checkpoint(run.out / "checkpoint.safetensors")["config"]["out"] == str(tmp_path / "paths")


def test_cli_refuses_a_model_folder_of_configs_alone(cli: Any, models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    """A downloaded folder of configs (no weights) fails in one line before the run folder exists."""
    configs = tmp_path / "configs-only"
    shutil.copytree(models["sd1"], configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    run = tmp_path / "run"
    args = ["train", "-m", str(configs), "-i", str(images), "--token", "<x>", "--no-add", "--out", str(run)]
    result = cli(*args)
    assert result.exit_code == 2
    err = result.stderr
    assert err.splitlines() == [
        f"Error: {configs.resolve()}: has configs but no weights (no weight files in unet, vae, text_encoder) "
        "(hint: download the weight files into it (e.g. unet/diffusion_pytorch_model.safetensors, "
        "text_encoder/model.safetensors), pass a .safetensors checkpoint, or try with a tiny model made by "
        "`conceptlib models create-tiny DIR`)"
    ], err
    assert not run.exists()


# --- training ------------------------------------------------------------------------------------


def test_learns_and_lands_in_library(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conceptlib.library import Library

    seen: list[tuple[int, int, float | None]] = []
    result = _train(
        _config(
            models["sd1"], images, tmp_path / "run", steps=20, batch_size=2, add_to_library=True,
            name="striped-toy", preview_every=10, preview_steps=2, save_every=10,
        ),  # fmt: skip
        progress=lambda step, total, loss: seen.append((step, total, loss)),
    )
    # The loss on a fixed evaluation batch (same images, timesteps and noise) falls.
    assert result.eval_loss_end < result.eval_loss_start
    assert len(result.losses) == 20 and all(np.isfinite(result.losses))
    assert seen[0] == (0, 20, None) and seen[-1][:2] == (20, 20)
    # Previews at steps 0, 10, 20, a grid, a loss curve; snapshots at each checkpoint.
    assert [p.name for p in result.previews] == ["striped-toy-000000.png", "striped-toy-000010.png", "striped-toy-000020.png"]
    assert result.preview_grid is not None and Image.open(result.preview_grid).size[0] == 3 * 32
    assert result.loss_plot is not None and Image.open(result.loss_plot).size == (720, 400)
    assert sorted(p.name for p in (result.out / "embeddings").iterdir()) == ["striped-toy-000010.safetensors", "striped-toy-000020.safetensors"]
    # The concept is in the library: vectors, training images, provenance and settings.
    concept = result.concept
    assert concept is not None and concept.name == "striped-toy" and concept.token == "<toy>"
    lib = Library.open()
    try:
        shown = lib.show("striped-toy")
        assert len(shown.images) == 3
        assert shown.steps == 20
        assert shown.metadata["trained_by"] == "conceptlib"
        assert json.loads(shown.metadata["base_model_fingerprints"])["clip_l"]
        assert json.loads(shown.metadata["train_config"])["batch_size"] == 2
        assert lib.embedding("striped-toy").same_vectors(result.embedding)
    finally:
        lib.close()
    # The same token again in the same family is refused before training.
    from conceptlib.errors import TokenInUseError

    with pytest.raises(TokenInUseError):
        _train(_config(models["sd1"], images, tmp_path / "again", add_to_library=True))


def test_resume_is_bit_identical(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    settings = dict(
        steps=6, save_every=2, vectors=2, init_word="red dog", batch_size=2, grad_accum=2, flip=True,
        scheduler="cosine", warmup_steps=2, lr=0.05,
    )  # fmt: skip
    whole = _train(_config(models["sd1"], images, tmp_path / "whole", **settings))

    class Stop(Exception):
        pass

    def stop_at_5(step: int, total: int, loss: float | None) -> None:
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        _train(_config(models["sd1"], images, tmp_path / "parts", **settings), progress=stop_at_5)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.safetensors")["step"] == 4
    # Without --resume the run folder is not overwritten.
    with pytest.raises(DestinationExistsError):
        _train(_config(models["sd1"], images, tmp_path / "parts", **settings))
    with pytest.raises(UsageError, match="seed"):
        _train(_config(models["sd1"], images, tmp_path / "parts", resume=True, **{**settings, "seed": 1}))
    resumed = _train(_config(models["sd1"], images, tmp_path / "parts", resume=True, **settings))
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert resumed.embedding.vectors["clip_l"].tobytes() == whole.embedding.vectors["clip_l"].tobytes()
    assert resumed.losses == whole.losses


def test_the_first_step_waits_for_no_evaluation(models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward
    calls: list[int] = []

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counted)
    before_first_step: list[int] = []
    result = _train(
        _config(models["sd1"], images, tmp_path / "run", steps=2, batch_size=3),
        progress=lambda step, total, loss: before_first_step.append(len(calls)) if loss is None else None,
    )
    # No UNet pass before the first step: the "before" loss is measured after training, on the
    # initial vectors put back (3 images x 4 timesteps in batches of 3, twice, plus 2 steps).
    assert before_first_step == [0]
    assert len(calls) == 2 + 2 * 4
    assert result.eval_loss_end < result.eval_loss_start


def test_the_start_loss_is_the_initial_vectors_loss(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    # A learning rate too small to move a float32 vector: the vectors end where they began, so
    # the loss measured on the put-back initial vectors is the end loss, to the bit.
    still = _train(_config(models["sd1"], images, tmp_path / "still", steps=2, lr=1e-30))
    assert still.eval_loss_start == still.eval_loss_end
    moved = _train(_config(models["sd1"], images, tmp_path / "moved", steps=2))
    assert moved.eval_loss_start == still.eval_loss_start and moved.eval_loss_end != moved.eval_loss_start


def test_a_checkpoint_from_before_the_initial_vectors_were_kept(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    settings = dict(steps=4, save_every=2)

    def ctrl_c_at_3(step: int, total: int, loss: float | None) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        _train(_config(models["sd1"], images, tmp_path / "run", **settings), progress=ctrl_c_at_3)
    path = tmp_path / "run" / "checkpoint.safetensors"
    state = load_checkpoint(path)
    assert set(state["initial_vectors"]) == {"clip_l"} and state["eval_loss_start"] is None
    # Written by an earlier conceptlib: the loss before training, no initial vectors.
    del state["initial_vectors"]
    state["eval_loss_start"] = 1.25
    _save_checkpoint(path, state)
    resumed = _train(_config(models["sd1"], images, tmp_path / "run", resume=True, **settings))
    assert resumed.eval_loss_start == 1.25 and resumed.steps == 4


def test_ctrl_c_keeps_the_checkpoint_and_resume_checks_the_run(models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(steps=6, save_every=2)
    whole = _train(_config(models["sd1"], images, tmp_path / "whole", **settings))

    def ctrl_c_at_5(step: int, total: int, loss: float | None) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stop:
        _train(_config(models["sd1"], images, tmp_path / "parts", **settings), progress=ctrl_c_at_5)
    assert isinstance(stop.value, KeyboardInterrupt)  # still Ctrl-C for code that catches it
    assert (stop.value.step, stop.value.checkpoint_step) == (5, 4)
    assert stop.value.checkpoint == str(tmp_path / "parts" / "checkpoint.safetensors")
    with pytest.raises(UsageError, match="the checkpoint is at step 4; --steps 4 leaves nothing to train"):
        _train(_config(models["sd1"], images, tmp_path / "parts", resume=True, **{**settings, "steps": 4}))
    # The same folders spelt another way are the same run; "before training" is still step 0's.
    monkeypatch.chdir(models["sd1"].parent)
    resumed = _train(_config(Path(models["sd1"].name), images, tmp_path / "parts", resume=True, **settings))
    assert resumed.embedding.vectors["clip_l"].tobytes() == whole.embedding.vectors["clip_l"].tobytes()
    assert resumed.eval_loss_start == whole.eval_loss_start and resumed.eval_loss_end == whole.eval_loss_end
    # Images added, removed or edited since the checkpoint: a different run, refused.
    changed = tmp_path / "changed"
    shutil.copytree(images, changed)
    _train(_config(models["sd1"], changed, tmp_path / "c", **{**settings, "steps": 2}))
    shutil.copy(changed / "000-red striped toy.png", changed / "003-red striped toy.png")
    with pytest.raises(UsageError, match="the images in .* changed since the checkpoint"):
        _train(_config(models["sd1"], changed, tmp_path / "c", resume=True, **settings))


def test_cli_ctrl_c_says_where_to_resume(cli: Any, models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlib.train

    checkpoint = tmp_path / "run" / "checkpoint.safetensors"

    def interrupted(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
        raise TrainingInterrupted(61, str(checkpoint), 60)

    monkeypatch.setattr(conceptlib.train, "train", interrupted)
    args = ["train", "-m", str(models["sd1"]), "-i", str(images), "--token", "<x>", "--no-add", "--out", str(tmp_path / "run")]
    result = cli(*args)
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == (
        f"Error: training interrupted at step 61; the checkpoint of step 60 is kept in {checkpoint} "
        "(hint: rerun the same command with --resume to continue from it)"
    )


def test_resuming_a_run_that_added_its_concept_updates_it(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    from conceptlib.library import Library

    first = _train(_config(models["sd1"], images, tmp_path / "run", steps=2, save_every=2, add_to_library=True, name="toy"))
    assert first.concept is not None
    # Another run may not take the name, even where a checkpoint sits: the name is what is wrong.
    with pytest.raises(ConceptExistsError):
        _train(_config(models["sd1"], images, tmp_path / "run", steps=2, add_to_library=True, name="toy", token="<other>"))
    more = _train(_config(models["sd1"], images, tmp_path / "run", steps=4, save_every=2, add_to_library=True, name="toy", resume=True))
    assert more.concept is not None and more.concept.name == "toy"
    with Library.open() as lib:
        shown = lib.show("toy")
        assert shown.steps == 4 and [h["content_hash"] for h in shown.history] == [first.concept.content_hash]
        assert lib.embedding("toy").same_vectors(more.embedding)


def test_cli_resume_says_updated_and_which_steps_ran(cli: Any, models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    base = ["train", "-m", str(models["sd1"]), "-i", str(images), "--token", "<toy>", "--init-word", "watermark",
            "--resolution", "32", "--lr", "0.02", "--save-every", "2", "--name", "toy", "--out", str(tmp_path / "run")]  # fmt: skip
    first = cli(*base, "--steps", "2")
    assert first.exit_code == 0
    assert first.stdout == "added      toy  (<toy>, SD 1.x, 1 vector)\n"
    assert re.search(r"^Trained 2 steps \(", first.stderr, re.M), first.stderr
    more = cli(*base, "--steps", "4", "--resume")
    assert more.exit_code == 0
    assert more.stdout == "updated    toy  (<toy>, SD 1.x, 1 vector)\n"
    assert re.search(r"^Trained steps 3-4 of 4 \(resumed from step 2; [0-9.]+ s/step\); evaluation loss ", more.stderr, re.M), more.stderr
    last = cli(*base, "--steps", "5", "--resume", "--json")
    assert last.exit_code == 0
    again = json.loads(last.stdout)
    assert (again["concept"], again["library_action"], again["steps"], again["resumed_from"]) == ("toy", "updated", 5, 4)


def test_evaluation_runs_no_larger_batches_than_training(models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed evaluation batch (images x 4 timesteps) goes through in training-size chunks,
    so a number the run only reports never sets its peak memory."""
    from diffusers import UNet2DConditionModel

    seen: list[int] = []
    forward = UNet2DConditionModel.forward

    def counting(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(int(sample.shape[0]))
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counting)
    result = _train(_config(models["sd1"], images, tmp_path / "run", steps=2, batch_size=2))
    # 2 steps of 2, and 3 images x 4 timesteps twice (before and after) in chunks of 2.
    assert seen == [2] * (2 + 6 + 6), seen
    assert result.eval_loss_start > 0 and result.eval_loss_end > 0


def test_vae_let_go_before_the_first_step_unless_previews_need_it(models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    from diffusers import AutoencoderKL
    from torch.optim.optimizer import register_optimizer_step_post_hook

    loaded: list[weakref.ref[Any]] = []
    load = AutoencoderKL.from_pretrained

    def recording(*args: Any, **kwargs: Any) -> Any:
        vae = load(*args, **kwargs)
        loaded.append(weakref.ref(vae))
        return vae

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", recording)
    alive: list[bool] = []

    def at_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        gc.collect()
        alive.append(loaded[-1]() is not None)

    handle = register_optimizer_step_post_hook(at_step)
    try:
        _train(_config(models["sd1"], images, tmp_path / "plain", steps=2))
        assert alive == [False, False]  # only the cached latents are needed to train
        alive.clear()
        result = _train(_config(models["sd1"], images, tmp_path / "previews", steps=2, preview_every=2, preview_steps=1))
        assert alive == [True, True] and len(result.previews) == 2  # steps 0 and 2
    finally:
        handle.remove()


def test_only_vectors_trained_and_checkpoint_is_small(models: dict[str, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import CLIPTextModel

    # The same model with a 6x larger token-embedding matrix (more vocabulary rows).
    big = tmp_path / "a" / "big"
    shutil.copytree(models["sd1"], big)
    encoder = CLIPTextModel.from_pretrained(big / "text_encoder")
    encoder.resize_token_embeddings(6000)
    encoder.save_pretrained(big / "text_encoder")
    small = tmp_path / "b" / "big"
    shutil.copytree(models["sd1"], small)

    shapes: list[list[tuple[int, ...]]] = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params: Any, **kw: Any) -> None:
            params = list(params)
            shapes.append([tuple(p.shape) for p in params])
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    sizes = []
    for model, out in ((small, tmp_path / "o" / "small"), (big, tmp_path / "o" / "big00")):
        result = _train(_config(model, images, out, steps=2, save_every=1, vectors=3))
        assert result.checkpoint is not None
        sizes.append(result.checkpoint.stat().st_size)
        state = load_checkpoint(result.checkpoint)
        assert set(state["vectors"]) == {"clip_l"} and tuple(state["vectors"]["clip_l"].shape) == (3, 768)
        moments = state["optimizer"]["state"][0]
        assert tuple(moments["exp_avg"].shape) == tuple(moments["exp_avg_sq"].shape) == (3, 768)
    assert shapes == [[(3, 768)], [(3, 768)]]
    assert sizes[0] == sizes[1] < 64 * 1024


def test_splice_gradient_matches_plain_autograd(models: dict[str, Path]) -> None:
    """The splice computes the first layer's projections with a graph only at the placeholder
    rows; the vectors' gradient must still be what plain autograd over a grown embedding gives."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    plain = CLIPTextModel.from_pretrained(models["sd1"] / "text_encoder").requires_grad_(False)
    spliced = CLIPTextModel.from_pretrained(models["sd1"] / "text_encoder").requires_grad_(False)
    table = plain.get_input_embeddings().weight.detach()
    base = table.shape[0]
    start = table[[5, 9]].clone() + 0.01 * torch.randn(2, table.shape[1])
    grown = torch.nn.Parameter(start.clone())
    vectors = torch.nn.Parameter(start.clone())

    class Grown(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.embedding(ids, torch.cat([table, grown]))

    plain.set_input_embeddings(Grown())
    inner = getattr(spliced, "text_model", spliced)
    splice = _splice(inner.embeddings.token_embedding, vectors, inner.encoder.layers[0].self_attn)
    keys_before = set(spliced.state_dict())
    inner.embeddings.token_embedding = splice
    # The wrapped projections keep their names and weights; only the embedding changes shape.
    table_key = next(k for k in keys_before if k.endswith("token_embedding.weight"))
    prefix = table_key.removesuffix("weight")
    assert set(spliced.state_dict()) == keys_before - {table_key} | {prefix + "base.weight", prefix + "vectors"}
    assert isinstance(inner.encoder.layers[0].self_attn.q_proj, torch.nn.Linear)

    # Two prompts, the two vectors at different places (one of them twice), padded to 77.
    ids = torch.full((2, 77), base - 1)
    ids[0, :6] = torch.tensor([base - 2, 3, 4, base, base + 1, 7])
    ids[1, :8] = torch.tensor([base - 2, 8, base + 1, 2, base, base + 1, 1, 6])
    weights = torch.randn(2, 77, table.shape[1])
    expected = plain(ids)[0]
    (expected * weights).sum().backward()
    splice.place(torch.where(ids >= base, base - 1 - ids, ids))
    got = spliced(torch.where(ids >= base, base - 1 - ids, ids))[0]
    (got * weights).sum().backward()

    assert grown.grad is not None and vectors.grad is not None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Summed over many rows in another order: compare as vectors (float32 rounding, ~1e-7).
    assert float((vectors.grad - grown.grad).norm() / grown.grad.norm()) < 1e-5
    assert float(vectors.grad.abs().min()) > 0  # every row of both vectors got a gradient
    with torch.no_grad():  # without gradients the forward pass is the plain one, bit for bit
        assert torch.equal(spliced(torch.where(ids >= base, base - 1 - ids, ids))[0], plain(ids)[0])


@pytest.mark.parametrize("resolution", [32, 512])
def test_latents_of_both_flips_are_each_images_own(models: dict[str, Path], resolution: int, tmp_path: Path) -> None:
    """Both flips of small images are encoded in shared batches (one at a time at 512 px): each
    [flip, image] slot is that image's own latent distribution, mirrored for flip 1."""
    import torch
    from diffusers import AutoencoderKL

    from conceptlib.train import _TrainImage

    vae = AutoencoderKL.from_pretrained(models["sd1"] / "vae").eval()
    rng = np.random.default_rng(0)
    size = 32  # the pixels' size; resolution only picks the batching
    images = [
        _TrainImage(tmp_path / f"{i}.png", "", rng.uniform(-1, 1, (3, size, size)).astype(np.float32), (size, size), (0, 0)) for i in range(5)
    ]
    mean, std = _cache_latents(vae, images, flip=True, device=torch.device("cpu"), resolution=resolution)
    assert mean.shape == std.shape and mean.shape[:3] == (2, 5, 4)
    with torch.no_grad():
        for i, image in enumerate(images):
            for flipped in (0, 1):
                pixels = torch.from_numpy(image.pixels)[None]
                dist = vae.encode(pixels.flip(-1) if flipped else pixels).latent_dist
                assert torch.allclose(mean[flipped, i], dist.mean[0], atol=1e-5)
                assert torch.allclose(std[flipped, i], dist.std[0], atol=1e-5)
    mean_once, _ = _cache_latents(vae, images, flip=False, device=torch.device("cpu"), resolution=resolution)
    assert mean_once.shape == (1, *mean.shape[1:])
    assert torch.allclose(mean_once[0], mean[0], atol=1e-5)


def test_precomputed_projections_match_and_fall_back(models: dict[str, Path]) -> None:
    """Rows gathered from the precomputed first-layer projections give the output and gradient
    of projecting every step; a prompt outside the tables, or tables over budget, project as before."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(0)

    def spliced() -> tuple[Any, Any, Any]:
        model = CLIPTextModel.from_pretrained(models["sd1"] / "text_encoder").requires_grad_(False)
        inner = getattr(model, "text_model", model)
        vectors = torch.nn.Parameter(inner.embeddings.token_embedding.weight[[5, 9]].detach().clone())
        splice = _splice(inner.embeddings.token_embedding, vectors, inner.encoder.layers[0].self_attn)
        inner.embeddings.token_embedding = splice

        def inputs(tokens: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
            return inner.encoder.layers[0].layer_norm1(splice.base(tokens) + inner.embeddings.position_embedding(places))

        return model, splice, inputs

    (tabled, splice, inputs), (plain, plain_splice, _) = spliced(), spliced()
    pad = 888
    ids = torch.full((3, 77), pad)
    ids[0, :5] = torch.tensor([887, 3, -1, -2, pad])
    ids[1, :6] = torch.tensor([887, -1, 3, 4, -2, pad])
    ids[2, :4] = torch.tensor([887, 3, -1, -2])  # the same (token, position) pairs as prompt 0, bar one
    keys_before = set(tabled.state_dict())
    size = splice.precompute(ids, inputs, budget=2**30)
    pairs = {(int(t), j) for row in ids for j, t in enumerate(row) if t >= 0}
    assert size == len(pairs) * 3 * 768 * 4
    assert set(tabled.state_dict()) == keys_before  # the tables are not weights
    assert plain_splice.precompute(ids, inputs, budget=size - 1) == 0  # over budget: no tables

    weights = torch.randn(3, 77, 768)
    for batch in (ids[[1, 0]], ids[[2]]):
        for model, s in ((tabled, splice), (plain, plain_splice)):
            s.place(batch)
            model.zero_grad()
            s.vectors.grad = None
            (model(batch)[0] * weights[: len(batch)]).sum().backward()
        assert splice.positions.table_rows is not None and plain_splice.positions.table_rows is None
        torch.testing.assert_close(splice.vectors.grad, plain_splice.vectors.grad, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(tabled(batch)[0], plain(batch)[0], rtol=1e-5, atol=1e-6)
    # A prompt the tables do not hold projects as before.
    other = ids[[0]].clone()
    other[0, 1] = 4
    splice.place(other)
    assert splice.positions.table_rows is None
    got = tabled(other)[0]
    plain_splice.place(other)
    torch.testing.assert_close(got, plain(other)[0])


def test_gradient_clipping(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    """What the optimizer sees is clipped: by total norm, by element, and after fp16 unscaling."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[tuple[float, float]] = []

    def record(optimizer: Any, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append((float(torch.cat([g.flatten() for g in grads]).norm()), float(max(g.abs().max() for g in grads))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        def run(label: str, **kw: Any) -> tuple[list[tuple[float, float]], TrainResult]:
            seen.clear()
            result = _train(_config(models["sd1"], images, tmp_path / label, steps=4, device="cpu", **kw))
            return list(seen), result

        free, free_result = run("free")
        norm = min(n for n, _ in free) / 2  # both limits bind at every step
        value = min(m for _, m in free) / 2
        by_norm, norm_result = run("norm", clip_grad_norm=norm)
        by_value, _ = run("value", clip_grad_value=value)
        scaled, _ = run("fp16", clip_grad_norm=norm, mixed_precision="fp16")
    finally:
        handle.remove()
    assert len(by_norm) == len(by_value) == 4
    assert all(norm * 0.999 <= n <= norm * 1.0001 for n, _ in by_norm)
    assert all(value * 0.999 <= m <= value * 1.000001 for _, m in by_value)
    assert all(norm * 0.99 <= n <= norm * 1.001 for n, _ in scaled)  # fp16: clipped once the loss scale is undone
    assert norm_result.embedding.vectors["clip_l"].tobytes() != free_result.embedding.vectors["clip_l"].tobytes()
    with pytest.raises(UsageError, match="both clip"):
        _train(_config(models["sd1"], images, tmp_path / "both", clip_grad_norm=1.0, clip_grad_value=1.0))


def test_nan_guard_keeps_last_good_checkpoint(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    # A rate that diverges (1e30) is refused by --lr's range now, so the 4th step's update is
    # poisoned instead: what the guard sees is the same, vectors that stopped being numbers.
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = []

    def poison(optimizer: Any, args: Any, kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.fill_(float("inf"))

    handle = register_optimizer_step_post_hook(poison)
    try:
        with pytest.raises(TrainingDivergedError) as info:
            _train(_config(models["sd1"], images, tmp_path / "run", steps=6, save_every=1))
    finally:
        handle.remove()
    error = info.value
    assert error.step == 4
    assert "lower the learning rate" in (error.hint or "")
    assert error.checkpoint is not None
    state = load_checkpoint(error.checkpoint)
    assert state["step"] == error.step - 1
    assert all(bool(v.isfinite().all()) for v in state["vectors"].values())
    assert "last good checkpoint" in str(error)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_float32_vectors(models: dict[str, Path], images: Path, tmp_path: Path, precision: str) -> None:
    """Frozen models in half precision; the vectors, their optimizer state and the loss scaler
    (fp16) in a checkpoint that resumes. The CPU runs the same code path a GPU does."""
    import torch

    settings = dict(steps=4, save_every=2, lr=0.05, mixed_precision=precision, device="cpu", preview_every=4, preview_steps=1)
    whole = _train(_config(models["sd1"], images, tmp_path / "whole", **settings))
    assert all(np.isfinite(whole.losses)) and whole.embedding.vectors["clip_l"].dtype == "float32"
    # Previews render at the training precision (the float32 vectors' encoder must not set it).
    assert [p.name for p in whole.previews] == ["toy-000000.png", "toy-000004.png"]
    state = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    assert state["vectors"]["clip_l"].dtype == torch.float32
    assert (state["scaler"] is not None) == (precision == "fp16")
    # The vectors learned something, and the half-precision models did the computing: the same
    # run in float32 ends elsewhere.
    assert whole.eval_loss_end != whole.eval_loss_start
    full = _train(_config(models["sd1"], images, tmp_path / "fp32", **{**settings, "mixed_precision": "no"}))
    assert not np.array_equal(full.embedding.vectors["clip_l"].to_float32(), whole.embedding.vectors["clip_l"].to_float32())
    # The run resumes from its checkpoint (optimizer and, for fp16, scaler state included).
    resumed = _train(_config(models["sd1"], images, tmp_path / "whole", resume=True, **{**settings, "steps": 6}))
    assert resumed.resumed_from == 4 and resumed.steps == 6
    # Its previews are the whole run's, the part before the resume included.
    assert [p.name for p in resumed.previews] == ["toy-000000.png", "toy-000004.png", "toy-000006.png"]


def test_sdxl_previews_in_half_precision(sdxl: Path, images: Path, tmp_path: Path) -> None:
    result = _train(_config(sdxl, images, tmp_path / "run", steps=1, mixed_precision="bf16", preview_every=1, preview_steps=1))
    assert [p.name for p in result.previews] == ["toy-000000.png", "toy-000001.png"]


def test_v_prediction(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    result = _train(_config(models["sd1-v"], images, tmp_path / "run", steps=2, lr_schedule="0.01:1, 0.001"))
    assert result.embedding.metadata["base_model_prediction"] == "v_prediction"
    assert result.steps == 2 and all(np.isfinite(result.losses))


def test_sdxl_trains_both_encoders(sdxl: Path, images: Path, tmp_path: Path) -> None:
    from conceptlib.library import Library

    result = _train(_config(sdxl, images, tmp_path / "run", steps=3, lr=0.05, vectors=2, add_to_library=True, init_word="red"))
    emb = result.embedding
    assert emb.widths == {"clip_l": 768, "clip_g": 1280} and emb.num_vectors == 2
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sdxl / "tokenizer")
    red = tokenizer("red", add_special_tokens=False).input_ids[0]
    for key, cls, folder in (("clip_l", CLIPTextModel, "text_encoder"), ("clip_g", CLIPTextModelWithProjection, "text_encoder_2")):
        table: Any = cls.from_pretrained(sdxl / folder).get_input_embeddings().weight
        start = table[red].detach().numpy()
        trained = emb.vectors[key].to_float32()
        assert not np.allclose(trained, start[None, :]), f"{key} did not change"
    assert result.concept is not None and result.concept.family == "sdxl"
    lib = Library.open()
    try:
        assert lib.show(result.concept.name).encoders == {"clip_l": 768, "clip_g": 1280}
    finally:
        lib.close()


def test_cli_templates_and_sidecar_captions(cli: Any, models: dict[str, Path], tmp_path: Path) -> None:
    images = _make_images(tmp_path / "imgs", 2)
    for i, png in enumerate(sorted(images.glob("*.png"))):
        # The first caption is too long: the token after it falls outside CLIP's context.
        png.with_suffix(".txt").write_text(" ".join(["red"] * 80) if i == 0 else f"caption number {i}")
    templates = tmp_path / "t.txt"
    templates.write_text("[filewords], a photo of [name]\n")
    args = [
        "train", "--model", str(models["sd1"]), "--images", str(images), "--token", "<cli-toy>",
        "--init-word", "toy", "--steps", "2", "--resolution", "32", "--templates", str(templates),
        "--captions", "sidecar", "--shuffle-tags", "--save-every", "0", "--out", str(tmp_path / "run"), "--json",
    ]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["concept"] == "cli-toy" and data["steps"] == 2 and data["vectors"] == 1
    assert data["device"] == "cpu"  # the default everywhere, GPU or not (style guide: CPU unless --device)
    assert Path(data["embedding_path"]).is_file()
    assert any("loses the token" in w for w in data["warnings"])
    result = cli(*args[:-3], "--out", str(tmp_path / "run3"), "--tag-dropout", "1")
    err = result.stderr
    assert result.exit_code == 2 and "--tag-dropout: must be a number from 0 up to (not including) 1, got 1" in err and "Traceback" not in err
    (images / "001-red striped toy.txt").unlink()
    result = cli(*args[:-3], "--out", str(tmp_path / "run2"), "--no-add")
    assert result.exit_code == 2 and "001-red striped toy.txt" in result.stderr


def test_tag_options_vary_only_the_captions(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlib.train as train_module

    images = _make_images(tmp_path / "imgs", 2)
    for png in images.glob("*.png"):
        png.with_suffix(".txt").write_text("red, striped, toy, plush, soft")
    templates = tmp_path / "t.txt"
    templates.write_text("[filewords] | a photo of [name]\n[filewords] | [name] on a table\n")
    made: list[str] = []
    original = train_module._prompt
    monkeypatch.setattr(train_module, "_prompt", lambda *a: made.append(original(*a)) or made[-1])
    runs, losses = {}, {}
    for label, kw in (("plain", {}), ("tags", {"shuffle_tags": True, "tag_dropout": 0.3})):
        made.clear()
        result = _train(_config(models["sd1"], images, tmp_path / label, steps=6, templates=str(templates), captions="sidecar", **kw))
        # Without tag options every prompt (2 templates x 2 images) is listed once up front, for
        # the precomputed projections; the evaluation batch (2 images x 4) is made twice after
        # training (the end loss, then the start loss on the initial vectors).
        first = 4 if label == "plain" else 0
        runs[label], losses[label] = made[first:-16], result.losses
    # The tag draws come from a stream of their own: drawn but not applied, the run is the plain one.
    vary = train_module._vary_tags
    monkeypatch.setattr(train_module, "_vary_tags", lambda c, g, **kw: (vary(c, g, **kw), c)[1])
    drawn = _train(_config(models["sd1"], images, tmp_path / "drawn", steps=6, templates=str(templates), captions="sidecar", shuffle_tags=True, tag_dropout=0.3))
    assert drawn.losses == losses["plain"] != losses["tags"]
    plain, varied = runs["plain"], runs["tags"]
    # The same images, templates and order in both runs: the tag options draw from their own stream.
    assert [p.split("|")[1] for p in plain] == [p.split("|")[1] for p in varied]
    assert {p.split("|")[0].strip() for p in plain} == {"red, striped, toy, plush, soft"}
    captions = [p.split("|")[0].strip() for p in varied]
    assert len(varied) == 6 and len(set(captions)) >= 3
    assert all(set(c.split(", ")) <= {"red", "striped", "toy", "plush", "soft"} for c in captions if c)


def test_resume_names_the_schedule_when_it_ends_the_run(models: dict[str, Path], images: Path, tmp_path: Path) -> None:
    settings: dict[str, Any] = dict(steps=4, lr_schedule="0.01:2")
    assert _train(_config(models["sd1"], images, tmp_path / "run", **settings)).steps == 2
    with pytest.raises(UsageError) as info:
        _train(_config(models["sd1"], images, tmp_path / "run", resume=True, **{**settings, "steps": 10}))
    assert str(info.value).endswith("the checkpoint is at step 2; --lr-schedule ends at step 2 leaves nothing to train")
    assert info.value.hint == "extend the schedule: its last rate without a step runs up to --steps"


def test_resume_refuses_other_weights_or_prompts_and_accepts_the_same_run_spelt_otherwise(
    models: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    from conceptlib.models import add_model
    from conceptlib.tiny import create_tiny

    model = tmp_path / "model"
    shutil.copytree(models["sd1"], model)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of [name]\n")
    settings: dict[str, Any] = dict(steps=2, save_every=2, resolution=None, init_word=None, templates=str(templates))
    _train(_config(model, images, tmp_path / "run", **settings))
    more = {**settings, "steps": 4, "resume": True}

    # The same run: the native resolution spelt out, the default init word, a registered name.
    add_model(model, name="my-model")
    same = dict(more, resolution=64, init_word="*", steps=2)
    with pytest.raises(UsageError, match="nothing to train"):  # the settings matched; only --steps did not
        _train(_config(Path("my-model"), images, tmp_path / "run", **same))

    templates.write_text("a painting of [name] in space\n")
    with pytest.raises(UsageError, match="the training prompts changed"):
        _train(_config(model, images, tmp_path / "run", **more))
    templates.write_text("a photo of [name]\n")

    other = create_tiny(tmp_path / "other", "sd1", seed=1)
    shutil.rmtree(model / "unet")
    shutil.copytree(other / "unet", model / "unet")
    with pytest.raises(UsageError, match="its UNet or VAE weights differ"):
        _train(_config(model, images, tmp_path / "run", **more))


def test_a_run_whose_library_add_failed_is_finished_by_resume(
    cli: Any, models: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    from conceptlib.errors import DuplicateConceptError
    from conceptlib.library import Library

    settings: dict[str, Any] = dict(steps=2, add_to_library=True)
    first = _train(_config(models["sd1"], images, tmp_path / "one", token="<one>", **settings))
    assert first.concept is not None
    # The same seed, images and settings learn the same vectors: the library holds them already.
    with pytest.raises(DuplicateConceptError) as info:
        _train(_config(models["sd1"], images, tmp_path / "two", token="<two>", **settings))
    assert f"the run's vectors are kept in {tmp_path / 'two' / 'two.safetensors'}" in (info.value.hint or "")
    # Once that concept is gone, --resume does the library step the run never finished.
    with Library.open() as lib:
        lib.remove([first.concept.name])
    args = ["train", "-m", str(models["sd1"]), "-i", str(images), "--token", "<two>", "--init-word", "watermark",
            "--steps", "2", "--resolution", "32", "--lr", "0.02", "--save-every", "0", "--out", str(tmp_path / "two"), "--resume"]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0
    assert result.stdout.startswith("added      two  (<two>, SD 1.x, 1 vector)")
    assert "Finished the run at step 2 (nothing left to train)" in result.stderr
    # Finished and in the library: nothing is left to do.
    with pytest.raises(UsageError, match="nothing to train"):
        _train(_config(models["sd1"], images, tmp_path / "two", token="<two>", resume=True, **settings))


def test_large_photos_load_without_pillows_bomb_warning(tmp_path: Path) -> None:
    import warnings

    from PIL import Image

    Image.new("L", (10000, 10000), 128).save(tmp_path / "huge.png")  # 100 Mpx: over Pillow's warning line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, size, _crop = _load_image(tmp_path / "huge.png", 32)
    assert size == (10000, 10000) and pixels.shape == (3, 32, 32)


def test_random_streams_use_the_whole_seed() -> None:
    import torch

    def draw(*key: int) -> list[float]:
        return torch.rand(3, generator=_generator(*key)).tolist()

    # Seeds below 2**32 keep the streams they always had (runs and checkpoints stay reproducible)...
    assert draw(5, 2) == draw(5, 2) != draw(6, 2)
    state = np.random.SeedSequence([5 & 0xFFFFFFFF, 2, 2]).generate_state(2, np.uint32)
    old = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    assert draw(5, 2) == torch.rand(3, generator=old).tolist()
    # ...and seeds that differ only above bit 32 are different runs.
    assert draw(5 + 2**32, 2) != draw(5, 2)
    with pytest.raises(UsageError, match="--seed: must be a whole number from 0 to"):
        _check_config(TrainConfig(model="m", images="i", token="<t>", seed=2**63))
