"""Textual-inversion training: seconds per step and peak memory, beside diffusers' reference script.

Usage:
    python benchmarks/bench_train.py [--reference PATH/textual_inversion.py] [--models tiny,sd15]
        [--steps 30] [--sd15-steps 8] [--resolution 64] [--device auto] [--mixed-precision no]
        [--repeat 3] [--json results.json] [--keep DIR]

Both trainers run on the same model folder, the same images and resolution, batch 1, no
gradient accumulation, random flips (the reference always flips with p=0.5; conceptlib gets
``flip=True``, which caches both latents) and latents re-sampled every step:

* ``tiny``: conceptlib's built-in tiny SD 1.x model (real 768-wide text encoder, 889-token
  vocabulary, tiny UNet and VAE);
* ``sd15``: the full-size SD 1.5 architecture (UNet 860 M, CLIP ViT-L/14 text encoder with the real
  49,408-token vocabulary, VAE) built from ``../shared/data/models/sd15`` configs with seeded random
  weights, written once as a diffusers folder.

Each trainer runs in its own fresh process. A global optimizer-step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) timestamps every step, the same
way for both, so set-up, model loading, latent caching and saving are excluded: seconds/step is the
median interval between steps after two warm-up steps. Memory: the largest resident set size seen
at a step (``VmRSS``; what training holds), the process's peak (``VmHWM``; loading included), and on
CUDA ``torch.cuda.max_memory_allocated``.

The reference script is not part of this repository (diffusers ships it in
``examples/textual_inversion/``); pass its path with ``--reference``. Without it, conceptlib runs
alone and the table says the reference was skipped. Two compatibility shims are applied to the
reference process only when needed, and reported: a minimal ``torchvision.transforms`` stand-in
(``RandomHorizontalFlip``, the only thing it uses) when torchvision is not installed, and a
``CLIPTextModel.text_model`` alias for transformers 5, which flattened that attribute away; and
``args.variant = None`` for copies of the script that read ``--variant`` without defining it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SD15_CONFIGS = REPO.parent / "shared" / "data" / "models" / "sd15"

# Runs in the child process: argv = [out.json, mode, payload]. Installs the step hook, runs one
# trainer, and writes timings and memory at exit.
_CHILD = r"""
import atexit, json, os, sys, time
out_path, mode, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
import transformers, diffusers, accelerate  # import before any shim: availability checks are cached
from transformers import CLIPTextModel
import diffusers.models, diffusers.pipelines

stamps, rss = [], []
def _status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0

