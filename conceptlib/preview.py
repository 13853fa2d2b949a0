"""Preview concepts for a pull request: fixed prompts, a grid per concept, a Markdown summary.

>>> from conceptlib.preview import preview
>>> result = preview(changed="origin/main...HEAD", model="sd15", out="preview")  # doctest: +SKIP
>>> print(result.markdown.read_text())  # doctest: +SKIP
>>> raise SystemExit(result.exit_code)  # 1 when a concept failed validation  # doctest: +SKIP

Concepts come from three places, in any mix:

* names (or tokens) of concepts already in the library;
* ``changed``: a git range (``origin/main...HEAD``); the files it adds or modifies in a
  concepts-library repository are mapped to concepts: an embedding file, or the
  sd-concepts-library folder a changed file belongs to (``learned_embeds.bin``,
  ``token_identifier.txt``, ``concept_images/...``);
* ``from_file``: a text file listing paths or names, one a line.

Files are imported into a scratch library (the same reading, checks and token rules as
``conceptlib add``), so a file that cannot be added is reported, not rendered. Every concept is
validated against the model; those that fit are rendered with :func:`conceptlib.render.render`
through a fixed prompt set for their type (object, style, or negative, whose token goes into
the negative prompt), with the same seeds for every concept so grids are comparable across pull
requests. The summary ``preview.md`` holds one table row per concept: validation verdict,
findings, and a thumbnail linking to the grid.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib._atomic import atomic_write_bytes
from conceptlib._parallel import rank_and_world
from conceptlib.errors import BadInputError, UsageError

if TYPE_CHECKING:
    from conceptlib.models import ModelInfo
    from conceptlib.render import ProgressCallback
    from conceptlib.validate import Finding

__all__ = [
    "NEGATIVE_PROMPTS",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "PreviewItem",
    "PreviewResult",
    "changed_concepts",
    "preview",
    "preview_prompts",
]

#: ``{}`` is replaced by the concept's token. Ordinary words, so the tiny models know them too.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "a close up photo of {}",
    "a painting of {}",
    "{} on a table in a garden",
)
STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a portrait of a woman in the style of {}",
    "a house in a forest in the style of {}",
    "a city street at night in the style of {}",
)
#: Negative concepts go into the negative prompt of these.
NEGATIVE_PROMPTS: tuple[str, ...] = (
    "a portrait of a woman",
    "a photo of a cat",
    "a house in a forest",
    "a city street at night",
)
SUMMARY_NAME = "preview.md"
THUMB_WIDTH = 384
_EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
_IMAGE_SUFFIXES = (".png", ".webp")
_FOLDER_MARKERS = ("learned_embeds.safetensors", "learned_embeds.bin", "token_identifier.txt", "embeddings.pt")


@dataclass
class PreviewItem:
    """One concept of a preview.

    Attributes:
        source: what was asked for (a library name, or a path relative to the repository).
        name: the concept's name in the library (None when it could not be added).
        token: its token.
        type: ``object``, ``style`` or ``negative``.
        family: its base-model family label (``SD 1.x``).
        findings: validation findings against the model.
        error: why it was not rendered (unreadable file, validation error), or None.
        grid: the grid written, when rendered.
        thumbnail: a small copy of the grid for the summary.
        images: the individual images.
    """

    source: str
    name: str | None = None
    token: str | None = None
    type: str | None = None
    family: str | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    grid: Path | None = None
    thumbnail: Path | None = None
    images: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Not rendered because of an error."""
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "name": self.name,
            "token": self.token,
            "type": self.type,
            "family": self.family,
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error,
            "grid": str(self.grid) if self.grid else None,
            "images": [str(p) for p in self.images],
        }


