"""``render`` and ``preview``: images from prompts that mix library concepts.

Thin commands over :func:`conceptlib.render.render` and :func:`conceptlib.preview.preview`.
Nothing heavy at module scope: torch and diffusers load inside the library functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conceptlib.cli._options import HomeOpt, JsonOpt, ModelConfigOpt, ModelOpt
from conceptlib.cli._output import StatusBar, info, out, print_json

if TYPE_CHECKING:
    from conceptlib.render import RenderResult

# Ranges are checked by conceptlib.render.check_settings (one message for render and preview);
# the help states them.
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed, 0 to 2**63-1: image i of the run gets seed + i.")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Sampling steps, 1 to 1000.")]
GuidanceOpt = Annotated[float, typer.Option("--guidance", help="Classifier-free guidance (CFG scale), 0 to 100.")]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="euler, euler_a, ddim, pndm, lms, heun, dpm2, dpm2_a, dpmpp_2m, dpmpp_2m_karras, "
        "dpmpp_2m_sde, unipc (default: the model's own).",
        show_default=False,
    ),
]
SizeOpt = Annotated[
    str | None,
    typer.Option("--size", help="WIDTHxHEIGHT in pixels, multiples of 8 from 8 to 16384 (default: the model's size).", show_default=False)
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per pipeline call, 1 to 1024 (speed: seeds and noise stay the same; pixels may differ by 1/255).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")]


def render_cmd(
    model: ModelOpt,
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts; concepts as <token> or embedding:name.", show_default=False)] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option("--prompts", help="File of prompts, one a line, or JSONL with per-line prompt, negative, seed, n, steps, guidance, size.", show_default=False),
    ] = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt (negative embeddings go here).")] = "",
    n: Annotated[int, typer.Option("-n", "--images", help="Images per prompt, 1 to 10000.")] = 1,
    hypernet: Annotated[
        list[str] | None,
        typer.Option("--hypernet", help="A hypernetwork for every prompt: a library NAME or a .pt/.safetensors file, with :MULT (repeatable; prompts can also say <hypernet:NAME:MULT>).", show_default=False),
    ] = None,
    seed: SeedOpt = 0,
    steps: StepsOpt = 20,
    guidance: GuidanceOpt = 7.5,
    scheduler: SchedulerOpt = None,
    size: SizeOpt = None,
    batch_size: BatchOpt = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("renders"),
    grid: Annotated[bool, typer.Option("--grid", help="Also write a labelled grid.png.")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    model_config: ModelConfigOpt = None,
    home: HomeOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Render prompts that mix library concepts, with AUTOMATIC1111 metadata in every PNG.

    Example: conceptlib render "a <cat-toy> in the style of <birb-style>" -m sd15 -n 4 --seed 42 --grid
    """
    from conceptlib.render import RenderConfig, parse_size, render

    config = RenderConfig(
        model=model,
        prompts=list(prompts or []),
        prompts_file=prompts_file,
        negative=negative,
        hypernets=list(hypernet or []),
        images_per_prompt=n,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        size=parse_size(size) if size else None,
        batch_size=batch_size,
        out=out_dir,
        grid=grid,
        device=device,
        dtype=dtype,
        home=home,
        model_config=model_config,
    )
    bar = StatusBar("render", elapsed=True)
    try:
        result = render(config, progress=bar.update)
    finally:
        bar.close()
    if not result.main_process:
        return  # one report per run: the main process gives it
    if json_:
        print_json(result.to_dict())
        return
    _print_result(result)


def _print_result(result: RenderResult) -> None:
    for image in result.images:
        out.print(str(image.path), markup=False)
    if result.grid:
        out.print(str(result.grid), markup=False)
    used = ", ".join(c.name for c in result.concepts) or "none"
    networks = f"; hypernetworks: {', '.join(h.name for h in result.hypernetworks)}" if result.hypernetworks else ""
    info(f"{len(result.images)} images in {result.seconds:.1f} s with {result.model}; concepts: {used}{networks}; manifest {result.manifest}")
    for concept in result.concepts:
        for finding in concept.findings:
            if finding.severity == "warning":
                info(f"Warning: {concept.name}: {finding.message}")
    for network in result.hypernetworks:
        for finding in network.findings:
            if finding.severity == "warning":
                info(f"Warning: {network.name}: {finding.message}")
    for warning in result.warnings:
        info(f"Warning: {warning}")


def preview_cmd(
    model: ModelOpt,
    concepts: Annotated[list[str] | None, typer.Argument(help="Library concept names or tokens.", show_default=False)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (grids and preview.md).")] = Path("preview"),
    changed: Annotated[
        str | None,
        typer.Option("--changed", help="A git range (origin/main...HEAD): preview the concepts it adds or changes.", show_default=False),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="UTF-8 file of concept paths or names, one a line (# comments); relative paths are relative to the file's folder.",
            show_default=False,
        ),
    ] = None,
    repo: Annotated[Path, typer.Option("--repo", help="The repository --changed refers to.")] = Path("."),
    seed: SeedOpt = 0,
    steps: StepsOpt = 20,
    guidance: GuidanceOpt = 7.5,
    scheduler: SchedulerOpt = None,
    size: SizeOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail the preview too (exit code and preview.md).")] = False,
    image_base_url: Annotated[
        str | None, typer.Option("--image-base-url", help="URL prefix for image links in preview.md.", show_default=False)
    ] = None,
    model_config: ModelConfigOpt = None,
    hypernet: Annotated[
        list[str] | None,
        typer.Option("--hypernet", help="A library hypernetwork applied to every preview image, NAME or NAME:MULT (repeatable).", show_default=False),
    ] = None,
    home: HomeOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Validate concepts and render a preview grid of each, with a Markdown summary for a pull request.

    Exit status: 2 when an input was refused as bad input (a file that is missing, unreadable
    or holds no concept, an unknown or damaged library concept), as add and validate do; else 1
    when a concept does not fit the model or could not be rendered (--strict: a warning too);
    else 0. The summary is written in all three cases; a range that changes no concept exits
    with 0 and a summary saying so. A run that cannot start (a bad range, a model without
    weights, a setting out of range) exits 2 with one error line and no summary.

    Example: conceptlib preview --changed origin/main...HEAD -m sd15 --out preview
    """
    from conceptlib.preview import preview
    from conceptlib.render import parse_size

    # preview() checks the numeric settings itself, before git, validation or loading.
    bar = StatusBar("preview", elapsed=True)
    try:
        result = preview(
            list(concepts or []), model=model, out=out_dir, changed=changed, from_file=from_file,
            repo=repo, home=home, seed=seed, steps=steps, guidance=guidance, scheduler=scheduler,
            size=parse_size(size) if size else None, batch_size=batch_size, device=device,
            dtype=dtype, strict=strict, image_base_url=image_base_url, progress=bar.update,
            model_config=model_config, hypernets=list(hypernet or []),
        )  # fmt: skip
    finally:
        bar.close()
    if json_:
        print_json(result.to_dict())
    else:
        for item in result.items:
            if item.failed:
                verdict = f"failed: {item.error}"
            elif item.verdict(result.strict) == "failed":
                verdict = f"failed (--strict): {item.warnings[0].message}"
            else:
                verdict = f"ok: {item.grid}"
            out.print(f"{item.name or item.source}: {verdict}", markup=False)
        for skipped in result.skipped:
            info(f"skipped {skipped.path}: {skipped.reason}")
        if not result.items:
            info("no concepts to preview")
        info(f"summary: {result.markdown}")
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``render`` and ``preview``."""
    app.command("render")(render_cmd)
    app.command("preview")(preview_cmd)