def _hook(optimizer, args, kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    stamps.append(time.perf_counter())
    rss.append(_status("VmRSS:"))

register_optimizer_step_post_hook(_hook)
shims = []
result = {}

def _report():
    data = {"stamps": stamps, "rss_at_steps": rss, "peak_rss": _status("VmHWM:"), "shims": shims, **result}
    if torch.cuda.is_available():
        data["cuda_peak"] = torch.cuda.max_memory_allocated()
    with open(out_path, "w") as handle:
        json.dump(data, handle)

atexit.register(_report)
if mode == "reference":
    import importlib.util, random, runpy, types
    if importlib.util.find_spec("torchvision") is None:
        from PIL import Image
        class RandomHorizontalFlip:
            def __init__(self, p=0.5):
                self.p = p
            def __call__(self, img):
                return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if random.random() < self.p else img
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tr.RandomHorizontalFlip = RandomHorizontalFlip
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
        shims.append("torchvision.transforms.RandomHorizontalFlip stand-in")
    if not hasattr(CLIPTextModel, "text_model"):
        CLIPTextModel.text_model = property(lambda self: self)
        shims.append("CLIPTextModel.text_model alias (transformers 5)")
    if "--variant" not in open(payload["script"]).read():
        # Some stored copies read args.variant without defining --variant (upstream: default None).
        import argparse
        _parse = argparse.ArgumentParser.parse_args
        def _parse_args(self, *a, **k):
            ns = _parse(self, *a, **k)
            if not hasattr(ns, "variant"):
                ns.variant = None
            return ns
        argparse.ArgumentParser.parse_args = _parse_args
        shims.append("args.variant = None (this copy reads --variant without defining it)")
    sys.argv = [payload["script"], *payload["args"]]
    runpy.run_path(payload["script"], run_name="__main__")
else:
    from conceptlib.train import TrainConfig, train
    r = train(TrainConfig(**payload))
    result["internal_seconds_per_step"] = r.seconds_per_step
    result["eval_loss"] = [r.eval_loss_start, r.eval_loss_end]
"""


def compile_conceptlib() -> str:
    """Byte-compile conceptlib's modules, as ``pip install`` does; a line for the report.

    A checkout installed editable, run under ``PYTHONDONTWRITEBYTECODE=1`` (set on this
    project's machines), compiles every conceptlib module from source in every process: about
    0.1 s a command that an installed conceptlib never pays, while diffusers, transformers and
    torch load compiled from site-packages. Reading bytecode that exists is allowed either way.
    """
    import compileall

    ok = all(compileall.compile_dir(str(REPO / folder), quiet=1) for folder in ("conceptlib", "cli", "registry"))
    return "conceptlib's modules byte-compiled first, as an install does" if ok else "conceptlib's modules could not all be byte-compiled"


def make_images(folder: Path, count: int) -> Path:
    """Synthetic training pictures (the reference opens every file in the folder as an image)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.zeros((96, 80, 3), np.uint8)
        pixels[..., i % 3] = 200
        pixels[:: 3 + i] = 40
        Image.fromarray((pixels + rng.integers(0, 30, pixels.shape)).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def make_sd15(folder: Path) -> Path:
    """The SD 1.5 architecture from ../shared configs, seeded random weights, as a diffusers folder."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if not SD15_CONFIGS.is_dir():
        raise SystemExit(f"{SD15_CONFIGS} is missing: the sd15 benchmark needs the shared model configs")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(SD15_CONFIGS / sub, staging / sub)
    index = json.loads((SD15_CONFIGS / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    index["feature_extractor"] = [None, None]
    index["requires_safety_checker"] = False
    (staging / "model_index.json").write_text(json.dumps(index, indent=2))
    with torch.no_grad():
        torch.manual_seed(0)
        config = CLIPTextConfig.from_pretrained(SD15_CONFIGS / "text_encoder")
        CLIPTextModel(config).save_pretrained(staging / "text_encoder")
        torch.manual_seed(1)
        AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIGS / "vae")).save_pretrained(staging / "vae")
        torch.manual_seed(2)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIGS / "unet"))
        unet.save_pretrained(staging / "unet")
        del unet
    os.replace(staging, folder)
    return folder


def run_child(mode: str, payload: dict[str, Any], work: Path, label: str) -> dict[str, Any]:
    out = work / f"{label}.json"
    started = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), mode, json.dumps(payload)],
        capture_output=True, text=True, env=env, cwd=work,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise SystemExit(f"{label} failed (exit {proc.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["wall"] = wall
    stamps = data["stamps"]
    # perf_counter is the system-wide monotonic clock on Linux, so the child's first stamp and
    # this process's start compare: everything before the first step (start-up, model reading
    # and loading, image checks, latents) is in it.
    data["first_step"] = stamps[0] - started if stamps else float("nan")
    intervals = [b - a for a, b in zip(stamps[2:], stamps[3:], strict=False)]
    intervals.sort()
    data["steps"] = len(stamps)
    data["seconds_per_step"] = intervals[len(intervals) // 2] if intervals else float("nan")
    data["rss_train"] = max(data["rss_at_steps"]) if data["rss_at_steps"] else 0
    return data


def bench_model(name: str, model: Path, images: Path, steps: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run both trainers ``--repeat`` times, alternating which goes first (machine drift and
    other tenants then weigh on both alike), and keep the median run of each."""
    payload = {
        "model": str(model), "images": str(images), "token": "<bench-toy>", "init_word": "dog",
        "steps": steps, "lr": 5e-3, "resolution": args.resolution, "flip": True, "save_every": 0,
        "add_to_library": False, "out": str(work / f"{name}-conceptlib"), "device": args.device,
        "mixed_precision": args.mixed_precision, "home": str(work / "home"),
    }  # fmt: skip
    ref_args = [
        "--pretrained_model_name_or_path", str(model), "--train_data_dir", str(images),
        "--placeholder_token", "<bench-toy>", "--initializer_token", "dog",
        "--resolution", str(args.resolution), "--train_batch_size", "1", "--max_train_steps", str(steps),
        "--learning_rate", "5e-3", "--lr_warmup_steps", "0", "--seed", "0",
        "--save_steps", "1000000", "--checkpointing_steps", "1000000",
        "--output_dir", str(work / f"{name}-reference"), "--mixed_precision", args.mixed_precision,
    ]  # fmt: skip
    trainers = ["conceptlib", "reference"] if args.reference else ["conceptlib"]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trainers}
    for r in range(args.repeat):
        for trainer in trainers if r % 2 == 0 else trainers[::-1]:
            shutil.rmtree(work / f"{name}-{trainer}", ignore_errors=True)  # a fresh run folder each time
            print(f"[{name}] {trainer}, {steps} steps (run {r + 1} of {args.repeat}) ...", file=sys.stderr)
            if trainer == "conceptlib":
                runs[trainer].append(run_child("conceptlib", payload, work, f"{name}-conceptlib"))
            else:
                script = str(Path(args.reference).resolve())
                runs[trainer].append(run_child("reference", {"script": script, "args": ref_args}, work, f"{name}-reference"))
    result: dict[str, Any] = {}
    for trainer, done in runs.items():
        ordered = sorted(done, key=lambda d: d["seconds_per_step"])
        median = dict(ordered[len(ordered) // 2])
        median["all_seconds_per_step"] = [d["seconds_per_step"] for d in done]
        median["all_first_step"] = [d["first_step"] for d in done]
        median["rss_train"] = max(d["rss_train"] for d in done)
        median["peak_rss"] = max(d["peak_rss"] for d in done)
        result[trainer] = median
    return result


def _mb(n: int | None) -> str:
    return f"{n / 2**20:,.0f}" if n else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="path to diffusers' examples/textual_inversion/textual_inversion.py")
    parser.add_argument("--models", default="tiny,sd15", help="comma-separated: tiny, sd15")
    parser.add_argument("--steps", type=int, default=30, help="steps on the tiny model")
    parser.add_argument("--sd15-steps", type=int, default=8, help="steps on the SD 1.5 architecture")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="auto", help="conceptlib's --device (the reference picks its own)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--keep", help="work folder to keep (models are reused between runs)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each trainer, alternating; the median run is reported")
    args = parser.parse_args()
    if args.reference and not Path(args.reference).is_file():
        raise SystemExit(f"--reference {args.reference}: no such file")

    bytecode = compile_conceptlib()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    images = make_images(work / "images", args.images)
    results: dict[str, Any] = {}
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "tiny":
                from conceptlib.tiny import create_tiny

                model = work / "tiny-sd1"
                if not model.is_dir():
                    create_tiny(model, "sd1", seed=0)
                steps = args.steps
            elif name == "sd15":
                print("[sd15] building the SD 1.5 architecture with random weights (once) ...", file=sys.stderr)
                model = make_sd15(work / "sd15-random")
                steps = args.sd15_steps
            else:
                raise SystemExit(f"unknown model {name!r} (tiny or sd15)")
            for runs in (bench_model(name, model, images, steps, args, work),):
                results[name] = runs
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    import torch

    cpu = platform.processor() or platform.machine()
    print(f"\nTextual-inversion training, {args.resolution} px, batch 1, flips on, mixed precision {args.mixed_precision}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({cpu}), "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; {bytecode}\n")  # fmt: skip
    print(f"Each trainer ran {args.repeat} times, alternating; s/step is the median step of the median run (every run's in brackets); memory is the largest seen in any run.\n")
    print("| model | trainer | steps | s/step (median) | speed-up | to first step, s (each run) | RSS during steps (MB) | peak RSS (MB) | CUDA peak (MB) | wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        ours = runs["conceptlib"]
        ref = runs.get("reference")
        for trainer, data in (("conceptlib", ours), ("reference", ref)):
            if data is None:
                print(f"| {name} | reference | - | skipped (no --reference) | | | | | | |")
                continue
            speedup = f"{ref['seconds_per_step'] / ours['seconds_per_step']:.2f}x" if ref and trainer == "conceptlib" else ""
            every = ", ".join(f"{x:.4f}" for x in data["all_seconds_per_step"])
            firsts = data["all_first_step"]
            first = f"{sorted(firsts)[len(firsts) // 2]:.2f} ({', '.join(f'{x:.2f}' for x in firsts)})"
            print(f"| {name} | {trainer} | {data['steps']} | {data['seconds_per_step']:.4f} ({every}) | {speedup} | {first} | {_mb(data['rss_train'])} | "
                  f"{_mb(data['peak_rss'])} | {_mb(data.get('cuda_peak'))} | {data['wall']:.1f} |")  # fmt: skip
        if ref and ref.get("shims"):
            print(f"\nReference shims ({name}): {'; '.join(ref['shims'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