@dataclass
class PreviewResult:
    """What a preview wrote.

    Attributes:
        out: the output folder.
        items: one per concept, in the order asked.
        markdown: the summary (``preview.md``).
        skipped: changed files that hold no concept (README, images of nothing), for the record.
        strict: warnings count as failures.
    """

    out: Path
    items: list[PreviewItem]
    markdown: Path
    skipped: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def exit_code(self) -> int:
        """1 when any concept failed (unreadable, or a validation error; warnings too if strict), else 0."""
        for item in self.items:
            if item.failed or (self.strict and any(f.severity == "warning" for f in item.findings)):
                return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``preview --json`` prints)."""
        return {
            "out": str(self.out),
            "markdown": str(self.markdown),
            "exit_code": self.exit_code,
            "items": [i.to_dict() for i in self.items],
            "skipped": list(self.skipped),
        }


def preview_prompts(token: str, concept_type: str) -> tuple[list[str], str]:
    """The fixed prompts for a concept, and the negative prompt.

    Args:
        token: the concept's token.
        concept_type: ``object``, ``style`` or ``negative``.

    Returns:
        ``(prompts, negative)``: a negative concept is rendered in the negative prompt of
        ordinary prompts; the others fill their type's templates.

    Example:
        >>> preview_prompts("<birb>", "style")[0][0]
        'a painting in the style of <birb>'
    """
    if concept_type == "negative":
        return list(NEGATIVE_PROMPTS), token
    templates = STYLE_TEMPLATES if concept_type == "style" else OBJECT_TEMPLATES
    return [t.format(token) for t in templates], ""


def changed_concepts(git_range: str, *, repo: str | os.PathLike[str] = ".") -> tuple[list[Path], list[str]]:
    """The concepts a git range adds or modifies in a concepts-library repository.

    Args:
        git_range: anything ``git diff`` accepts (``origin/main...HEAD``, ``HEAD~1``).
        repo: a folder inside the repository.

    Returns:
        ``(inputs, skipped)``: concept inputs (embedding files, or sd-concepts-library folders)
        as absolute paths, in path order; and changed files that hold no concept.

    Raises:
        UsageError: not a git repository, or git rejects the range.
    """
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise UsageError("--changed needs git, which is not installed") from None
        if done.returncode != 0:
            raise UsageError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}", hint="run it inside the concepts repository, with the range fetched")
        return done.stdout

    root = Path(git("rev-parse", "--show-toplevel").strip())
    # Added, copied, modified, renamed: deleted concepts have nothing to preview.
    names = [n for n in git("diff", "--name-only", "--diff-filter=ACMR", "-z", git_range).split("\0") if n]
    inputs: list[Path] = []
    skipped: list[str] = []
    for name in names:
        path = root / name
        if not path.exists():
            skipped.append(name)
            continue
        concept: Path | None = None
        # A file inside an sd-concepts-library folder (its images included) means the folder.
        for folder in (path.parent, path.parent.parent):
            if folder != root and folder.is_dir() and any((folder / m).is_file() for m in _FOLDER_MARKERS):
                concept = folder
                break
        if concept is None and path.suffix.lower() in _EMBEDDING_SUFFIXES:
            concept = path
        elif concept is None and path.suffix.lower() in _IMAGE_SUFFIXES and _is_embedding_image(path):
            concept = path  # an AUTOMATIC1111 embedding PNG
        if concept is None:
            skipped.append(name)
        elif concept not in inputs:
            inputs.append(concept)
    return sorted(inputs), skipped


def _is_embedding_image(path: Path) -> bool:
    from conceptlib.formats import read

    try:
        read(path)
    except (BadInputError, OSError):
        return False
    return True


def _markdown(result: PreviewResult, model: ModelInfo, settings: dict[str, Any], image_base_url: str | None) -> str:
    """The summary a CI job posts on the pull request."""

    def link(path: Path) -> str:
        rel = path.relative_to(result.out).as_posix()
        return f"{image_base_url.rstrip('/')}/{rel}" if image_base_url else rel

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    failed = sum(1 for i in result.items if i.failed)
    lines = [
        "## conceptlib preview",
        "",
        f"Model **{cell(model.name or Path(model.path or model.source).name)}** ({model.label}) · "
        f"{settings['prompts']} prompts per concept · seed {settings['seed']} · {settings['steps']} steps · "
        f"{settings['size'][0]}x{settings['size'][1]}",
        "",
        f"**{len(result.items) - failed} of {len(result.items)} concepts fit the model**"
        + (f", {failed} failed" if failed else "") + ".",
        "",
        "| Concept | Token | Type | Base | Validation | Preview |",
        "|---|---|---|---|---|---|",
    ]
    for item in result.items:
        warnings = [f for f in item.findings if f.severity == "warning"]
        if item.failed:
            verdict = f"❌ {cell(item.error or '')}"
        elif warnings:
            verdict = f"⚠️ {cell(warnings[0].message)}"
        else:
            verdict = "✅ fits"
        thumb = f"[<img src=\"{link(item.thumbnail)}\" width=\"{THUMB_WIDTH}\">]({link(item.grid)})" if item.thumbnail and item.grid else "–"
        lines.append(
            f"| {cell(item.name or item.source)} | {'`' + cell(item.token) + '`' if item.token else '–'} | "
            f"{item.type or '–'} | {item.family or '–'} | {verdict} | {thumb} |"
        )
    detailed = [i for i in result.items if i.findings]
    if detailed:
        lines += ["", "<details><summary>All validation findings</summary>", ""]
        for item in detailed:
            lines.append(f"**{cell(item.name or item.source)}**")
            lines.append("")
            lines += [f"- {f.severity}: `{f.code}` {cell(f.message)}" for f in item.findings]
            lines.append("")
        lines.append("</details>")
    if result.skipped:
        lines += ["", f"Changed files without a concept: {', '.join('`' + cell(s) + '`' for s in result.skipped)}"]
    return "\n".join(lines) + "\n"


def preview(
    concepts: Sequence[str] = (),
    *,
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    changed: str | None = None,
    from_file: str | os.PathLike[str] | None = None,
    repo: str | os.PathLike[str] = ".",
    home: str | os.PathLike[str] | None = None,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    scheduler: str | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "float32",
    strict: bool = False,
    image_base_url: str | None = None,
    progress: ProgressCallback | None = None,
    pipeline: Any = None,
    model_config: str | os.PathLike[str] | None = None,
) -> PreviewResult:
    """Validate concepts against a model and render a preview grid of each; write a summary.

    Args:
        concepts: library concept names or tokens.
        model: the model to preview with (registered name, diffusers folder, checkpoint).
        out: the output folder: ``<name>/grid.png``, ``<name>/thumb.png``, the images and
            ``preview.md``.
        changed: a git range; the concepts it adds or changes are previewed (see
            :func:`changed_concepts`).
        from_file: a file of paths or names, one a line (``#`` comments allowed).
        repo: the repository ``changed`` refers to.
        home: the library ``concepts`` names refer to (default: ``CONCEPTLIB_HOME``).
        seed, steps, guidance, scheduler, size, batch_size, device, dtype: as for
            :class:`conceptlib.render.RenderConfig`; the same seeds for every concept.
        strict: warnings fail the preview too.
        image_base_url: prefix for image links in the summary (where CI publishes ``out``);
            default: paths relative to ``out``.
        progress: ``progress(done, total, message)`` per concept.
        pipeline: a loaded pipeline of ``model`` to reuse.
        model_config: for a single-file checkpoint, the diffusers folder or Hub repository
            with its configs (see :mod:`conceptlib.single_file`).

    Returns:
        The result; ``result.exit_code`` is 1 when any concept failed.

    Raises:
        UsageError: nothing to preview, or a bad git range.
        ModelNotFoundError: ``model`` names nothing.

    Example:
        >>> preview(["cat-toy"], model="tiny-sd1", out="preview").exit_code  # doctest: +SKIP
        0
    """
    from PIL import Image

    from conceptlib._parallel import process_device
    from conceptlib.library import Library
    from conceptlib.models import resolve_model
    from conceptlib.render import RenderConfig, load_pipeline, render
    from conceptlib.single_file import native_size, resolve_configs
    from conceptlib.validate import validate

    out_dir = Path(out)
    info = resolve_model(model, home=home)
    device = process_device(device)  # a device this machine lacks fails now, not after loading
    configs = resolve_configs(info, model_config) if info.kind == "checkpoint" and pipeline is None else None
    native = native_size(info, configs)
    width, height = size or (native, native)

    # 1. What to preview: (source label, library home, name in that library or a path to add).
    wanted: list[tuple[str, str | Path]] = [(c, c) for c in concepts]
    skipped: list[str] = []
    if changed:
        paths, skipped = changed_concepts(changed, repo=repo)
        root = Path(subprocess.run(["git", "-C", os.fspath(repo), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip())
        wanted += [(p.relative_to(root).as_posix(), p) for p in paths]
    if from_file:
        for raw in Path(from_file).read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                candidate = Path(line).expanduser()
                wanted.append((line, candidate.resolve() if candidate.exists() else line))
    if not wanted:
        raise UsageError("nothing to preview: give concept names, --changed RANGE or --from FILE")

    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[PreviewItem] = []
    pipe = pipeline
    with tempfile.TemporaryDirectory(prefix="conceptlib-preview-") as scratch, Library.open(home) as user_lib:
        # Files go through a scratch library: the same reading and token rules as `add`.
        scratch_lib = Library.open(Path(scratch) / "library")
        try:
            for done, (label, what) in enumerate(wanted, start=1):
                item = PreviewItem(source=label)
                items.append(item)
                if progress:
                    progress(done - 1, len(wanted), label)
                lib, lib_home = user_lib, home
                try:
                    if isinstance(what, Path):
                        report = scratch_lib.add(what)
                        if report.rejected:
                            raise BadInputError(report.rejected[0].reason)
                        name = (report.added or [scratch_lib.show(report.duplicates[0].existing)])[0].name
                        lib, lib_home = scratch_lib, scratch_lib.home
                    else:
                        name = user_lib.resolve(what)
                    concept = lib.show(name)
                    embedding = lib.embedding(name)
                except BadInputError as exc:
                    item.error = f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
                    continue
                item.name, item.token, item.type = concept.name, concept.token, concept.type
                item.family = concept.family_label

                # 2. Validation decides whether it is rendered at all.
                item.findings = validate(embedding, info, token=concept.token, home=home)
                errors = [f for f in item.findings if f.severity == "error"]
                if errors:
                    item.error = errors[0].message
                    continue

                # 3. The fixed prompt set, rendered with the same seeds as every other concept.
                if pipe is None:
                    pipe = load_pipeline(info, device=device, dtype=dtype, configs=configs)
                prompts, negative = preview_prompts(concept.token, concept.type)
                rendered = render(RenderConfig(
                    model=info, prompts=prompts, negative=negative, seed=seed,
                    steps=steps, guidance=guidance, scheduler=scheduler, size=(width, height),
                    batch_size=batch_size, out=out_dir / concept.name, grid=True, device=device,
                    dtype=dtype, home=lib_home,
                ), pipeline=pipe)  # fmt: skip
                item.images = [i.path for i in rendered.images]
                item.grid = rendered.grid
                if rendered.grid is not None:
                    with Image.open(rendered.grid) as grid:
                        thumb = grid.convert("RGB")
                    thumb.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
                    item.thumbnail = rendered.grid.with_name("thumb.png")
                    buffer = io.BytesIO()
                    thumb.save(buffer, format="PNG")
                    atomic_write_bytes(item.thumbnail, buffer.getvalue())
        finally:
            scratch_lib.close()

    if progress:
        progress(len(wanted), len(wanted), "done")
    settings = {"prompts": len(OBJECT_TEMPLATES), "seed": seed, "steps": steps, "size": (width, height)}
    result = PreviewResult(out_dir, items, out_dir / SUMMARY_NAME, skipped, strict)
    # Under a launcher only the main process holds the grids (render writes them there).
    if rank_and_world()[0] == 0:
        atomic_write_bytes(result.markdown, _markdown(result, info, settings, image_base_url).encode("utf-8"))
    return result
