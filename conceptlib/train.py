"""Textual-inversion training for SD 1.x, SD 2.x (epsilon and v) and SDXL, in one explicit loop.

>>> from conceptlib.train import TrainConfig, train
>>> result = train(TrainConfig(model="path/to/sd15", images="photos/", token="<my-cat>",
...                            init_word="cat", steps=2000))  # doctest: +SKIP
>>> result.concept.name  # doctest: +SKIP
'my-cat'

This file reads top to bottom like diffusers' ``examples/textual_inversion/textual_inversion.py``
(one dataclass of knobs, helpers, then :func:`train`), and does the same maths, with the costs
that script pays for simplicity removed:

* Only the new token vectors are trainable: one ``nn.Parameter`` of shape ``[n, width]`` per
  text encoder, spliced into the token-embedding output in the forward pass. The optimizer holds
  state for those few thousand numbers, not for the whole ~49,408-row embedding matrix, and no
  rows need restoring after each step.
* Each image is encoded to latents once (and its mirror image, when flips are on); each step
  re-samples from the cached latent distribution, as the reference's ``latent_dist.sample()``
  does, without running the VAE encoder.
* The first layer of each text encoder projects (query, key, value) the rows of ordinary tokens
  once per run: they depend on the token and its position only, so each prompt's rows are
  gathered from a table, and only the placeholder rows are projected, with a graph, each step.
* Frozen models are in eval mode with ``requires_grad`` off; attention runs through PyTorch's
  SDPA (xformers when installed, on a GPU); gradient checkpointing and fp16/bf16 are options.
* Checkpoints hold the vectors, their optimizer state, the LR-scheduler state, RNG states, the
  loss history and the config: a few kilobytes, whatever the vocabulary size. Every random draw
  is a pure function of ``(seed, step)``, so a resumed run ends bit-identical (on CPU) to an
  uninterrupted one.

Placeholder tokens are added to in-memory copies of the tokenizers only. Their ids are mapped
to negative numbers before the text encoder sees them: the embedding wrapper reads the trainable
vectors for negative ids, and CLIP's pooled output (``argmax`` of the ids in older configs, used
by SDXL's second encoder) keeps finding the end-of-text token, which appended ids would break.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib._deps import quiet_loading
from conceptlib._parallel import barrier, join, process_device
from conceptlib._text import read_utf8
from conceptlib.errors import (
    ConceptExistsError,
    ConceptlibError,
    DestinationExistsError,
    DuplicateConceptError,
    TokenInUseError,
    TrainingDivergedError,
    TrainingImageError,
    TrainingInterrupted,
    TrainingTokenError,
    UsageError,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from conceptlib.embedding import Embedding
    from conceptlib.library import Concept
    from conceptlib.models import ModelInfo
    from conceptlib.single_file import ModelConfigs

__all__ = [
    "IMAGE_SUFFIXES",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "lr_at",
    "parse_lr_schedule",
    "read_templates",
    "spread",
    "train",
]

#: Files a training folder may hold as images; anything else (captions, notes) is ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Below this the VAE's 8x downsampling leaves no latent pixels worth training on.
MIN_IMAGE_SIDE = 16
CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "conceptlib-train-checkpoint/1"

# The prompt lists of the textual-inversion paper and diffusers' script ("{}" written as the
# AUTOMATIC1111 "[name]" so built-in and file templates use one syntax).
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a [name]", "a rendering of a [name]", "a cropped photo of the [name]",
    "the photo of a [name]", "a photo of a clean [name]", "a photo of a dirty [name]",
    "a dark photo of the [name]", "a photo of my [name]", "a photo of the cool [name]",
    "a close-up photo of a [name]", "a bright photo of the [name]", "a cropped photo of a [name]",
    "a photo of the [name]", "a good photo of the [name]", "a photo of one [name]",
    "a close-up photo of the [name]", "a rendition of the [name]", "a photo of the clean [name]",
    "a rendition of a [name]", "a photo of a nice [name]", "a good photo of a [name]",
    "a photo of the nice [name]", "a photo of the small [name]", "a photo of the weird [name]",
    "a photo of the large [name]", "a photo of a cool [name]", "a photo of a small [name]",
)  # fmt: skip
STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of [name]", "a rendering in the style of [name]",
    "a cropped painting in the style of [name]", "the painting in the style of [name]",
    "a clean painting in the style of [name]", "a dirty painting in the style of [name]",
    "a dark painting in the style of [name]", "a picture in the style of [name]",
    "a cool painting in the style of [name]", "a close-up painting in the style of [name]",
    "a bright painting in the style of [name]", "a good painting in the style of [name]",
    "a close-up painting in the style of [name]", "a rendition in the style of [name]",
    "a nice painting in the style of [name]", "a small painting in the style of [name]",
    "a weird painting in the style of [name]", "a large painting in the style of [name]",
)  # fmt: skip
# AUTOMATIC1111's subject_filewords.txt / style_filewords.txt, used when --captions is given
# without a template file: the caption tells the model what is *not* the concept.
OBJECT_FILEWORDS_TEMPLATES: tuple[str, ...] = (
    "a photo of a [name], [filewords]", "a rendering of a [name], [filewords]",
    "a cropped photo of the [name], [filewords]", "the photo of a [name], [filewords]",
    "a photo of a clean [name], [filewords]", "a close-up photo of a [name], [filewords]",
    "a bright photo of the [name], [filewords]", "a good photo of the [name], [filewords]",
    "a rendition of the [name], [filewords]", "a photo of the nice [name], [filewords]",
)  # fmt: skip
STYLE_FILEWORDS_TEMPLATES: tuple[str, ...] = (
    "a painting of [filewords], art by [name]", "a rendering of [filewords], art by [name]",
    "a cropped painting of [filewords], art by [name]", "the painting of [filewords], art by [name]",
    "a clean painting of [filewords], art by [name]", "a close-up painting of [filewords], art by [name]",
    "a bright painting of [filewords], art by [name]", "a good painting of [filewords], art by [name]",
    "a rendition of [filewords], art by [name]", "a nice painting of [filewords], art by [name]",
)  # fmt: skip

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")
CAPTIONS = ("filewords", "sidecar")
LATENT_SAMPLING = ("random", "deterministic")
#: Config fields a resumed run may change; any other difference would not continue the same run.
RESUMABLE_CHANGES = frozenset({
    "steps", "save_every", "preview_every", "preview_prompt", "preview_steps", "preview_guidance",
    "resume", "name", "out", "home", "add_to_library", "device", "gradient_checkpointing",
})  # fmt: skip


# --- configuration ------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every knob of a training run (the CLI's options, one for one).

    Attributes:
        model: a diffusers folder or a single-file checkpoint (``.safetensors``/``.ckpt`` in
            the AUTOMATIC1111/ComfyUI layout), or a registered model name that points at one.
        model_config: for a single-file checkpoint, a diffusers folder or Hub repository with
            its configs and tokenizer; default: the family's reference repository, fetched
            once (see :mod:`conceptlib.single_file`).
        images: a folder of training images (or one image file).
        token: the placeholder token to learn, e.g. ``<my-cat>``. With ``vectors`` > 1 the
            concept uses ``tok``, ``tok_1`` ... as diffusers loads it.
        init_word: the word(s) whose embeddings start the vectors; several tokens are spread
            over the vectors (vector i starts from token ``i * k // n`` of k). Default ``*``,
            as in AUTOMATIC1111.
        type: ``object`` or ``style``: picks the built-in prompt templates.
        vectors: number of vectors per encoder.
        steps: optimizer steps (each ``batch_size * grad_accum`` images).
        batch_size: images per forward pass.
        grad_accum: forward passes per optimizer step.
        lr: learning rate (ignored when ``lr_schedule`` is given).
        lr_schedule: AUTOMATIC1111 piecewise syntax, e.g. ``"0.005:100, 1e-3:1000, 1e-5"``.
        scheduler: a diffusers scheduler name (:data:`SCHEDULERS`), used with ``lr``.
        warmup_steps: warm-up steps for the schedulers that have one.
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        weight_decay: AdamW weight decay on the vectors (AUTOMATIC1111 uses 0; diffusers 1e-2).
        clip_grad_norm: clip the vectors' gradient to this total norm before each step (0 =
            off); AUTOMATIC1111's gradient clipping "norm".
        clip_grad_value: clip each gradient element to plus or minus this (0 = off);
            AUTOMATIC1111's gradient clipping "value".
        resolution: training image size in pixels (square); default: the model's native size.
        flip: also train on mirrored images (their latents are cached too).
        latent_sampling: ``random`` re-samples the cached latent distribution each step (what
            the reference script does), ``deterministic`` uses its mean.
        mixed_precision: ``no``, ``fp16`` or ``bf16``: the frozen models' precision (the
            trained vectors and their optimizer stay in float32). On a CPU, bf16 pays off where
            the processor has bf16 instructions; fp16 is usually slower there.
        gradient_checkpointing: trade compute for memory in the UNet.
        device: ``cpu`` (the default, as everywhere in conceptlib), ``auto`` (CUDA when
            available, else CPU), ``cuda``, ``cuda:1`` ... A CPU run on a machine with a GPU
            says so in the result's warnings.
        seed: every random draw is a pure function of (seed, step).
        templates: a template file, one prompt per line, with ``[name]`` and ``[filewords]``.
        captions: ``filewords`` (caption from the file name) or ``sidecar`` (a ``.txt`` beside
            each image); default: file names, and captions only appear through ``[filewords]``.
        shuffle_tags: AUTOMATIC1111's "Shuffle tags": the comma-separated tags of each
            caption come in a new order for every sample.
        tag_dropout: AUTOMATIC1111's "Drop out tags": each tag of a caption is left out of a
            sample with this probability (0 to 1, exclusive). Both only change what
            ``[filewords]`` becomes; the evaluation loss keeps whole captions.
        save_every: write a checkpoint (and a snapshot of the concept) every K steps; 0 = at
            the end only.
        preview_every: render a preview every K steps and at the last one (0 = never).
        preview_prompt: the preview prompt (default: the first template); ``[name]`` or the
            token marks the concept.
        preview_steps: sampler steps per preview.
        preview_guidance: classifier-free guidance scale of previews.
        resume: continue from the checkpoint in ``out``.
        name: the concept's name in the library (default: from the token).
        out: the run folder (default: ``<home>/training/<name>``).
        home: the library folder (default: ``CONCEPTLIB_HOME``).
        add_to_library: add the finished concept to the library.
        hypernetwork: train an AUTOMATIC1111 hypernetwork instead of vectors
            (:mod:`conceptlib.train_hypernet`); ``token`` is then the word prompts call it by
            (``<hypernet:WORD:1>``) and ``[name]`` in templates, and ``vectors``/``init_word``
            do not apply. The fields below describe the network, with AUTOMATIC1111's defaults.
        layer_structure: ``"1,2,1"``: each layer's width as a multiple of the attention width
            (starts and ends with 1).
        activation: ``linear`` (none), ``relu``, ``leakyrelu``, ``elu``, ``swish``, ``tanh``,
            ``sigmoid`` ... (any ``torch.nn`` activation AUTOMATIC1111 offers).
        layer_norm: a LayerNorm after each layer.
        dropout_structure: ``"0,0.3,0"``: dropout after each layer (first and last 0); None: none.
        weight_init: ``Normal``, ``XavierUniform``, ``XavierNormal``, ``KaimingUniform`` or
            ``KaimingNormal``.
        activate_output: activate the last layer's output too.
        hypernet_widths: ``"768,320,640,1280"``: the attention widths to give modules;
            default: every attention width the model's UNet has.
    """

    model: str | os.PathLike[str]
    images: str | os.PathLike[str]
    token: str
    model_config: str | None = None
    init_word: str | None = None
    type: str = "object"
    vectors: int = 1
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-3
    lr_schedule: str | None = None
    scheduler: str = "constant"
    warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float = 0.0
    clip_grad_value: float = 0.0
    resolution: int | None = None
    flip: bool = False
    latent_sampling: str = "random"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    device: str = "cpu"
    seed: int = 0
    templates: str | os.PathLike[str] | None = None
    captions: str | None = None
    shuffle_tags: bool = False
    tag_dropout: float = 0.0
    save_every: int = 500
    preview_every: int = 0
    preview_prompt: str | None = None
    preview_steps: int = 20
    preview_guidance: float = 7.5
    resume: bool = False
    name: str | None = None
    out: str | os.PathLike[str] | None = None
    home: str | None = None
    add_to_library: bool = True
    hypernetwork: bool = False
    layer_structure: str = "1,2,1"
    activation: str = "linear"
    layer_norm: bool = False
    dropout_structure: str | None = None
    weight_init: str = "Normal"
    activate_output: bool = False
    hypernet_widths: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints and in the concept's metadata); paths as text."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        embedding: the learned vectors (``clip_l``; ``clip_h``; or ``clip_l`` + ``clip_g``).
        embedding_path: the concept written in conceptlib's canonical format.
        concept: the library entry, or None with ``add_to_library=False``.
        library_action: ``"added"`` (a new library entry), ``"updated"`` (a resumed run
            replaced the vectors of the concept it added before, keeping the old ones in its
            history) or None (nothing went to the library).
        out: the run folder.
        checkpoint: the last checkpoint written.
        steps: optimizer steps done in total (including those before a resume).
        resumed_from: the step the run resumed from (0 for a fresh run).
        losses: the mean training loss of every step.
        eval_loss_start: loss on a fixed evaluation batch (fixed images, prompts, timesteps
            and noise) before training.
        eval_loss_end: the same after training: lower means the concept was learned.
        previews: preview images, in step order.
        preview_grid: all previews in one labelled image, or None.
        loss_plot: the loss curve (PNG).
        seconds: wall time of the whole call.
        seconds_per_step: mean wall time of the optimizer steps this call ran.
        peak_memory: peak accelerator memory in bytes (CUDA), else None.
        device: the device this process trained on (``cpu``, ``cuda:0`` ...).
        warnings: things worth knowing that did not stop training.
        main_process: False on the other processes of a data-parallel run, which write
            nothing (the main process writes the concept and reports the run).
        kind: ``embedding``, or ``hypernetwork`` for ``--hypernetwork`` runs, which have no
            ``embedding`` (None) and write ``hypernetwork_path`` (AUTOMATIC1111's ``.pt``)
            instead of ``embedding_path``.
        token: the word the result is called by.
        hypernetwork_path: the trained hypernetwork, for hypernetwork runs.
    """

    embedding: Embedding | None
    embedding_path: Path | None
    concept: Concept | None
    out: Path
    checkpoint: Path | None
    steps: int
    resumed_from: int
    losses: list[float]
    eval_loss_start: float
    eval_loss_end: float
    previews: list[Path] = field(default_factory=list)
    preview_grid: Path | None = None
    loss_plot: Path | None = None
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    peak_memory: int | None = None
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    main_process: bool = True
    library_action: str | None = None
    kind: str = "embedding"
    token: str | None = None
    hypernetwork_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``conceptlib train --json`` prints)."""
        return {
            "concept": self.concept.name if self.concept else None,
            "library_action": self.library_action,
            "kind": self.kind,
            "token": self.embedding.token if self.embedding is not None else self.token,
            "encoders": self.embedding.widths if self.embedding is not None else None,
            "vectors": self.embedding.num_vectors if self.embedding is not None else None,
            "embedding_path": str(self.embedding_path) if self.embedding_path else None,
            "hypernetwork_path": str(self.hypernetwork_path) if self.hypernetwork_path else None,
            "out": str(self.out),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "final_loss": self.losses[-1] if self.losses else None,
            "eval_loss_start": self.eval_loss_start,
            "eval_loss_end": self.eval_loss_end,
            "previews": [str(p) for p in self.previews],
            "preview_grid": str(self.preview_grid) if self.preview_grid else None,
            "loss_plot": str(self.loss_plot) if self.loss_plot else None,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(self.seconds_per_step, 5),
            "device": self.device,
            "peak_memory": self.peak_memory,
            "warnings": list(self.warnings),
        }


#: ``progress(step, total_steps, loss)`` after every optimizer step (loss None before the first).
Progress = Callable[[int, int, "float | None"], None]


# --- learning rate ------------------------------------------------------------------------------

_LR_USAGE = 'e.g. "0.005:100, 1e-3:1000, 1e-5" (5e-3 until step 100, 1e-3 until 1000, then 1e-5)'


#: Optimizer steps of one run: textual inversion converges in thousands; a million is days on a GPU.
MAX_TRAIN_STEPS = 1_000_000
#: Learning rates (AdamW step size per element, for vectors whose elements are about 0.01):
#: 0.005 is usual, 1 already throws the concept away; past float32's range torch fails outright.
MAX_LR = 1.0
#: Vectors per token: they share CLIP's 75-token prompt with the rest of it.
MAX_VECTORS = 75
#: Images per forward pass, and forward passes per optimizer step.
MAX_BATCH_SIZE = 1024
MAX_GRAD_ACCUM = 1024
#: Gradient clipping bounds (norm, or per element): far above any gradient of token vectors,
#: and inside float32 (torch cannot clamp to 1e308).
MAX_CLIP = 1e6


def parse_lr_schedule(text: str, max_steps: int) -> list[tuple[float, int]]:
    """Parse AUTOMATIC1111's piecewise learning-rate syntax.

    A comma-separated list of ``rate:step`` pairs, where each rate applies *until* its step;
    ``-1`` as the step, or a bare rate, means until ``max_steps`` and ends the list; a step past
    ``max_steps`` is clamped to it and ends the list.

    Args:
        text: the schedule, e.g. ``"0.005:100, 1e-3:1000, 1e-5"``.
        max_steps: the run's step count.

    Returns:
        ``[(rate, end_step), ...]`` with increasing end steps; training stops at the last one.

    Raises:
        UsageError: empty or unparsable text, a rate that is not a positive number, or steps
            that do not increase.

    Example:
        >>> parse_lr_schedule("0.005:100, 1e-3:1000, 1e-5", 3000)
        [(0.005, 100), (0.001, 1000), (1e-05, 3000)]
    """
    pairs: list[tuple[float, int]] = []
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise UsageError("the learning-rate schedule is empty", hint=_LR_USAGE)
    for part in parts:
        if not part:
            raise UsageError(f"empty entry in the learning-rate schedule {text!r}", hint=_LR_USAGE)
        rate_text, sep, step_text = part.partition(":")
        try:
            rate = float(rate_text)
            step = int(step_text) if sep else -1
        except ValueError:
            raise UsageError(f"cannot read {part!r} in the learning-rate schedule {text!r}", hint=_LR_USAGE) from None
        if not (math.isfinite(rate) and 0 < rate <= MAX_LR):
            raise UsageError(f"--lr-schedule: learning rate {rate_text.strip()!r} must be a number greater than 0 and at most {MAX_LR:g}", hint=_LR_USAGE)
        last = step == -1 or step >= max_steps
        step = max_steps if last else step
        if step <= (pairs[-1][1] if pairs else 0):
            raise UsageError(f"steps in the learning-rate schedule must increase, got {part!r} after {pairs[-1][1] if pairs else 0}", hint=_LR_USAGE)
        pairs.append((rate, step))
        if last:
            break
    return pairs


def lr_at(pairs: list[tuple[float, int]], step: int) -> float:
    """The rate for a 0-based optimizer step under a parsed schedule (the last rate past its end)."""
    for rate, end in pairs:
        if step < end:
            return rate
    return pairs[-1][0]


# --- images, captions and prompts ---------------------------------------------------------------

_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")


@dataclass
class _TrainImage:
    path: Path
    caption: str
    pixels: np.ndarray  # [3, res, res] float32 in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL's time_ids
    crop_top_left: tuple[int, int]


def _image_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise TrainingImageError("no such file or folder", path=source, hint="pass --images with a folder of training images")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TrainingImageError(
            f"holds no images (looked for {', '.join(IMAGE_SUFFIXES)})",
            path=source,
            hint="put 3 to 20 pictures of the concept in the folder",
        )
    return files


def _check_image_file(path: Path) -> str | None:
    """Check a training image by the library's image rules; why the library would not keep it.

    The concept keeps its training images, and the library keeps only images that are what
    their name says (:func:`conceptlib._images.check_image`). A file whose bytes are no image
    at all (a script or web page named ``.png``) is refused now, before anything loads:
    Pillow would guess at it, and EPS bytes would start Ghostscript. Other images the library
    would not keep (a ``.tif``, a JPEG named ``.png``, one too large to store) still train.

    Returns:
        None when the library keeps it, else the reason, for a warning.

    Raises:
        TrainingImageError: the file's bytes are no image; the message names it.
    """
    from conceptlib._images import IMAGE_SUFFIXES as KEPT_SUFFIXES
    from conceptlib._images import MAX_IMAGE_BYTES, check_image, sniff_image
    from conceptlib._inputs import read_named
    from conceptlib.errors import ImageFileError

    if path.suffix.lower() not in KEPT_SUFFIXES:
        return f"the library keeps only {', '.join(KEPT_SUFFIXES)} images"
    try:
        data = read_named(path, limit=MAX_IMAGE_BYTES, what="image", error=ImageFileError)
    except ImageFileError as exc:
        return exc.message
    try:
        check_image(data, path)
    except ImageFileError as exc:
        if sniff_image(data) is None:
            raise TrainingImageError(exc.message, path=path, hint="remove it from the training images") from None
        return exc.message
    return None


def _caption(path: Path, mode: str | None) -> str:
    """The ``[filewords]`` text: a sidecar .txt, or the file name (AUTOMATIC1111's rules)."""
    if mode == "sidecar":
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            raise TrainingImageError(
                f"--captions sidecar: no caption file {sidecar.name} beside it",
                path=path,
                hint="write one caption per image in a .txt of the same name, or use --captions filewords",
            )
        return " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
    # AUTOMATIC1111 drops a leading run of digits and dashes ("001-red hat.png" -> "red hat").
    return _LEADING_NUMBERS.sub("", path.stem).replace("_", " ").strip()


def _eight_bit(img: Any, path: Path) -> Any:
    """A 16-bit, 32-bit integer or float greyscale image as 8-bit ``L``, scaled, not clipped.

    Pillow's ``convert("RGB")`` clips these modes at 255, so a 16-bit photo turns white (and a
    0..1 float image black) and training would go ahead on flat images without a word.
    """
    from PIL import Image

    a = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise TrainingImageError(
                f"is a floating-point image with values from {np.nanmin(a):g} to {np.nanmax(a):g}; only 0 to 1 is read",
                path=path, hint="re-save it as an 8- or 16-bit PNG",
            )
        scaled = a * 255.0
    else:
        if a.min() < 0 or a.max() > 65535:
            raise TrainingImageError(f"is a 32-bit integer image (values from {a.min()} to {a.max()})", path=path, hint="re-save it as an 8- or 16-bit PNG")
        scaled = a / 257.0  # 16-bit (Pillow reads 16-bit PNGs as I;16, TIFFs as I)
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")


def _load_image(path: Path, resolution: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # A large photo (over 89 Mpx) is the user's own picture, not an attack: Pillow's
            # two-line warning would only bury conceptlib's output. Over 179 Mpx still fails.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            opened.load()
            img: Image.Image = ImageOps.exif_transpose(opened)
            if img.mode.startswith(("I", "F")):
                img = _eight_bit(img, path)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Transparent pixels would turn black with a plain convert; a white background
                # is what viewers show and what people expect the model to learn.
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TrainingImageError(f"cannot read the image ({exc})", path=path, hint="remove the file or re-save it as PNG/JPEG") from None
    width, height = img.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise TrainingImageError(
            f"is {width}x{height} pixels, too small to train on (at least {MIN_IMAGE_SIDE} px a side)",
            path=path,
            hint="remove it or use a larger version",
        )
    # Shorter side to the resolution, then a centred square crop: keeps the aspect ratio (the
    # reference squashes the whole image to a square instead).
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return np.ascontiguousarray(pixels), (height, width), (top, left)


def read_templates(path: str | os.PathLike[str]) -> list[str]:
    """Read a template file: one prompt per line with ``[name]`` and optionally ``[filewords]``.

    Args:
        path: the file (AUTOMATIC1111's ``textual_inversion_templates/*.txt`` work as they are).

    Returns:
        The non-empty lines, stripped.

    Raises:
        UsageError: the file is missing, empty, or a line has no ``[name]`` and no ``[filewords]``.
    """
    file = Path(path)
    try:
        lines = [line.strip() for line in read_utf8(file, holds="one prompt template a line", called="template file").splitlines()]
    except OSError as exc:
        raise UsageError(f"cannot read the template file ({exc.strerror or exc})", path=file) from None
    templates = [line for line in lines if line]
    if not templates:
        raise UsageError("the template file has no templates", path=file, hint="write one prompt per line, with [name] where the concept goes")
    # A1111's none.txt is a single "picture" line: a line without placeholders is legal there,
    # but a file where no line mentions the concept cannot teach it anything.
    if not any("[name]" in t or "[filewords]" in t for t in templates):
        raise UsageError("no template uses [name] or [filewords]", path=file, hint="write [name] where the concept's token goes")
    return templates


def spread(tokens: int, vectors: int) -> list[int]:
    """Which init-word token starts each vector (AUTOMATIC1111's rule: ``i * k // n``).

    Args:
        tokens: how many tokens the init word has (k).
        vectors: how many vectors the concept has (n).

    Returns:
        For each vector, the index of its init token.

    Example:
        >>> spread(2, 3)  # "red dog" over 3 vectors: red, red, dog
        [0, 0, 1]
        >>> spread(3, 2)  # "a red dog" over 2 vectors: a, red
        [0, 1]
    """
    return [i * tokens // vectors for i in range(vectors)]


def _prompt(template: str, token_text: str, caption: str) -> str:
    return " ".join(template.replace("[name]", token_text).replace("[filewords]", caption).split())


def _vary_tags(caption: str, g: torch.Generator, *, shuffle: bool, dropout: float) -> str:
    """One sample's caption under AUTOMATIC1111's tag options: split at commas, drop each tag
    with probability ``dropout``, shuffle what is left; all draws from ``g``."""
    import torch

    tags = [t.strip() for t in caption.split(",") if t.strip()]
    if dropout > 0:
        keep = (torch.rand(len(tags), generator=g) >= dropout).tolist()
        tags = [t for t, k in zip(tags, keep, strict=True) if k]
    if shuffle and len(tags) > 1:
        tags = [tags[i] for i in torch.randperm(len(tags), generator=g).tolist()]
    return ", ".join(tags)


# --- randomness: a pure function of (seed, step) ------------------------------------------------


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (independent streams for each key)."""
    import torch

    # Whole keys: SeedSequence splits big ones into 32-bit words (a key below 2**32 is one word,
    # as before), so seeds that differ only above bit 32 are different runs.
    state = np.random.SeedSequence([*key, len(key)]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


_EPOCH_STREAM, _STEP_STREAM, _EVAL_STREAM, _PREVIEW_STREAM, _TAG_STREAM = 1, 2, 3, 4, 5


# --- checkpoints ---------------------------------------------------------------------------------


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Move every tensor of a nested state dict into ``tensors`` and leave a reference behind."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_tensors(k, f"{prefix}.k{i}", tensors), _split_tensors(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _join_tensors(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join_tensors(k, tensors): _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        if "__float__" in obj:
            return float(obj["__float__"])
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: tensors in safetensors, everything else in its JSON header.

    No pickle: a checkpoint someone sends you cannot run code, like every file conceptlib reads.
    """
    from safetensors.torch import save

    from conceptlib._atomic import atomic_write_bytes

    tensors: dict[str, Any] = {}
    skeleton = _split_tensors(state, "s", tensors)
    data = save(tensors, metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(skeleton)})
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`train`.

    Args:
        path: the ``checkpoint.safetensors`` of a run folder.

    Returns:
        The state: ``step``, ``vectors`` (encoder key -> tensor), ``optimizer``,
        ``lr_scheduler``, ``scaler``, ``rng``, ``losses``, ``config``, ``model``.

    Raises:
        UsageError: not a conceptlib training checkpoint.
    """
    from safetensors import safe_open

    file = Path(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise UsageError(f"cannot read the training checkpoint ({exc})", path=file) from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UsageError("not a conceptlib training checkpoint", path=file)
    state: dict[str, Any] = _join_tensors(json.loads(meta["state"]), tensors)
    return state


# --- the embedding splice -------------------------------------------------------------------------

#: Precomputed first-layer projections: at most this many prompts (templates x captions) and this
#: many bytes per text encoder (about 3,600 distinct token positions for SD 1.x in float32).
_PRECOMPUTE_MAX_PROMPTS = 4096
_PRECOMPUTE_BUDGET = 32 * 2**20


def _splice(base: Any, vectors: Any, attention: Any) -> Any:
    """Splice trainable ``vectors`` into a frozen CLIP text encoder; returns the new embedding.

    ``base`` is the encoder's token ``nn.Embedding``; placeholder tokens come in as negative ids
    (``-1`` is ``vectors[0]``, ``-2`` is ``vectors[1]`` ...). Call ``place(ids)`` with the CPU ids
    of every batch before the encoder runs: where the placeholders sit is then known without a
    device sync, and two things are done only at those rows:

    * the embedding writes the vectors there (cast to the encoder's dtype; the vectors stay fp32);
    * ``attention`` (the first layer's self-attention) gets its query, key and value projections
      wrapped so that, with gradients on, only the placeholder rows are projected with a graph.
      The other rows are the frozen embeddings of ordinary tokens: their gradient leads nowhere,
      yet autograd would spend three full ``rows x width x width`` products per step on it (about
      a tenth of a tiny model's step). The vectors' gradient is the same up to rounding.

    The projections of those other rows depend only on the token and its position, never on the
    vectors. ``precompute(ids, inputs)`` projects every (token, position) pair of a run's prompts
    once, and batches made of those prompts then gather their rows from that table instead of
    projecting 77 rows three times per step (another tenth of a tiny model's step).
    """
    import torch
    from torch import nn

    class Positions:
        """Where the placeholders of the batch being encoded sit. A plain object, so that the
        embedding and the projections share it without either becoming the other's submodule
        (the encoder's parameters and state dict stay what they were)."""

        rows: torch.Tensor | None = None  # flat indices into batch x sequence
        which: torch.Tensor | None = None  # the vector each of those rows holds
        table_rows: torch.Tensor | None = None  # each flat row's row in the projection tables

    class PlaceholderRowsLinear(nn.Linear):
        """The frozen projection (its own weight and bias, shared), whose gradient reaches its
        input at the placeholder rows only."""

        def __init__(self, linear: nn.Linear, positions: Positions) -> None:
            nn.Module.__init__(self)  # nn.Linear's __init__ would allocate new weights
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight, self.bias = linear.weight, linear.bias
            self.positions = positions
            self.table: torch.Tensor | None = None  # a plain attribute: not in the state dict

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = self.positions.rows
            if not torch.is_grad_enabled() or rows is None:
                return super().forward(x)
            table_rows = self.positions.table_rows
            if self.table is not None and table_rows is not None:
                out = self.table.index_select(0, table_rows)
            else:
                out = super().forward(x.detach()).flatten(0, -2)
            picked = super().forward(x.flatten(0, -2).index_select(0, rows))
            # ``out`` is a fresh tensor outside the graph: writing into it saves a copy.
            return out.index_copy_(0, rows, picked).view(*x.shape[:-1], self.out_features)

    class Placeholders(nn.Module):
        """The token embedding with the vectors written at the placeholder rows."""

        def __init__(self) -> None:
            super().__init__()
            self.base = base
            self.vectors = vectors
            self.positions = Positions()
            self.projections = [PlaceholderRowsLinear(getattr(attention, n), self.positions) for n in ("q_proj", "k_proj", "v_proj")]
            self.table_rows: dict[bytes, torch.Tensor] = {}  # a prompt's ids -> its rows in the tables

        def place(self, ids: torch.Tensor) -> None:
            """Record where the placeholders of the next batch sit (``ids`` on the CPU)."""
            flat = ids.flatten()
            rows = (flat < 0).nonzero().squeeze(1)
            self.positions.rows = rows.to(self.vectors.device)
            self.positions.which = (-flat[rows] - 1).to(self.vectors.device)
            self.positions.table_rows = None
            if self.table_rows:
                found = [self.table_rows.get(row.numpy().tobytes()) for row in ids.reshape(-1, ids.shape[-1])]
                if all(r is not None for r in found):
                    self.positions.table_rows = torch.cat(found).to(self.vectors.device)  # type: ignore[arg-type]

        def precompute(self, ids: torch.Tensor, inputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], budget: int) -> int:
            """Project every (token, position) pair of the prompts ``ids`` (CPU, ``[prompts, length]``,
            placeholders negative) once; ``inputs(tokens, positions)`` gives the first layer's input
            rows for them. Returns the tables' size in bytes, or 0 where they would exceed
            ``budget`` bytes (the projections then run every step, as without tables)."""
            length = ids.shape[-1]
            keys = (ids.clamp(min=0) * length + torch.arange(length)).where(ids >= 0, -1)
            pairs, inverse = torch.unique(keys, return_inverse=True)  # sorted: the same tables every run
            if int(pairs[0]) == -1:  # placeholder rows: their slot is overwritten every step
                pairs, inverse = pairs[1:], (inverse - 1).clamp(min=0)
            item = self.projections[0].weight.element_size()
            size = len(pairs) * sum(p.out_features for p in self.projections) * item
            if size > budget:
                return 0
            device = self.projections[0].weight.device
            with torch.no_grad():
                x = inputs((pairs // length).to(device), (pairs % length).to(device))
                for projection in self.projections:
                    projection.table = nn.functional.linear(x, projection.weight, projection.bias)
            self.table_rows = {row.numpy().tobytes(): table_row for row, table_row in zip(ids, inverse, strict=True)}
            return size

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            rows, which = self.positions.rows, self.positions.which
            if rows is None or which is None:
                raise RuntimeError("place(ids) must be called before the encoder runs")
            out = self.base(input_ids.clamp(min=0))
            new = self.vectors.index_select(0, which).to(out.dtype)
            return out.flatten(0, -2).index_copy(0, rows, new).view_as(out)

    splice = Placeholders()
    for name, projection in zip(("q_proj", "k_proj", "v_proj"), splice.projections, strict=True):
        setattr(attention, name, projection)
    return splice


def _freeze(unet: Any, vae: Any, encoders: list[Any], *, device: Any, gradient_checkpointing: bool) -> None:
    """Set up the models both trainers keep fixed: no gradients, evaluation mode, on ``device``;
    the UNet with gradient checkpointing when asked, and channels-last on a CPU."""
    for module in (vae, unet, *encoders):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if device.type == "cpu":
        _channels_last(unet)


def _channels_last(module: Any) -> None:
    """Re-lay every 4-D convolution weight as channels-last, without growing resident memory.

    On a CPU, channels-last weights send the UNet's convolutions (and the backward pass that
    carries the gradient to the conditioning) through oneDNN instead of PyTorch's slow im2col
    kernels, which is about a quarter off a step on the SD 1.5 UNet at small sizes
    (BENCHMARKS.md). Each weight is copied into new memory and the original's pages of the
    memory-mapped weight file are given back (:func:`conceptlib._mapped.release`), so the
    resident set ends where it started, as ``module.to(memory_format=...)`` would not. Permuting
    inside the mapped storage instead keeps memory too, but costs a copy-on-write page fault
    every 4 KB: 3.5 to 7 s for SD 1.5's 2.2 GB of convolution weights, against 0.8 s.
    """
    import torch
    from torch import nn

    from conceptlib import _mapped

    mappings = _mapped.file_mappings()
    for layer in module.modules():
        if not isinstance(layer, nn.Conv2d):
            continue
        weight = layer.weight.data
        if weight.dim() == 4 and weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last):
            layer.weight.data = weight.contiguous(memory_format=torch.channels_last)
            _mapped.release(weight, mappings)


# --- previews and plots ---------------------------------------------------------------------------


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _grid(images: list[tuple[str, Image.Image]], path: Path) -> Path:
    """Lay out labelled images in rows of up to 8 and save them as one PNG."""
    from PIL import Image, ImageDraw

    size = max(max(img.size) for _, img in images)
    cols = min(8, len(images))
    rows = math.ceil(len(images) / cols)
    label_h = 18
    sheet = Image.new("RGB", (cols * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, (label, img) in enumerate(images):
        x, y = (i % cols) * size, (i // cols) * (size + label_h)
        sheet.paste(img.convert("RGB").resize((size, size)), (x, y + label_h))
        draw.text((x + 3, y + 2), label, fill="black", font=font)
    _save_png(sheet, path)
    return path


def _save_png(img: Image.Image, path: Path) -> None:
    import io

    from conceptlib._atomic import atomic_write_bytes

    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _loss_plot(losses: list[float], path: Path, *, title: str) -> Path:
    """Draw the loss curve with Pillow (matplotlib is not a dependency): raw and smoothed."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 400, 56
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font(12)
    values = [v for v in losses if math.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    x0, y0, x1, y1 = margin, 28, width - 16, height - margin + 16

    def point(i: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i / max(1, len(losses) - 1))
        return x, y1 - (y1 - y0) * ((v - low) / (high - low))

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y1 - (y1 - y0) * frac
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 7), f"{low + (high - low) * frac:.4g}", fill="black", font=font)
        if 0 < frac < 1:
            draw.line((x0 + 1, y, x1 - 1, y), fill=(230, 230, 230))
    for frac in (0.0, 0.5, 1.0):
        step = round(frac * max(0, len(losses) - 1)) + 1
        x = x0 + (x1 - x0) * frac
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 10, y1 + 6), str(step), fill="black", font=font)
    draw.text((x0, 8), title, fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 12, height - 20), "step", fill="black", font=font)
    finite = [(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
    if len(finite) > 1:
        draw.line([point(i, v) for i, v in finite], fill=(170, 170, 170), width=1)
        window = max(1, len(finite) // 20)
        cumsum = np.cumsum([0.0] + [v for _, v in finite])
        smooth = [(finite[i][0], (cumsum[i + 1] - cumsum[max(0, i + 1 - window)]) / min(window, i + 1)) for i in range(len(finite))]
        draw.line([point(i, v) for i, v in smooth], fill=(31, 119, 180), width=2)
    _save_png(img, path)
    return path


# --- pieces both trainers share (textual inversion here, hypernetworks in train_hypernet) ---------


def _read_images(config: TrainConfig, resolution: int, notes: list[str]) -> tuple[list[_TrainImage], list[Path], str]:
    """Every training image, checked and resized, with its caption (before anything heavy loads).

    Returns:
        The images; those the library keeps with the result (others are named in ``notes``);
        and the digest of the image files (``--resume`` refuses other images).
    """
    image_files = _image_files(Path(config.images).expanduser())
    digest = _images_digest(image_files, Path(config.images).expanduser())
    images = []
    kept: list[Path] = []
    for path in image_files:
        refused = _check_image_file(path)
        if refused is None:
            kept.append(path)
        else:
            notes.append(f"{path.name} is trained on but not kept with the concept: {refused}")
        pixels, original_size, crop = _load_image(path, resolution)
        images.append(_TrainImage(path, _caption(path, config.captions), pixels, original_size, crop))
        if min(original_size) < resolution:
            notes.append(f"{path.name} is {original_size[1]}x{original_size[0]}, upscaled to {resolution} px")
    return images, kept, digest


def _cache_latents(vae: Any, images: list[_TrainImage], *, flip: bool, device: Any, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's (and with ``flip`` its mirror image's) latent distribution, encoded once.

    Returns:
        Mean and standard deviation, each ``[flip, image, channels, h, w]`` in float32: a few
        hundred kilobytes per image even at 1024 px. Steps sample from them, as the reference
        script's ``latent_dist.sample()`` does, without running the VAE encoder again.
    """
    import torch

    flips = (False, True) if flip else (False,)
    # Every (flip, image) pair in one sequence, so both flips of a few small images are one VAE
    # call; batches of 8 only for small images: a 1024 px encode needs gigabytes per image.
    pairs = [(flipped, img) for flipped in flips for img in images]
    chunk = 8 if resolution <= 256 else 1
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), chunk):
            batch = np.stack([img.pixels[..., ::-1] if flipped else img.pixels for flipped, img in pairs[start : start + chunk]])
            dist = vae.encode(torch.from_numpy(batch).to(device)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    shape = (len(flips), len(images), *means[0].shape[1:])
    return torch.cat(means).view(shape), torch.cat(stds).view(shape)


def _optimizer(params: list[Any], config: TrainConfig, device: Any, notes: list[str]) -> tuple[Any, Any, Any, list[tuple[float, int]] | None, int]:
    """AdamW over ``params`` alone, its learning-rate schedule, and fp16's gradient scaler.

    Returns:
        ``(optimizer, lr_scheduler, scaler or None, AUTOMATIC1111 schedule or None, total steps)``;
        a schedule that ends before ``config.steps`` ends the run there (said in ``notes``).
    """
    import torch

    total_steps = config.steps
    schedule = None
    if config.lr_schedule is not None:
        schedule = parse_lr_schedule(config.lr_schedule, config.steps)
        if schedule[-1][1] < total_steps:
            notes.append(f"the learning-rate schedule ends at step {schedule[-1][1]}: training stops there")
            total_steps = schedule[-1][1]
    optimizer = torch.optim.AdamW(
        params,
        lr=1.0 if schedule else config.lr,  # with a schedule, LambdaLR's factor *is* the rate
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    if schedule is not None:
        pairs = schedule
        lr_scheduler: Any = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(pairs, step))
    else:
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type) if config.mixed_precision == "fp16" else None
    return optimizer, lr_scheduler, scaler, schedule, total_steps


def _device_and_group(config: TrainConfig, notes: list[str]) -> tuple[Any, int, int, Any]:
    """The training device, this process's rank and the world size, and the frozen models' dtype.

    Under ``accelerate launch`` / torchrun each process takes every world-th sample, gradients
    are averaged, and rank 0 alone writes files. Each process gets its own GPU unless the device
    names one.
    """
    import torch

    device = torch.device(process_device(config.device))
    if device.type == "cpu" and torch.cuda.is_available():
        notes.append("trained on the CPU while a CUDA GPU is available: pass --device cuda (or auto) for GPU speed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world = join("nccl" if device.type == "cuda" else "gloo")
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]
    return device, rank, world, weight_dtype


def _training_model(config: TrainConfig, home: str | os.PathLike[str]) -> tuple[ModelInfo, ModelConfigs | None]:
    """The model to train on, with weights; a single file's configs, found (fetched once) now,
    before any image or weight loads.

    Raises:
        UsageError: a family name (no weights). ModelWeightsMissingError: configs alone.
    """
    from conceptlib.models import require_weights, resolve_model
    from conceptlib.single_file import resolve_configs

    info = resolve_model(config.model, home=home)
    configs: ModelConfigs | None = None
    if info.kind == "checkpoint" and info.path:
        configs = resolve_configs(info, config.model_config)
    elif info.kind != "diffusers" or not info.path:
        raise UsageError(
            f"training needs weights; {config.model!r} is a family name",
            hint="pass a diffusers folder (with model_index.json) or a .safetensors checkpoint; `conceptlib models create-tiny` makes a tiny one to try",
        )
    require_weights(info)  # a diffusers folder of configs alone: one line now, not a diffusers error later
    return info, configs


class _Sampler:
    """Everything random about a micro-batch, as a pure function of (seed, step, micro).

    Keyed by the micro-batch's global slot, not by (micro, rank): N processes draw what one
    process with N times the accumulation draws, so the two runs end with the same result.
    """

    def __init__(self, config: TrainConfig, images: list[_TrainImage], templates: list[str], word: str, *, rank: int, world: int, latent_shape: tuple[int, ...], timesteps: int) -> None:
        self.config, self.images, self.templates, self.word = config, images, templates, word
        self.rank, self.world, self.latent_shape, self.timesteps = rank, world, latent_shape, timesteps
        self.epoch_orders: dict[int, list[int]] = {}

    def __call__(self, step: int, micro: int) -> tuple[list[int], torch.Tensor, list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image indices, flipped, prompts, timesteps, latent noise, noise) of one micro-batch."""
        import torch

        config, n_images = self.config, len(self.images)
        indices = []
        for b in range(config.batch_size):
            k = ((step * config.grad_accum + micro) * self.world + self.rank) * config.batch_size + b
            epoch = k // n_images
            if epoch not in self.epoch_orders:
                self.epoch_orders.clear()  # one epoch at a time is all a run ever needs
                self.epoch_orders[epoch] = torch.randperm(n_images, generator=_generator(config.seed, _EPOCH_STREAM, epoch)).tolist()
            indices.append(self.epoch_orders[epoch][k % n_images])
        g = _generator(config.seed, _STEP_STREAM, step, micro * self.world + self.rank)
        size = config.batch_size
        flipped = torch.rand(size, generator=g) < 0.5 if config.flip else torch.zeros(size, dtype=torch.bool)
        picks = torch.randint(len(self.templates), (size,), generator=g).tolist()
        captions = [self.images[i].caption for i in indices]
        if config.shuffle_tags or config.tag_dropout:
            # A stream of its own: turning the tag options on leaves every other draw as it was.
            tag_g = _generator(config.seed, _TAG_STREAM, step, micro * self.world + self.rank)
            captions = [_vary_tags(c, tag_g, shuffle=config.shuffle_tags, dropout=config.tag_dropout) for c in captions]
        prompts = [_prompt(self.templates[t], self.word, c) for t, c in zip(picks, captions, strict=True)]
        timesteps = torch.randint(0, self.timesteps, (size,), generator=g)
        latent_noise = torch.randn((size, *self.latent_shape), generator=g)
        noise = torch.randn((size, *self.latent_shape), generator=g)
        return indices, flipped, prompts, timesteps, latent_noise, noise

    def evaluation(self, loss: Callable[..., Any]) -> float:
        """``loss`` on a fixed batch (up to 8 images x 4 timesteps, fixed prompts and noise), no grad.

        The same samples before and after training make the difference a paired comparison:
        it shows what training changed, not sampling noise.
        """
        import torch

        config, images = self.config, self.images
        g = _generator(config.seed, _EVAL_STREAM)
        shown = list(range(min(len(images), 8)))
        indices = shown * 4
        fixed_t = torch.linspace(50, self.timesteps - 50, 4).long().repeat_interleave(len(shown))
        prompts = [_prompt(self.templates[i % len(self.templates)], self.word, images[i].caption) for i in indices]
        latent_noise = torch.randn((len(indices), *self.latent_shape), generator=g)
        noise = torch.randn((len(indices), *self.latent_shape), generator=g)
        # In chunks of the training batch: up to 32 samples at once would need more memory
        # than a training step does, and so set the run's peak for a number it only reports.
        size, total = config.batch_size, 0.0
        with torch.no_grad():
            for lo in range(0, len(indices), size):
                part = slice(lo, lo + size)
                chunk = indices[part]
                total += float(loss(chunk, torch.zeros(len(chunk), dtype=torch.bool), prompts[part], fixed_t[part], latent_noise[part], noise[part])) * len(chunk)
        return total / len(indices)


def _diverged(config: TrainConfig, schedule: list[tuple[float, int]] | None, checkpoint_path: Path, step: int, what: str) -> TrainingDivergedError:
    """The error of a run whose loss or weights became NaN/Inf, saying what is kept and what to try."""
    kept = checkpoint_path if checkpoint_path.is_file() else None
    rate = lr_at(schedule, step) if schedule else config.lr
    precision = " or switch --mixed-precision fp16 to bf16 (or no)" if config.mixed_precision == "fp16" else ""
    where = f"the last good checkpoint is kept: {kept} (resume with --resume)" if kept else "no checkpoint had been written yet"
    return TrainingDivergedError(
        f"{what} at step {step}: training stopped; {where}",
        step=step,
        checkpoint=str(kept) if kept else None,
        hint=f"lower the learning rate (it was {rate:g}; try {rate / 10:g}){precision}",
    )


def _optimizer_step(
    params: list[Any], optimizer: Any, lr_scheduler: Any, scaler: Any, step_loss: Any, *, config: TrainConfig, world: int, step: int, failed: Callable[[int, str], Exception]
) -> float:
    """After the backward passes of step ``step``: average gradients and loss over the processes,
    refuse a non-finite loss (``failed(step, what)`` is raised), clip, step the optimizer and the
    schedule.

    Returns:
        The step's mean loss.
    """
    import torch

    if world > 1:
        # SUM then divide: gloo (CPU) has no AVG. A parameter no sample reached has no gradient
        # in this process, and every process must take part in each all-reduce.
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad)
            param.grad /= world
        torch.distributed.all_reduce(step_loss)
        step_loss /= world
    value = float(step_loss)
    if not math.isfinite(value):
        raise failed(step, f"the loss became {value}")
    if config.clip_grad_norm or config.clip_grad_value:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradient, not the loss-scaled one
        if config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        else:
            torch.nn.utils.clip_grad_value_(params, config.clip_grad_value)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def _preview_pipeline(vae: Any, tokenizers: list[Any], unet: Any, scheduler_config: Any, *, sdxl: bool) -> Any:
    """A pipeline for training previews, without text encoders: the trainer encodes the prompts
    itself (given one, the pipelines would cast the embeddings to its dtype, float32 for the
    trained rows' sake, and feed them to an fp16/bf16 UNet)."""
    from diffusers import DPMSolverMultistepScheduler

    pipe: Any
    with quiet_loading():  # importing the pipelines warns about image processors
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        sampler = DPMSolverMultistepScheduler.from_config(scheduler_config)
        if sdxl:
            pipe = StableDiffusionXLPipeline(vae, None, None, tokenizers[0], tokenizers[1], unet, sampler, force_zeros_for_empty_prompt=False, add_watermarker=False)
        else:
            pipe = StableDiffusionPipeline(vae, None, tokenizers[0], unet, sampler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pictures(losses: list[float], previews: list[tuple[int, Path]], out: Path, *, title: str) -> tuple[Path, Path | None]:
    """A run's loss curve (``loss.png``) and, when it rendered previews, their labelled grid."""
    from PIL import Image

    plot = _loss_plot(losses, out / "loss.png", title=title)
    grid = _grid([(f"step {s}", Image.open(p)) for s, p in previews], out / "previews" / "grid.png") if previews else None
    return plot, grid


def _render_preview(
    pipe: Any, encode: Callable[[list[str]], tuple[Any, Any]], prompt: str, path: Path, *, config: TrainConfig, resolution: int, dtype: Any, scaling: float, shift: float
) -> None:
    """Render ``prompt`` with the preview pipeline (conditioning from ``encode``), decode it in
    fp32 and write the PNG."""
    import torch
    from PIL import Image

    with torch.no_grad(), warnings.catch_warnings():
        # diffusers' DPM-Solver builds its sigmas with np.array(tensor), which numpy 2 flags.
        warnings.simplefilter("ignore", DeprecationWarning)
        cond, pooled = encode([prompt])
        uncond, uncond_pooled = encode([""])
        kwargs: dict[str, Any] = {"prompt_embeds": cond.to(dtype), "negative_prompt_embeds": uncond.to(dtype)}
        if pooled is not None and uncond_pooled is not None:
            kwargs.update(pooled_prompt_embeds=pooled.to(dtype), negative_pooled_prompt_embeds=uncond_pooled.to(dtype))
        latents = pipe(
            **kwargs,
            num_inference_steps=config.preview_steps,
            guidance_scale=config.preview_guidance,
            height=resolution,
            width=resolution,
            generator=_generator(config.seed, _PREVIEW_STREAM),
            output_type="latent",
        ).images
        # Decode here in fp32: the pipelines would feed fp16 latents to the fp32 VAE.
        decoded = pipe.vae.decode(latents.float() / scaling + shift).sample[0]
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    _save_png(Image.fromarray(pixels), path)


# --- the training run -----------------------------------------------------------------------------


def _check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train, before anything loads (ranges: see the constants)."""
    from conceptlib.render import MAX_GUIDANCE, MAX_SEED, MAX_SIZE, MAX_STEPS, check_range

    if config.type not in ("object", "style"):
        raise UsageError(f"unknown --type {config.type!r}", hint="use object or style")
    check_range("--vectors", config.vectors, 1, MAX_VECTORS, hint="1 to 8 is usual: every vector takes a place in the 75-token prompt")
    check_range("--steps", config.steps, 1, MAX_TRAIN_STEPS)
    check_range("--batch-size", config.batch_size, 1, MAX_BATCH_SIZE)
    check_range("--grad-accum", config.grad_accum, 1, MAX_GRAD_ACCUM)
    for label, every in (("--warmup-steps", config.warmup_steps), ("--save-every", config.save_every), ("--preview-every", config.preview_every)):
        check_range(label, every, 0, MAX_TRAIN_STEPS)
    check_range("--preview-steps", config.preview_steps, 1, MAX_STEPS)
    check_range("preview guidance", config.preview_guidance, 0.0, MAX_GUIDANCE)
    if config.scheduler not in SCHEDULERS:
        raise UsageError(f"unknown --scheduler {config.scheduler!r}", hint=f"use one of: {', '.join(SCHEDULERS)}")
    if config.warmup_steps and config.lr_schedule is not None:
        raise UsageError("--warmup-steps does not apply to --lr-schedule", hint="write the warm-up into the schedule, e.g. \"1e-4:50, 5e-3\"")
    if config.warmup_steps and config.scheduler == "constant":
        raise UsageError("--warmup-steps needs a scheduler that warms up; constant does not", hint="pass --scheduler constant_with_warmup (or cosine, linear, ...)")
    if config.lr_schedule is not None and config.scheduler != "constant":
        raise UsageError("--lr-schedule already is a schedule: it cannot be combined with --scheduler", hint="drop one of them")
    check_range("--lr", config.lr, 0.0, MAX_LR, above=True, hint="0.005 is usual for textual inversion")
    if config.lr_schedule is not None:
        parse_lr_schedule(config.lr_schedule, config.steps)  # its errors now, not after loading
    check_range("adam_beta1", config.adam_beta1, 0.0, 1.0, below=True)
    check_range("adam_beta2", config.adam_beta2, 0.0, 1.0, below=True)
    check_range("adam_epsilon", config.adam_epsilon, 0.0, 1.0, above=True)
    check_range("weight_decay", config.weight_decay, 0.0, 1.0)
    if config.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"unknown --mixed-precision {config.mixed_precision!r}", hint="use no, fp16 or bf16")
    if config.captions is not None and config.captions not in CAPTIONS:
        raise UsageError(f"unknown --captions {config.captions!r}", hint="use filewords or sidecar")
    if config.latent_sampling not in LATENT_SAMPLING:
        raise UsageError(f"unknown latent sampling {config.latent_sampling!r}", hint="use random or deterministic")
    check_range("--resolution", config.resolution, 8, MAX_SIZE)
    if config.resolution is not None and config.resolution % 8:
        raise UsageError(f"--resolution: must be a multiple of 8, got {config.resolution}", hint="the latent grid of every SD model is 1/8 of the pixels")
    check_range("--seed", config.seed, 0, MAX_SEED)
    for label, clip in (("--clip-grad-norm", config.clip_grad_norm), ("--clip-grad-value", config.clip_grad_value)):
        check_range(label, clip, 0.0, MAX_CLIP, hint="0 turns clipping off")
    if config.clip_grad_norm and config.clip_grad_value:
        raise UsageError("--clip-grad-norm and --clip-grad-value both clip the gradient", hint="pass one of them")
    check_range("--tag-dropout", config.tag_dropout, 0.0, 1.0, below=True, hint="it is the chance to leave out each tag, e.g. 0.1")
    if config.hypernetwork:
        hypernetwork_fields(config)  # its errors now, before anything loads


#: The most layers a hypernetwork module may have, and the largest multiple of a width a layer
#: may be (AUTOMATIC1111 sets no bound; 8x of 1280 is already 100 M parameters per module).
MAX_HYPERNET_LAYERS = 16
MAX_HYPERNET_MULTIPLE = 8.0


def _numbers(text: str, label: str) -> list[float]:
    try:
        values = [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"{label}: {text!r} is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{label}: {text!r} is not a comma-separated list of numbers")
    return values


def hypernetwork_fields(config: TrainConfig) -> dict[str, Any]:
    """The AUTOMATIC1111 fields of the hypernetwork ``config`` describes (what its ``.pt`` says).

    Raises:
        UsageError: a layer structure that does not start and end with 1, an unknown
            activation or initialisation, dropout not in [0, 1) or on the first or last layer.
    """
    from conceptlib.hypernet_apply import WEIGHT_INITS, _activation

    structure = _numbers(config.layer_structure, "--layer-structure")
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise UsageError(f"--layer-structure {config.layer_structure!r} must start and end with 1", hint="e.g. 1,2,1 or 1,1.5,1.5,1")
    if len(structure) > MAX_HYPERNET_LAYERS + 1 or any(not 0 < x <= MAX_HYPERNET_MULTIPLE for x in structure):
        raise UsageError(f"--layer-structure: at most {MAX_HYPERNET_LAYERS} layers, each above 0 and at most {MAX_HYPERNET_MULTIPLE:g} times the width")
    try:
        _activation(config.activation)
    except ConceptlibError as exc:
        raise UsageError(f"--activation: {exc.message}", hint="linear, relu, leakyrelu, elu, swish, tanh, sigmoid ...") from None
    if config.weight_init not in WEIGHT_INITS:
        raise UsageError(f"unknown --weight-init {config.weight_init!r}", hint=f"use one of: {', '.join(WEIGHT_INITS)}")
    dropout = [0.0] * len(structure)
    if config.dropout_structure is not None:
        dropout = _numbers(config.dropout_structure, "--dropout")
        if len(dropout) != len(structure) or dropout[0] != 0 or dropout[-1] != 0 or any(not 0 <= d < 1 for d in dropout):
            raise UsageError(
                f"--dropout {config.dropout_structure!r}: one probability per layer boundary ({len(structure)}), each from 0 up to 1, 0 first and last",
                hint="e.g. 0,0.3,0 for --layer-structure 1,2,1",
            )
    if config.hypernet_widths is not None:
        widths = _numbers(config.hypernet_widths, "--hypernet-widths")
        if any(w != int(w) or not 1 <= w <= 8192 for w in widths):
            raise UsageError(f"--hypernet-widths {config.hypernet_widths!r}: attention widths are whole numbers such as 320, 640, 768, 1280")
    return {
        "layer_structure": structure,
        "activation_func": config.activation,
        "is_layer_norm": config.layer_norm,
        "weight_initialization": config.weight_init,
        "activate_output": config.activate_output,
        "use_dropout": any(d > 0 for d in dropout),
        "dropout_structure": dropout,
        "last_layer_dropout": len(dropout) > 2 and dropout[-2] > 0,
        "optional_info": None,
    }


#: Settings that name files or folders: compared by where they lead, not by how they are spelt.
_PATH_SETTINGS = ("model", "images", "templates", "model_config")


def _resolved_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every existing path made absolute (``./m`` and ``m`` are one model)."""
    out = dict(settings)
    for key in _PATH_SETTINGS:
        value = out.get(key)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            if path.exists():
                out[key] = str(path.resolve())
    return out


def _frozen_digest(*modules: Any) -> str:
    """A fingerprint of frozen weights: each module's first and last two tensors, as float32.

    Cheap (a UNet's conv_in and conv_out, not its 3.4 GB), and any other checkpoint of the
    architecture (another seed, a fine-tune) differs there; float32 so precision does not count.
    """
    import torch

    digest = hashlib.sha256()
    for module in modules:
        tensors = list(module.state_dict().values())
        for tensor in tensors[:2] + tensors[-2:]:
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _images_digest(files: list[Path], root: Path) -> str:
    """One sha256 over the training images' names and bytes: any image added, removed or edited changes it."""
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _resume_differences(
    saved: dict[str, Any], config: TrainConfig, *, native: int | None = None, home: str | os.PathLike[str] | None = None
) -> list[str]:
    """The settings of ``config`` that differ from a checkpoint's, compared by their effect.

    ``--resolution`` left out is the model's ``native`` size, ``--init-word`` left out is
    ``*``, and a registered model name is the folder it names: the same run spelt another way
    resumes.
    """
    # A checkpoint from an older conceptlib lacks the settings added since: those had their
    # defaults; and it stored paths as typed (resolved here against today's folder, best effort).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    now = _effective_settings(config.to_dict(), native=native, home=home)
    before = _effective_settings({**defaults, **saved}, native=native, home=home)
    return sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])


def _effective_settings(settings: dict[str, Any], *, native: int | None, home: str | os.PathLike[str] | None) -> dict[str, Any]:
    from conceptlib.errors import ConceptlibError
    from conceptlib.models import resolve_model

    out = _resolved_settings(settings)
    if out.get("resolution") is None and native is not None:
        out["resolution"] = native
    if out.get("init_word") is None:
        out["init_word"] = "*"
    model = out.get("model")
    if isinstance(model, str) and model and not Path(model).is_absolute():
        try:  # a registered name: the folder or file it stands for
            where = resolve_model(model, home=home, hash_files=False).path
        except ConceptlibError:
            where = None
        if where:
            out["model"] = str(Path(where).resolve())
    return out


def _check_library(
    config: TrainConfig, home: str | os.PathLike[str] | None, info: ModelInfo, *, token: str, name: str, embedding_path: Path
) -> str | None:
    """The library's pre-flight: the token and the name must be free before any step runs.

    Torch-free. When resuming, a token held by the concept this run added earlier (its source
    is ``embedding_path``) is no clash.

    Returns:
        That concept's name when resuming a run the library already holds, else None.

    Raises:
        TokenInUseError: another concept of the family uses ``token``.
        ConceptExistsError: ``--name`` is taken by another concept.
    """
    from conceptlib.library import Library

    ours: str | None = None
    library = Library.open(home)
    try:
        owner = library.token_owner(info.family, token)
        if owner is not None and config.resume and library.show(owner).source.get("path") == str(embedding_path):
            ours = owner  # continuing the run updates the concept it made
        elif owner is not None:
            raise TokenInUseError(token, family=info.family_label, used_by=owner)
        if config.name and library.has(name) and name != ours:
            raise ConceptExistsError(name)
    finally:
        library.close()
    return ours


def _check_resume(
    state: dict[str, Any],
    config: TrainConfig,
    info: ModelInfo,
    *,
    checkpoint_path: Path,
    native: int,
    home: str | os.PathLike[str] | None,
    frozen: str,
    images: str,
    prompts: str,
    total_steps: int,
    ours: str | None,
) -> None:
    """Refuse to resume from a checkpoint of another run, or one with nothing left to train.

    The checkpoint's settings must be this run's (compared by their effect, see
    :func:`_resume_differences`), and its model, frozen weights, images and prompts the same
    (``frozen``, ``images``, ``prompts``: this run's digests). Torch-free: ``state`` is what
    :func:`load_checkpoint` returned, and only its plain values are read.

    Raises:
        UsageError: what differs, or that the checkpoint is already at ``total_steps``.
    """
    changed = _resume_differences(state["config"], config, native=native, home=home)
    if changed:
        raise UsageError(
            f"--resume: these settings differ from the checkpoint's: {', '.join(changed)}",
            path=checkpoint_path,
            hint="resume with the same settings (only --steps, --save-every, previews and output options may change)",
        )
    if state["model"] != info.fingerprints():
        raise UsageError("--resume: the checkpoint was trained on another model (text-encoder fingerprints differ)", path=checkpoint_path)
    if state.get("frozen", frozen) != frozen:
        raise UsageError(
            "--resume: the checkpoint was trained on another model (its UNet or VAE weights differ)",
            path=checkpoint_path, hint="resume with the model the run started with, or start a new run without --resume",
        )
    if state.get("images", images) != images:
        raise UsageError(
            f"--resume: the images in {config.images} changed since the checkpoint (added, removed or edited)",
            path=checkpoint_path, hint="put the images back as they were, or start a new run without --resume",
        )
    if state.get("prompts", prompts) != prompts:
        raise UsageError(
            "--resume: the training prompts changed since the checkpoint (the template file's lines or the captions)",
            path=checkpoint_path, hint="put the templates and captions back as they were, or start a new run without --resume",
        )
    finishing = int(state["step"]) == total_steps and config.add_to_library and ours is None
    if int(state["step"]) >= total_steps and not finishing:
        # (A run that trained to the end but never got into the library, whose add failed,
        # is finished instead: no steps, then the library step.)
        if total_steps < config.steps:  # the schedule ends first: more --steps would not help
            limit, hint = (
                f"--lr-schedule ends at step {total_steps}",
                "extend the schedule: its last rate without a step runs up to --steps",
            )
        else:
            limit, hint = f"--steps {config.steps}", f"pass --steps above {int(state['step'])} to train on"
        raise UsageError(
            f"--resume: the checkpoint is at step {int(state['step'])}; {limit} leaves nothing to train",
            path=checkpoint_path, hint=hint,
        )


def _check_run_folder(config: TrainConfig, out: Path, checkpoint_path: Path) -> None:
    """Refuse a run folder that is a file, and ``--resume`` with no checkpoint to resume from.

    Raises:
        UsageError: either case; the path and the next step are named.
    """
    if out.exists() and not out.is_dir():
        raise UsageError("is a file; the run folder must be a folder", path=out, hint="pass --out a folder (new or from an earlier run)")
    if config.resume and not checkpoint_path.is_file():
        raise UsageError("--resume: no checkpoint to resume from", path=checkpoint_path, hint="run without --resume to start, or pass the run's --out")


def _templates(config: TrainConfig, token: str, captions: list[str]) -> list[str]:
    """The prompt templates of a run: ``--templates``, else the built-in ones for its type and captions.

    Raises:
        UsageError: no template writes ``[name]`` and no caption holds the token, so no prompt
            would teach the concept (every step would train vectors nothing uses).
    """
    if config.templates:
        templates = read_templates(config.templates)
    elif config.captions is not None:
        templates = list(STYLE_FILEWORDS_TEMPLATES if config.type == "style" else OBJECT_FILEWORDS_TEMPLATES)
    else:
        templates = list(STYLE_TEMPLATES if config.type == "style" else OBJECT_TEMPLATES)
    if not any("[name]" in t for t in templates) and not any(token in caption for caption in captions):
        raise UsageError(
            f"no template uses [name] and no caption holds the token {token!r}: no prompt would teach the concept",
            path=config.templates, hint="write [name] where the concept's token goes",
        )  # fmt: skip
    return templates


def _add_to_library(
    home: str | os.PathLike[str] | None,
    ours: str | None,
    embedding_path: Path,
    *,
    config: TrainConfig,
    token: str,
    images: list[Path],
    metadata: dict[str, str],
    notes: list[str],
) -> tuple[Concept | None, str | None]:
    """Land a finished run in the library: update the concept it made (``ours``) or add one.

    Images the library does not keep are appended to ``notes`` (the result's warnings).
    Torch-free: the run's vectors are already in ``embedding_path``.

    Returns:
        The concept, and ``"updated"`` or ``"added"``.

    Raises:
        DuplicateConceptError: the library holds these vectors already (its hint says where
            the run's file is kept).
    """
    from conceptlib.library import Library

    concept = None
    action: str | None = None
    library = Library.open(home)
    try:
        if ours is not None:
            action = "updated"
            concept = library.update(ours, embedding_path, token=token, type=config.type, images=images, metadata=metadata)
        else:
            action = "added"
            try:
                report = library.add(
                    embedding_path,
                    name=config.name,
                    token=token,
                    type=config.type,
                    images=images,
                    metadata=metadata,
                )
                concept = report.one()
                # Checked before training, so only a file changed since then lands here.
                notes += [f"{Path(s.path).name} is not kept with the concept: {s.reason}" for s in report.skipped]
            except DuplicateConceptError as exc:
                # The same seed, images and settings learn the same vectors.
                exc.hint = (
                    f"the run's vectors are kept in {embedding_path}; another --seed (or --init-word) "
                    f"learns others, or `conceptlib show {exc.existing}` is the concept you already have"
                )
                raise
    finally:
        library.close()
    return concept, action


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Learn a textual-inversion concept and (by default) add it to the library.

    Args:
        config: the run's settings (see :class:`TrainConfig`).
        progress: called as ``progress(step, total_steps, loss)`` after each optimizer step,
            and once with ``loss=None`` when the loop starts.

    Returns:
        A :class:`TrainResult`: the concept, its file, the run folder, losses, previews.

    Raises:
        UsageError: contradictory or impossible settings, a model without weights, a run
            folder that already holds a checkpoint (pass ``resume``) or none to resume.
        ModelWeightsMissingError: a diffusers folder of configs without weight files.
        TrainingImageError: no images, or an unreadable or too small one, or a file whose
            bytes are no image at all (a script named ``.png``); the file is named. Images
            that train but that the library does not keep with the concept (a ``.tif``, a
            JPEG named ``.png``) are named in the result's warnings instead.
        TokenInUseError: the token collides with the tokenizer's vocabulary or with a
            concept in the library, found before any step runs.
        TrainingDivergedError: the loss became NaN/Inf; the last good checkpoint is kept.
        MissingDependencyError: torch, diffusers or transformers is not installed.

    Example:
        >>> cfg = TrainConfig(model="sd15/", images="cat/", token="<my-cat>", init_word="cat")
        >>> train(cfg).eval_loss_end < train(cfg).eval_loss_start  # doctest: +SKIP
        True
    """
    from conceptlib._deps import require

    started = time.perf_counter()
    _check_config(config)
    require("torch", "diffusers", "transformers", purpose="training")
    if config.hypernetwork:
        from conceptlib.train_hypernet import train_hypernetwork

        return train_hypernetwork(config, progress)

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModelWithProjection

    from conceptlib import config as conceptlib_config
    from conceptlib.embedding import Embedding
    from conceptlib.formats import write
    from conceptlib.library import check_name, check_token
    from conceptlib.pipelines import load_training_components
    from conceptlib.single_file import native_size
    from conceptlib.slug import slugify
    from conceptlib.tensor import Tensor
    from conceptlib.validate import expansions, validate

    notes: list[str] = []  # TrainResult.warnings
    token = check_token(config.token)
    home = conceptlib_config.home(config.home)
    name = check_name(config.name) if config.name else (slugify(token.strip("<>")) or "concept")
    out = (Path(config.out).expanduser() if config.out else home / "training" / name).resolve()
    checkpoint_path = out / CHECKPOINT_NAME

    # ---- 1. The device and precision; the process group of a data-parallel run. ----------------
    # Under `accelerate launch` / torchrun each process takes every world-th sample, gradients of
    # the vectors are averaged, and rank 0 alone writes files. Each process gets its own GPU
    # unless the device names one.
    device, rank, world, weight_dtype = _device_and_group(config, notes)
    main_process = rank == 0

    # ---- 2. The model: resolve it and check it has weights (no torch needed yet). -------------
    info, configs = _training_model(config, home)
    assert info.path is not None
    root = Path(info.path)
    sdxl = info.family == "sdxl"
    keys = info.encoder_keys  # canonical order = text_encoder, text_encoder_2
    resolution = config.resolution or native_size(info, configs)
    _check_run_folder(config, out, checkpoint_path)

    # ---- 3. Images: check them all before loading anything heavy. --------------------------------
    images, kept_images, images_digest = _read_images(config, resolution, notes)
    templates = _templates(config, token, [im.caption for im in images])
    prompts_digest = hashlib.sha256(json.dumps([templates, [im.caption for im in images]]).encode("utf-8")).hexdigest()

    # ---- 4. The token: validate it against the model and the library. ---------------------------
    # Against the model (vocabulary, multi-vector expansions) and the library (a token already
    # used in this family), before anything expensive runs. The widths are all the probe needs.
    names = expansions(token, config.vectors)
    token_text = " ".join(names)
    probe = Embedding({k: Tensor.from_numpy(np.full((config.vectors, w), 0.01, np.float32)) for k, w in info.widths.items()}, token=token)
    clashes = [f for f in validate(probe, info, token=token, home=home) if f.severity == "error" and f.code.startswith(("token", "expansion"))]
    if clashes:
        raise TrainingTokenError(clashes[0].message)
    embedding_path = out / f"{name}.safetensors"
    ours: str | None = None  # the concept an earlier part of this run added, when resuming it
    if config.add_to_library and main_process:
        ours = _check_library(config, home, info, token=token, name=name, embedding_path=embedding_path)
    # After the library's checks: a taken --name says so, not "an earlier run's checkpoint".
    if not config.resume and checkpoint_path.exists():
        raise DestinationExistsError(
            "holds a checkpoint from an earlier run",
            path=checkpoint_path,
            hint="pass --resume to continue it, or --out another folder",
        )

    # ---- 5. Load the components. -----------------------------------------------------------------
    with quiet_loading():
        parts = load_training_components(info, configs, weight_dtype)
        tokenizers, encoders, vae, unet = parts.tokenizers, parts.encoders, parts.vae, parts.unet
        scheduler_config = parts.scheduler_config
        del parts  # the VAE is let go below, before the first step: keep no other reference
        noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    for key, enc in zip(keys, encoders, strict=True):
        if enc.config.hidden_size != info.widths[key]:
            raise UsageError(f"text encoder width {enc.config.hidden_size} does not match {key} ({info.widths[key]})", path=root)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UsageError(f"prediction type {prediction_type!r} is not supported (epsilon or v_prediction)", path=root)

    # ---- 6. Freeze everything; only the vectors will have gradients. -----------------------------
    frozen_digest = _frozen_digest(unet, vae)  # --resume refuses another UNet or VAE
    _freeze(unet, vae, encoders, device=device, gradient_checkpointing=config.gradient_checkpointing)
    if device.type == "cuda":
        from conceptlib._deps import available

        if available("xformers"):
            unet.enable_xformers_memory_efficient_attention()

    # ---- 7. Placeholder tokens: add to the tokenizers, splice in trainable vectors. ------------
    base_sizes: list[int] = []
    for tokenizer in tokenizers:
        base = len(tokenizer)
        added = tokenizer.add_tokens(names)
        ids = tokenizer.convert_tokens_to_ids(names)
        if added != len(names) or ids != list(range(base, base + len(names))):
            raise TrainingTokenError(f"the tokenizer already knows {token!r} (or one of {', '.join(names[1:]) or 'its expansions'})")
        if tokenizer(token_text, add_special_tokens=False).input_ids != ids:
            raise TrainingTokenError(f"the tokenizer does not read {token_text!r} back as {len(names)} tokens")
        base_sizes.append(base)

    init_text = config.init_word if config.init_word is not None else "*"
    vectors: dict[str, torch.nn.Parameter] = {}
    splices: list[Any] = []
    for key, tokenizer, enc, base in zip(keys, tokenizers, encoders, base_sizes, strict=True):
        init_ids = tokenizer(init_text, add_special_tokens=False).input_ids
        if not init_ids:
            raise UsageError(f"--init-word {init_text!r} has no tokens", hint="pass a word such as 'cat' or 'painting'")
        if any(i >= base for i in init_ids):
            raise UsageError("--init-word cannot contain the token being trained", hint="pass an ordinary word such as 'cat'")
        text_model: Any = getattr(enc, "text_model", enc)  # transformers 4 nests it; 5 does not
        embeddings = text_model.embeddings
        table = embeddings.token_embedding.weight.detach()
        rows = [init_ids[i] for i in spread(len(init_ids), config.vectors)]
        vectors[key] = torch.nn.Parameter(table[rows].float().clone())
        embeddings.token_embedding = _splice(embeddings.token_embedding, vectors[key], text_model.encoder.layers[0].self_attn)
        splices.append(embeddings.token_embedding)

    # ---- 8. Encode each image (and its mirror image) to latents once. -------------------------------
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    latent_mean, latent_std = _cache_latents(vae, images, flip=config.flip, device=device, resolution=resolution)
    # Previews are the VAE's only other use: without them its weights (335 MB in fp32 for SD 1.5
    # and SDXL) are let go before the first step.
    preview_vae = vae if config.preview_every else None
    del vae

    # ---- 9. Optimizer (only the vectors) and learning-rate schedule. ----------------------------
    params = list(vectors.values())
    optimizer, lr_scheduler, scaler, schedule, total_steps = _optimizer(params, config, device, notes)

    # ---- 10. Resume, or refuse to overwrite another run's checkpoint. ----------------------------
    # The loss "before training" is measured after it, on these vectors put back for a moment:
    # the same fixed batch gives the same number, and the first step no longer waits for it
    # (32 forward passes, seconds on SD-sized models).
    initial = {k: v.detach().clone() for k, v in vectors.items()}
    losses: list[float] = []
    start_step = 0
    state: dict[str, Any] = {}
    saved_steps: list[int] = []  # the steps the run's checkpoint file has held
    if config.resume:
        state = load_checkpoint(checkpoint_path)
        _check_resume(
            state, config, info, checkpoint_path=checkpoint_path, native=native_size(info, configs), home=home,
            frozen=frozen_digest, images=images_digest, prompts=prompts_digest, total_steps=total_steps, ours=ours,
        )  # fmt: skip
        with torch.no_grad():
            for key, param in vectors.items():
                param.copy_(state["vectors"][key])
        # The run's own starting vectors (checkpoints from before they were kept hold the loss).
        initial = state.get("initial_vectors") or initial
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        start_step = int(state["step"])
        saved_steps.append(start_step)
        losses = [float(v) for v in state["losses"].tolist()]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)

    # ---- 11. The pieces of one step. ---------------------------------------------------------------
    id_cache: dict[str, list[torch.Tensor]] = {}
    truncated: list[str] = []

    def token_ids(prompts: list[str]) -> list[torch.Tensor]:
        """Tokenize (cached per prompt, on the CPU), mapping placeholder ids to -1, -2, ..."""
        missing = [p for p in dict.fromkeys(prompts) if p not in id_cache]
        for prompt in missing:
            per_encoder = []
            for tokenizer, base in zip(tokenizers, base_sizes, strict=True):
                ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids[0]
                mapped = torch.where(ids >= base, base - 1 - ids, ids)
                if token_text in prompt and int((mapped < 0).sum()) < len(names) and not truncated:
                    # Past CLIP's 75 tokens the concept is cut off: such samples teach nothing.
                    truncated.append(prompt)
                    notes.append(f"the prompt {prompt[:60]!r}... is longer than the text encoder's context and loses the token: shorten the caption or template")
                per_encoder.append(mapped)
            id_cache[prompt] = per_encoder
        return [torch.stack([id_cache[p][i] for p in prompts]) for i in range(len(tokenizers))]

    def encode_prompts(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text conditioning: last hidden state (SD 1/2), or SDXL's penultimate states of both
        encoders concatenated plus the second encoder's pooled projection."""
        ids = []
        for splice, cpu_ids in zip(splices, token_ids(prompts), strict=True):
            splice.place(cpu_ids)
            ids.append(cpu_ids.to(device))
        if not sdxl:
            return encoders[0](ids[0])[0], None
        states, pooled = [], None
        for enc, enc_ids in zip(encoders, ids, strict=True):
            output = enc(enc_ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            if isinstance(enc, CLIPTextModelWithProjection):
                pooled = output.text_embeds
        return torch.cat(states, dim=-1), pooled

    # Every prompt a step can draw is known now (unless tags vary per step): the first layer's
    # projections of their ordinary tokens are computed once, as the latents were.
    if not (config.shuffle_tags or config.tag_dropout):
        every_prompt = list(dict.fromkeys(_prompt(t, token_text, im.caption) for t in templates for im in images))
        if len(every_prompt) <= _PRECOMPUTE_MAX_PROMPTS:
            for splice, enc, all_ids in zip(splices, encoders, token_ids(every_prompt), strict=True):
                text_model = getattr(enc, "text_model", enc)
                first = text_model.encoder.layers[0]

                def inputs(tokens: torch.Tensor, places: torch.Tensor, splice: Any = splice, text_model: Any = text_model, first: Any = first) -> torch.Tensor:
                    return first.layer_norm1(splice.base(tokens) + text_model.embeddings.position_embedding(places))

                splice.precompute(all_ids, inputs, _PRECOMPUTE_BUDGET)

    def time_ids(indices: list[int]) -> torch.Tensor:
        """SDXL's micro-conditioning: original size, crop top-left, target size."""
        rows = [[*images[i].original_size, *images[i].crop_top_left, resolution, resolution] for i in indices]
        return torch.tensor(rows, dtype=weight_dtype, device=device)

    def diffusion_loss(indices: list[int], flipped: torch.Tensor, prompts: list[str], timesteps: torch.Tensor, latent_noise: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The textual-inversion objective: MSE between the UNet's prediction and its target."""
        index = torch.tensor(indices, device=device)
        which = flipped.to(device).long()
        mean, std = latent_mean[which, index], latent_std[which, index]
        latents = mean if config.latent_sampling == "deterministic" else mean + std * latent_noise.to(device)
        latents = (latents - shift) * scaling
        noise = noise.to(device)
        timesteps = timesteps.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden, pooled = encode_prompts(prompts)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids(indices)}} if sdxl else {}
        pred = unet(noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype), **extra).sample
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    latent_shape = tuple(latent_mean.shape[2:])
    n_timesteps = int(noise_scheduler.config.num_train_timesteps)
    sample_batch = _Sampler(config, images, templates, token_text, rank=rank, world=world, latent_shape=latent_shape, timesteps=n_timesteps)

    def evaluation_loss() -> float:
        return sample_batch.evaluation(diffusion_loss)

    preview_pipe: Any = None
    previews: list[tuple[int, Path]] = []
    preview_prompt = config.preview_prompt or templates[0]
    # A function, not the text: a token may hold backslashes, which re.sub reads as escapes.
    preview_prompt = re.sub(re.escape(token) + r"(?!_\d)", lambda _match: token_text, preview_prompt.replace("[name]", token)).replace("[filewords]", "")

    def preview(step: int) -> None:
        """Render the preview prompt with the current vectors; the pipeline is built once."""
        nonlocal preview_pipe
        assert preview_vae is not None  # kept whenever previews are on
        if preview_pipe is None:
            preview_pipe = _preview_pipeline(preview_vae, tokenizers, unet, scheduler_config, sdxl=sdxl)
        path = out / "previews" / f"{name}-{step:06d}.png"
        _render_preview(preview_pipe, encode_prompts, preview_prompt, path, config=config, resolution=resolution, dtype=weight_dtype, scaling=scaling, shift=shift)
        previews.append((step, path))

    def save_checkpoint(step: int) -> None:
        state = {
            "step": step,
            "vectors": {k: v.detach() for k, v in vectors.items()},
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "losses": torch.tensor(losses, dtype=torch.float64),
            "config": _resolved_settings(config.to_dict()),
            "model": info.fingerprints(),
            "frozen": frozen_digest,
            "images": images_digest,
            "prompts": prompts_digest,
            "eval_loss_start": eval_loss_start,
            "initial_vectors": {k: v.detach() for k, v in initial.items()},
        }
        _save_checkpoint(checkpoint_path, state)
        saved_steps.append(step)
        # A usable concept file per checkpoint, like AUTOMATIC1111's <name>-<step>.pt.
        write(current_embedding(step), out / "embeddings" / f"{name}-{step:06d}.safetensors", format="conceptlib", force=True)

    def current_embedding(step: int) -> Embedding:
        return Embedding(
            {k: Tensor.from_numpy(v.detach().float().cpu().numpy()) for k, v in vectors.items()},
            token=token,
            name=name,
            step=step,
            checkpoint_hash=info.hashes.get("autov2"),
            checkpoint_name=info.display_name,
        )

    def diverged(step: int, what: str) -> TrainingDivergedError:
        return _diverged(config, schedule, checkpoint_path, step, what)

    # ---- 12. Train. ---------------------------------------------------------------------------------
    # After a resume, "before training" is still the loss before the run's first step: saved
    # by an older checkpoint, else measured at the end on the run's initial vectors.
    saved_start = state.get("eval_loss_start") if config.resume else None
    eval_loss_start: float | None = float(saved_start) if saved_start is not None else None
    if main_process and config.preview_every and start_step == 0:
        preview(0)
    elif config.preview_every:
        # A resumed run's grid and result show the whole run: the earlier part's previews too.
        for step_done in range(0, start_step + 1):
            earlier = out / "previews" / f"{name}-{step_done:06d}.png"
            if earlier.is_file():
                previews.append((step_done, earlier))
    if progress is not None:
        progress(start_step, total_steps, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop_started = time.perf_counter()
    step = start_step
    try:
        while step < total_steps:
            step_loss = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                loss = diffusion_loss(*sample_batch(step, micro))
                backward = loss / config.grad_accum
                (scaler.scale(backward) if scaler is not None else backward).backward()
                step_loss += loss.detach() / config.grad_accum
            value = _optimizer_step(
                params, optimizer, lr_scheduler, scaler, step_loss, config=config, world=world,
                step=step + 1, failed=diverged,
            )  # fmt: skip
            step += 1
            losses.append(value)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise diverged(step, "the vectors became NaN/Inf")
            if main_process and ((config.save_every and step % config.save_every == 0) or step == total_steps):
                save_checkpoint(step)
            # The last step too: the grid ends with what the run produced.
            if main_process and config.preview_every and (step % config.preview_every == 0 or step == total_steps):
                preview(step)
            if progress is not None:
                progress(step, total_steps, value)
    except KeyboardInterrupt:
        kept = saved_steps[-1] if saved_steps else None
        raise TrainingInterrupted(step, str(checkpoint_path) if kept is not None else None, kept) from None
    steps_run = step - start_step
    seconds_per_step = (time.perf_counter() - loop_started) / steps_run if steps_run else 0.0
    peak_memory = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    eval_loss_end = evaluation_loss()
    if eval_loss_start is None:
        trained = {k: v.detach().clone() for k, v in vectors.items()}
        with torch.no_grad():
            for key, param in vectors.items():
                param.copy_(initial[key])
            eval_loss_start = evaluation_loss()
            for key, param in vectors.items():
                param.copy_(trained[key])
    barrier()

    # ---- 13. Results: the concept file, plots, the library entry. --------------------------------
    embedding = current_embedding(step)
    metadata = {
        "trained_by": "conceptlib",
        "train_steps": str(step),
        "train_config": json.dumps(config.to_dict(), sort_keys=True),
        "train_resolution": str(resolution),
        "train_processes": str(world),
        "train_final_loss": f"{losses[-1]:.6g}" if losses else "",
        "train_eval_loss": f"{eval_loss_start:.6g} -> {eval_loss_end:.6g}",
        "base_model": info.display_name,
        "base_model_family": info.family,
        "base_model_prediction": str(prediction_type),
        "base_model_fingerprints": json.dumps(info.fingerprints(), sort_keys=True),
        "base_model_hashes": json.dumps(info.files or info.hashes, sort_keys=True),
        "concept_type": config.type,
    }
    embedding.metadata.update(metadata)
    concept = None
    action: str | None = None
    grid = plot = None
    if main_process:
        write(embedding, embedding_path, format="conceptlib", force=True)
        plot, grid = _pictures(losses, previews, out, title=f"{token}: training loss ({prediction_type}), {step} steps")
        if config.add_to_library:
            concept, action = _add_to_library(
                home, ours, embedding_path, config=config, token=token, images=kept_images, metadata=metadata, notes=notes
            )
    return TrainResult(
        embedding=embedding,
        embedding_path=embedding_path,
        concept=concept,
        out=out,
        checkpoint=checkpoint_path if checkpoint_path.is_file() else None,
        steps=step,
        resumed_from=start_step,
        losses=losses,
        eval_loss_start=eval_loss_start,
        eval_loss_end=eval_loss_end,
        previews=[p for _, p in previews],
        preview_grid=grid,
        loss_plot=plot,
        seconds=time.perf_counter() - started,
        seconds_per_step=seconds_per_step,
        peak_memory=peak_memory,
        device=str(device),
        warnings=notes,
        main_process=main_process,
        library_action=action,
    )
