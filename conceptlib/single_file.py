"""Single-file checkpoints: which diffusers configs describe them, decided before loading.

AUTOMATIC1111, ComfyUI and InvokeAI users keep a model as one ``.safetensors``/``.ckpt`` file in
the original LDM key layout. diffusers' ``from_single_file`` converts its weights, but it also
needs the model's diffusers configs and tokenizer, which the file does not hold; left to itself
it guesses a Hub repository and downloads them, and for SD 2.x it guesses the 768-v model even
for a 512-base file.

conceptlib decides instead, before anything heavy loads: the configs come from
``--model-config`` (a diffusers folder or Hub repository of the same model; the JSON files and
tokenizer are enough) or else from the family's reference repository, fetched once through
:func:`conceptlib.hubclient.fetch_model_configs` and read from the cache afterwards. They must
describe the checkpoint's family, and the prediction type is the one the file declares (its
metadata or AUTOMATIC1111's ``.yaml`` beside it), else the configs'.

Loading the weights with those configs is :func:`conceptlib.pipelines.load_single_file`: this
module only decides, so it stays below the loaders (it imports nothing that loads).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.errors import ModelConfigError, UsageError
from conceptlib.hubclient import fetch_model_configs, parse_repo_ref

if TYPE_CHECKING:
    from conceptlib.models import ModelInfo

# The reference diffusers repository of each family, by the prediction type the file declares.
# Only configs and tokenizers are fetched from them (a few MB), never weights.
DEFAULT_CONFIG_REPOS: dict[tuple[str, str], str] = {
    ("sd1", "epsilon"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ("sd2", "epsilon"): "stabilityai/stable-diffusion-2-1-base",
    ("sd2", "v_prediction"): "stabilityai/stable-diffusion-2-1",
    ("sdxl", "epsilon"): "stabilityai/stable-diffusion-xl-base-1.0",
}


@dataclass(frozen=True)
class ModelConfigs:
    """The diffusers configs chosen for a single-file checkpoint.

    Attributes:
        folder: a local folder with ``model_index.json``, component configs and tokenizer(s).
        source: what they came from: the folder passed (absolute), the repository passed, or
            the family's reference repository.
        prediction_type: ``epsilon`` or ``v_prediction``: the checkpoint's own if it declares
            one, else the configs' scheduler's.
        described: the configs folder read as a model (family, tokenizers, native size).
    """

    folder: Path
    source: str
    prediction_type: str
    described: ModelInfo

    @property
    def sample_size(self) -> int | None:
        """The image size in pixels the configs' UNet was built for."""
        return self.described.sample_size


def native_size(model: ModelInfo, configs: ModelConfigs | None) -> int:
    """The image size to use by default: the configs' for a single file, else the model's (512
    when nothing says)."""
    return (configs.sample_size if configs else None) or model.sample_size or 512


def resolve_configs(model: ModelInfo, model_config: str | os.PathLike[str] | None = None) -> ModelConfigs:
    """Find and check the diffusers configs for the single-file checkpoint ``model``.

    Args:
        model: a ``kind == "checkpoint"`` model from :func:`conceptlib.models.resolve_model`.
        model_config: a diffusers folder, or a Hub repository (``owner/name[@revision]`` or
            its URL) whose configs are fetched; None takes the one registered with the model,
            else the family's reference repository.

    Returns:
        The configs, their source, and the prediction type and image size to use.

    Raises:
        ModelConfigError: no configs for this model (an SD 2.x file that does not say which
            prediction it uses, an inpainting or refiner file without ``model_config``), they
            cannot be fetched, or they describe another family.
    """
    from conceptlib.models import read_model

    if model_config is None:
        model_config = model.model_config  # remembered by `conceptlib models add --model-config`
    if model_config is not None:
        source = os.fspath(model_config)
        path = Path(source).expanduser()
        if path.is_dir():
            folder = path.resolve()
            source = str(folder)
            if not (folder / "model_index.json").is_file():
                raise ModelConfigError("has no model_index.json: not a diffusers model folder", path=folder)
        else:
            repo: tuple[str, str | None] | None = None
            if not path.exists():  # a file is never a repository, whatever its name
                with contextlib.suppress(UsageError):
                    repo = parse_repo_ref(source)
            if repo is None:
                raise ModelConfigError(
                    f"--model-config {source!r} is neither a diffusers folder nor a Hub repository id (owner/name[@revision])"
                )
            folder = fetch_model_configs(repo[0], revision=repo[1])
    else:
        if model.variant:
            raise ModelConfigError(f"there are no reference configs for {model.label} checkpoints", path=model.path)
        if model.prediction_type is None:
            raise ModelConfigError(
                "is SD 2.x and does not say whether it is 512-base (epsilon) or 768-v (v-prediction)",
                path=model.path,
                hint=(
                    f"put {Path(model.path or 'model').with_suffix('.yaml').name} beside it with "
                    "'parameterization: \"v\"' for 768-v (AUTOMATIC1111's convention), or pass --model-config "
                    f"{DEFAULT_CONFIG_REPOS[('sd2', 'v_prediction')]} (768-v) or {DEFAULT_CONFIG_REPOS[('sd2', 'epsilon')]} (512-base)"
                ),
            )
        # An SD 1.x or SDXL file that declares v-prediction keeps its family's configs; the
        # scheduler is switched below.
        source = DEFAULT_CONFIG_REPOS.get((model.family, model.prediction_type)) or DEFAULT_CONFIG_REPOS[(model.family, "epsilon")]
        folder = fetch_model_configs(source)
    described = read_model(folder, hash_files=False)
    if described.family != model.family or described.encoder_keys != model.encoder_keys:
        raise ModelConfigError(
            f"the configs in {source} are {described.label} ({', '.join(described.encoder_keys)}), "
            f"the checkpoint is {model.label} ({', '.join(model.encoder_keys)})",
            path=model.path,
        )
    prediction = model.prediction_type or described.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelConfigError(f"the scheduler in {source} has prediction type {prediction!r}; expected epsilon or v_prediction", path=model.path)
    return ModelConfigs(folder=folder, source=source, prediction_type=prediction, described=described)
