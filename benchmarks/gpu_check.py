"""The GPU path, measured (issue 22): conceptlib's train and render beside diffusers, in one command.

Made to run once on a machine with one GPU (an H100 or H200 with PyTorch, transformers and
accelerate installed, no network, about 9 minutes), and to say what happened in one Markdown
table on stdout (``--json PATH`` also writes every number); progress goes to stderr.

The one command, from the repository root on the GPU machine (``.whl/`` is git-ignored, so the
run must carry it, e.g. the device tool's ``carry: [".whl"]``; it holds the wheels below and a
copy of diffusers' reference script; ``$OUT`` is the folder whose files come back)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && \\
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py \\
        --reference .whl/textual_inversion.py --json $OUT/gpu.json

Preparing ``.whl/`` on a machine with network and this repository's environment installed::

    python benchmarks/gpu_check.py --print-wheel-command | sh
    cp PATH/TO/diffusers/examples/textual_inversion/textual_inversion.py .whl/

``--print-wheel-command`` prints one ``pip download --no-deps --only-binary=:all:
--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 ...`` line per
distribution, pinned to the version installed here (CPython 3.12 wheels: change
``--python-version`` if the GPU machine's ``python3`` is another). The list is derived from the
installed distributions' metadata: everything conceptlib (with its ``torch`` extra) and the
reference script need, not following nor listing what the GPU machine brings (:data:`PROVIDED`:
torch, transformers, accelerate and the requirements every release of those two shares, such as
huggingface_hub, safetensors and numpy; a copy of those in ``/tmp/site`` would shadow the
machine's own and could break its transformers). Pure-Python wheels (``py3-none-any``) download
with those flags too: ``--only-binary`` and ``--platform`` only narrow the choice among binary
wheels. ``--print-wheel-command all`` lists everything but torch, for a machine whose
transformers is too old for the diffusers here (the check at start says so: it compares the
installed versions with every requirement). In 2026-12 the minimal list was 20 wheels, 23 MB.
No conceptlib wheel is needed: the children import conceptlib from this checkout.

What runs (each measured job in its own child process, with its own time limit):

* **setup**: a package check (every distribution the jobs need, with versions against their
  requirements; what is missing is named, with the ``pip download`` line that fixes it), a probe
  of the device (torch, CUDA, GPU, versions), and the model: the SD 1.5 architecture (UNet
  860 M, CLIP ViT-L/14 text encoder with the real 49,408-token vocabulary, VAE) with seeded
  random weights, built from the configs in ``benchmarks/gpu_models/sd15/`` (copied from
  ``../shared/data/models/sd15``, which does not travel) by ``bench_train.make_sd15``; a few
  synthetic training pictures (``bench_train.make_images``) and a 2-vector concept.
* **train**: ``conceptlib.train.train`` and diffusers' ``textual_inversion.py`` (``--reference``)
  at 512 px, batch 1 and batch 4, mixed precision ``no`` (fp32), fp16 and bf16, on the same
  model, images, learning rate and flips, through ``bench_train``'s child process (a global
  optimizer-step hook timestamps every step for both). Reported: seconds per step (the median
  interval between optimizer steps after two warm-up steps, as in ``bench_train.py``), that
  times 3,000 for a typical run (steady state: start-up excluded, which the notes give), and
  the process's peak ``torch.cuda.max_memory_allocated`` (conceptlib resets the counter before
  its first step; the check records the peak before that reset too, so both trainers report
  their whole process). fp16 loss scaling skips the optimizer steps whose gradients overflow:
  those do not fire the hook, and the notes say how many steps were timed.
* **render**: ``conceptlib.render.render`` (pipeline from ``conceptlib.pipelines.load_pipeline``)
  and one plain ``StableDiffusionPipeline`` call, 8 prompts (half of them with the concept) in
  one batch, 512 px, 25 steps, fp16, the model's own scheduler, one CPU generator per image
  (seeds 1000..1007) for both. Each renders once with 2 steps first (same batch and size: CUDA
  kernels and allocator warm), then the measured call ``--render-repeat`` times (default 2);
  images/s is 8 over the fastest call, PNG writing included (conceptlib's call also resolves
  and validates the concept: what a user's render does), and the peak memory is the measured
  calls'. The images are compared pixel for pixel. "speed-up" is the other implementation's
  time over conceptlib's (above 1: conceptlib is faster).

Image tolerance: on a CPU in float32 the two must be **identical** (max difference 0; that is
what ``bench_startup.py`` checks today). On a GPU in half precision, the same operations on the
same shapes normally give the same bits, but kernel selection and reduction order are not
promised to be reproducible across two processes and two code paths (conceptlib and diffusers
grow the embedding matrix differently for the concept), so the images **match** when the mean
absolute difference over all pixels and channels of all images is at most 1.0 (of 255); the
maximum difference is reported beside it. A row also says when an image is blank (standard
deviation under 1 level: a NaN-to-black fp16 overflow would otherwise "match").

Every failure is a row, not a crash: a missing package, an out-of-memory, a crashing or hanging
child (killed at its limit, ``--job-timeout-s``), a missing reference script. ``--budget-s``
(default 500) bounds the whole run: jobs run in order of importance (fp16 batch 1 train, the
render, bf16, batch 4, fp32 last) and a job that would not fit in what is left (estimated from
the longest finished job of its kind) is reported "skipped: out of time". Exit status: 0 when
the table was printed, whatever its rows say; 2 for a usage error.

Dry run without a GPU: ``python benchmarks/gpu_check.py --device cpu --tiny`` runs everything on
conceptlib's built-in tiny SD 1.x model (``conceptlib/tiny.py``) at 64 px with fewer steps, in
about a minute on two cores; fp16 rows say "skipped: CPU" (fp16 on a CPU measures nothing about
the GPU path), bf16 runs, and the render compares float32 images. ``--inject-failure JOB`` makes
a job's child fail on purpose (the test uses it to see a failure row).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = HERE / "gpu_models" / "sd15"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # bench_train, by import: its child and model builder are reused

import bench_train  # noqa: E402  (stdlib-only at import; torch loads in its functions and children)

TOKEN = "<gpu-check>"
CONCEPT = "gpu-check"
RENDER_SEED = 1000
PRECISIONS = ("fp32", "fp16", "bf16")
#: conceptlib's and the reference's name for each precision.
MIXED = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
RENDER_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: Mean absolute pixel difference (0..255) at which half-precision GPU images still match.
GPU_MATCH_MEAN = 1.0
EXTRAPOLATE_STEPS = 3000
PIP_DOWNLOAD = (
    "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
    "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl"
)
#: What the GPU machine brings, at versions its own transformers accepts: torch, transformers,
#: accelerate and what every release of transformers (>= 4.44) and accelerate (>= 0.30) requires.
#: The minimal wheel list leaves these out: a copy in /tmp/site would shadow the machine's own
#: and could break its transformers (``--print-wheel-command all`` ships all but torch).
PROVIDED = (
    "torch", "transformers", "accelerate", "huggingface-hub", "numpy", "packaging", "pyyaml", "regex",
    "requests", "tokenizers", "safetensors", "tqdm", "psutil", "filelock",
)  # fmt: skip
#: What diffusers' textual_inversion.py imports beyond the torch extra (torchvision is shimmed).
REFERENCE_NEEDS = ("tqdm", "packaging", "pillow", "huggingface-hub", "safetensors", "numpy")

# Makes the checkout's conceptlib importable in every child, installed or not: the repository
# root goes first on sys.path, and conceptlib.registry / conceptlib.cli (which live in registry/
# and cli/ and are mapped into the package only by an install) are found by a last-resort finder.
_BOOTSTRAP = r"""
import importlib.abc as _abc, importlib.util as _util, os as _os, sys as _sys
_REPO = {repo!r}
_sys.path.insert(0, _REPO)
class _RepoPackages(_abc.MetaPathFinder):
    _MAP = {{"conceptlib.registry": "registry", "conceptlib.cli": "cli"}}
    def find_spec(self, name, path=None, target=None):
        folder = self._MAP.get(name)
        if folder is None:
            return None
        folder = _os.path.join(_REPO, folder)
        return _util.spec_from_file_location(name, _os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
_sys.meta_path.append(_RepoPackages())
if _os.environ.get("GPU_CHECK_INJECT_FAILURE"):
    raise RuntimeError("injected failure (--inject-failure): this job was told to fail")
"""

# Put before bench_train's child (argv = [out.json, mode, payload]). conceptlib resets CUDA's
# peak counters before its first step; this keeps the peak before every reset so that both
# trainers report their whole process, and adds the reserved peak. Registered before the child's
# own atexit handler, so it runs after it (LIFO) and amends the file that handler wrote.
_TRAIN_PREFIX = r"""
import atexit as _atexit, json as _json
import torch as _torch
_before = {"allocated": 0, "reserved": 0}
_reset = _torch.cuda.reset_peak_memory_stats
def _recording_reset(device=None):
    if _torch.cuda.is_available():
        _before["allocated"] = max(_before["allocated"], _torch.cuda.max_memory_allocated(device))
        _before["reserved"] = max(_before["reserved"], _torch.cuda.max_memory_reserved(device))
    return _reset(device)
_torch.cuda.reset_peak_memory_stats = _recording_reset
def _amend():
    if not _torch.cuda.is_available() or not _os.path.isfile(_sys.argv[1]):
        return
    with open(_sys.argv[1]) as handle:
        data = _json.load(handle)
    data["cuda_peak_process"] = max(_before["allocated"], _torch.cuda.max_memory_allocated())
    data["cuda_reserved_process"] = max(_before["reserved"], _torch.cuda.max_memory_reserved())
    with open(_sys.argv[1], "w") as handle:
        _json.dump(data, handle)
_atexit.register(_amend)
"""

# The device probe: argv = [out.json]. Versions, CUDA, the GPU; it fails like the jobs would when
# torch itself is missing or broken.
_PROBE = r"""
import json, platform, sys
info = {"python": platform.python_version()}
import torch
info["torch"] = torch.__version__
info["torch_cuda"] = torch.version.cuda
info["cuda"] = torch.cuda.is_available()
info["threads"] = torch.get_num_threads()
if info["cuda"]:
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = props.name
    info["gpu_memory"] = props.total_memory
    info["capability"] = list(torch.cuda.get_device_capability(0))
    info["bf16"] = torch.cuda.is_bf16_supported()
    info["gpus"] = torch.cuda.device_count()
for name in ("transformers", "diffusers", "accelerate"):
    try:
        info[name] = __import__(name).__version__
    except Exception as exc:  # reported in the table: the probe itself must not fail on it
        info[name] = f"unavailable ({type(exc).__name__}: {exc})"
with open(sys.argv[1], "w") as handle:
    json.dump(info, handle)
"""

# Setup: argv = [kind, model folder, configs folder, images folder, concept file]. The model is
# built only when missing (a --keep folder is reused).
_BUILD = r"""
import os, sys
from pathlib import Path
kind, model, configs, images, concept = sys.argv[1:6]
import bench_train
bench_train.make_images(Path(images), 4)
if not (Path(model) / "model_index.json").is_file():
    if kind == "tiny":
        from conceptlib.tiny import create_tiny
        create_tiny(model, "sd1", seed=0)
    else:
        bench_train.SD15_CONFIGS = Path(configs)  # the copy that travels, not ../shared
        bench_train.make_sd15(Path(model))
import numpy as np
from conceptlib.embedding import Embedding
from conceptlib.formats import write
from conceptlib.tensor import Tensor
# Two vectors: the render then exercises the multi-vector expansion (tok, tok_1) both ways.
vectors = (np.random.default_rng(0).standard_normal((2, 768)) * 0.015).astype(np.float32)
if not Path(concept).is_file():
    write(Embedding({"clip_l": Tensor.from_numpy(vectors)}, token=os.environ["GPU_CHECK_TOKEN"]), Path(concept))
"""

# One render: argv = [out.json, payload]. A warm-up call (2 steps, same batch and size), then the
# measured calls; PNGs named like conceptlib's ({index:05d}-{seed}.png) so the two compare by name.
_RENDER = r"""
import json, os, sys, time
from pathlib import Path
out_path, payload = sys.argv[1], json.loads(sys.argv[2])
import torch
device, dtype_name = payload["device"], payload["dtype"]
prompts, seed, size = payload["prompts"], payload["seed"], payload["size"]
result = {}
def sync():
    if torch.cuda.is_available() and device.startswith("cuda"):
        torch.cuda.synchronize()
started = time.perf_counter()
if payload["mode"] == "conceptlib":
    from conceptlib.library import Library
    from conceptlib.models import resolve_model
    from conceptlib.pipelines import load_pipeline
    from conceptlib.render import RenderConfig, render
    library = Library.open(payload["home"])
    if not library.has(payload["concept_name"]):
        library.add(payload["concept"], name=payload["concept_name"])
    pipe = load_pipeline(resolve_model(payload["model"], home=payload["home"]), device=device, dtype=dtype_name)
    def run(steps, folder):
        return render(RenderConfig(
            model=payload["model"], prompts=prompts, seed=seed, steps=steps, size=(size, size),
            batch_size=len(prompts), out=folder, device=device, dtype=dtype_name, home=payload["home"],
        ), pipeline=pipe)
else:
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(payload["model"], torch_dtype=getattr(torch, dtype_name)).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(payload["concept"], token=payload["token"])
    def run(steps, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        images = pipe(
            prompt=prompts, num_inference_steps=steps, guidance_scale=7.5, width=size, height=size,
            generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))], output_type="pil",
        ).images
        for i, image in enumerate(images):
            image.save(folder / f"{i:05d}-{seed + i}.png")
