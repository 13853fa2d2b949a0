"""Render prompts that mix library concepts, reproducibly, with AUTOMATIC1111-compatible metadata.

>>> from conceptlib.render import RenderConfig, render
>>> result = render(RenderConfig(  # doctest: +SKIP
...     model="sd15",
...     prompts=["<cat-toy> on a <fancy-chair> in the style of <birb-style>"],
...     negative="embedding:easynegative",
...     images_per_prompt=4, seed=42, steps=25, batch_size=4, out="renders", grid=True,
... ))
>>> [image.path.name for image in result.images]  # doctest: +SKIP
['00000-42.png', '00001-43.png', '00002-44.png', '00003-45.png']

What :func:`render` does, top to bottom (the function body follows this list):

1. **Prompts.** The ``prompts`` of the config, then the lines of ``prompts_file`` (plain text,
   or JSON objects with per-line ``prompt``, ``negative``, ``seed``, ``n``, ``steps``,
   ``guidance``, ``size``). Every image becomes one job. Its seed is the base seed plus its
   global index (or, for a line that sets ``seed``, that seed plus the image's index within
   the line), so any image can be reproduced alone and no result depends on the batch size.
2. **Concepts.** Found in the prompts and negative prompts as written: ``<cat-toy>`` (a
   library token), ``embedding:name`` (ComfyUI), and bare tokens such as ``easynegative``
   (AUTOMATIC1111 style). An unknown ``<token>`` is an error that names the closest concepts.
   Hypernetworks: ``<hypernet:name>`` and ``<hypernet:name:multiplier>`` in a prompt (and
   ``hypernets``, ``--hypernet NAME[:MULT]``, for every prompt) name library hypernetworks;
   the phrase is removed from the text, as AUTOMATIC1111 removes it.
3. **Validation.** Every concept is checked against the model with
   :func:`conceptlib.validate.validate_many` (which also catches tokens clashing with each
   other); the first error is raised with validation's own message ("embedding width 1024
   fits SD 2.x, this model is SD 1.x (768): ...").
4. **Loading, in one step.** :func:`load_concepts` adds every token the run needs (multi-vector
   concepts as ``tok tok_1 ... tok_{n-1}``, the diffusers convention) with *one* ``add_tokens``
   call per tokenizer, builds *one* larger embedding matrix per text encoder and writes all new
   rows at once. SDXL concepts go to both encoders (``clip_l`` to ``text_encoder``, ``clip_g``
   to ``text_encoder_2``). diffusers' ``load_textual_inversion`` instead resizes once per call
   and adds tokens one at a time (``formats.md`` b.15/b.16); ``benchmarks/bench_render.py``
   compares the two.
5. **Batches.** Jobs with the same steps, guidance and size are grouped up to ``batch_size``
   and rendered with one pipeline call, with one CPU ``torch.Generator`` per image: the same
   starting noise (and ancestral-sampler noise) for an image whatever its batch and device.
   Pixels can still differ by a rounding step between batch sizes, because batched kernels
   (convolutions, GroupNorm) sum in another order and move latents by about 1e-5; diffusers
   and AUTOMATIC1111 behave the same.
6. **Unloading.** :func:`unload_concepts` puts back the very objects that were there before:
   the tokenizer's backend and the original embedding module, so vocabulary size, added tokens
   and the weight matrix are exactly as before, bit for bit.
   Each batch holds prompts with the same hypernetworks (jobs are grouped by them first), and
   runs inside :func:`conceptlib.hypernet_apply.applied`, which puts those networks in front
   of every attention's key and value projections and takes them away after: the UNet is
   untouched, and multiplier 0 is exactly the image without.
7. **Output.** One PNG per image with an AUTOMATIC1111 ``parameters`` text chunk (prompt,
   ``Negative prompt:``, Steps, Sampler, CFG scale, Seed, Size, Model hash, Model,
   ``TI hashes``, ``Hypernet``, ``Hypernet strength``, ``Hypernet hashes``), an optional labelled grid, and ``render.json``, the manifest of the run.

Under ``accelerate launch -m conceptlib render ...`` each process renders every
``WORLD_SIZE``-th job; file names depend only on the job, and the main process writes the
manifest and the grid once all processes are done, so the output is what one process writes.

Nothing here imports torch, diffusers or transformers at module scope.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import operator
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib._atomic import atomic_write_bytes
from conceptlib._parallel import barrier, join, process_device
from conceptlib._text import read_utf8
from conceptlib.errors import ConceptDoesNotFitError, ConceptNotFoundError, UsageError
from conceptlib.layout import EMBEDDING_SUFFIXES
from conceptlib.pipelines import load_pipeline
from conceptlib.validate import expansions

if TYPE_CHECKING:
    from PIL import Image

    from conceptlib.concept import ConceptSummary
    from conceptlib.embedding import Embedding
    from conceptlib.library import Library
    from conceptlib.models import ModelInfo
    from conceptlib.validate import Finding

__all__ = [
    "MANIFEST_NAME",
    "SCHEDULERS",
    "ConceptSet",
    "LoadedConcepts",
    "PromptSpec",
    "RenderConfig",
    "RenderResult",
    "RenderedImage",
    "UsedConcept",
    "check_range",
    "check_settings",
    "encoder_components",
    "infotext",
    "load_concepts",
    "load_pipeline",
    "parse_size",
    "read_prompts",
    "render",
    "resolve_concepts",
    "unload_concepts",
]

#: The manifest written beside the images.
MANIFEST_NAME = "render.json"
GRID_NAME = "grid.png"
MANIFEST_VERSION = 1

#: Scheduler name -> (diffusers class, extra config, the sampler name AUTOMATIC1111 writes).
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    # diffusers' PNDM runs PLMS steps after its Runge-Kutta warm-up: A1111 calls it PLMS.
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "dpm2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
}
_SAMPLER_BY_CLASS = {cls: a1111 for cls, extra, a1111 in SCHEDULERS.values() if not extra}

#: Seeds are 0 to 2**63-1: torch's generators take that much, and a run's images count up from
#: the base seed, which must stay inside it.
MAX_SEED = 2**63 - 1
#: The schedulers of SD models sample from 1,000 training timesteps.
MAX_STEPS = 1000
#: Images from one prompt line (a typo like 1e6 would fill the disk, not render a batch).
MAX_IMAGES = 10_000
#: Classifier-free guidance (CFG scale): ComfyUI's range (AUTOMATIC1111's slider stops at 30).
#: Far past it the image is noise, and 1e308 overflows torch's float32 arithmetic.
MAX_GUIDANCE = 100.0
#: Pixels per side, width and height alike (ComfyUI's MAX_RESOLUTION): a typo like 51200 would
#: ask for gigabytes of latents.
MAX_SIZE = 16384
#: Images per pipeline call.
MAX_BATCH = 1024
#: Per-line keys a JSONL prompts file may set.
PROMPT_KEYS = ("prompt", "negative", "seed", "n", "steps", "guidance", "size")


def _shown(value: float | int) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    # str() refuses integers past 4,300 digits (and a 30-digit one says enough).
    return str(value) if abs(value) < 10**30 else f"a {value.bit_length()}-bit number"


def check_range(
    option: str,
    value: float | int | None,
    low: float | int,
    high: float | int,
    *,
    above: bool = False,
    below: bool = False,
    hint: str | None = None,
) -> None:
    """Refuse a number outside ``[low, high]``, NaN and ±Infinity included; None passes.

    The one check behind every numeric option of ``render``, ``preview`` and ``train``, so
    they all say the same: ``--lr: must be a number greater than 0 and at most 1, got 1e+38``.

    Args:
        option: the option's name as typed (``--steps``).
        value: the value given.
        low: the smallest value allowed (with ``above``, the value must be greater).
        high: the largest value allowed (with ``below``, the value must be smaller).
        above: exclude ``low`` itself.
        below: exclude ``high`` itself.
        hint: the next step, if a useful one exists.

    Raises:
        UsageError: the value is out of range or not a finite number.

    Example:
        >>> check_range("--steps", 0, 1, MAX_STEPS)
        Traceback (most recent call last):
        conceptlib.errors.UsageError: --steps: must be a whole number from 1 to 1000, got 0
    """
    if value is None:
        return
    finite = not isinstance(value, float) or math.isfinite(value)
    if finite and (low < value if above else low <= value) and (value < high if below else value <= high):
        return
    kind = "a whole number" if isinstance(low, int) and isinstance(high, int) else "a number"
    if above:
        span = f"greater than {_shown(low)} and " + (f"below {_shown(high)}" if below else f"at most {_shown(high)}")
    else:
        span = f"from {_shown(low)} " + (f"up to (not including) {_shown(high)}" if below else f"to {_shown(high)}")
    raise UsageError(f"{option}: must be {kind} {span}, got {_shown(value)}", hint=hint)


def check_settings(
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    images: int | None = None,
    batch_size: int | None = None,
) -> None:
    """Check the numeric settings ``render`` and ``preview`` share, before any work.

    Ranges: ``--seed`` 0 to :data:`MAX_SEED`, ``--steps`` 1 to :data:`MAX_STEPS`,
    ``--guidance`` 0 to :data:`MAX_GUIDANCE`, ``-n`` 1 to :data:`MAX_IMAGES`, ``--batch-size``
    1 to :data:`MAX_BATCH`; sizes are checked by :func:`parse_size`. None skips a setting.

    Raises:
        UsageError: the first setting out of range, named as its option.
    """
    check_range("--seed", seed, 0, MAX_SEED)
    check_range("--steps", steps, 1, MAX_STEPS)
    check_range("--guidance", guidance, 0.0, MAX_GUIDANCE, hint="7.5 is usual; 1 turns guidance off")
    check_range("-n", images, 1, MAX_IMAGES)
    check_range("--batch-size", batch_size, 1, MAX_BATCH)

#: ``(done, total, message)``: images finished so far, images in the run, what is happening.
ProgressCallback = Callable[[int, int, str], None]


# --- configuration -----------------------------------------------------------------------------


@dataclass
class PromptSpec:
    """One prompt line and what it overrides (None: use the run's setting).

    Attributes:
        prompt: the prompt as written, concepts included (``a <cat-toy> on a chair``).
        negative: the negative prompt for this line.
        seed: the seed of this line's first image (its others follow: seed+1, seed+2 ...).
        n: images for this line.
        steps: sampling steps.
        guidance: classifier-free guidance scale.
        size: ``(width, height)`` in pixels.
    """

    prompt: str
    negative: str | None = None
    seed: int | None = None
    n: int | None = None
    steps: int | None = None
    guidance: float | None = None
    size: tuple[int, int] | None = None


@dataclass
class RenderConfig:
    """Everything a render run needs; the CLI's options map one to one onto these fields.

    Attributes:
        model: a registered model name, a diffusers folder or a single-file checkpoint
            (anything :func:`conceptlib.models.resolve_model` accepts that has weights), or
            a description already resolved.
        prompts: prompts (or :class:`PromptSpec` lines) to render, in order.
        prompts_file: a text file of prompts, one a line, or JSON lines with per-line
            overrides (see :func:`read_prompts`); rendered after ``prompts``.
        negative: the negative prompt of every line that does not set its own.
        images_per_prompt: images per prompt line (``-n``).
        seed: the base seed; image ``i`` of the run gets ``seed + i``.
        steps: sampling steps.
        guidance: classifier-free guidance scale (A1111's "CFG scale").
        scheduler: a key of :data:`SCHEDULERS`, or None for the model's own scheduler.
        size: ``(width, height)``; None uses the model's native size.
        batch_size: images per pipeline call. It changes speed and memory, never results.
        out: the output folder (created).
        grid: also write a labelled grid of all images (``grid.png``).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        home: the library folder (default: ``CONCEPTLIB_HOME``).
        model_config: for a single-file checkpoint, a diffusers folder or Hub repository
            with its configs and tokenizer; None takes the family's reference repository
            (see :mod:`conceptlib.single_file`).
        hypernets: hypernetworks applied to every prompt, after the prompt's own: library
            words or files as ``NAME`` or ``NAME:MULT`` (``--hypernet``), or ``(network,
            multiplier)`` already read and validated against the model (its ``findings`` set;
            previews read and validate them once for many runs).
    """

    model: str | os.PathLike[str] | ModelInfo
    prompts: Sequence[str | PromptSpec] = ()
    prompts_file: str | os.PathLike[str] | None = None
    negative: str = ""
    images_per_prompt: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    batch_size: int = 1
    out: str | os.PathLike[str] = "renders"
    grid: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    home: str | os.PathLike[str] | None = None
    model_config: str | os.PathLike[str] | None = None
    hypernets: Sequence[str | tuple[UsedHypernetwork, float]] = ()


@dataclass
class UsedHypernetwork:
    """A library hypernetwork a run applies.

    Attributes:
        name: the item's name in the library.
        word: what prompts call it (``<hypernet:WORD:MULT>``).
        sha256: sha256 of its original file (AUTOMATIC1111's hash; 10 hex go in the PNG).
        network: the network (:class:`conceptlib.hypernet.Hypernetwork`).
        findings: validation findings against the model (errors stop the run).
    """

    name: str
    word: str
    sha256: str
    network: Any = field(repr=False)
    findings: list[Finding] = field(default_factory=list, repr=False)

    @property
    def short_hash(self) -> str:
        """The 10-hex hash AUTOMATIC1111 shows for a hypernetwork."""
        return self.sha256[:10]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the manifest)."""
        return {
            "name": self.name,
            "word": self.word,
            "sha256": self.sha256,
            "widths": list(self.network.widths),
            "layout": self.network.layout,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class UsedConcept:
    """A library concept a run uses.

    Attributes:
        name: the concept's name in the library.
        token: the token loaded into the tokenizer (the library's token, e.g. ``<cat-toy>``).
        type: ``object``, ``style`` or ``negative``.
        family: the concept's base-model family.
        sha256: sha256 of the concept's original file (what AUTOMATIC1111 and Civitai hash),
            else of its canonical file.
        content_hash: hash of the vectors alone.
        embedding: the vectors.
        findings: validation findings against the model (warnings and infos; errors stop the run).
    """

    name: str
    token: str
    type: str
    family: str | None
    sha256: str
    content_hash: str
    embedding: Embedding = field(repr=False)
    findings: list[Finding] = field(default_factory=list, repr=False)

    @property
    def tokens(self) -> list[str]:
        """The tokenizer entries, one per vector: ``tok``, ``tok_1`` ... ``tok_{n-1}``."""
        return expansions(self.token, self.embedding.num_vectors)

    @property
    def short_hash(self) -> str:
        """The 12-hex hash AUTOMATIC1111 writes in ``TI hashes``."""
        return self.sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the manifest)."""
        return {
            "name": self.name,
            "token": self.token,
            "type": self.type,
            "family": self.family,
            "vectors": self.embedding.num_vectors,
            "encoders": self.embedding.widths,
            "sha256": self.sha256,
            "content_hash": self.content_hash,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class RenderedImage:
    """One image written by a run.

    Attributes:
        index: the image's global index in the run (its file name starts with it).
        path: the PNG written.
        prompt: the prompt as written.
        negative: the negative prompt as written.
        seed: the seed that reproduces it alone.
        steps, guidance, width, height, sampler: the settings it was rendered with.
        concepts: names of the concepts it uses.
        line: index of its prompt line.
        parameters: the AUTOMATIC1111 ``parameters`` text stored in the PNG.
        hypernetworks: ``(name, multiplier)`` of each hypernetwork applied, in order.
    """

    index: int
    path: Path
    prompt: str
    negative: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    sampler: str
    concepts: list[str]
    line: int
    parameters: str
    hypernetworks: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths relative to the output folder)."""
        return {
            "index": self.index,
            "file": self.path.name,
            "prompt": self.prompt,
            "negative": self.negative,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "size": [self.width, self.height],
            "sampler": self.sampler,
            "concepts": list(self.concepts),
            "line": self.line,
            "parameters": self.parameters,
            "hypernetworks": [{"name": n, "multiplier": m} for n, m in self.hypernetworks],
        }


@dataclass
class RenderResult:
    """What a run wrote.

    Attributes:
        out: the output folder.
        images: the images, by global index.
        concepts: the concepts used.
        manifest: ``render.json`` (None on non-main processes of a distributed run).
        grid: ``grid.png``, when asked for.
        model: the model's display name.
        seconds: wall time of the run.
        timings: seconds per phase (``pipeline``, ``load``, ``render``, ``unload``, ``write``).
        main_process: False on the other processes of a distributed run: they hold only their
            own images, and the main process reports the run.
        warnings: prompts the text encoder does not read as written (too long for its
            context, AUTOMATIC1111 attention weights), one sentence each.
    """

    out: Path
    images: list[RenderedImage]
    concepts: list[UsedConcept]
    manifest: Path | None
    grid: Path | None
    model: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    main_process: bool = True
    warnings: list[str] = field(default_factory=list)
    hypernetworks: list[UsedHypernetwork] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``render --json`` prints)."""
        return {
            "out": str(self.out),
            "model": self.model,
            "manifest": str(self.manifest) if self.manifest else None,
            "grid": str(self.grid) if self.grid else None,
            "images": [str(i.path) for i in self.images],
            "concepts": [c.name for c in self.concepts],
            "hypernetworks": [h.name for h in self.hypernetworks],
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }


# --- prompts -----------------------------------------------------------------------------------


def parse_size(value: str | Sequence[int] | int) -> tuple[int, int]:
    """Parse ``512``, ``768x512`` (width x height) or ``[768, 512]``.

    Args:
        value: the size as typed or as found in a JSON line.

    Returns:
        ``(width, height)``, each a positive multiple of 8 (the latent grid of every SD model).

    Raises:
        UsageError: anything else.

    Example:
        >>> parse_size("768x512")
        (768, 512)
    """
    try:
        # Whole numbers only: a JSON 512.5, 1e400 (infinity) or true is not a size.
        if isinstance(value, (bool, float)):
            raise TypeError(value)
        if isinstance(value, int):
            width = height = value
        elif isinstance(value, str):
            parts = value.lower().replace("×", "x").split("x")
            if len(parts) not in (1, 2):
                raise ValueError(value)
            width, height = int(parts[0]), int(parts[-1])
        else:
            items = list(value)
            if len(items) != 2 or any(isinstance(v, bool) for v in items):
                raise ValueError(value)
            width, height = (operator.index(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"size {str(value)[:40]!r} is not WIDTHxHEIGHT", hint="e.g. --size 512x768") from None
    if not (8 <= width <= MAX_SIZE and 8 <= height <= MAX_SIZE) or width % 8 or height % 8:
        raise UsageError(f"size {_shown(width)[:20]}x{_shown(height)[:20]}: width and height must be multiples of 8 from 8 to {MAX_SIZE}")
    return width, height


def read_prompts(path: str | os.PathLike[str]) -> list[PromptSpec]:
    """Read a prompts file: one prompt a line, or one JSON object a line (JSONL), or both mixed.

    Blank lines and lines starting with ``#`` are skipped. A line starting with ``{`` is JSON
    with ``prompt`` (required) and optional ``negative``, ``seed``, ``n``, ``steps``,
    ``guidance``, ``size`` (``"768x512"`` or ``[768, 512]``).

    Args:
        path: the file.

    Returns:
        One :class:`PromptSpec` per prompt line.

    Raises:
        UsageError: a JSON line that does not parse, lacks ``prompt`` or has an unknown key
            (the message names the line).

    Example:
        >>> read_prompts("prompts.jsonl")[0]  # doctest: +SKIP
        PromptSpec(prompt='a <cat-toy>', negative=None, seed=7, n=2, steps=None, ...)
    """
    specs: list[PromptSpec] = []
    text = read_utf8(path, holds="one prompt, or one JSON object, a line", called="prompt file")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            specs.append(PromptSpec(line))
            continue
        where = f"{os.fspath(path)}, line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        unknown = sorted(set(data) - set(PROMPT_KEYS))
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}", hint=f"keys: {', '.join(PROMPT_KEYS)}")
        if not isinstance(data.get("prompt"), str):
            raise UsageError(f"{where}: needs a \"prompt\" string")
        negative = data.get("negative")
        if negative is not None and not isinstance(negative, str):
            raise UsageError(f"{where}: \"negative\" must be a string, got {json.dumps(negative)}")
        guidance = data.get("guidance")
        # json.loads reads NaN, Infinity and 1e400 (as infinity): a number, but not a CFG scale.
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE):
            raise UsageError(f"{where}: \"guidance\" must be a number from 0 to {MAX_GUIDANCE:g}, got {json.dumps(guidance)}")
        try:
            size = parse_size(data["size"]) if data.get("size") is not None else None
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
        specs.append(PromptSpec(
            prompt=data["prompt"],
            negative=negative,
            seed=_whole(data, "seed", 0, MAX_SEED, where),
            n=_whole(data, "n", 0, MAX_IMAGES, where),
            steps=_whole(data, "steps", 1, MAX_STEPS, where),
            guidance=float(guidance) if guidance is not None else None,
            size=size,
        ))  # fmt: skip
    return specs


def _whole(data: Mapping[str, Any], key: str, low: int, high: int, where: str) -> int | None:
    """``data[key]`` as a whole number from ``low`` to ``high``, None when absent."""
    value = data.get(key)
    if value is None:
        return None
    # JSON's true is not 1, and 2.9 is not a seed: only integers, as the options take.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{where}: \"{key}\" must be a whole number from {low} to {high}, got {json.dumps(value)}")
    return value


@dataclass
class _Job:
    """One image to render: everything that decides its pixels."""

    index: int
    line: int
    prompt: str
    negative: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    # The prompt with its <hypernet:...> phrases taken out (what the text encoder reads), and
    # the hypernetworks to apply: (library name, multiplier), the prompt's then the run-wide ones.
    text: str = ""
    hypernets: tuple[tuple[str, float], ...] = ()


# AUTOMATIC1111's and ComfyUI's `(text:1.2)`. Plain `(text)` is left alone: brackets are common
# in ordinary prompts, and their 1.1 emphasis is a small change.
_WEIGHTED = re.compile(r"\((?:[^()\\]|\\.)+:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*\)")
_SHOWN_CHARS = 40


def prompt_warnings(jobs: Sequence[_Job], concepts: ConceptSet, tokenizer: Any) -> list[str]:
    """What the text encoder will not read as written, one sentence per prompt and problem.

    diffusers truncates a prompt past the encoder's context (77 tokens, BOS and EOS included)
    and reads AUTOMATIC1111 attention weights as words; AUTOMATIC1111 does neither, so a
    prompt copied from it renders differently. Concepts count as their vectors (the tokenizer
    must hold them already).
    """
    usable = int(tokenizer.model_max_length) - 2
    warnings: list[str] = []
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        for kind, text in (("prompt", job.prompt), ("negative prompt", job.negative)):
            if not text or (kind, text) in seen:
                continue
            seen.add((kind, text))
            where = f"prompt line {job.line + 1}" if kind == "prompt" else f"the negative prompt of line {job.line + 1}"
            weighted = _WEIGHTED.search(text)
            if weighted:
                warnings.append(
                    f"{where} uses an AUTOMATIC1111 attention weight, '{weighted.group(0)}': conceptlib does not "
                    "weight prompts, so the text encoder reads the brackets and the number as words"
                )
            expanded = concepts.expand(job.text if kind == "prompt" else text)[0]
            ids = tokenizer(expanded, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > usable:
                dropped = " ".join(_left_out(tokenizer, expanded, ids, usable).split())
                if len(dropped) > _SHOWN_CHARS:
                    dropped = dropped[:_SHOWN_CHARS] + "..."
                warnings.append(
                    f"{where} is {len(ids)} tokens long: the text encoder reads the first {usable}, "
                    f"so '{dropped}' is left out (shorten it)"
                )
    return warnings


def _left_out(tokenizer: Any, text: str, ids: Sequence[int], start: int) -> str:
    """The text from token ``start`` on, as typed where the tokenizer gives character offsets."""
    try:
        # Not decoding: a Rust tokenizer holding concepts (a clone) decodes CLIP's `</w>` word
        # ends verbatim.
        offsets = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True).offset_mapping
        return text[offsets[start][0] :]
    except NotImplementedError:  # transformers 4's Python tokenizers have no offsets
        return str(tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(list(ids[start:]))))


# --- hypernetworks in prompts -----------------------------------------------------------------

# AUTOMATIC1111's extra-network phrase for hypernetworks: `<hypernet:name>` or
# `<hypernet:name:multiplier>` (its parser splits the inside on ':').
_HYPERNET = re.compile(r"<hypernet:([^<>:]*)(?::([^<>]*))?>", re.IGNORECASE)
#: The largest multiplier accepted (AUTOMATIC1111 takes any float; past this no image survives).
MAX_MULTIPLIER = 100.0


def _multiplier(text: str | None, where: str) -> float:
    if text is None or not text.strip():
        return 1.0  # AUTOMATIC1111's default multiplier
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"{where}: the hypernetwork multiplier {text.strip()!r} is not a number", hint="write <hypernet:NAME:0.8>") from None
    if not math.isfinite(value) or abs(value) > MAX_MULTIPLIER:
        raise UsageError(f"{where}: the hypernetwork multiplier must be a number from -{MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}, got {text.strip()}")
    return value


def hypernet_phrases(text: str, where: str = "the prompt") -> tuple[str, list[tuple[str, float]]]:
    """Take AUTOMATIC1111's ``<hypernet:NAME[:MULT]>`` phrases out of a prompt.

    Returns:
        The prompt without the phrases (as AUTOMATIC1111 leaves it: the rest untouched), and
        ``(NAME, multiplier)`` of each phrase in order (multiplier 1 when none is given).

    Raises:
        UsageError: a phrase without a name, or a multiplier that is not a number in range.

    Example:
        >>> hypernet_phrases("a cat <hypernet:anime:0.6>")
        ('a cat ', [('anime', 0.6)])
    """
    found: list[tuple[str, float]] = []
    for match in _HYPERNET.finditer(text):
        name = match.group(1).strip()
        if not name:
            raise UsageError(f"{where}: {match.group(0)!r} names no hypernetwork", hint="write <hypernet:NAME:1>")
        found.append((name, _multiplier(match.group(2), where)))
    return _HYPERNET.sub("", text), found


def parse_hypernet(value: str) -> tuple[str, float]:
    """``NAME`` or ``NAME:MULT`` (``--hypernet``) as ``(NAME, multiplier)``.

    Example:
        >>> parse_hypernet("anime:0.5")
        ('anime', 0.5)
    """
    name, sep, mult = value.strip().rpartition(":")
    if not sep:
        name, mult = value.strip(), ""
    if not name:
        raise UsageError(f"--hypernet {value!r} names no hypernetwork", hint="pass --hypernet NAME or NAME:MULT")
    return name, _multiplier(mult, f"--hypernet {value}")


def _is_hypernet_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.lower().endswith((".pt", ".safetensors"))


def hypernetwork_file(path: str | os.PathLike[str]) -> UsedHypernetwork:
    """A hypernetwork file given by path (``--hypernet ./anime.pt:0.8``), read with the bounded
    reader and named by its file's stem, as AUTOMATIC1111 names it.

    Raises:
        FileNotFoundError: no such file. EmbeddingFileError: it cannot be read as a hypernetwork.
    """
    from conceptlib import hypernet
    from conceptlib._inputs import read_named
    from conceptlib.errors import EmbeddingFileError
    from conceptlib.formats import MAX_FILE_SIZE

    where = Path(path).expanduser()
    data = read_named(where, limit=MAX_FILE_SIZE, what="hypernetwork file", error=EmbeddingFileError)
    return UsedHypernetwork(name=where.stem, word=where.stem, sha256=hashlib.sha256(data).hexdigest(), network=hypernet.read(where, data=data))


def resolve_hypernetworks(words: Sequence[str], model: ModelInfo, lib: Library) -> dict[str, UsedHypernetwork]:
    """The library hypernetworks prompts call by ``words`` (case-insensitive; their prompt
    word, as AUTOMATIC1111 calls a file by its base name, or their library name).

    Returns:
        Lowercased word -> the hypernetwork (several words may name one).

    Raises:
        ConceptNotFoundError: a word no hypernetwork of the library has (with the closest).
    """
    if not words:
        return {}
    summaries = lib.list(kind="hypernetwork")
    by_word: dict[str, list[ConceptSummary]] = {}
    for summary in summaries:
        by_word.setdefault(summary.token.lower(), []).append(summary)
    by_name = {s.name.lower(): s for s in summaries}
    found: dict[str, UsedHypernetwork] = {}
    loaded: dict[str, UsedHypernetwork] = {}
    for word in words:
        key = word.lower()
        if key in found:
            continue
        matches = by_word.get(key) or ([by_name[key]] if key in by_name else [])
        if not matches:
            close = difflib.get_close_matches(word, sorted({s.token for s in summaries} | {s.name for s in summaries}), n=3, cutoff=0.5)
            error = ConceptNotFoundError(f"<hypernet:{word}>", suggestions=close)
            if not close:
                error.hint = "run `conceptlib list --kind hypernetwork`, or add its file: conceptlib add NAME.pt"
            raise error
        chosen = next((s for s in matches if s.family == model.family), matches[0])
        if chosen.name not in loaded:
            concept = lib.show(chosen.name)
            loaded[chosen.name] = UsedHypernetwork(
                name=concept.name, word=concept.token, sha256=concept.file_sha256 or concept.embedding_sha256 or concept.content_hash,
                network=lib.hypernetwork(concept.name),
            )  # fmt: skip
        found[key] = loaded[chosen.name]
    return found


# --- concepts in prompts -----------------------------------------------------------------------

# `<cat-toy>`: no spaces or colons inside, so A1111's `<lora:name:0.8>` is not taken for a concept.
_ANGLE = r"<[^<>\s:]+>"
# ComfyUI's `embedding:name`, where name may carry a sub-folder and an extension; it ends at
# whitespace, a comma or a bracket (ComfyUI strips trailing commas; `:` starts a weight).
_COMFY = r"embedding:(?P<comfy>[^\s,()\[\]{}:]+)"


@dataclass
class ConceptSet:
    """The concepts a run uses and how to rewrite its prompts.

    Attributes:
        used: the concepts, in order of first appearance.
        pattern: the regex that finds concept mentions (tokens, ``embedding:name``, bare tokens).
        mentions: lowercased mention -> concept name, for every mention found.
    """

    used: list[UsedConcept]
    pattern: re.Pattern[str]
    mentions: dict[str, str]

    def by_name(self) -> dict[str, UsedConcept]:
        """Concept name -> concept."""
        return {c.name: c for c in self.used}

    def expand(self, text: str) -> tuple[str, list[str]]:
        """Rewrite a prompt for the loaded tokenizer.

        Each mention becomes the concept's tokens, ``tok tok_1 ... tok_{n-1}``, spelled exactly
        as loaded (so ``<Cat-Toy>`` and ``embedding:cat-toy`` both work).

        Args:
            text: a prompt as written.

        Returns:
            ``(expanded text, names of the concepts mentioned)``.
        """
        concepts = self.by_name()
        names: list[str] = []

        def replace(match: re.Match[str]) -> str:
            name = self.mentions.get(_mention_key(match))
            if name is None:  # a bare word that only looked like a token elsewhere
                return match.group(0)
            if name not in names:
                names.append(name)
            return " ".join(concepts[name].tokens)

        return self.pattern.sub(replace, text), names


def _mention_key(match: re.Match[str]) -> str:
    """The lookup key of a mention: ``embedding:<stem>`` for ComfyUI, else the token, lowercased."""
    comfy = match.groupdict().get("comfy")
    if comfy:
        stem = comfy.rstrip(".,").replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in EMBEDDING_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        return "embedding:" + stem.lower()
    return match.group(0).lower()


def _concept_pattern(bare_tokens: Sequence[str]) -> re.Pattern[str]:
    """The mention regex: ``<token>``, ``embedding:name``, and the library's bare tokens."""
    parts = [f"(?P<angle>{_ANGLE})", _COMFY]
    if bare_tokens:
        # Longest first, so `bad-hands-5` wins over `bad-hands`; word edges so `easynegative`
        # inside another word is left alone.
        words = "|".join(re.escape(t) for t in sorted(bare_tokens, key=len, reverse=True))
        parts.append(rf"(?<![\w<>-])(?:{words})(?![\w<>-])")
    return re.compile("|".join(parts), re.IGNORECASE)


def resolve_concepts(
    texts: Sequence[str],
    model: ModelInfo,
    *,
    library: Library | None = None,
    home: str | os.PathLike[str] | None = None,
) -> ConceptSet:
    """Find the concepts mentioned in prompts and read them from the library.

    A token shared by concepts of several families (``<cat-toy>`` for SD 1.x and SDXL)
    resolves to the one of the model's family.

    Args:
        texts: prompts and negative prompts as written.
        model: the model they will be rendered with.
        library: an open library (default: ``Library.open(home)``).
        home: the library folder (default: ``CONCEPTLIB_HOME``).

    Returns:
        The concepts, in order of first appearance, and the rewriting rules.

    Raises:
        ConceptNotFoundError: a ``<token>`` or ``embedding:name`` no concept has; the error
            lists the closest tokens and names.

    Example:
        >>> concepts = resolve_concepts(["a <cat-toy>"], resolve_model("sd1"))  # doctest: +SKIP
        >>> concepts.expand("a <cat-toy>")  # doctest: +SKIP
        ('a <cat-toy> <cat-toy>_1', ['cat-toy'])
    """
    from conceptlib.library import Library

    lib = library or Library.open(home)
    try:
        return _resolve(texts, model, lib)
    finally:
        if library is None:
            lib.close()


def _resolve(texts: Sequence[str], model: ModelInfo, lib: Library) -> ConceptSet:
    """The body of :func:`resolve_concepts`, with the library open."""
    summaries = lib.list(kind="embedding")
    by_token: dict[str, list[ConceptSummary]] = {}
    for summary in summaries:
        by_token.setdefault(summary.token.lower(), []).append(summary)
    by_name = {s.name.lower(): s for s in summaries}
    # Tokens without brackets are what A1111 users type (`easynegative`); find those as words.
    bare = [t for t in by_token if not re.fullmatch(_ANGLE, t) and t.strip()]
    pattern = _concept_pattern(bare)
    candidates = sorted({s.token for s in summaries} | {s.name for s in summaries})

    def pick(matches: list[ConceptSummary]) -> ConceptSummary:
        # Prefer the model's family; otherwise take one anyway and let validation explain.
        return next((s for s in matches if s.family == model.family), matches[0])

    mentions: dict[str, str] = {}
    order: list[str] = []
    for text in texts:
        for match in pattern.finditer(text):
            key = _mention_key(match)
            if key in mentions:
                continue
            if key.startswith("embedding:"):
                stem = key.split(":", 1)[1]
                found = by_name.get(stem)
                if found is None and stem in by_token:
                    found = pick(by_token[stem])
                if found is None:
                    # Names, slugs and tokens, as `conceptlib show` resolves them.
                    try:
                        found = by_name[lib.resolve(stem).lower()]
                    except (ConceptNotFoundError, KeyError):
                        close = difflib.get_close_matches(stem, candidates, n=3, cutoff=0.5)
                        raise ConceptNotFoundError(match.group(0), suggestions=close) from None
            else:
                if key not in by_token:
                    close = difflib.get_close_matches(match.group(0), candidates, n=3, cutoff=0.5)
                    raise ConceptNotFoundError(match.group(0), suggestions=close)
                found = pick(by_token[key])
            mentions[key] = found.name
            if found.name not in order:
                order.append(found.name)

    used: list[UsedConcept] = []
    for name in order:
        concept = lib.show(name)
        embedding = lib.embedding(name)
        used.append(UsedConcept(
            name=concept.name,
            token=concept.token,
            type=concept.type,
            family=concept.family,
            sha256=concept.file_sha256 or concept.embedding_sha256 or concept.content_hash,
            content_hash=concept.content_hash,
            embedding=embedding,
        ))  # fmt: skip
    return ConceptSet(used, pattern, mentions)


# --- loading concepts into the text encoders, in one step -------------------------------------


def encoder_components(model: ModelInfo) -> dict[str, tuple[str, str]]:
    """Encoder key -> (tokenizer attribute, text-encoder attribute) of the model's pipeline.

    Args:
        model: the model.

    Returns:
        ``{"clip_l": ("tokenizer", "text_encoder")}`` for SD 1.x, and for SDXL also
        ``"clip_g": ("tokenizer_2", "text_encoder_2")``.
    """
    components: dict[str, tuple[str, str]] = {}
    for n, enc in enumerate(model.encoders):
        suffix = "" if n == 0 else f"_{n + 1}"
        encoder = enc.component if enc.component and enc.component.startswith("text_encoder") else f"text_encoder{suffix}"
        tokenizer = enc.tokenizer.component if enc.tokenizer else encoder.replace("text_encoder", "tokenizer")
        components[enc.key] = (tokenizer, encoder)
    return components


@dataclass
class _EncoderSlot:
    """What loading changed on one tokenizer/encoder pair, to put it back exactly."""

    tokenizer: Any
    text_encoder: Any
    backend: Any = None  # fast tokenizers: the original Rust tokenizer object
    slow_added: tuple[dict[Any, Any], dict[Any, Any]] | None = None  # slow tokenizers: added-token tables
    embedding: Any = None  # the original input-embedding module
    ids: list[int] = field(default_factory=list)


@dataclass
class LoadedConcepts:
    """Concepts loaded into a pipeline; pass to :func:`unload_concepts`.

    Attributes:
        pipe: the pipeline.
        tokens: every token added (per tokenizer), in load order.
        slots: one per tokenizer/encoder pair changed.
    """

    pipe: Any
    tokens: list[str]
    slots: list[_EncoderSlot] = field(default_factory=list)

    def ids(self, component: str = "tokenizer") -> list[int]:
        """The ids the tokens got in a tokenizer (by pipeline attribute name)."""
        for slot in self.slots:
            if getattr(self.pipe, component, None) is slot.tokenizer:
                return list(slot.ids)
        return []


def _clone_backend(backend: Any) -> Any:
    """A copy of a Rust ``tokenizers.Tokenizer`` with its own added-token table.

    The BPE model, normalizer and (pre/post-)processors are shared, not copied: adding tokens
    never touches them, and sharing makes the copy take microseconds where a serialise/parse
    round trip of a 49,408-entry vocabulary takes about 0.17 s. Added tokens are replayed in id
    order, so every id stays what it was.
    """
    from tokenizers import Tokenizer

    clone = Tokenizer(backend.model)
    clone.normalizer = backend.normalizer
    clone.pre_tokenizer = backend.pre_tokenizer
    clone.post_processor = backend.post_processor
    clone.decoder = backend.decoder
    if backend.padding:
        clone.enable_padding(**backend.padding)
    if backend.truncation:
        clone.enable_truncation(**backend.truncation)
    clone.encode_special_tokens = backend.encode_special_tokens
    added = backend.get_added_tokens_decoder()
    for token_id in sorted(added):
        token = added[token_id]
        (clone.add_special_tokens if token.special else clone.add_tokens)([token])
    return clone


def load_concepts(
    pipe: Any,
    concepts: Sequence[UsedConcept],
    components: Mapping[str, tuple[str, str]],
) -> LoadedConcepts:
    """Put concepts into a pipeline's tokenizers and text encoders, all in one step.

    Per tokenizer/encoder pair: one ``add_tokens`` call with every token, one new embedding
    matrix (the old rows copied once), one indexed write of all new rows. The original
    tokenizer backend and embedding module are kept aside, untouched, for
    :func:`unload_concepts`. While loaded, diffusers' own multi-vector prompt rewriting
    (``maybe_convert_prompt``) is switched off on this pipeline: prompts arrive already expanded
    by :meth:`ConceptSet.expand`, and diffusers' plain string replacement would expand them a
    second time.

    Args:
        pipe: a diffusers pipeline (or any object with the tokenizer/encoder attributes).
        concepts: the concepts; each must have vectors for every encoder key in ``components``.
        components: encoder key -> (tokenizer attribute, text-encoder attribute), see
            :func:`encoder_components`.

    Returns:
        What was changed.

    Raises:
        ConceptDoesNotFitError: a concept lacks vectors for an encoder, or a token is already
            in a tokenizer (nothing stays loaded).

    Example:
        >>> loaded = load_concepts(pipe, concepts.used, encoder_components(model))  # doctest: +SKIP
        >>> try:
        ...     image = pipe(concepts.expand("a <cat-toy>")[0]).images[0]
        ... finally:
        ...     unload_concepts(loaded)
    """
    import numpy as np
    import torch
    from transformers import AddedToken

    tokens = [t for c in concepts for t in c.tokens]
    loaded = LoadedConcepts(pipe, tokens)
    if not tokens:
        return loaded
    if len(set(tokens)) != len(tokens):
        raise ConceptDoesNotFitError("+".join(c.name for c in concepts), "two concepts use the same token")
    try:
        for key, (tokenizer_attr, encoder_attr) in components.items():
            missing = [c.name for c in concepts if key not in c.embedding.vectors]
            if missing:
                raise ConceptDoesNotFitError(missing[0], f"it has no {key} vectors, which {encoder_attr} needs")
            tokenizer = getattr(pipe, tokenizer_attr)
            text_encoder = getattr(pipe, encoder_attr)
            slot = _EncoderSlot(tokenizer, text_encoder)
            # Registered before anything changes, so a failure half-way is still undone.
            loaded.slots.append(slot)

            # 1. The tokenizer: work on a private copy of its added-token table.
            from tokenizers import Tokenizer

            if isinstance(getattr(tokenizer, "_tokenizer", None), Tokenizer):
                slot.backend = tokenizer._tokenizer
                tokenizer._tokenizer = _clone_backend(slot.backend)
            else:  # a slow (pure Python) tokenizer, transformers < 5
                slot.slow_added = (dict(tokenizer._added_tokens_decoder), dict(tokenizer._added_tokens_encoder))
            # A token the tokenizer already knows would silently mean something else.
            if slot.backend is not None:
                vocab_has = slot.backend.token_to_id
            else:
                vocab_has = tokenizer.get_vocab().get
            # CLIP's BPE lowercases and keeps whole words as `word</w>`: a token `cat` would
            # take over the ordinary word, so that form counts as known too.
            known = [t for t in tokens if vocab_has(t) is not None or vocab_has(t.lower() + "</w>") is not None]
            if known:
                owner = next(c.name for c in concepts if known[0] in c.tokens)
                raise ConceptDoesNotFitError(
                    owner,
                    f"its token {known[0]!r} is already in the model's {tokenizer_attr} vocabulary",
                    hint="give the concept another token with `conceptlib rename NAME --token NEW`",
                )
            # normalized=False: match the token exactly as loaded; prompts are rewritten to
            # that spelling, so a capital letter in a token cannot make it miss.
            tokenizer.add_tokens([AddedToken(t, normalized=False) for t in tokens])
            slot.ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]

            # 2. The encoder: one new matrix, the old rows copied once, all new rows written at once.
            old = text_encoder.get_input_embeddings()
            slot.embedding = old
            weight = old.weight
            rows = np.concatenate([c.embedding.vectors[key].to_float32() for c in concepts])
            size = max(weight.shape[0], max(slot.ids) + 1)
            new = torch.empty((size, weight.shape[1]), dtype=weight.dtype, device=weight.device)
            new[: weight.shape[0]] = weight.detach()
            index = torch.tensor(slot.ids, device=weight.device)
            new[index] = torch.from_numpy(rows).to(device=weight.device, dtype=weight.dtype)
            # _weight: no random initialisation of a matrix about to be overwritten (0.3 s at SD size).
            text_encoder.set_input_embeddings(torch.nn.Embedding(
                size, weight.shape[1], padding_idx=old.padding_idx, _weight=new, _freeze=True,
            ))  # fmt: skip
    except BaseException:
        unload_concepts(loaded)
        raise
    if hasattr(pipe, "maybe_convert_prompt"):
        pipe.maybe_convert_prompt = _prompt_as_is
    return loaded


def _prompt_as_is(prompt: Any, tokenizer: Any) -> Any:
    """Stands in for diffusers' ``maybe_convert_prompt`` while concepts are loaded."""
    return prompt


def unload_concepts(loaded: LoadedConcepts) -> None:
    """Undo :func:`load_concepts` exactly.

    The original tokenizer backend (or added-token tables) and the original embedding module
    are put back, so ``len(tokenizer)``, the added tokens, ids and the weight matrix are what
    they were, bit for bit. Safe to call twice.

    Args:
        loaded: what :func:`load_concepts` returned.
    """
    for slot in reversed(loaded.slots):
        if slot.embedding is not None:
            slot.text_encoder.set_input_embeddings(slot.embedding)
        if slot.backend is not None:
            slot.tokenizer._tokenizer = slot.backend
        elif slot.slow_added is not None:
            decoder, encoder = slot.slow_added
            slot.tokenizer._added_tokens_decoder = decoder
            slot.tokenizer._added_tokens_encoder = encoder
            for refresh in ("_update_trie", "_update_total_vocab_size"):
                if hasattr(slot.tokenizer, refresh):
                    getattr(slot.tokenizer, refresh)()
    loaded.slots.clear()
    if "maybe_convert_prompt" in vars(loaded.pipe):
        del loaded.pipe.maybe_convert_prompt


# --- the pipeline ------------------------------------------------------------------------------
# Loading it lives in conceptlib.pipelines (shared with preview and train); load_pipeline is
# re-exported above, where render's callers have always imported it.


def _scheduler(pipe: Any, name: str | None) -> tuple[Any, str]:
    """The scheduler for ``name`` (None: the pipeline's own) and its AUTOMATIC1111 sampler name."""
    if name is None:
        current = type(pipe.scheduler).__name__
        return pipe.scheduler, _SAMPLER_BY_CLASS.get(current, current)
    key = name.lower().replace("-", "_").replace("+", "p").replace(" ", "_")
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, list(SCHEDULERS), n=3, cutoff=0.4)
        raise UsageError(
            f"unknown scheduler {name!r}",
            hint=("did you mean " + ", ".join(close) + "? " if close else "") + "choose one of " + ", ".join(SCHEDULERS),
        )
    import diffusers

    class_name, extra, sampler = SCHEDULERS[key]
    return getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra), sampler


