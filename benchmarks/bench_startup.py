"""Start like diffusers: whole-process render and preview beside a plain diffusers script.

Usage:
    python benchmarks/bench_startup.py [--models tiny,sd15] [--repeat 3] [--sd15 DIR] [--keep DIR]
        [--only render,preview] [--profile] [--json results.json]

Each run is a fresh process, timed from start to exit (``perf_counter`` around the child) with its
peak resident memory (``ru_maxrss`` from ``wait4``). conceptlib and the reference do the same work
on the same model folder (same prompts, seeds, steps, size, batch, scheduler, float32, CPU), and
the images are compared pixel for pixel:

* ``render``: on ``tiny`` (conceptlib's built-in SD 1.x model), 16 images from 8 prompts (two
  each, half of them using a 2-vector concept from the library) in one batch of 16, 4 steps,
  64 px; on ``sd15`` (the SD 1.5 architecture from ``../shared/data/models/sd15`` configs with
  seeded random weights, 4 GB of float32 files), one image, 1 step, 64 px, no concept.
* ``preview``: ``conceptlib preview CONCEPT`` (4 template prompts, one batch), 4 steps (sd15: 1),
  64 px; the reference renders the prompts and seeds of preview's ``render.json`` after
  ``load_textual_inversion`` of the same file.

conceptlib runs by path and by registered name (``models add``), first with an empty cache
(``<home>/cache`` deleted: the cold run hashes every weight file once) and then warm. The
reference is ``StableDiffusionPipeline.from_pretrained`` + ``load_textual_inversion`` (when a
prompt uses the concept) + one call, saving PNGs. Runs alternate which goes first; the median of ``--repeat`` is reported.
``--profile`` adds a cProfile breakdown of one warm conceptlib render by path.

Prints Markdown tables with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOKEN = "<bench-toy>"
CONCEPT = "bench-toy"

# The reference: what a user writes with diffusers alone. argv = [payload.json].
_REFERENCE = r"""
import json, sys
from pathlib import Path
payload = json.loads(Path(sys.argv[1]).read_text())
import torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(payload["model"], torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
if payload.get("concept"):
    pipe.load_textual_inversion(payload["concept"], token=payload["token"])
out = Path(payload["out"])
out.mkdir(parents=True, exist_ok=True)
jobs = payload["jobs"]
for start in range(0, len(jobs), payload["batch"]):
    batch = jobs[start : start + payload["batch"]]
    images = pipe(
        prompt=[j["prompt"] for j in batch], num_inference_steps=payload["steps"], guidance_scale=7.5,
        width=payload["size"], height=payload["size"],
        generator=[torch.Generator("cpu").manual_seed(j["seed"]) for j in batch], output_type="pil",
    ).images
    for job, image in zip(batch, images):
        image.save(out / f"{job['index']:05d}-{job['seed']}.png")
"""


def machine() -> str:
    import diffusers
    import torch
    import transformers

    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({torch.get_num_threads()} torch threads), Python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__} ({time.strftime('%Y-%m-%d')})"
    )


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process; exits on failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join((err or out).decode(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{' '.join(argv[:4])} ... failed:\n{tail}")
    return wall, usage.ru_maxrss * 1024


def pixels(folder: Path) -> dict[str, bytes]:
    from PIL import Image

    return {p.name: Image.open(p).convert("RGB").tobytes() for p in sorted(folder.glob("0*.png"))}


def prepare(name: str, work: Path, sd15: Path | None, env: dict[str, str]) -> Path:
    """The model folder; the concept file in the library; the model registered as bench-NAME."""
    if name == "tiny":
        model = work / "tiny-sd1"
        if not model.is_dir():
            from conceptlib.tiny import create_tiny

            create_tiny(model, "sd1", seed=0)
    else:
        from bench_train import make_sd15

        model = sd15 or work / "sd15"
        print(f"[sd15] the SD 1.5 architecture with seeded weights in {model} (built once) ...", file=sys.stderr)
        make_sd15(model)
    cli = [sys.executable, "-m", "conceptlib"]
    concept = work / f"{CONCEPT}.safetensors"
    if not concept.is_file():
        import numpy as np

        from conceptlib.embedding import Embedding
        from conceptlib.formats import write
        from conceptlib.tensor import Tensor

        vectors = (np.random.default_rng(0).standard_normal((2, 768)) * 0.015).astype(np.float32)
        write(Embedding({"clip_l": Tensor.from_numpy(vectors)}, token=TOKEN), concept)
        subprocess.run([*cli, "add", str(concept)], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "models", "add", str(model), "--name", f"bench-{name}", "--force"], env=env, check=True, capture_output=True)
    return model


def workload(model_name: str, kind: str) -> dict[str, Any]:
    if kind == "render" and model_name == "tiny":
        prompts = [f"a photo of {TOKEN} number {i}" if i % 2 == 0 else f"a painting of a cat number {i}" for i in range(8)]
        return {"prompts": prompts, "n": 2, "batch": 16, "steps": 4, "size": 64}
    if kind == "render":
        return {"prompts": ["a photo of a cat"], "n": 1, "batch": 1, "steps": 1, "size": 64}
    return {"steps": 4 if model_name == "tiny" else 1, "size": 64}


def conceptlib_argv(kind: str, model: str, spec: dict[str, Any], out: Path) -> list[str]:
    common = ["--model", model, "--steps", str(spec["steps"]), "--size", f"{spec['size']}x{spec['size']}", "--out", str(out)]
    if kind == "render":
        return [sys.executable, "-m", "conceptlib", "render", *spec["prompts"], "-n", str(spec["n"]), "--batch-size", str(spec["batch"]), *common]
    return [sys.executable, "-m", "conceptlib", "preview", CONCEPT, *common]


def reference_payload(kind: str, model: Path, spec: dict[str, Any], conceptlib_out: Path, work: Path, out: Path) -> Path:
    manifest = json.loads(((conceptlib_out / CONCEPT) if kind == "preview" else conceptlib_out).joinpath("render.json").read_text())
    jobs = [{"index": i["index"], "prompt": i["prompt"], "seed": i["seed"]} for i in manifest["images"]]
    # The concept is loaded only when a prompt uses it, as conceptlib does.
    used = any(TOKEN in job["prompt"] for job in jobs)
    payload = {
        "model": str(model), "concept": str(work / f"{CONCEPT}.safetensors") if used else None, "token": TOKEN, "jobs": jobs,
        "batch": manifest["settings"]["batch_size"], "steps": spec["steps"], "size": spec["size"], "out": str(out),
    }  # fmt: skip
    path = work / f"reference-{kind}.json"
    path.write_text(json.dumps(payload))
    return path


def bench(model_name: str, kind: str, model: Path, work: Path, env: dict[str, str], repeat: int) -> dict[str, Any]:
    spec = workload(model_name, kind)
    home = Path(env["CONCEPTLIB_HOME"])
    results: dict[str, list[tuple[float, int]]] = {}
    identical = True
    script = work / "reference.py"
    script.write_text(_REFERENCE)
    for r in range(repeat):
        cases = [("path", "cold"), ("path", "warm"), ("name", "warm"), ("reference", "")]
        if r % 2:
            cases = [cases[-1], *cases[:-1]]
        for access, state in cases:
            label = f"{access} {state}".strip()
            out = work / "out" / kind / label.replace(" ", "-")
            shutil.rmtree(out, ignore_errors=True)
            if access == "reference":
                ours = work / "out" / kind / "path-warm"
                payload = reference_payload(kind, model, spec, ours, work, out)
                argv = [sys.executable, str(script), str(payload)]
            else:
                if state == "cold":
                    shutil.rmtree(home / "cache", ignore_errors=True)
                argv = conceptlib_argv(kind, str(model) if access == "path" else f"bench-{model_name}", spec, out)
            if access == "reference" and not (work / "out" / kind / "path-warm").is_dir():
                # The reference takes conceptlib's prompts and seeds: run conceptlib first once.
                run(conceptlib_argv(kind, str(model), spec, work / "out" / kind / "path-warm"), env, work)
                payload = reference_payload(kind, model, spec, work / "out" / kind / "path-warm", work, out)
                argv = [sys.executable, str(script), str(payload)]
            print(f"[{model_name}] {kind} {label} (run {r + 1} of {repeat}) ...", file=sys.stderr)
            results.setdefault(label, []).append(run(argv, env, work))
        ours = pixels(work / "out" / kind / "path-warm" / (CONCEPT if kind == "preview" else ""))
        theirs = pixels(work / "out" / kind / "reference")
        identical = identical and bool(ours) and ours == theirs
    return {
        label: {"wall": statistics.median(w for w, _ in runs), "rss": max(m for _, m in runs), "runs": [w for w, _ in runs]}
        for label, runs in results.items()
    } | {"identical": identical, "spec": spec}


def profile(model: Path, work: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """Where a warm render by path spends its time (cProfile cumulative seconds)."""
    import pstats

    spec = workload("sd15" if "sd15" in model.name else "tiny", "render")
    out = work / "out" / "profile"
    stats = work / "render.prof"
    argv = conceptlib_argv("render", str(model), spec, out)
    run(argv, env, work)  # warm the cache
    run([sys.executable, "-m", "cProfile", "-o", str(stats), *argv[1:]], env, work)
    table = pstats.Stats(str(stats)).stats  # type: ignore[attr-defined]
    wanted = {
        ("render.py", "render"): "conceptlib.render.render (everything below)",
        ("models.py", "resolve_model"): "resolve the model (cached description)",
        ("render.py", "resolve_concepts"): "find the prompt's concepts in the library",
        ("validate.py", "validate_many"): "validate concepts against the model",
        ("_parallel.py", "process_device"): "pick the device (imports torch)",
        ("pipelines.py", "load_pipeline"): "load the pipeline (diffusers import + from_pretrained)",
        ("pipeline_utils.py", "from_pretrained"): "  of which DiffusionPipeline.from_pretrained",
        ("pipeline_stable_diffusion.py", "__call__"): "the pipeline call (text encoder, UNet, VAE)",
        ("render.py", "load_concepts"): "load concepts into the text encoder",
        ("render.py", "_png_bytes"): "encode PNGs with their parameters",
    }
    rows = []
    total = max(ct for (_f, _l, _n), (_cc, _nc, _tt, ct, _callers) in table.items())
    rows.append(("the whole process under cProfile", total))
    for (filename, _line, name), (_cc, _nc, _tt, cumtime, _callers) in sorted(table.items(), key=lambda kv: -kv[1][3]):
        for (file_end, func), label in wanted.items():
            if filename.endswith(file_end) and name == func and label not in [r[0] for r in rows]:
                rows.append((label, cumtime))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,sd15")
    parser.add_argument("--only", default="render,preview")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sd15", type=Path, default=None, help="an existing sd15 folder (built there when missing)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from bench_train import compile_conceptlib

    bytecode = compile_conceptlib()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CONCEPTLIB_HOME": str(work / "home"), "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    os.environ["CONCEPTLIB_HOME"] = env["CONCEPTLIB_HOME"]
    results: dict[str, Any] = {"machine": machine()}
    try:
        for name in args.models.split(","):
            model = prepare(name, work, args.sd15, env)
            for kind in args.only.split(","):
                results[f"{name} {kind}"] = bench(name, kind, model, work, env, args.repeat)
            if args.profile:
                results[f"{name} profile"] = profile(model, work, env)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\nMachine: {results['machine']}; {bytecode}\n")
    print("| model | job | conceptlib by path, cold cache | by path, warm | by registered name | diffusers script | warm / diffusers | peak RSS warm vs diffusers | images identical |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for key, data in results.items():
        if key == "machine" or key.endswith("profile"):
            continue
        model_name, kind = key.split(" ")
        ref = data["reference"]
        print(
            f"| {model_name} | {kind} | {data['path cold']['wall']:.2f} s | {data['path warm']['wall']:.2f} s | "
            f"{data['name warm']['wall']:.2f} s | {ref['wall']:.2f} s | **{data['path warm']['wall'] / ref['wall']:.2f}×** | "
            f"{data['path warm']['rss'] / 2**20:.0f} vs {ref['rss'] / 2**20:.0f} MB ({data['path warm']['rss'] / ref['rss']:.2f}×) | "
            f"{'yes' if data['identical'] else 'NO'} |"
        )
    for key, rows in results.items():
        if key.endswith("profile"):
            print(f"\n{key} (one warm `render` by path under cProfile, cumulative seconds):\n")
            print("| where | seconds |\n|---|---:|")
            for label, seconds in rows:
                print(f"| {label} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