sync()
result["load_s"] = time.perf_counter() - started
run(2, Path(payload["out"]) / "warm-up")
sync()
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
result["each"] = []
for _ in range(payload["repeat"]):  # the fastest call counts: one slow call is another tenant
    mark = time.perf_counter()
    done = run(payload["steps"], Path(payload["out"]) / "images")
    sync()
    result["each"].append(time.perf_counter() - mark)
result["seconds"] = min(result["each"])
result["images"] = len(prompts)
if getattr(done, "timings", None):
    result["timings"] = done.timings
if torch.cuda.is_available():
    result["cuda_peak"] = torch.cuda.max_memory_allocated()
    result["cuda_reserved"] = torch.cuda.max_memory_reserved()
with open("/proc/self/status") as handle:
    for line in handle:
        if line.startswith("VmHWM:"):
            result["peak_rss"] = int(line.split()[1]) * 1024
with open(out_path, "w") as handle:
    json.dump(result, handle)
"""


# --- rows ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table (and of the JSON): a setup step or a measured job.

    Attributes:
        job: the job's id (``train-conceptlib-fp16-b1``, ``render-diffusers`` ...), what
            ``--inject-failure`` takes.
        kind: ``setup``, ``train`` or ``render``.
        implementation: ``conceptlib``, ``reference`` (diffusers' training script) or
            ``diffusers`` (a plain pipeline call); empty for setup rows.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch: images per step (train) or per pipeline call (render).
        status: ``ok``, ``failed: ...`` or ``skipped: ...``.
        seconds_per_step: train: median optimizer-step interval after the warm-up.
        steps_timed: train: optimizer steps seen by the hook (fp16 skips overflowing ones).
        images_per_s: render: images over the measured call's seconds.
        peak_memory: bytes: peak ``torch.cuda.max_memory_allocated`` on a GPU, else peak RSS.
        memory_kind: ``CUDA`` or ``RSS``.
        match: render: the pixel comparison with the other implementation.
        speedup: the other implementation's time over this one's (above 1: this one is faster).
        wall_s: the child's wall time, start-up included.
        startup_s: train: from the child's start to its first optimizer step.
        notes: anything else worth a reader's eye.
        log_tail: the last lines of a failed child's output.
        details: raw numbers kept for the JSON.
    """

    job: str
    kind: str
    implementation: str = ""
    precision: str = ""
    batch: int | None = None
    status: str = "ok"
    seconds_per_step: float | None = None
    steps_timed: int | None = None
    images_per_s: float | None = None
    peak_memory: int | None = None
    memory_kind: str = ""
    match: dict[str, Any] | None = None
    speedup: float | None = None
    wall_s: float | None = None
    startup_s: float | None = None
    notes: list[str] = field(default_factory=list)
    log_tail: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["extrapolated_3000_steps_s"] = self.seconds_per_step * EXTRAPOLATE_STEPS if self.seconds_per_step else None
        return data


