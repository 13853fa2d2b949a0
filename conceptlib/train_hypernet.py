"""Hypernetwork training (``conceptlib train --hypernetwork``), AUTOMATIC1111's method in one loop.

>>> from conceptlib.train import TrainConfig, train
>>> result = train(TrainConfig(model="sd15/", images="ink/", token="ink", hypernetwork=True,
...                            type="style", lr=1e-5, steps=2000))  # doctest: +SKIP
>>> result.hypernetwork_path.name  # doctest: +SKIP
'ink.pt'

What is trained is what AUTOMATIC1111's ``train_hypernetwork`` trains: for each chosen attention
width a pair of small networks (key side, value side; :func:`conceptlib.hypernet_apply.a1111_module`)
that every attention of the UNet runs its context through, ``x + mlp(x)``, before ``to_k`` and
``to_v``. The UNet, the VAE and the text encoders stay frozen: only the modules' parameters have
gradients and optimizer state. The prompts are the templates with ``[name]`` replaced by the
network's word, as AUTOMATIC1111 does, and the rest is the textual-inversion run's
(:mod:`conceptlib.train`), reused piece for piece: the image checks and captions, latents encoded
once, every random draw a pure function of ``(seed, step)`` (so a resumed CPU run ends
bit-identical), the learning-rate syntax, NaN guard, checkpoints without pickles, previews, data
parallel under ``accelerate launch``/``torchrun``, and the library entry at the end.

Two costs the textual-inversion loop has are gone here: the text encoders are frozen, so each
distinct prompt is encoded once (unless tags are shuffled or dropped, which make new prompts), and
no tokenizer changes.

The result is an AUTOMATIC1111 ``.pt`` (:func:`conceptlib.hypernet.dumps`) that AUTOMATIC1111 and
ComfyUI load, with its fields (``sd_checkpoint`` is the model's AutoV2 hash where it has one).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib._deps import quiet_loading
from conceptlib._parallel import barrier
from conceptlib.errors import (
    ConceptExistsError,
    DestinationExistsError,
    DuplicateConceptError,
    TokenInUseError,
    TrainingDivergedError,
    TrainingInterrupted,
    UsageError,
)
from conceptlib.train import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    Progress,
    TrainConfig,
    TrainResult,
    _cache_latents,
    _check_run_folder,
    _device_and_group,
    _diverged,
    _freeze,
    _frozen_digest,
    _generator,
    _optimizer,
    _optimizer_step,
    _pictures,
    _preview_pipeline,
    _read_images,
    _render_preview,
    _resolved_settings,
    _Sampler,
    _save_checkpoint,
    _templates,
    _training_model,
    hypernetwork_fields,
    load_checkpoint,
)

if TYPE_CHECKING:
    import torch

__all__ = ["train_hypernetwork"]

# A stream of its own for the modules' initial weights: the other draws stay what they are in a
# textual-inversion run of the same seed.
_INIT_STREAM, _DROPOUT_STREAM = 6, 7


def _device_generator(seed: int, step: int, slot: int, *, device: Any) -> torch.Generator:
    """The dropout masks' generator of one micro-batch, on the training device."""
    import torch

    state = np.random.SeedSequence([seed, _DROPOUT_STREAM, step, slot, 4]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def _settings_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The settings of ``config`` a resumed run may not change, where the checkpoint's differ."""
    now = _resolved_settings(config.to_dict())
    before = _resolved_settings(saved)
    return sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])


