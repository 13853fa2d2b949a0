"""benchmarks/gpu_check.py: the GPU check's dry run on a CPU, its failure rows and its budget.

The dry run (``--device cpu --tiny``) runs every job of the real GPU run on conceptlib's tiny
model, in child processes as on the GPU machine, so that the one command sent to a lent GPU has
already worked end to end here. The other tests exercise the pieces that a healthy dry run never
reaches: a hanging child, an out-of-memory message, a job that no longer fits the budget.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """The script as a module (it puts benchmarks/ on sys.path for bench_train)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path: Path) -> None:
    """Every job has a row; what ran has positive numbers; the render matches; a failure is a row."""
    pytest.importorskip("diffusers")
    pytest.importorskip("accelerate")
    out = tmp_path / "gpu.json"
    injected = "train-conceptlib-bf16-b4"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--json", str(out), "--inject-failure", injected, "--budget-s", "240"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows: dict[str, dict[str, Any]] = {r["job"]: r for r in report["rows"]}

    expected = {"packages", "probe", "model", "render-conceptlib", "render-diffusers"}
    expected |= {f"train-{impl}-{p}-b{b}" for impl in ("conceptlib", "reference") for p in ("fp32", "fp16", "bf16") for b in (1, 4)}
    assert set(rows) == expected
    assert report["device"] == "cpu"
    for setup in ("packages", "probe", "model"):
        assert rows[setup]["status"].startswith("ok"), rows[setup]

    for job in ("train-conceptlib-fp32-b1", "train-conceptlib-fp32-b4", "train-conceptlib-bf16-b1"):
        row = rows[job]
        assert row["status"] == "ok", row
        assert row["seconds_per_step"] > 0 and row["extrapolated_3000_steps_s"] == pytest.approx(row["seconds_per_step"] * 3000)
        assert row["steps_timed"] == 6 and row["peak_memory"] > 0 and row["memory_kind"] == "RSS"
    for batch in (1, 4):
        assert rows[f"train-conceptlib-fp16-b{batch}"]["status"] == "skipped: CPU"
        for precision in ("fp32", "fp16", "bf16"):
            assert rows[f"train-reference-{precision}-b{batch}"]["status"].startswith("skipped: ")
    assert rows["train-reference-fp32-b1"]["status"] == "skipped: no --reference"
    assert rows[injected]["status"] == "failed: injected (--inject-failure)"
    assert "injected failure" in rows[injected]["log_tail"]

    ours, theirs = rows["render-conceptlib"], rows["render-diffusers"]
    for row in (ours, theirs):
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["peak_memory"] > 0 and row["precision"] == "fp32"
    assert ours["match"]["verdict"] == "identical" and ours["match"]["images"] == 8 and ours["match"]["blank"] == 0
    assert ours["speedup"] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])

    # The table: one line per row, every job named, the failure and the match visible.
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert sum("failed: injected" in line for line in table) == 1
    assert any(line.startswith("| render | conceptlib |") and "identical" in line for line in table)
    assert "no CUDA GPU" in proc.stdout


def test_unknown_injected_job_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--inject-failure", "train-nothing"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown job(s) train-nothing" in proc.stderr and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # its work folder was removed


def test_a_hanging_child_is_killed_at_its_limit(gpu_check: ModuleType, tmp_path: Path) -> None:
    child = gpu_check.run_child(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=1.5, log=tmp_path / "hang.log",
    )  # fmt: skip
    assert child.timed_out and child.returncode is None and child.wall < 30
    assert "started" in child.tail
    assert gpu_check.failure(child, 1.5) == "failed: timed out after 2 s"


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "failed: out of memory"),
        ("ModuleNotFoundError: No module named 'sqlmodel.main'", "failed: missing package sqlmodel"),
        ("RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory", "failed: out of memory (CPU)"),
        ("Traceback (most recent call last):\n  ...\nValueError: bad thing\n", "failed: exit 1: ValueError: bad thing"),
    ],
)
def test_failures_are_named(gpu_check: ModuleType, tail: str, status: str) -> None:
    child = gpu_check.Child(returncode=1, timed_out=False, wall=1.0, tail=tail)
    assert gpu_check.failure(child, 10.0) == status


def test_a_killed_child_says_by_what(gpu_check: ModuleType) -> None:
    child = gpu_check.Child(returncode=-9, timed_out=False, wall=1.0, tail="step 3\n")
    assert gpu_check.failure(child, 10.0) == "failed: killed by SIGKILL (the kernel's out-of-memory killer?)"


def test_a_job_that_does_not_fit_the_budget_is_skipped(gpu_check: ModuleType, tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--budget-s", "100", "--keep", str(tmp_path / "work")])
    check = gpu_check.Check(args)
    check.longest["train"] = 500.0  # as if a finished train job had taken 500 s
    job = gpu_check.Job("train-conceptlib-fp32-b1", "train", "conceptlib", "fp32", 1, 0)
    row = check.run_job(job)
    assert row.status == "skipped: out of time"
    assert not (tmp_path / "work" / "logs" / f"{job.job}.log").exists()  # nothing was started


def test_missing_reference_is_a_failure_row(gpu_check: ModuleType, tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--reference", str(tmp_path / "nowhere.py"), "--keep", str(tmp_path / "work")])
    row = gpu_check.Check(args).run_job(gpu_check.Job("train-reference-fp32-b1", "train", "reference", "fp32", 1, 1))
    assert row.status.startswith("failed: --reference") and "no such file" in row.status


def test_images_compare_within_the_documented_tolerance(gpu_check: ModuleType, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 250, (16, 16, 3), dtype=np.uint8)
    for name, pixels in (("a", base), ("same", base), ("near", base + (rng.random((16, 16, 3)) < 0.1).astype(np.uint8) * 5), ("far", 255 - base)):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "00000-1000.png")
    assert gpu_check.compare_images(tmp_path / "a", tmp_path / "same", exact=True)["verdict"] == "identical"
    near = gpu_check.compare_images(tmp_path / "a", tmp_path / "near", exact=False)
    assert near["verdict"] == "match" and 0 < near["mean_abs"] <= gpu_check.GPU_MATCH_MEAN and near["max_abs"] == 5
    assert gpu_check.compare_images(tmp_path / "a", tmp_path / "near", exact=True)["verdict"] == "NO"
    assert gpu_check.compare_images(tmp_path / "a", tmp_path / "far", exact=False)["verdict"] == "NO"


def test_wheel_command_pins_what_the_gpu_machine_lacks(gpu_check: ModuleType) -> None:
    pytest.importorskip("diffusers")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--print-wheel-command"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("python3 -m pip download")]
    pinned = {line.rsplit(" ", 1)[1].split("==")[0] for line in lines}
    assert {"diffusers", "sqlmodel", "sqlalchemy", "pydantic", "typer", "rich"} <= pinned
    assert not pinned & {"torch", "transformers", "accelerate", "huggingface-hub", "safetensors", "numpy"}
    assert all("--only-binary=:all:" in line and "--python-version 3.12" in line and "-d .whl" in line for line in lines)