@dataclass
class Job:
    """A measured job waiting its turn."""

    job: str
    kind: str
    implementation: str
    precision: str
    batch: int
    priority: int


@dataclass
class Child:
    """How one child process ended."""

    returncode: int | None
    timed_out: bool
    wall: float
    tail: str


# --- packages -----------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _target_environment() -> dict[str, str]:
    """Marker values of the GPU machine (Linux x86-64, CPython 3.12), for requirement markers."""
    return {
        "python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
        "platform_machine": "x86_64", "os_name": "posix", "platform_release": "", "platform_version": "",
        "implementation_version": "3.12.0", "extra": "",
    }  # fmt: skip


def _parse_requirement(text: str, environment: dict[str, str] | None) -> tuple[str, str] | None:
    """``(canonical name, specifier)`` of a requirement that applies (no extra, markers hold).

    ``packaging`` evaluates markers and specifiers when it is importable (transformers and
    accelerate need it, so the GPU machine has it); without it, requirements guarded by any
    marker are left out, which errs towards fewer wheels, never towards a wrong one.
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:
        head = text.split(";")[0]
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)", head)
        if match is None or ";" in text:
            return None
        return _canonical(match.group(1)), match.group(2).strip().strip("()")
    requirement = Requirement(text)
    if requirement.marker is not None:
        from packaging.markers import default_environment

        values = {**{k: str(v) for k, v in default_environment().items()}, **(environment or {}), "extra": ""}
        if not requirement.marker.evaluate(values):
            return None
    return _canonical(requirement.name), str(requirement.specifier)


def conceptlib_requirements(extras: Iterable[str] = ("torch",)) -> list[str]:
    """conceptlib's requirements (with ``extras``), from this checkout's pyproject.toml.

    Read from the checkout, not from installed metadata: on the GPU machine conceptlib is not
    installed (the children import it from here).
    """
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: the two arrays this needs, read by pattern
        def array(key: str) -> list[str]:
            match = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.M | re.S)
            return re.findall(r'"([^"]+)"', match.group(1)) if match else []

        return [*array("dependencies"), *(r for extra in extras for r in array(extra))]
    project = tomllib.loads(text)["project"]
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += project.get("optional-dependencies", {}).get(extra, [])
    return out


def closure(roots: Iterable[str], environment: dict[str, str] | None = None, *, stop: Iterable[str] = ()) -> dict[str, str | None]:
    """Every distribution ``roots`` need, through installed metadata: name -> installed version.

    Args:
        roots: requirement strings.
        environment: marker values (default: this interpreter's).
        stop: names whose own requirements are not followed (they are still listed).

    Returns:
        Canonical names; a name that is not installed maps to None (its needs are unknown).
    """
    stops = {_canonical(name) for name in stop}
    found: dict[str, str | None] = {}
    queue = []
    for text in roots:
        parsed = _parse_requirement(text, environment)
        if parsed is not None:
            queue.append(parsed[0])
    while queue:
        name = queue.pop()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist.version
        if name in stops:
            continue
        for text in dist.requires or []:
            parsed = _parse_requirement(text, environment)
            if parsed is not None:
                queue.append(parsed[0])
    return found


def wheel_plan(mode: str = "minimal") -> tuple[list[tuple[str, str]], list[str]]:
    """The distributions to download as wheels, pinned to the versions installed here.

    Args:
        mode: ``minimal``: what conceptlib[torch] and the reference script need, not following
            nor listing :data:`PROVIDED`; ``all``: everything they need but torch (and what only
            torch needs), for a GPU machine whose transformers is older than this diffusers wants.

    Returns:
        ``(name, version)`` pairs, and the names needed but not installed here (no version to pin).
    """
    skip = set(PROVIDED) if mode == "minimal" else {"torch"}
    needed = closure([*conceptlib_requirements(), *REFERENCE_NEEDS], _target_environment(), stop=skip)
    plan, absent = [], []
    for name, version in sorted(needed.items()):
        if name in skip:
            continue
        if version is None:
            absent.append(name)
        else:
            plan.append((name, version))
    return plan, absent


def print_wheel_command(mode: str) -> None:
    """Print the ``pip download`` lines (stdout: pipe them to ``sh``)."""
    plan, absent = wheel_plan(mode)
    print(f"# gpu_check.py wheels ({mode}): {len(plan)} distributions, pinned to this environment's versions.")
    print("# Pure-Python wheels (py3-none-any) download with these flags too.")
    print("# Also: cp PATH/TO/diffusers/examples/textual_inversion/textual_inversion.py .whl/")
    print("mkdir -p .whl")
    for name, version in plan:
        print(f"{PIP_DOWNLOAD} {name}=={version}")
    for name in absent:
        print(f"# {name}: needed but not installed here, so no version to pin; add it by hand")


def check_packages() -> tuple[list[str], list[str]]:
    """What the jobs need and this interpreter lacks: (missing, version problems), one line each.

    Checked through distribution metadata (so ``PYTHONPATH=/tmp/site`` installs count), over the
    whole requirement closure of conceptlib[torch] and the reference script.
    """
    missing: list[str] = []
    problems: list[str] = []
    roots = [*conceptlib_requirements(), *REFERENCE_NEEDS]
    found = closure(roots)
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # no versions to compare: presence alone
        return sorted(n for n, v in found.items() if v is None), problems

    def check(who: str, requirements: Iterable[str]) -> None:
        for text in requirements:
            parsed = _parse_requirement(text, None)
            if parsed is None or not parsed[1] or found.get(parsed[0]) is None:
                continue
            dep, spec = parsed
            try:
                if not SpecifierSet(spec).contains(Version(str(found[dep])), prereleases=True):
                    problems.append(f"{who} needs {dep}{spec}, found {found[dep]}")
            except Exception:  # an unparsable version: nothing to say about it
                continue

    check("conceptlib", roots)
    for name, version in sorted(found.items()):
        if version is None:
            missing.append(name)
        else:
            check(f"{name} {version}", importlib.metadata.requires(name) or [])
    return missing, problems


# --- children -------------------------------------------------------------------------------------


def run_child(argv: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float, log: Path) -> Child:
    """Run one child in its own session, output to ``log``; kill its whole group at ``timeout``."""
    started = time.perf_counter()
    with open(log, "wb") as handle:
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            returncode: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            # Its own session: the group is this child and whatever it started (loader workers).
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # Ctrl-C: no orphan keeps the GPU
            proc.wait()
            raise
    wall = time.perf_counter() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    return Child(returncode, timed_out, wall, "\n".join(text.splitlines()[-20:]))


def failure(child: Child, limit: float) -> str:
    """One status line for a child that did not finish well."""
    if child.timed_out:
        return f"failed: timed out after {limit:.0f} s"
    tail = child.tail
    if "injected failure" in tail:
        return "failed: injected (--inject-failure)"
    if "OutOfMemoryError" in tail or "out of memory" in tail.lower():
        return "failed: out of memory"
    if "DefaultCPUAllocator: can't allocate memory" in tail:
        return "failed: out of memory (CPU)"
    if child.returncode is not None and child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        hint = " (the kernel's out-of-memory killer?)" if name == "SIGKILL" else ""
        return f"failed: killed by {name}{hint}"
    missing = re.findall(r"No module named '([\w.]+)'", tail)
    if missing:
        return f"failed: missing package {missing[-1].split('.')[0]}"
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return f"failed: exit {child.returncode}: {last[:160]}"


def python_argv() -> list[str]:
    """This interpreter, with -S when it runs without site (so children see the same packages)."""
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


# --- the run ------------------------------------------------------------------------------------


class Check:
    """The whole run: settings, work folder, budget, rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.rows: list[Row] = []
        self.work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.model = self.work / ("tiny-sd1" if args.tiny else "sd15-random")
        self.images = self.work / "images"
        self.concept = self.work / f"{CONCEPT}.safetensors"
        self.home = self.work / "home"
        self.device = "cpu"
        self.probe: dict[str, Any] = {}
        self.longest: dict[str, float] = {}
        self.bootstrap = _BOOTSTRAP.format(repo=str(REPO))

    # -- budget

    def left(self) -> float:
        """Seconds of the budget left, less a few for printing the table."""
        return self.args.budget_s - (time.perf_counter() - self.started) - 5.0

    def estimate(self, kind: str) -> float:
        """How long a job of this kind is expected to take: the longest such so far, or a guess."""
        guess = {"train": 45.0, "render": 60.0} if not self.args.tiny else {"train": 15.0, "render": 15.0}
        return self.longest.get(kind, guess.get(kind, 30.0))

    def env(self, job: str, *, cpu_only: bool = False) -> dict[str, str]:
        env = {
            **os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
            "CONCEPTLIB_HOME": str(self.home), "PYTHONUNBUFFERED": "1", "GPU_CHECK_TOKEN": TOKEN,
        }  # fmt: skip
        env.pop("GPU_CHECK_INJECT_FAILURE", None)
        if job in self.args.inject_failure:
            env["GPU_CHECK_INJECT_FAILURE"] = "1"
        if cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the reference picks its own device: keep it off the GPU
        # bench_train (for the build step) sits beside this file; conceptlib comes from _BOOTSTRAP.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
        return env

    def child(self, job: str, code: str, extra: Sequence[str], *, limit: float, cpu_only: bool = False) -> Child:
        return run_child(
            [*python_argv(), "-c", self.bootstrap + code, *extra],
            env=self.env(job, cpu_only=cpu_only), cwd=self.work, timeout=limit, log=self.work / "logs" / f"{job}.log",
        )  # fmt: skip

    # -- setup

    def check_packages(self) -> None:
        missing, problems = check_packages()
        row = Row("packages", "setup")
        if missing:
            row.status = f"failed: missing {', '.join(missing)}"
            own = [name for name in missing if name in PROVIDED]
            carried = [name for name in missing if name not in own]
            if own:
                print(
                    f"Missing {', '.join(own)}: the GPU machine is expected to bring these with torch (CUDA), transformers "
                    "and accelerate; if it does not, carry them too: --print-wheel-command all lists every wheel but torch.",
                    file=sys.stderr,
                )  # fmt: skip
            if carried:
                print(f"Missing {', '.join(carried)}. Fix: on a machine with network and this repository's environment,", file=sys.stderr)
                print("  python benchmarks/gpu_check.py --print-wheel-command | sh      # every wheel, pinned; or one by one:", file=sys.stderr)
                for name in carried:
                    print(f"  {PIP_DOWNLOAD} {name}==VERSION", file=sys.stderr)
                print("then carry .whl/ and install it as the docstring of benchmarks/gpu_check.py says.", file=sys.stderr)
        if problems:
            row.notes += problems
            print("Version conflicts (try --print-wheel-command all):\n  " + "\n  ".join(problems), file=sys.stderr)
            if not missing:
                row.status = "ok (with version warnings)"
        self.rows.append(row)

    def run_probe(self) -> bool:
        out = self.work / "probe.json"
        out.unlink(missing_ok=True)
        row = Row("probe", "setup")
        child = self.child("probe", _PROBE, [str(out)], limit=min(120.0, max(self.left(), 1.0)))
        row.wall_s = child.wall
        if child.returncode != 0 or not out.is_file():
            row.status, row.log_tail = failure(child, 120.0), child.tail
            self.rows.append(row)
            return False
        self.probe = json.loads(out.read_text())
        want = self.args.device
        if want == "auto":
            want = "cuda" if self.probe.get("cuda") else "cpu"
        if want.startswith("cuda") and not self.probe.get("cuda"):
            row.status = "failed: --device cuda, but torch sees no CUDA GPU"
            self.rows.append(row)
            return False
        self.device = want
        row.notes.append(self.machine())
        self.rows.append(row)
        return True

    def build(self) -> bool:
        row = Row("model", "setup")
        limit = min(self.args.build_timeout_s, max(self.left(), 1.0))
        kind = "tiny" if self.args.tiny else "sd15"
        print(f"[setup] the {'tiny' if self.args.tiny else 'SD 1.5-sized'} model, images and concept in {self.work} ...", file=sys.stderr)
        child = self.child("model", _BUILD, [kind, str(self.model), str(CONFIGS), str(self.images), str(self.concept)], limit=limit)
        row.wall_s = child.wall
        if child.returncode != 0 or not (self.model / "model_index.json").is_file():
            row.status, row.log_tail = failure(child, limit), child.tail
            self.rows.append(row)
            return False
        row.notes.append("conceptlib's tiny SD 1.x model" if self.args.tiny else "SD 1.5 architecture, seeded random weights, float32 files")
        self.rows.append(row)
        return True

    # -- jobs

    def jobs(self) -> list[Job]:
        """Every measured job, with its priority (lower runs first)."""
        out = []
        rank = {("fp16", 1): 0, ("bf16", 1): 2, ("fp16", 4): 3, ("bf16", 4): 4, ("fp32", 1): 5, ("fp32", 4): 6}
        if "train" in self.args.only:
            for precision in self.args.precisions:
                for batch in self.args.batches:
                    for implementation in ("conceptlib", "reference"):
                        priority = rank.get((precision, batch), 7) * 2 + (implementation == "reference")
                        out.append(Job(f"train-{implementation}-{precision}-b{batch}", "train", implementation, precision, batch, priority))
        if "render" in self.args.only:
            for implementation in ("conceptlib", "diffusers"):
                precision = self.render_precision()
                out.append(Job(f"render-{implementation}", "render", implementation, precision, self.args.render_images, 2 + (implementation == "diffusers")))
        return out

    def render_precision(self) -> str:
        if self.args.render_precision:
            return str(self.args.render_precision)
        return "fp16" if self.device.startswith("cuda") else "fp32"

    def skip_reason(self, job: Job) -> str | None:
        if job.implementation == "reference" and not self.args.reference:
            return "skipped: no --reference"
        if job.kind == "train" and self.device == "cpu" and job.precision == "fp16":
            return "skipped: CPU"
        if job.kind == "train" and job.precision == "bf16" and self.device.startswith("cuda") and self.probe.get("bf16") is False:
            return "skipped: this GPU has no bf16"
        return None

    def run_job(self, job: Job) -> Row:
        row = Row(job.job, job.kind, job.implementation, job.precision, job.batch)
        reason = self.skip_reason(job)
        if reason:
            row.status = reason
            return row
        if job.implementation == "reference" and not Path(self.args.reference).is_file():
            row.status = f"failed: --reference {self.args.reference}: no such file"
            return row
        need, left = self.estimate(job.kind), self.left()
        if left < need:
            row.status = "skipped: out of time"
            row.notes.append(f"needs about {need:.0f} s, {max(left, 0):.0f} s left")
            return row
        limit = min(self.args.job_timeout_s, left)
        print(f"[{job.job}] ({left:.0f} s of budget left) ...", file=sys.stderr)
        if job.kind == "train":
            self.train(job, row, limit)
        else:
            self.render(job, row, limit)
        if row.status.startswith("failed: timed out") and limit < self.args.job_timeout_s:
            row.status = f"failed: out of time (the budget ran out after {limit:.0f} s)"
        if row.wall_s is not None and row.ok:
            self.longest[job.kind] = max(self.longest.get(job.kind, 0.0), row.wall_s)
        return row

    def _fresh(self, out: Path, job: Job) -> Path:
        """Clear a job's output folder and result file (a rerun never reads an earlier one's)."""
        shutil.rmtree(out, ignore_errors=True)
        result = self.work / f"{job.job}.json"
        result.unlink(missing_ok=True)
        return result

    def train(self, job: Job, row: Row, limit: float) -> None:
        args = self.args
        out = self.work / "runs" / job.job
        result = self._fresh(out, job)
        mixed = MIXED[job.precision]
        if job.implementation == "conceptlib":
            payload: dict[str, Any] = {
                "model": str(self.model), "images": str(self.images), "token": "<bench-toy>", "init_word": "dog",
                "steps": args.steps, "lr": 5e-3, "resolution": args.resolution, "flip": True, "save_every": 0,
                "add_to_library": False, "out": str(out), "device": self.device, "mixed_precision": mixed,
                "home": str(self.home), "batch_size": job.batch,
            }  # fmt: skip
            mode = "conceptlib"
        else:
            payload = {"script": str(Path(args.reference).resolve()), "args": [
                "--pretrained_model_name_or_path", str(self.model), "--train_data_dir", str(self.images),
                "--placeholder_token", "<bench-toy>", "--initializer_token", "dog",
                "--resolution", str(args.resolution), "--train_batch_size", str(job.batch), "--max_train_steps", str(args.steps),
                "--learning_rate", "5e-3", "--lr_warmup_steps", "0", "--seed", "0",
                "--save_steps", "1000000", "--checkpointing_steps", "1000000",
                "--output_dir", str(out), "--mixed_precision", mixed,
            ]}  # fmt: skip
            mode = "reference"
        started = time.perf_counter()
        child = self.child(
            job.job, _TRAIN_PREFIX + bench_train._CHILD, [str(result), mode, json.dumps(payload)],
            limit=limit, cpu_only=self.device == "cpu",
        )  # fmt: skip
        row.wall_s = child.wall
        if child.returncode != 0 or not result.is_file():
            row.status, row.log_tail = failure(child, limit), child.tail
            return
        data = json.loads(result.read_text())
        stamps = data.get("stamps", [])
        # The same rule as bench_train.run_child: median interval after two warm-up steps.
        intervals = sorted(b - a for a, b in zip(stamps[2:], stamps[3:], strict=False))
        row.steps_timed = len(stamps)
        if not intervals:
            row.status = f"failed: {len(stamps)} optimizer steps timed, at least 4 needed"
            return
        row.seconds_per_step = intervals[len(intervals) // 2]
        row.startup_s = stamps[0] - started
        if "cuda_peak_process" in data:
            row.peak_memory, row.memory_kind = int(data["cuda_peak_process"]), "CUDA"
            if data.get("cuda_peak") and data["cuda_peak"] != data["cuda_peak_process"]:
                row.notes.append(f"from the first step on: {data['cuda_peak'] / 2**20:,.0f} MiB")
        else:
            row.peak_memory, row.memory_kind = int(data.get("peak_rss", 0)) or None, "RSS"
        if len(stamps) < args.steps:
            row.notes.append(f"{len(stamps)} of {args.steps} optimizer steps ran (fp16 loss scaling skips overflowing ones)")
        row.notes.append(f"start-up {row.startup_s:.1f} s")
        if data.get("shims"):
            row.notes.append("shims: " + "; ".join(data["shims"]))
        row.details = {k: data[k] for k in ("stamps", "eval_loss", "internal_seconds_per_step", "cuda_peak", "cuda_reserved_process") if k in data}

    def render(self, job: Job, row: Row, limit: float) -> None:
        args = self.args
        out = self.work / "renders" / job.implementation
        result = self._fresh(out, job)
        prompts = [
            f"a photo of {TOKEN} on a table, number {i}" if i % 2 == 0 else f"a painting of a lighthouse at dusk, number {i}"
            for i in range(args.render_images)
        ]
        payload = {
            "mode": job.implementation, "model": str(self.model), "prompts": prompts, "seed": RENDER_SEED,
            "size": args.render_size, "steps": args.render_steps, "device": self.device,
            "dtype": RENDER_DTYPES[job.precision], "out": str(out), "home": str(self.home),
            "concept": str(self.concept), "concept_name": CONCEPT, "token": TOKEN, "repeat": args.render_repeat,
        }  # fmt: skip
        child = self.child(job.job, _RENDER, [str(result), json.dumps(payload)], limit=limit, cpu_only=self.device == "cpu")
        row.wall_s = child.wall
        if child.returncode != 0 or not result.is_file():
            row.status, row.log_tail = failure(child, limit), child.tail
            return
        data = json.loads(result.read_text())
        row.images_per_s = data["images"] / data["seconds"]
        if "cuda_peak" in data:
            row.peak_memory, row.memory_kind = int(data["cuda_peak"]), "CUDA"
        else:
            row.peak_memory, row.memory_kind = int(data.get("peak_rss", 0)) or None, "RSS"
        each = ", ".join(f"{s:.2f}" for s in data["each"])
        row.notes.append(f"{args.render_size} px, {args.render_steps} steps, {data['seconds']:.2f} s for {data['images']} images (calls: {each} s); load {data['load_s']:.1f} s")
        row.details = data

    def compare_renders(self) -> None:
        """Pixel comparison of the two renders, on conceptlib's row."""
        rows = {r.implementation: r for r in self.rows if r.kind == "render"}
        ours, theirs = rows.get("conceptlib"), rows.get("diffusers")
        if not (ours and theirs and ours.ok and theirs.ok):
            return
        try:
            ours.match = compare_images(self.work / "renders" / "conceptlib" / "images", self.work / "renders" / "diffusers" / "images", exact=self.device == "cpu" and ours.precision == "fp32")
        except Exception as exc:  # a comparison that cannot run is a finding, not a crash
            ours.match = {"verdict": f"not compared: {type(exc).__name__}: {exc}"}
        theirs.match = {"verdict": "(see conceptlib's row)"}

    # -- report

    def machine(self) -> str:
        p = self.probe
        cpu = _cpu_name()
        gpu = (
            f"{p.get('gpus', 1)}x {p['gpu']} ({p['gpu_memory'] / 2**30:.0f} GiB, compute {'.'.join(map(str, p.get('capability', [])))}), CUDA {p.get('torch_cuda')}"
            if p.get("cuda") else "no CUDA GPU"
        )  # fmt: skip
        return (
            f"{gpu}; {cpu}, {os.cpu_count()} CPUs; {platform.system()} {platform.release()}; Python {p.get('python')}, "
            f"torch {p.get('torch')}, diffusers {p.get('diffusers')}, transformers {p.get('transformers')}, "
            f"accelerate {p.get('accelerate')}; device {self.device}"
        )

    def settings(self) -> str:
        a = self.args
        return (
            f"train: {a.resolution} px, {a.steps} steps per job (s/step = median step after 2 warm-up steps), flips on, lr 5e-3; "
            f"render: {a.render_images} images in one batch, {a.render_size} px, {a.render_steps} steps, {self.render_precision()}; "
            f"budget {a.budget_s:.0f} s, {a.job_timeout_s:.0f} s per job"
        )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare_images(ours: Path, theirs: Path, *, exact: bool) -> dict[str, Any]:
    """Compare two folders of PNGs by file name.

    Args:
        ours: conceptlib's images.
        theirs: the reference's images.
        exact: CPU float32: identical or not a match; otherwise a match is a mean absolute
            difference of at most :data:`GPU_MATCH_MEAN` (0..255 scale).

    Returns:
        ``verdict`` (``identical``, ``match``, ``NO``), ``mean_abs``, ``max_abs``, the count of
        images compared and of blank ones (standard deviation under 1 level).
    """
    import numpy as np
    from PIL import Image

    names = sorted(p.name for p in ours.glob("*.png"))
    other = sorted(p.name for p in theirs.glob("*.png"))
    if not names or names != other:
        return {"verdict": "NO", "reason": f"different files: {names[:3]}... vs {other[:3]}..."}
    total, peak, blank = 0.0, 0, 0
    for name in names:
        a = np.asarray(Image.open(ours / name).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(theirs / name).convert("RGB"), dtype=np.int16)
        if a.shape != b.shape:
            return {"verdict": "NO", "reason": f"{name}: {a.shape} vs {b.shape}"}
        diff = np.abs(a - b)
        total += float(diff.mean())
        peak = max(peak, int(diff.max()))
        blank += int(a.std() < 1.0) + int(b.std() < 1.0)
    mean = total / len(names)
    if peak == 0:
        verdict = "identical"
    elif exact or mean > GPU_MATCH_MEAN:
        verdict = "NO"
    else:
        verdict = "match"
    return {"verdict": verdict, "mean_abs": mean, "max_abs": peak, "images": len(names), "blank": blank, "tolerance_mean_abs": 0.0 if exact else GPU_MATCH_MEAN}


def _mib(n: int | None, kind: str) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:,.0f}" + (" (RSS)" if kind == "RSS" else "")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _match(match: dict[str, Any] | None) -> str:
    if not match:
        return ""
    verdict = str(match.get("verdict", ""))
    if "mean_abs" in match:
        verdict += f" (mean {match['mean_abs']:.3f}, max {match['max_abs']})"
        if match.get("blank"):
            verdict += f", {match['blank']} blank"
    return verdict


def speedups(rows: Sequence[Row]) -> None:
    """conceptlib's speed over the other implementation's, on conceptlib's rows."""
    by_key = {(r.kind, r.implementation, r.precision, r.batch): r for r in rows}
    for row in rows:
        if row.implementation != "conceptlib" or not row.ok:
            continue
        other = by_key.get((row.kind, "reference" if row.kind == "train" else "diffusers", row.precision, row.batch))
        if other is None or not other.ok:
            continue
        if row.kind == "train" and row.seconds_per_step and other.seconds_per_step:
            row.speedup = other.seconds_per_step / row.seconds_per_step
        elif row.kind == "render" and row.images_per_s and other.images_per_s:
            row.speedup = row.images_per_s / other.images_per_s


def table(rows: Sequence[Row]) -> str:
    """The Markdown table: setup rows, then train rows by precision and batch, then render."""
    order = {"setup": 0, "train": 1, "render": 2}
    ranked = sorted(
        rows,
        key=lambda r: (order[r.kind], PRECISIONS.index(r.precision) if r.precision in PRECISIONS else 0, r.batch or 0, r.implementation),
    )
    lines = [
        "| job | implementation | precision | batch | status | s/step | 3,000 steps | images/s | speed-up | peak memory (MiB) | images match | notes |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in ranked:
        cells = [
            r.kind if r.kind != "setup" else f"setup: {r.job}",
            r.implementation, r.precision, str(r.batch) if r.batch else "", r.status,
            f"{r.seconds_per_step:.4f}" if r.seconds_per_step else "",
            _duration(r.seconds_per_step * EXTRAPOLATE_STEPS) if r.seconds_per_step else "",
            f"{r.images_per_s:.2f}" if r.images_per_s else "",
            f"{r.speedup:.2f}x" if r.speedup else "",
            _mib(r.peak_memory, r.memory_kind) if r.kind != "setup" else "",
            _match(r.match),
            "; ".join(r.notes + ([f"wall {r.wall_s:.1f} s"] if r.wall_s is not None and r.kind == "setup" else [])),
        ]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _csv(kind: type, choices: Sequence[Any] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(map(str, choices or ()))}; got {text!r}")
        return values

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The module docstring (the top of benchmarks/gpu_check.py) has the one-command GPU invocation.",
    )  # fmt: skip
    parser.add_argument("--reference", help="diffusers' examples/textual_inversion/textual_inversion.py (reference rows skip without it)")
    parser.add_argument("--json", type=Path, help="also write every row and number here")
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees it, else CPU), cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="dry run: conceptlib's tiny SD 1.x model, 64 px, fewer steps")
    parser.add_argument("--budget-s", type=float, default=500.0, help="the whole run's time; jobs that would not fit are skipped (default 500)")
    parser.add_argument("--job-timeout-s", type=float, default=None, help="one child's limit (default 150; --tiny 90)")
    parser.add_argument("--build-timeout-s", type=float, default=240.0, help="the model build's limit (default 240)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per train job (default 12; --tiny 6)")
    parser.add_argument("--resolution", type=int, default=None, help="training size in pixels (default 512; --tiny 64)")
    parser.add_argument("--precisions", type=_csv(str, PRECISIONS), default=list(PRECISIONS), help="train precisions (default fp32,fp16,bf16)")
    parser.add_argument("--batches", type=_csv(int), default=[1, 4], help="train batch sizes (default 1,4)")
    parser.add_argument("--only", type=_csv(str, ("train", "render")), default=["train", "render"], help="train, render or both")
    parser.add_argument("--render-steps", type=int, default=None, help="sampling steps (default 25; --tiny 4)")
    parser.add_argument("--render-size", type=int, default=None, help="render size in pixels (default 512; --tiny 64)")
    parser.add_argument("--render-images", type=int, default=8, help="images in the one render batch (default 8)")
    parser.add_argument("--render-repeat", type=int, default=2, help="measured render calls; the fastest counts (default 2)")
    parser.add_argument("--render-precision", choices=PRECISIONS, default=None, help="default fp16 on a GPU, fp32 on a CPU")
    parser.add_argument("--inject-failure", type=_csv(str), default=[], help="job ids whose child fails on purpose (a test of the failure rows)")
    parser.add_argument("--keep", help="work in this folder and keep it (the model is reused by a later run)")
    parser.add_argument(
        "--print-wheel-command", nargs="?", const="minimal", choices=("minimal", "all"),
        help="print the pip download lines for .whl/ and exit (minimal: what torch/transformers/accelerate do not bring)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    tiny = args.tiny
    for name, big, small in (("job_timeout_s", 150.0, 90.0), ("steps", 12, 6), ("resolution", 512, 64), ("render_steps", 25, 4), ("render_size", 512, 64)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else big)
    if args.steps < 4:
        parser.error("--steps must be at least 4 (two warm-up steps, then intervals)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_wheel_command:
        print_wheel_command(args.print_wheel_command)
        return 0
    check = Check(args)
    try:
        known = {j.job for j in check.jobs()} | {"probe", "model"}
        unknown = [j for j in args.inject_failure if j not in known]
        if unknown:
            print(f"gpu_check.py: --inject-failure: unknown job(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        check.check_packages()
        ready = check.run_probe() and check.build()
        jobs = check.jobs()  # after the probe: the render's precision follows the device
        results: dict[str, Row] = {}
        for job in sorted(jobs, key=lambda j: j.priority):
            if not ready:
                results[job.job] = Row(job.job, job.kind, job.implementation, job.precision, job.batch, status="skipped: setup failed")
                continue
            try:
                results[job.job] = check.run_job(job)
            except Exception as exc:  # this script's own bug must still leave a row and a table
                results[job.job] = Row(job.job, job.kind, job.implementation, job.precision, job.batch, status=f"failed: gpu_check.py: {type(exc).__name__}: {exc}")
        check.rows += [results[j.job] for j in jobs]
        check.compare_renders()
        speedups(check.rows)
    finally:
        if not args.keep:
            shutil.rmtree(check.work, ignore_errors=True)
    elapsed = time.perf_counter() - check.started
    print(f"\nThe GPU path (issue 22), {time.strftime('%Y-%m-%d')}: {check.machine() if check.probe else 'no device probe'}")
    print(f"\n{check.settings()}; this run took {elapsed:.0f} s.\n")
    print(table(check.rows))
    if args.json:
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": check.machine() if check.probe else None,
            "probe": check.probe, "device": check.device, "settings": check.settings(), "elapsed_s": elapsed,
            "argv": sys.argv if argv is None else list(argv), "gpu_match_mean_abs": GPU_MATCH_MEAN,
            "rows": [r.to_dict() for r in check.rows],
        }  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