def _model_hash(model: ModelInfo) -> str | None:
    """The ``Model hash`` AUTOMATIC1111 writes: AutoV2 (10 hex) of a single file.

    A diffusers folder has no single file; it gets the first 10 hex of the sha256 of its weight
    files' hashes in path order (stable, and different for any changed weight).
    """
    if model.hashes.get("autov2"):
        return model.hashes["autov2"]
    if model.files:
        digest = hashlib.sha256()
        for rel in sorted(model.files):
            digest.update(f"{rel}\0{model.files[rel].get('sha256', '')}\n".encode())
        return digest.hexdigest()[:10]
    return None


# --- metadata ----------------------------------------------------------------------------------


def _a1111_quote(text: str) -> str:
    """Quote a value the way AUTOMATIC1111's ``infotext_utils.quote`` does."""
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(
    prompt: str,
    negative: str,
    *,
    steps: int,
    sampler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str | None = None,
    model_name: str | None = None,
    concepts: Sequence[UsedConcept] = (),
    hypernetworks: Sequence[tuple[UsedHypernetwork, float]] = (),
) -> str:
    """The AUTOMATIC1111 ``parameters`` text of one image.

    The layout AUTOMATIC1111's "PNG Info" tab, Civitai and most image browsers parse: the
    prompt, a ``Negative prompt:`` line when there is one, then one line of ``Key: value``
    pairs, values with commas or colons JSON-quoted.

    Args:
        prompt: the prompt as written (concept tokens unexpanded).
        negative: the negative prompt as written.
        steps, sampler, guidance, seed, width, height: the image's settings.
        model_hash: the model's short hash.
        model_name: the model's name.
        concepts: the concepts the image uses (``TI hashes: "name: 12hex, ..."``).
        hypernetworks: the hypernetworks applied with their multipliers (``Hypernet``,
            ``Hypernet strength``, ``Hypernet hashes: "word: 10hex, ..."``).

    Returns:
        The text.

    Example:
        >>> print(infotext("a cat", "", steps=20, sampler="Euler a", guidance=7.0, seed=1, width=512, height=512))
        a cat
        Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Version: conceptlib 0.1.0
    """
    from conceptlib import __version__

    params: list[tuple[str, str]] = [
        ("Steps", str(steps)),
        ("Sampler", sampler),
        ("CFG scale", f"{guidance:g}"),
        ("Seed", str(seed)),
        ("Size", f"{width}x{height}"),
    ]
    if model_hash:
        params.append(("Model hash", model_hash))
    if model_name:
        params.append(("Model", model_name))
    if concepts:
        params.append(("TI hashes", ", ".join(f"{c.name}: {c.short_hash}" for c in concepts)))
    if hypernetworks:
        params.append(("Hypernet", ", ".join(h.word for h, _m in hypernetworks)))
        params.append(("Hypernet strength", ", ".join(f"{m:g}" for _h, m in hypernetworks)))
        params.append(("Hypernet hashes", ", ".join(f"{h.word}: {h.short_hash}" for h, _m in hypernetworks)))
    params.append(("Version", f"conceptlib {__version__}"))
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_a1111_quote(v)}" for k, v in params))
    return "\n".join(lines)


