"""``conceptlib demo``: the main job, end to end, on built-in samples in a fresh library."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from conceptlib.cli._output import out


def _step(title: str) -> None:
    out.print()  # one line per print: the console escapes a newline inside a string
    out.print(f"== {title}", markup=False)


def demo(
    home: Annotated[
        Path | None,
        # --home is the older spelling; every other command's --home is the library itself,
        # while this folder holds the library *and* the demo's sample files.
        typer.Option(
            "--dir",
            "--home",
            help="New folder for the demo: sample files in downloads/, the library in library/ "
            "(default: a new temporary folder).",
            show_default=False,
            metavar="<path>",
        ),
    ] = None,
) -> None:
    """Run the whole workflow on sample files in a fresh library: inspect, convert, add,
    search, validate against a built-in tiny model, export for AUTOMATIC1111, train and render
    (with the torch extra), verify, and build the gallery.

    Example: conceptlib demo --dir /tmp/my-demo
    """
    from conceptlib import _deps
    from conceptlib.cli.formats import inspect_path
    from conceptlib.formats import convert
    from conceptlib.library import Library
    from conceptlib.models import read_model
    from conceptlib.samples import write_model_description, write_samples
    from conceptlib.validate import validate

    root = Path(home) if home else Path(tempfile.mkdtemp(prefix="conceptlib-demo-"))
    if root.exists() and any(root.iterdir()):
        from conceptlib.errors import UsageError

        raise UsageError(f"{root} is not empty", hint="give --dir a new or empty folder")
    downloads = root / "downloads"
    out.print(f"conceptlib demo: a fresh library in {root / 'library'}, sample files beside it", markup=False)

    _step("1. Sample concepts in every format (written to downloads/)")
    samples = write_samples(downloads)
    for path in samples:
        try:
            info = inspect_path(path, strict=False)
        except Exception as exc:  # the LFS pointer is there on purpose
            out.print(f"  {path.name:<26} unreadable: {getattr(exc, 'message', exc)}", markup=False)
            continue
        shape = " + ".join(str(e["width"]) for e in info["encoders"].values())
        out.print(
            f"  {path.name:<26} {info['format']:<17} {info['prompt_word']:<16} "
            f"{info['vectors']} × {shape:<11} {info['family_label']}",
            markup=False,
        )

    _step("2. Convert: an AUTOMATIC1111 .pt to diffusers safetensors and back to a PNG")
    first = convert(downloads / "bad-artist.pt", root / "converted" / "bad-artist.safetensors", token="bad-artist")
    second = convert(first.files[0], root / "converted" / "bad-artist.png")
    same = first.embedding.content_hash() == second.embedding.content_hash()
    out.print(f"  {first.files[0].name} ({first.format}) and {second.files[0].name} ({second.format}); "
              f"same content hash: {same}", markup=False)

    _step("3. Add everything to the library (duplicates and broken files are reported)")
    library = Library.open(root / "library")
    types = {"bad-artist.pt": "negative", "easy-negative.png": "negative", "birb-style.safetensors": "style"}
    for path in samples:
        kind = types.get(path.name)
        report = library.add(path, type=kind, tags=[kind] if kind else [])
        for concept in report.added:
            out.print(f"  added      {concept.name:<16} {concept.token:<16} {concept.type:<9} {concept.family_label}", markup=False)
        for dup in report.duplicates:
            out.print(f"  duplicate  {Path(dup.path).name}: same vectors as {dup.existing}", markup=False)
        for rejected in report.rejected:
            out.print(f"  rejected   {Path(rejected.path).name}: {rejected.reason}", markup=False)

    _step("4. Search the index")
    for query in ("cat", "negative"):
        hits = library.search(query)
        out.print(f"  search {query!r}: {', '.join(c.name for c in hits) or '(nothing)'}", markup=False)

    _step("5. Validate every concept against the built-in tiny SD 1.x model")
    model_dir = root / "models" / "tiny-sd1"
    if _deps.available("torch") and _deps.available("diffusers") and _deps.available("transformers"):
        from conceptlib.tiny import create_tiny

        create_tiny(model_dir, "sd1", seed=0)
        out.print("  (a runnable tiny model with seeded weights)", markup=False)
    else:
        write_model_description(model_dir)
        out.print("  (the tiny model's configs and tokenizer; install conceptlib[torch] for its weights)", markup=False)
    model = read_model(model_dir, home=library.home)  # its cache goes with the demo library
    for summary in library.list(kind="embedding"):
        findings = [f for f in validate(library.embedding(summary.name), model, token=summary.token) if f.severity != "info"]
        verdict = "fits" if not findings else findings[0].message
        out.print(f"  {summary.name:<16} {verdict}", markup=False)

    _step("6. Export the SD 1.x concepts as a folder ready for AUTOMATIC1111's embeddings/")
    sd1 = [c.name for c in library.list(base="sd1")]
    exported = library.export(sd1, None, root / "a1111-embeddings", target="a1111")
    for item in exported:
        for path in item.files:
            out.print(f"  {path}", markup=False)

    runnable = _deps.available("torch") and _deps.available("diffusers") and _deps.available("transformers")
    _step("7. Train a concept on the tiny model from cat-toy's pictures, and add it")
    if runnable:
        from conceptlib.train import TrainConfig, train

        trained = train(TrainConfig(
            model=str(model_dir), images=str(downloads / "cat-toy" / "concept_images"), token="<demo-cat>",
            init_word="cat", name="demo-cat", steps=12, lr=0.02, resolution=32, save_every=0,
            out=str(root / "training" / "demo-cat"), home=str(library.home), seed=0,
        ))  # fmt: skip
        out.print(f"  demo-cat: {trained.steps} steps, evaluation loss {trained.eval_loss_start:.4f} -> {trained.eval_loss_end:.4f}, "
                  f"{trained.library_action} to the library", markup=False)  # fmt: skip
    else:
        out.print("  (skipped: training needs conceptlib[torch])", markup=False)

    _step("8. Render a grid that composes two concepts, with a negative one")
    if runnable:
        from conceptlib.render import RenderConfig, render

        rendered = render(RenderConfig(
            model=str(model_dir), prompts=["a <demo-cat> in the style of <birb-style>"], negative="bad-artist",
            images_per_prompt=4, batch_size=4, steps=4, size=(64, 64), seed=1, grid=True,
            out=root / "renders", home=library.home,
        ))  # fmt: skip
        out.print(f"  {len(rendered.images)} images with {', '.join(c.name for c in rendered.concepts)}; grid {rendered.grid}", markup=False)
    else:
        out.print("  (skipped: rendering needs conceptlib[torch])", markup=False)

    _step("9. Verify the library")
    checked = library.verify()
    out.print("  clean: every hash matches, index and manifests agree" if checked.ok else
              f"  {len(checked.problems)} problems", markup=False)

    _step("10. Build the gallery")
    from conceptlib.gallery import build

    gallery = build(library, root / "gallery", title="conceptlib demo")
    out.print(f"  {gallery.items} concepts; open {(root / 'gallery' / 'index.html').resolve().as_uri()}", markup=False)
    library.close()
    out.print()
    out.print(f"Try: conceptlib list --home {root / 'library'}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``demo``."""
    app.command("demo")(demo)