def train_hypernetwork(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train an AUTOMATIC1111 hypernetwork on ``config.images`` (``config.hypernetwork`` set).

    Called by :func:`conceptlib.train.train`; takes the same config and returns the same result
    type (``kind`` ``hypernetwork``, ``hypernetwork_path`` set, no ``embedding``).

    Raises:
        UsageError: settings that cannot train (see :func:`conceptlib.train.hypernetwork_fields`),
            a word that is no plain word, a model without weights, widths the UNet lacks.
        TokenInUseError, ConceptExistsError: the library already has a hypernetwork of that
            word or an item of that name (checked before any step).
        TrainingImageError: as for textual inversion.
        TrainingDivergedError: the loss or a parameter became NaN/Inf; the last checkpoint stays.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModelWithProjection

    from conceptlib import config as conceptlib_config
    from conceptlib import hypernet
    from conceptlib.hypernet_apply import a1111_module, initialise, wrapped
    from conceptlib.library import check_name, check_network_word, check_token
    from conceptlib.models import attention_widths
    from conceptlib.pipelines import load_training_components
    from conceptlib.single_file import native_size
    from conceptlib.slug import slugify
    from conceptlib.tensor import Tensor

    started = time.perf_counter()
    fields = hypernetwork_fields(config)
    notes: list[str] = []
    word = check_network_word(check_token(config.token))
    if " " in word:  # a trained network's word is one word (added files keep theirs, spaces and all)
        raise UsageError(f"{word!r} cannot be called as <hypernet:{word}:1>", hint="pass --token (or --name) a plain word, e.g. ink")
    home = conceptlib_config.home(config.home)
    name = check_name(config.name) if config.name else (slugify(word) or "hypernetwork")
    out = (Path(config.out).expanduser() if config.out else home / "training" / name).resolve()
    checkpoint_path = out / CHECKPOINT_NAME
    network_path = out / f"{word}.pt"

    # ---- 1. Device, precision, process group: as for textual inversion. ---------------------------
    device, rank, world, weight_dtype = _device_and_group(config, notes)
    main_process = rank == 0

    # ---- 2. The model and its attention widths. ------------------------------------------------------
    info, configs = _training_model(config, home)
    sdxl = info.family == "sdxl"
    resolution = config.resolution or native_size(info, configs)
    cross, selves = attention_widths(info)
    known = sorted({*selves, *([cross] if cross else [])})
    widths = sorted({int(w) for w in config.hypernet_widths.replace(" ", "").split(",") if w}) if config.hypernet_widths else known
    unknown = [w for w in widths if w not in known]
    if unknown:
        raise UsageError(
            f"--hypernet-widths: this model's attention widths are {', '.join(map(str, known))}, not {', '.join(map(str, unknown))}",
            hint="leave --hypernet-widths out to train every width the model has",
        )
    _check_run_folder(config, out, checkpoint_path)

    # ---- 3. Images and prompts ([name] is the network's word, as in AUTOMATIC1111). ---------------
    images, kept_images, images_digest = _read_images(config, resolution, notes)
    templates = _templates(config, word, [im.caption for im in images])
    prompts_digest = hashlib.sha256(json.dumps([templates, [im.caption for im in images]]).encode("utf-8")).hexdigest()

    # ---- 4. The library: name and word free, before anything heavy. --------------------------------
    if config.add_to_library and main_process and not config.resume:
        from conceptlib.library import Library

        with Library.open(home) as library:
            if library.has(name):
                raise ConceptExistsError(name, hint="pass --name another name, or --no-add")
            owner = library.index.token_owner(hypernet.family_of(widths), word, kind="hypernetwork")
            if owner is not None:
                raise TokenInUseError(word, family="hypernetworks", used_by=owner)
    if not config.resume and checkpoint_path.exists():
        raise DestinationExistsError("holds a checkpoint from an earlier run", path=checkpoint_path, hint="pass --resume to continue it, or --out another folder")

    # ---- 5. Load and freeze every model part. --------------------------------------------------------
    with quiet_loading():
        parts = load_training_components(info, configs, weight_dtype)
        tokenizers, encoders, vae, unet = parts.tokenizers, parts.encoders, parts.vae, parts.unet
        scheduler_config = parts.scheduler_config
        del parts
        noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UsageError(f"prediction type {prediction_type!r} is not supported (epsilon or v_prediction)", path=info.path)
    frozen_digest = _frozen_digest(unet, vae)
    _freeze(unet, vae, encoders, device=device, gradient_checkpointing=config.gradient_checkpointing)

    # ---- 6. The modules: a pair per width, laid out and initialised as AUTOMATIC1111's. ----------------
    init = _generator(config.seed, _INIT_STREAM)
    modules: dict[int, tuple[Any, Any]] = {}
    for width in widths:
        pair = (a1111_module(width, fields), a1111_module(width, fields))
        for module in pair:
            initialise(module, config.weight_init, init)
            module.to(device).train()  # dropout on while training, as AUTOMATIC1111 has it
        modules[width] = pair
    # "WIDTH.SIDE" -> module: what checkpoints store, and what the helpers below walk.
    named = {f"{w}.{side}": pair[side] for w, pair in modules.items() for side in (0, 1)}
    params = [p for module in named.values() for p in module.parameters()]
    dropouts = [layer for module in named.values() for layer in module if hasattr(layer, "generator")]

    def snapshot() -> dict[str, dict[str, torch.Tensor]]:
        return {key: {k: v.detach().clone() for k, v in module.state_dict().items()} for key, module in named.items()}

    def restore(states: dict[str, dict[str, torch.Tensor]]) -> None:
        for key, module_state in states.items():
            named[key].load_state_dict(module_state)

    def training(on: bool) -> None:
        # Dropout on while training, as AUTOMATIC1111 has it; off for evaluation and previews.
        for module in named.values():
            module.train(on)

    initial = snapshot()

    def run_module(module: Any) -> Any:
        # The modules stay float32 (as the textual-inversion vectors do) whatever the UNet's dtype.
        return lambda x: module(x.float()).to(x.dtype)

    keys = [({w: run_module(pair[0]) for w, pair in modules.items()}, 1.0)]
    values = [({w: run_module(pair[1]) for w, pair in modules.items()}, 1.0)]

    # ---- 7. Latents once; each prompt's text conditioning once (the encoders are frozen). ------------
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    latent_mean, latent_std = _cache_latents(vae, images, flip=config.flip, device=device, resolution=resolution)
    preview_vae = vae if config.preview_every else None
    del vae
    conditioning: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last hidden state (SD 1/2), or SDXL's penultimate states of both encoders and the
        second's pooled projection; each prompt encoded once (shuffled tags make new prompts
        every step: past 4,096 they are encoded each time, not kept)."""
        rows = []
        for prompt in prompts:
            got = conditioning.get(prompt)
            if got is None:
                states, pooled = [], None
                with torch.no_grad():
                    for tokenizer, enc in zip(tokenizers, encoders, strict=True):
                        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids.to(device)
                        output = enc(ids, output_hidden_states=True)
                        states.append(output.hidden_states[-2] if sdxl else output[0])
                        if isinstance(enc, CLIPTextModelWithProjection):
                            pooled = output.text_embeds
                got = (torch.cat(states, dim=-1), pooled)
                if len(conditioning) < 4096:
                    conditioning[prompt] = got
            rows.append(got)
        pooled_rows = [r[1] for r in rows if r[1] is not None]
        return torch.cat([r[0] for r in rows]), (torch.cat(pooled_rows) if pooled_rows else None)

    def diffusion_loss(indices: list[int], flipped: torch.Tensor, prompts: list[str], timesteps: torch.Tensor, latent_noise: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        index = torch.tensor(indices, device=device)
        mean, std = latent_mean[flipped.to(device).long(), index], latent_std[flipped.to(device).long(), index]
        latents = mean if config.latent_sampling == "deterministic" else mean + std * latent_noise.to(device)
        latents = (latents - shift) * scaling
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden, pooled = encode(prompts)
        extra = {}
        if sdxl:
            rows = [[*images[i].original_size, *images[i].crop_top_left, resolution, resolution] for i in indices]
            extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor(rows, dtype=weight_dtype, device=device)}}
        pred = unet(noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype), **extra).sample
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    latent_shape = tuple(latent_mean.shape[2:])
    n_timesteps = int(noise_scheduler.config.num_train_timesteps)
    sample_batch = _Sampler(config, images, templates, word, rank=rank, world=world, latent_shape=latent_shape, timesteps=n_timesteps)

    def evaluation_loss() -> float:
        """The fixed batch's loss (:meth:`conceptlib.train._Sampler.evaluation`), dropout off."""
        training(False)
        loss = sample_batch.evaluation(diffusion_loss)
        training(True)
        return loss

    def current_network(step: int) -> hypernet.Hypernetwork:
        pairs = {
            w: tuple({f"linear.{k}": Tensor.from_numpy(v.detach().float().cpu().numpy()) for k, v in module.state_dict().items()} for module in pair)
            for w, pair in modules.items()
        }
        network_fields = {
            **fields,
            "sd_checkpoint": info.hashes.get("autov2") or info.hashes.get("sha256", "")[:10] or None,
            "sd_checkpoint_name": info.display_name,
            "step": step,
            "name": word,
        }
        return hypernet.Hypernetwork(pairs, network_fields, [], "a1111", None)  # type: ignore[arg-type]

    # ---- 8. Optimizer over the modules' parameters only, schedule, resume. -----------------------------
    optimizer, lr_scheduler, scaler, schedule, total_steps = _optimizer(params, config, device, notes)
    losses: list[float] = []
    start_step = 0
    saved_steps: list[int] = []
    if config.resume:
        state = load_checkpoint(checkpoint_path)
        if state.get("kind") != "hypernetwork":
            raise UsageError("--resume: the checkpoint is a textual-inversion run's, not a hypernetwork's", path=checkpoint_path)
        changed = _settings_differences(state["config"], config)
        others = {"the model": state.get("frozen") != frozen_digest, "the images": state.get("images") != images_digest, "the prompts": state.get("prompts") != prompts_digest}
        if changed or any(others.values()):
            what = ", ".join(changed) if changed else next(k for k, v in others.items() if v)
            raise UsageError(f"--resume: {what} differ from the run being resumed", path=checkpoint_path, hint="resume with the run's own settings, or start a new run in another --out")
        restore(state["modules"])
        initial = state["initial"]
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        start_step = int(state["step"])
        saved_steps.append(start_step)
        losses = [float(v) for v in state["losses"].tolist()]
    if main_process:
        out.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(step: int) -> None:
        _save_checkpoint(checkpoint_path, {
            "kind": "hypernetwork",
            "step": step,
            "modules": {key: module.state_dict() for key, module in named.items()},
            "initial": initial,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "losses": torch.tensor(losses, dtype=torch.float64),
            "config": _resolved_settings(config.to_dict()),
            "frozen": frozen_digest,
            "images": images_digest,
            "prompts": prompts_digest,
        })  # fmt: skip
        saved_steps.append(step)
        # A usable network per checkpoint, like AUTOMATIC1111's <name>-<step>.pt.
        hypernet.write(current_network(step), out / "hypernetworks" / f"{word}-{step:06d}.pt", force=True)

    previews: list[tuple[int, Path]] = []
    preview_pipe: Any = None
    preview_prompt = (config.preview_prompt or templates[0]).replace("[name]", word).replace("[filewords]", "")

    def preview(step: int) -> None:
        """Render the preview prompt with the modules as they are (eval mode), pipeline built once."""
        nonlocal preview_pipe
        assert preview_vae is not None
        if preview_pipe is None:
            preview_pipe = _preview_pipeline(preview_vae, tokenizers, unet, scheduler_config, sdxl=sdxl)
        path = out / "previews" / f"{name}-{step:06d}.png"
        training(False)
        _render_preview(preview_pipe, encode, preview_prompt, path, config=config, resolution=resolution, dtype=weight_dtype, scaling=scaling, shift=shift)
        training(True)
        previews.append((step, path))

    def diverged(step: int, what: str) -> TrainingDivergedError:
        return _diverged(config, schedule, checkpoint_path, step, what)

    # ---- 9. Train, with the modules in front of every attention's key and value. ------------------------
    loop_started = time.perf_counter()
    step = start_step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with wrapped(unet, keys, values):
        if main_process and config.preview_every and start_step == 0:
            preview(0)
        if progress is not None:
            progress(start_step, total_steps, None)
        try:
            while step < total_steps:
                step_loss = torch.zeros((), device=device)
                for micro in range(config.grad_accum):
                    if dropouts:
                        masks = _device_generator(config.seed, step, micro * world + rank, device=device)
                        for layer in dropouts:
                            layer.generator = masks
                    loss = diffusion_loss(*sample_batch(step, micro))
                    backward = loss / config.grad_accum
                    (scaler.scale(backward) if scaler is not None else backward).backward()
                    step_loss += loss.detach() / config.grad_accum
                value = _optimizer_step(
                    params, optimizer, lr_scheduler, scaler, step_loss, config=config, world=world, step=step + 1, failed=diverged
                )  # fmt: skip
                step += 1
                losses.append(value)
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    raise diverged(step, "the hypernetwork's weights became NaN/Inf")
                if main_process and ((config.save_every and step % config.save_every == 0) or step == total_steps):
                    save_checkpoint(step)
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
        trained = snapshot()
        restore(initial)
        eval_loss_start = evaluation_loss()
        restore(trained)
    barrier()

    # ---- 10. The network file, plots, the library entry. ----------------------------------------------
    network = current_network(step)
    concept = None
    action: str | None = None
    grid = plot = None
    if main_process:
        hypernet.write(network, network_path, force=True)
        plot, grid = _pictures(losses, previews, out, title=f"<hypernet:{word}>: training loss ({prediction_type}), {step} steps")
        if config.add_to_library:
            from conceptlib.library import Library

            metadata = {
                "trained_by": "conceptlib",
                "train_steps": str(step),
                "train_config": json.dumps(config.to_dict(), sort_keys=True),
                "train_eval_loss": f"{eval_loss_start:.6g} -> {eval_loss_end:.6g}",
                "base_model": info.display_name,
            }
            with Library.open(home) as library:
                try:
                    concept = library.add(network_path, name=name, token=word, type=config.type, images=kept_images, metadata=metadata).one()
                except DuplicateConceptError as exc:
                    exc.hint = f"the run's network is kept in {network_path}; another --seed learns another"
                    raise
            action = "added"
    return TrainResult(
        embedding=None,
        embedding_path=None,
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
        kind="hypernetwork",
        token=word,
        hypernetwork_path=network_path if main_process else None,
    )

