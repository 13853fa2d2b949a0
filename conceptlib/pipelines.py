"""Loading diffusers models: the one place that turns a model on disk into torch modules.

A model comes as a diffusers folder (``model_index.json`` and one folder per component) or as a
single-file checkpoint in the original LDM layout, whose configs and tokenizers come from
elsewhere (:func:`conceptlib.single_file.resolve_configs` decides where, before anything heavy
loads). Three callers need the weights, in two shapes:

* :func:`load_pipeline`: a whole ``StableDiffusionPipeline``/``StableDiffusionXLPipeline`` on a
  device, for ``render`` and ``preview``.
* :func:`load_training_components`: the tokenizers, text encoders, VAE, UNet and scheduler
  config, each at the precision training wants, for ``train``.

Both go through :func:`load_single_file` for a checkpoint, so a file is converted the same way
whoever asks. The callers' loading rules are not all alike (a rendered folder is loaded as a
pipeline, at one dtype, safety checker as its ``model_index.json`` says; a trained folder is
loaded component by component, the VAE in float32, the text encoders with SDPA attention), and
each is kept as it was: the differences are spelt out where they happen.

torch, diffusers and transformers are imported inside the functions: importing this module
costs nothing, so the torch-free commands may import the modules that import it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ModelConfigError, UsageError

if TYPE_CHECKING:
    from conceptlib.models import ModelInfo
    from conceptlib.single_file import ModelConfigs

__all__ = [
    "DTYPES",
    "TrainingComponents",
    "dtype_kwargs",
    "dtype_name",
    "load_pipeline",
    "load_single_file",
    "load_training_components",
]

#: The names ``--dtype`` accepts, each to the torch dtype it stands for.
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def dtype_name(dtype: str) -> str:
    """The torch dtype name for a ``--dtype`` value (any case).

    Raises:
        UsageError: an unknown name.

    Example:
        >>> dtype_name("FP16")
        'float16'
    """
    name = DTYPES.get(dtype.lower())
    if name is None:
        raise UsageError(f"unknown dtype {dtype!r}", hint="use float32, float16 or bfloat16")
    return name


def dtype_kwargs(torch_dtype: Any) -> dict[str, Any]:
    """``from_pretrained``/``from_single_file`` keyword for a dtype, across diffusers releases.

    diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); older releases know
    only the old one.
    """
    from diffusers.utils import deprecation_utils

    name = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    return {name: torch_dtype}


def load_single_file(model: ModelInfo, configs: ModelConfigs, torch_dtype: Any) -> Any:
    """Build the Stable Diffusion (XL) pipeline of a single-file checkpoint from ``configs``.

    Nothing is fetched here: the configs are local (see
    :func:`conceptlib.single_file.resolve_configs`) and ``local_files_only`` is set, so
    diffusers never guesses a repository. The scheduler carries ``configs.prediction_type``.
    Loading logs are left to the caller (:func:`conceptlib._deps.quiet_loading`).

    Args:
        model: the checkpoint (``kind == "checkpoint"``).
        configs: from :func:`conceptlib.single_file.resolve_configs`.
        torch_dtype: the dtype of the loaded weights.

    Returns:
        A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` on the CPU, without a
        safety checker.

    Raises:
        ModelConfigError: the weights do not fit the configs, or a component is missing from
            the file.

    Example:
        >>> pipe = load_single_file(model, resolve_configs(model), torch.float32)  # doctest: +SKIP
    """
    cls = _pipeline_class(model)
    # SD 1.x/2.x configs name a safety checker whose weights no checkpoint holds: off, always
    # (SDXL has none).
    extra: dict[str, Any] = {} if model.family == "sdxl" else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_single_file(str(model.path), config=str(configs.folder), local_files_only=True, **extra, **dtype_kwargs(torch_dtype))
    except (ValueError, RuntimeError, KeyError, OSError, pickle.UnpicklingError) as exc:  # diffusers' error types vary by release
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelConfigError(f"cannot be built with the configs of {configs.source}: {first}", path=model.path) from exc
    except Exception as exc:
        if type(exc).__name__ != "SingleFileComponentError":
            raise
        raise ModelConfigError(f"cannot be built with the configs of {configs.source}: {exc}", path=model.path) from exc
    if pipe.scheduler.config.get("prediction_type") != configs.prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=configs.prediction_type)
    return pipe


def _pipeline_class(model: ModelInfo) -> Any:
    """The diffusers pipeline class of ``model``, importing only that one (SDXL's module costs
    another 60 ms of start-up that an SD 1.x render never uses)."""
    if model.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def load_pipeline(
    model: ModelInfo,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    configs: ModelConfigs | None = None,
) -> Any:
    """Load the diffusers pipeline of a model (a diffusers folder or a single file), for rendering.

    Args:
        model: a model with weights.
        device: torch device.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        configs: for a single-file checkpoint, its diffusers configs
            (:func:`conceptlib.single_file.resolve_configs`); the family's reference ones when
            omitted.

    Returns:
        A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` on ``device``, progress
        bar off.

    Raises:
        UsageError: a family name (no weights), or an unknown dtype.
        ModelWeightsMissingError: a diffusers folder of configs without weight files.
        ModelConfigError: a single file's configs cannot be found or do not fit it.
        MissingDependencyError: torch or diffusers missing.

    Example:
        >>> pipe = load_pipeline(resolve_model("tiny-sd1"), dtype="fp16", device="cuda")  # doctest: +SKIP
    """
    from conceptlib._deps import quiet_loading, require
    from conceptlib.models import require_weights

    require("torch", "diffusers", "transformers", purpose="rendering")
    import torch

    with quiet_loading():  # importing the pipelines warns about image processors
        cls = _pipeline_class(model)

    from conceptlib.single_file import resolve_configs

    torch_dtype = getattr(torch, dtype_name(dtype))
    if model.kind == "diffusers" and model.path:
        require_weights(model)
        # The whole pipeline as the folder's model_index.json lists it (a safety checker too,
        # when it names one), unlike training's component by component load.
        with quiet_loading():
            pipe = cls.from_pretrained(model.path, **dtype_kwargs(torch_dtype))
    elif model.kind == "checkpoint" and model.path:
        resolved = configs or resolve_configs(model)
        with quiet_loading():
            pipe = load_single_file(model, resolved, torch_dtype)
    else:
        raise UsageError(
            f"{model.display_name} is a family name, without weights to render with",
            hint="pass a diffusers folder or a .safetensors checkpoint, or register one with `conceptlib models add`",
        )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class TrainingComponents:
    """What textual-inversion training needs of a model, on the CPU, each at its precision.

    Attributes:
        tokenizers: one per text encoder, in the model's encoder order.
        encoders: the text encoders (``CLIPTextModel``; SDXL's second is
            ``CLIPTextModelWithProjection``), at the training precision.
        vae: the VAE, always float32.
        unet: the UNet, at the training precision.
        scheduler_config: the model's scheduler config (its prediction type included).
    """

    tokenizers: list[Any]
    encoders: list[Any]
    vae: Any
    unet: Any
    scheduler_config: Any


def load_training_components(model: ModelInfo, configs: ModelConfigs | None, weight_dtype: Any) -> TrainingComponents:
    """Load the parts of ``model`` that training uses (no safety checker, no feature extractor).

    The caller has checked the model has weights and, for a single file, resolved its configs;
    loading logs are left to it (:func:`conceptlib._deps.quiet_loading`).

    Args:
        model: a diffusers folder or a single-file checkpoint, with weights.
        configs: the checkpoint's configs; None for a diffusers folder.
        weight_dtype: the training precision (``torch.float32``, ``float16`` or ``bfloat16``)
            of the text encoders and the UNet.

    Returns:
        The tokenizers, text encoders, VAE, UNet and scheduler config.

    Raises:
        ModelConfigError: a single file's weights do not fit its configs.

    Example:
        >>> parts = load_training_components(model, None, torch.float32)  # doctest: +SKIP
    """
    import torch

    components = ["text_encoder", "text_encoder_2"][: len(model.encoder_keys)]
    # The VAE only encodes once (and decodes previews): fp32 always, which also avoids the
    # SDXL VAE's fp16 overflow.
    if configs is not None:
        # Loaded at the training precision (an fp32 copy of an SDXL UNet alone is 10 GB);
        # the VAE, a few hundred MB, is brought back to fp32.
        pipe = load_single_file(model, configs, weight_dtype)
        return TrainingComponents(
            tokenizers=[getattr(pipe, c.replace("text_encoder", "tokenizer")) for c in components],
            encoders=[getattr(pipe, c) for c in components],
            vae=pipe.vae.to(torch.float32),
            unet=pipe.unet,
            scheduler_config=pipe.scheduler.config,
        )

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(str(model.path))
    # Component by component, not as a pipeline: nothing training does not use is read, and
    # each part gets its own dtype. These keep the ``torch_dtype`` spelling they always had.
    tokenizers = [CLIPTokenizer.from_pretrained(root / c.replace("text_encoder", "tokenizer")) for c in components]
    encoders = []
    for component in components:
        cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        encoders.append(cls.from_pretrained(root / component, attn_implementation="sdpa", torch_dtype=weight_dtype))
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=weight_dtype)
    scheduler_config = DDPMScheduler.load_config(root / "scheduler")
    return TrainingComponents(tokenizers=tokenizers, encoders=encoders, vae=vae, unet=unet, scheduler_config=scheduler_config)
