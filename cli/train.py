"""``train``: learn a textual-inversion concept from a folder of images.

The command is a thin layer over :func:`conceptlib.train.train`: it builds a
:class:`~conceptlib.train.TrainConfig` from the options, shows a progress bar on stderr and
prints the result. torch, diffusers and transformers are imported only when the command runs,
so ``conceptlib --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conceptlib._terminal import printable
from conceptlib.cli._options import HomeOpt, JsonOpt, ModelConfigOpt
from conceptlib.cli._output import StatusBar, info, out, print_json


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command("train")(train)


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: a diffusers folder, a .safetensors/.ckpt checkpoint or a registered model name.", show_default=False)],
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder of training images (3 to 20 is typical).", show_default=False)],
    token: Annotated[str | None, typer.Option("--token", help="The new token to learn, e.g. '<my-cat>' (with --hypernetwork: the word of <hypernet:WORD:1>, default --name).", show_default=False)] = None,
    init_word: Annotated[str | None, typer.Option("--init-word", help="Word(s) the vectors start from, e.g. 'cat' (default: '*').", show_default=False)] = None,
    type_: Annotated[str, typer.Option("--type", help="object or style: picks the built-in prompt templates.")] = "object",
    vectors: Annotated[int, typer.Option("--vectors", help="Vectors per token (tok, tok_1, ...), 1 to 75.")] = 1,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps, 1 to 1000000.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass, 1 to 1024.")] = 1,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Forward passes per optimizer step, 1 to 1024.")] = 1,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate, greater than 0 and at most 1 [default: 0.005; 1e-5 with --hypernetwork].", show_default=False)] = None,
    lr_schedule: Annotated[str | None, typer.Option("--lr-schedule", help="AUTOMATIC1111 piecewise rates (each greater than 0 and at most 1), e.g. '0.005:100, 1e-3:1000, 1e-5'.", show_default=False)] = None,
    scheduler: Annotated[str, typer.Option("--scheduler", help="constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial.")] = "constant",
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Warm-up steps for schedulers that have one, 0 to 1000000.")] = 0,
    resolution: Annotated[int | None, typer.Option("--resolution", help="Image size in pixels, a multiple of 8 from 8 to 16384 [default: the model's].", show_default=False)] = None,
    flip: Annotated[bool, typer.Option("--flip", help="Also train on mirrored images.")] = False,
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="no, fp16 or bf16: precision of the frozen models (vectors stay float32).")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Save GPU memory at some speed cost.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, auto (CUDA when available), cuda, cuda:1 ...")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Random seed, 0 to 2**63-1; the same seed gives the same run.")] = 0,
    templates: Annotated[Path | None, typer.Option("--templates", help="Template file: one prompt per line with [name] and [filewords].", show_default=False)] = None,
    captions: Annotated[str | None, typer.Option("--captions", help="[filewords] from the file name (filewords) or a .txt beside each image (sidecar).", show_default=False)] = None,
    clip_grad_norm: Annotated[float, typer.Option("--clip-grad-norm", help="Clip the gradient to this norm before each step, 0 to 1e6 (0: off).")] = 0.0,
    clip_grad_value: Annotated[float, typer.Option("--clip-grad-value", help="Clip each gradient element to this value, 0 to 1e6 (0: off).")] = 0.0,
    shuffle_tags: Annotated[bool, typer.Option("--shuffle-tags", help="Shuffle the comma-separated tags of [filewords] for every sample (AUTOMATIC1111).")] = False,
    tag_dropout: Annotated[float, typer.Option("--tag-dropout", help="Leave each tag of [filewords] out with this probability, from 0 up to (not including) 1 (AUTOMATIC1111).")] = 0.0,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every K steps, 0 to 1000000 (0: at the end only).")] = 500,
    preview_every: Annotated[int, typer.Option("--preview-every", help="Render a preview every K steps and at the last one, 0 to 1000000 (0: never).")] = 0,
    preview_prompt: Annotated[str | None, typer.Option("--preview-prompt", help="Preview prompt; [name] or the token marks the concept.", show_default=False)] = None,
    preview_steps: Annotated[int, typer.Option("--preview-steps", help="Sampler steps per preview, 1 to 1000.")] = 20,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name in the library [default: from the token].", show_default=False)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder [default: <home>/training/<name>].", show_default=False)] = None,
    no_add: Annotated[bool, typer.Option("--no-add", help="Do not add the finished concept to the library.")] = False,
    model_config: ModelConfigOpt = None,
    hypernetwork: Annotated[bool, typer.Option("--hypernetwork", help="Train an AUTOMATIC1111 hypernetwork instead of token vectors.")] = False,
    layer_structure: Annotated[str, typer.Option("--layer-structure", help="Hypernetwork layer widths as multiples of the attention width.")] = "1,2,1",
    activation: Annotated[str, typer.Option("--activation", help="Hypernetwork activation: linear, relu, leakyrelu, elu, swish, tanh, sigmoid ...")] = "linear",
    layer_norm: Annotated[bool, typer.Option("--layer-norm", help="Hypernetwork: a LayerNorm after each layer.")] = False,
    dropout: Annotated[str | None, typer.Option("--dropout", help="Hypernetwork dropout per layer boundary, e.g. 0,0.3,0.", show_default=False)] = None,
    weight_init: Annotated[str, typer.Option("--weight-init", help="Hypernetwork initialisation: Normal, XavierUniform, XavierNormal, KaimingUniform, KaimingNormal.")] = "Normal",
    activate_output: Annotated[bool, typer.Option("--activate-output", help="Hypernetwork: activate the last layer's output too.")] = False,
    hypernet_widths: Annotated[
        str | None, typer.Option("--hypernet-widths", help="Hypernetwork: attention widths to train, e.g. 768,320,640,1280 [default: every width the model has].", show_default=False)
    ] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Train a textual-inversion concept (or, with --hypernetwork, a hypernetwork) on a folder of images and add it to the library.

    Only the new token's vectors (or the hypernetwork's modules) are trained; checkpoints are
    small and --resume continues a run exactly. Works with SD 1.x, SD 2.x (epsilon and v) and
    SDXL, as diffusers folders or single-file checkpoints.

    Example: conceptlib train --model ./sd15 --images ./cat --token '<my-cat>' --init-word cat --steps 2000
    """
    from conceptlib.errors import InterruptedRunError, TrainingInterrupted, UsageError
    from conceptlib.train import TrainConfig
    from conceptlib.train import train as run_training

    if lr is not None and lr_schedule is not None:
        raise UsageError("--lr and --lr-schedule both set the learning rate", hint="pass one of them")
    if token is None and not (hypernetwork and name):
        raise UsageError("Missing option '--token'" if not hypernetwork else "--hypernetwork needs --name (or --token): the word prompts call it by")
    config = TrainConfig(
        model=model,
        model_config=model_config,
        images=str(images),
        token=token if token is not None else str(name),
        init_word=init_word,
        type=type_,
        vectors=vectors,
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr_schedule=lr_schedule,
        scheduler=scheduler,
        warmup_steps=warmup_steps,
        resolution=resolution,
        flip=flip,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        seed=seed,
        templates=str(templates) if templates is not None else None,
        captions=captions,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        shuffle_tags=shuffle_tags,
        tag_dropout=tag_dropout,
        save_every=save_every,
        preview_every=preview_every,
        preview_prompt=preview_prompt,
        preview_steps=preview_steps,
        resume=resume,
        name=name,
        out=str(out_dir) if out_dir is not None else None,
        home=str(home) if home is not None else None,
        add_to_library=not no_add,
        hypernetwork=hypernetwork,
        layer_structure=layer_structure,
        activation=activation,
        layer_norm=layer_norm,
        dropout_structure=dropout,
        weight_init=weight_init,
        activate_output=activate_output,
        hypernet_widths=hypernet_widths,
    )
    if lr is not None:
        config.lr = lr
    elif hypernetwork:
        config.lr = 1e-5  # AUTOMATIC1111's hypernetwork default: its modules start near the identity
    bar = StatusBar("Training", enabled=not json_)
    try:
        result = run_training(
            config,
            progress=lambda step, total, loss: bar.update(step, total, f"loss {loss:.4f}" if loss is not None else ""),
        )
    except TrainingInterrupted as stop:
        # Typer turns a KeyboardInterrupt into a silent exit 130: say where the run stands.
        if stop.checkpoint is None:
            raise InterruptedRunError(f"training interrupted at step {stop.step}; no checkpoint was saved yet", hint="pass --save-every N to keep checkpoints along the way") from None
        raise InterruptedRunError(
            f"training interrupted at step {stop.step}; the checkpoint of step {stop.checkpoint_step} is kept in {stop.checkpoint}",
            hint="rerun the same command with --resume to continue from it",
        ) from None
    finally:
        bar.close()
    if not result.main_process:
        return  # one report per run: the main process gives it
    if json_:
        print_json(result.to_dict())
        return
    for warning in result.warnings:
        info(f"Warning: {warning}")
    if result.concept is not None:
        c = result.concept
        action = result.library_action or "added"
        what = f"hypernetwork; call it as <hypernet:{printable(c.token)}:1>" if c.kind == "hypernetwork" else f"{c.vectors} vector{'s' if c.vectors != 1 else ''}"
        out.print(f"{action:<10} {c.name}  ({printable(c.token)}, {c.family_label}, {what})", markup=False)
    else:
        out.print(f"wrote      {result.hypernetwork_path or result.embedding_path}", markup=False)
    rate = f"{result.seconds_per_step:.3f} s/step"
    if result.resumed_from and result.resumed_from == result.steps:  # a trained run's library step, finished
        ran = f"Finished the run at step {result.steps} (nothing left to train)"
    elif result.resumed_from:
        ran = f"Trained steps {result.resumed_from + 1}-{result.steps} of {result.steps} (resumed from step {result.resumed_from}; {rate})"
    else:
        ran = f"Trained {result.steps} steps ({rate})"
    info(
        f"{ran}; evaluation loss "
        f"{result.eval_loss_start:.4f} -> {result.eval_loss_end:.4f}. Run folder: {result.out}"
    )
