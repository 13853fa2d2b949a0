"""Data parallel train and render: two CPU processes under torchrun (what ``accelerate launch``
starts on several GPUs) against one process, through the real command line.

Every run here sets ``OMP_NUM_THREADS=1``, as torchrun does for its workers, so that one process
and two use the same kernels and the comparisons can be exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import factory
from conceptlib.embedding import Embedding
from conceptlib.tensor import Tensor

pytestmark = pytest.mark.torch


def _conceptlib(args: list[str], *, processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m conceptlib ARGS``, under torchrun with ``processes`` workers when > 1."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([*launcher, "-m", "conceptlib", *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, "\n".join(line for line in result.stderr.splitlines() if "Warning" not in line)[:4000]
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conceptlib.tiny import create_tiny

    return create_tiny(tmp_path_factory.mktemp("models") / "sd1", "sd1", seed=0)


def test_two_processes_train_what_one_trains_with_twice_the_accumulation(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conceptlib.formats import read
    from conceptlib.library import Library

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[..., i] = 220
        Image.fromarray((pixels + rng.integers(0, 30, pixels.shape)).astype(np.uint8)).save(images / f"{i}.png")
    common = ["train", "--model", str(tiny), "--images", str(images), "--token", "<toy>", "--init-word", "watermark",
              "--steps", "3", "--lr", "0.05", "--resolution", "32", "--flip", "--save-every", "0", "--device", "cpu", "--json"]  # fmt: skip

    one = _conceptlib([*common, "--grad-accum", "2", "--out", str(tmp_path / "one"), "--home", str(tmp_path / "home1")])
    two = _conceptlib([*common, "--out", str(tmp_path / "two"), "--home", str(tmp_path / "home2")], processes=2)

    # Only the main process reports, writes the concept and adds it to the library.
    report = json.loads(two.stdout)  # one document: a second process printing would break it
    with Library.open(tmp_path / "home2") as lib:
        assert [c.name for c in lib.list()] == ["toy"]
    a = read(Path(json.loads(one.stdout)["embedding_path"]))
    b = read(Path(report["embedding_path"]))
    assert b.metadata["train_processes"] == "2" and a.metadata["train_processes"] == "1"
    assert a.vectors.keys() == b.vectors.keys()
    for key in a.vectors:
        va, vb = a.vectors[key].to_float32(), b.vectors[key].to_float32()
        # The gradients were averaged across processes: each saw one image per step, yet the
        # result is the two-image accumulation, bit for bit.
        assert np.array_equal(va, vb), float(np.abs(va - vb).max())
    assert report["steps"] == 3 and report["eval_loss_end"] != report["eval_loss_start"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_two_processes_render_the_files_one_process_renders(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conceptlib.formats import write
    from conceptlib.library import Library

    home = tmp_path / "home"
    with Library.open(home) as lib:
        emb = factory.sd1(2, seed=1)
        vectors = {k: Tensor.from_numpy(v.to_float32() * 8) for k, v in emb.vectors.items()}
        write(Embedding(vectors, token="<cat-toy>"), tmp_path / "cat-toy.safetensors")
        lib.add(tmp_path / "cat-toy.safetensors", name="cat-toy", token="<cat-toy>").one()
    args = ["render", "a <cat-toy> on a table", "a red car", "a <cat-toy> in the snow", "-n", "2", "--seed", "7",
            "--steps", "2", "--size", "32x32", "--batch-size", "1", "--grid", "--device", "cpu",
            "--model", str(tiny), "--home", str(home), "--json"]  # fmt: skip
    _conceptlib([*args, "--out", str(tmp_path / "one")])
    _conceptlib([*args, "--out", str(tmp_path / "two")], processes=2)

    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())  # no per-process leftovers
    assert len([n for n in names if n.endswith(".png")]) == 7  # six images and the grid
    manifests: list[dict[str, Any]] = [json.loads((d / "render.json").read_text()) for d in (one, two)]
    assert manifests[0]["images"] == manifests[1]["images"]
    assert [m["settings"]["processes"] for m in manifests] == [1, 2]
    for name in names:
        if name.endswith(".png"):
            with Image.open(one / name) as a, Image.open(two / name) as b:
                assert np.array_equal(np.asarray(a), np.asarray(b)), name
                assert a.info.get("parameters") == b.info.get("parameters"), name


def test_two_processes_train_the_hypernetwork_one_trains_with_twice_the_accumulation(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conceptlib import hypernet

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[..., i] = 220
        Image.fromarray(pixels).save(images / f"{i}.png")
    common = ["train", "--hypernetwork", "--name", "ink", "--model", str(tiny), "--images", str(images), "--steps", "2",
              "--lr", "0.001", "--resolution", "32", "--activation", "relu", "--dropout", "0,0.3,0", "--save-every", "0", "--json"]  # fmt: skip
    one = _conceptlib([*common, "--grad-accum", "2", "--out", str(tmp_path / "one"), "--home", str(tmp_path / "home1")])
    two = _conceptlib([*common, "--out", str(tmp_path / "two"), "--home", str(tmp_path / "home2")], processes=2)
    a = hypernet.read(json.loads(one.stdout)["hypernetwork_path"])
    b = hypernet.read(json.loads(two.stdout)["hypernetwork_path"])
    # Gradients averaged across the processes (dropout masks drawn per sample slot): the
    # two-sample accumulation, bit for bit.
    assert a.content_hash() == b.content_hash()