def _png_bytes(image: Image.Image, parameters: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _grid(images: Sequence[tuple[Image.Image, str]], columns: int) -> Image.Image:
    """Images in a grid, each with its label (prompt, seed) underneath."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cell_w = max(im.width for im, _ in images)
    cell_h = max(im.height for im, _ in images)
    line_h = int(font.getbbox("Hg")[3]) + 3
    label_h = 2 * line_h + 4
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * cell_w, rows * (cell_h + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for n, (image, label) in enumerate(images):
        x, y = (n % columns) * cell_w, (n // columns) * (cell_h + label_h)
        grid.paste(image.convert("RGB"), (x, y))
        for k, text in enumerate(_wrap(label, draw, font, cell_w - 4, lines=2)):
            draw.text((x + 2, y + cell_h + 2 + k * line_h), text, fill="black", font=font)
    return grid


def _wrap(text: str, draw: Any, font: Any, width: int, *, lines: int) -> list[str]:
    """Greedy word wrap into at most ``lines`` lines, the last cut with an ellipsis."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(line + " " + words[0], font=font) <= width:
            line += " " + words.pop(0)
        if len(out) == lines - 1 and words:
            line += " " + " ".join(words)
            words = []
        while len(line) > 1 and draw.textlength(line, font=font) > width:
            line = line[:-2] + "…"
        out.append(line)
    return out


# --- render ------------------------------------------------------------------------------------


def render(
    config: RenderConfig,
    progress: ProgressCallback | None = None,
    *,
    pipeline: Any = None,
) -> RenderResult:
    """Render every prompt of ``config``: concepts resolved, validated, loaded once, batched.

    Args:
        config: what to render and how.
        progress: called as ``progress(done, total, message)`` after each batch (and once with
            ``done=0`` before the first).
        pipeline: an already loaded pipeline of ``config.model`` to reuse (previews render many
            runs); it is left as it was found (scheduler, tokenizers, encoders).

    Returns:
        The images, concepts, manifest and grid written.

    Raises:
        UsageError: no prompts, bad sizes or counts, unknown scheduler or dtype.
        ConceptNotFoundError: a prompt names a concept the library lacks (with the closest names).
        ConceptDoesNotFitError: a concept does not fit the model (validation's message).
        ModelNotFoundError: ``config.model`` names nothing.
        ModelWeightsMissingError: ``config.model`` is a diffusers folder without weight files.

    Example:
        >>> render(RenderConfig(model="tiny-sd1", prompts=["a <cat-toy>"], out="out"))  # doctest: +SKIP
    """
    from conceptlib._deps import quiet_loading
    from conceptlib.hypernet_apply import applied
    from conceptlib.models import require_weights, resolve_model
    from conceptlib.single_file import native_size, resolve_configs
    from conceptlib.validate import validate_hypernetwork, validate_many

    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(config.out)
    check_settings(
        seed=config.seed, steps=config.steps, guidance=config.guidance,
        images=config.images_per_prompt, batch_size=config.batch_size,
    )  # fmt: skip
    if config.size is not None:
        parse_size(config.size)

    # 1. Prompts -> jobs. A job is one image; its seed depends only on its place in the run.
    specs = [p if isinstance(p, PromptSpec) else PromptSpec(str(p)) for p in config.prompts]
    if config.prompts_file is not None:
        specs += read_prompts(config.prompts_file)
    if not specs:
        raise UsageError("nothing to render: give prompts or --prompts FILE")
    model = resolve_model(config.model, home=config.home)
    if pipeline is None:
        require_weights(model)  # a folder of configs alone fails here, before any work
    configs = None
    if model.kind == "checkpoint" and pipeline is None:
        # Before anything heavy: a single file's configs may need fetching, or may not fit it.
        configs = resolve_configs(model, config.model_config)
    native = native_size(model, configs)
    default_size = config.size or (native, native)
    jobs: list[_Job] = []
    for line, spec in enumerate(specs):
        width, height = parse_size(spec.size or default_size)
        for k in range(spec.n if spec.n is not None else config.images_per_prompt):
            index = len(jobs)
            jobs.append(_Job(
                index=index,
                line=line,
                prompt=spec.prompt,
                negative=spec.negative if spec.negative is not None else config.negative,
                # A line's own seed numbers its images from that seed; otherwise the run's
                # base seed plus the global index, so batch size never changes a seed.
                seed=(spec.seed + k) if spec.seed is not None else config.seed + index,
                steps=spec.steps or config.steps,
                guidance=spec.guidance if spec.guidance is not None else config.guidance,
                width=width,
                height=height,
            ))  # fmt: skip
    if not jobs:
        raise UsageError("nothing to render: every prompt line asks for 0 images")
    # Hypernetwork phrases out of the prompts; the run-wide ones (--hypernet) apply after them,
    # as AUTOMATIC1111 applies its settings' hypernetwork, appended to every prompt.
    validated = {h[0].word.lower(): h[0] for h in config.hypernets if not isinstance(h, str)}
    given = dict(validated)
    run_wide = [parse_hypernet(h) if isinstance(h, str) else (h[0].word, float(h[1])) for h in config.hypernets]
    for n, (word, multiplier) in enumerate(run_wide):
        if _is_hypernet_path(word):  # a file, not a library word: read here, named by its stem
            network = hypernetwork_file(word)
            given[network.word.lower()] = network
            run_wide[n] = (network.word, multiplier)
    calls: dict[int, tuple[str, list[tuple[str, float]]]] = {}
    for job in jobs:
        if job.line not in calls:
            calls[job.line] = hypernet_phrases(job.prompt, f"prompt line {job.line + 1}")
        if _HYPERNET.search(job.negative):
            raise UsageError(
                f"the negative prompt of line {job.line + 1} names a hypernetwork: one applies to the whole image",
                hint="name it in the prompt: <hypernet:NAME:MULT>",
            )
        job.text, phrases = calls[job.line]
        job.hypernets = tuple(phrases + run_wide)
    if max(job.seed for job in jobs) > MAX_SEED:
        raise UsageError(f"the images' seeds count up from the base seed past {MAX_SEED}", hint="pass a smaller --seed")
    for job in jobs:
        if not math.isfinite(job.guidance):
            raise UsageError(f"the guidance scale must be a number, got {job.guidance} (prompt line {job.line + 1})", hint="pass --guidance like 7.5")
    if out.exists() and not out.is_dir():
        raise UsageError("is a file; renders go into a folder", path=out, hint="pass --out a folder")

    # 2. Concepts named in prompts and negative prompts, and the hypernetworks.
    texts = list(dict.fromkeys(t for j in jobs for t in (j.text, j.negative)))
    from conceptlib.library import Library

    with Library.open(config.home) as lib:
        concepts = resolve_concepts(texts, model, library=lib)
        words = dict.fromkeys(w for j in jobs for w, _m in j.hypernets if w.lower() not in given)
        hypernets = {**resolve_hypernetworks(list(words), model, lib), **given}
    for job in jobs:  # by library name from here on: two words may call one network
        job.hypernets = tuple((hypernets[w.lower()].name, m) for w, m in job.hypernets)
    used_networks = {h.name: h for h in hypernets.values()}

    # 3. Validation against the model, and against each other (token clashes).
    items = [(c.name, c.embedding, c.token) for c in concepts.used]
    for concept, findings in zip(concepts.used, validate_many(items, model, home=config.home), strict=True):
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            raise ConceptDoesNotFitError(concept.name, errors[0].message, findings=list[object](findings))
        concept.findings = findings
    for network in used_networks.values():
        if network.word.lower() not in validated:
            network.findings = validate_hypernetwork(network.network, model, home=config.home)
        errors = [f for f in network.findings if f.severity == "error"]
        if errors:
            raise ConceptDoesNotFitError(network.name, errors[0].message, findings=list[object](network.findings))

    # Under accelerate/torchrun each process takes every world-th job; names stay global, and
    # each process uses its own GPU when the device names none in particular.
    # Only a barrier is needed between processes, so gloo serves CPU and GPU runs alike.
    rank, world = join("gloo")
    device = process_device(config.device)
    mine = jobs[rank::world]
    if len({j.hypernets for j in mine}) > 1:
        # Jobs with the same hypernetworks side by side, so they share batches; an image never
        # depends on its batch (its own generator), and files are named by the job.
        first_seen = {key: n for n, key in enumerate(dict.fromkeys(j.hypernets for j in mine))}
        mine = sorted(mine, key=lambda j: first_seen[j.hypernets])

    # 4. The pipeline and its scheduler (a reused pipeline gets its own scheduler back at the end).
    mark = time.perf_counter()
    pipe = pipeline if pipeline is not None else load_pipeline(model, device=device, dtype=config.dtype, configs=configs)
    import torch

    original_scheduler = pipe.scheduler
    scheduler, sampler = _scheduler(pipe, config.scheduler)
    timings["pipeline"] = time.perf_counter() - mark
    model_hash = _model_hash(model)
    # AUTOMATIC1111 names a checkpoint by its file stem ("v1-5-pruned-emaonly").
    where = Path(model.path or model.source)
    model_name = model.name or (where.stem if model.kind == "checkpoint" else where.name)
    by_name = concepts.by_name()

    # 5. Load every concept in one step, render batch by batch, and 6. always unload.
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not config.grid:
        # An earlier run's grid beside this run's render.json would show other images.
        (out / GRID_NAME).unlink(missing_ok=True)
    rendered: list[RenderedImage] = []
    pictures: dict[int, Image.Image] = {}
    if progress:
        progress(0, len(mine), "loading concepts")
    mark = time.perf_counter()
    loaded = load_concepts(pipe, concepts.used, encoder_components(model))
    timings["load"] = time.perf_counter() - mark
    # diffusers says the same about long prompts in a log line per batch; ours name the prompt.
    tokenizer = getattr(pipe, "tokenizer", None) or pipe.tokenizer_2
    with quiet_loading():
        warnings = prompt_warnings(jobs, concepts, tokenizer)
    mark = time.perf_counter()
    try:
        pipe.scheduler = scheduler
        # SDXL encodes an empty negative prompt as zeros only when it gets none at all; decide
        # once per run so that an image never depends on which batch it landed in.
        any_negative = any(j.negative for j in jobs)
        start = 0
        while start < len(mine):
            # Consecutive jobs with the same settings, up to batch_size, share one call.
            first = mine[start]
            same = (first.steps, first.guidance, first.width, first.height, first.hypernets)
            batch = [first]
            for job in mine[start + 1 :]:
                if len(batch) == config.batch_size or (job.steps, job.guidance, job.width, job.height, job.hypernets) != same:
                    break
                batch.append(job)
            start += len(batch)

            prompts, negatives, used_names = [], [], []
            for job in batch:
                prompt, names = concepts.expand(job.text)
                negative, negative_names = concepts.expand(job.negative)
                prompts.append(prompt)
                negatives.append(negative)
                used_names.append(names + [n for n in negative_names if n not in names])
            # One CPU generator per image: the same latents on any device and any batch size.
            generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in batch]
            networks = [(used_networks[n].network, m) for n, m in first.hypernets]
            with quiet_loading(), applied(pipe.unet, networks):  # quiet: `warnings` said it once, per prompt
                images = pipe(
                    prompt=prompts,
                    negative_prompt=negatives if any_negative else None,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    width=first.width,
                    height=first.height,
                    generator=generators,
                    num_images_per_prompt=1,
                    output_type="pil",
                ).images

            for job, image, names in zip(batch, images, used_names, strict=True):
                # As AUTOMATIC1111 records a run-wide hypernetwork: its phrase added to the prompt.
                recorded = job.prompt + "".join(f"<hypernet:{used_networks[n].word}:{m:g}>" for n, m in job.hypernets[len(job.hypernets) - len(run_wide) :])
                parameters = infotext(
                    recorded, job.negative,
                    steps=job.steps, sampler=sampler, guidance=job.guidance, seed=job.seed,
                    width=job.width, height=job.height,
                    model_hash=model_hash, model_name=model_name,
                    concepts=[by_name[n] for n in names],
                    hypernetworks=[(used_networks[n], m) for n, m in job.hypernets],
                )  # fmt: skip
                path = out / f"{job.index:05d}-{job.seed}.png"
                atomic_write_bytes(path, _png_bytes(image, parameters))
                pictures[job.index] = image
                rendered.append(RenderedImage(
                    index=job.index, path=path, prompt=job.prompt, negative=job.negative,
                    seed=job.seed, steps=job.steps, guidance=job.guidance,
                    width=job.width, height=job.height, sampler=sampler,
                    concepts=names, line=job.line, parameters=parameters, hypernetworks=list(job.hypernets),
                ))  # fmt: skip
            if progress:
                progress(len(rendered), len(mine), f"rendered {len(rendered)}/{len(mine)}")
    finally:
        timings["render"] = time.perf_counter() - mark
        mark = time.perf_counter()
        unload_concepts(loaded)
        pipe.scheduler = original_scheduler
        timings["unload"] = time.perf_counter() - mark

    # 7. Grid and manifest: in a distributed run, the main process writes them once everyone
    # has finished, from the per-process records and the PNGs on disk.
    mark = time.perf_counter()
    if world > 1:
        part = out / f".render-part-{rank}.json"
        atomic_write_bytes(part, json.dumps([i.to_dict() for i in rendered]).encode())
        barrier()
        if rank != 0:
            return RenderResult(out, rendered, concepts.used, None, None, model.display_name, time.perf_counter() - started, timings, main_process=False)
        rendered = []
        for r in range(world):
            part = out / f".render-part-{r}.json"
            for d in json.loads(part.read_text(encoding="utf-8")):
                rendered.append(RenderedImage(
                    index=d["index"], path=out / d["file"], prompt=d["prompt"], negative=d["negative"],
                    seed=d["seed"], steps=d["steps"], guidance=d["guidance"], width=d["size"][0],
                    height=d["size"][1], sampler=d["sampler"], concepts=d["concepts"], line=d["line"],
                    parameters=d["parameters"], hypernetworks=[(h["name"], h["multiplier"]) for h in d["hypernetworks"]],
                ))  # fmt: skip
            part.unlink()
    rendered.sort(key=lambda i: i.index)

    grid_path: Path | None = None
    if config.grid and rendered:
        from PIL import Image as PILImage

        per_line = max(sum(1 for i in rendered if i.line == line) for line in {i.line for i in rendered})
        # One row per prompt line when lines have several images; otherwise a square-ish block.
        columns = per_line if per_line > 1 else math.ceil(math.sqrt(len(rendered)))
        cells = [
            (pictures[i.index] if i.index in pictures else PILImage.open(i.path), f"{i.prompt} (seed {i.seed})")
            for i in rendered
        ]
        grid_path = out / GRID_NAME
        buffer = io.BytesIO()
        _grid(cells, columns).save(buffer, format="PNG")
        atomic_write_bytes(grid_path, buffer.getvalue())

    manifest = {
        "format": "conceptlib-render",
        "version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": model_name,
            "source": model.source,
            "path": model.path,
            "family": model.family,
            "hash": model_hash,
        },
        "settings": {
            "negative": config.negative,
            "images_per_prompt": config.images_per_prompt,
            "seed": config.seed,
            "steps": config.steps,
            "guidance": config.guidance,
            "scheduler": config.scheduler,
            "sampler": sampler,
            "size": list(default_size),
            "batch_size": config.batch_size,
            "device": config.device,
            "dtype": config.dtype,
            "processes": world,
            "hypernets": [h if isinstance(h, str) else f"{h[0].word}:{float(h[1]):g}" for h in config.hypernets],
        },
        "concepts": [c.to_dict() for c in concepts.used],
        "hypernetworks": [h.to_dict() for h in used_networks.values()],
        "images": [i.to_dict() for i in rendered],
        "grid": grid_path.name if grid_path else None,
    }
    manifest_path = out / MANIFEST_NAME
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    timings["write"] = time.perf_counter() - mark
    return RenderResult(
        out=out,
        images=rendered,
        concepts=concepts.used,
        manifest=manifest_path,
        grid=grid_path,
        model=model.display_name,
        seconds=time.perf_counter() - started,
        timings=timings,
        warnings=warnings,
        hypernetworks=list(used_networks.values()),
    )
