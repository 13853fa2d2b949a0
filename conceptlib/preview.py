"""Preview concepts for a pull request: fixed prompts, a grid per concept, a Markdown summary.

>>> from conceptlib.preview import preview
>>> result = preview(changed="origin/main...HEAD", model="sd15", out="preview")  # doctest: +SKIP
>>> print(result.markdown.read_text())  # doctest: +SKIP
>>> raise SystemExit(result.exit_code)  # 2: an input refused, 1: a concept failed  # doctest: +SKIP

Concepts come from three places, in any mix:

* names (or tokens) of concepts already in the library;
* ``changed``: a git range (``origin/main...HEAD``); the files it adds or modifies in a
  concepts-library repository are mapped to concepts: an embedding file, or the
  sd-concepts-library folder a changed file belongs to (``learned_embeds.bin``,
  ``token_identifier.txt``, ``concept_images/...``);
* ``from_file``: a text file listing paths or names, one a line; relative paths are relative
  to the list file's folder.

Files are imported into a scratch library (the same reading, checks and token rules as
``conceptlib add``), so a file that cannot be added is reported, not rendered. Every concept is
validated against the model; those that fit are rendered with :func:`conceptlib.render.render`
through a fixed prompt set for their type (object, style, or negative, whose token goes into
the negative prompt), with the same seeds for every concept so grids are comparable across pull
requests. The summary ``preview.md`` holds one table row per concept: validation verdict
(under ``strict``, warnings fail too, as in the exit code), findings, and a thumbnail linking
to the grid; changed files that gave no concept are listed with the reason. A range that
changes no concept still gets a summary, saying so.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib._atomic import atomic_write_bytes
from conceptlib._parallel import rank_and_world
from conceptlib._text import read_utf8
from conceptlib.errors import (
    BadInputError,
    ConceptDamagedError,
    ConceptDoesNotFitError,
    ConceptlibError,
    UsageError,
)
from conceptlib.layout import PICKLE_OR_SAFETENSORS, PICTURE_SUFFIXES

if TYPE_CHECKING:
    from conceptlib.concept import Concept
    from conceptlib.embedding import Embedding
    from conceptlib.library import AddReport
    from conceptlib.models import ModelInfo
    from conceptlib.render import ProgressCallback
    from conceptlib.validate import Finding

__all__ = [
    "NEGATIVE_PROMPTS",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "PreviewItem",
    "PreviewResult",
    "Skipped",
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
#: CLIP's context, BOS and EOS included (``conceptlib.models.CONTEXT_LENGTH``, not imported
#: here: this module loads with the CLI).
CONTEXT_LENGTH = 77
SUMMARY_NAME = "preview.md"
THUMB_WIDTH = 384
_FOLDER_MARKERS = ("learned_embeds.safetensors", "learned_embeds.bin", "token_identifier.txt", "embeddings.pt")


@dataclass(frozen=True)
class Skipped:
    """A changed file that gave no concept to preview, and why.

    Attributes:
        path: the file, relative to the repository.
        reason: ``holds no concept``, ``deleted by the change`` or ``not in the working tree``.
    """

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"path": self.path, "reason": self.reason}


SKIP_NO_CONCEPT = "holds no concept"
SKIP_DELETED = "deleted by the change"
SKIP_MISSING = "not in the working tree (check out the range's last commit)"
#: A pull request can add a link to any file of the CI machine; it is never read.
SKIP_LINK_OUT = "a symbolic link leading out of the repository: not read"


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
        rejected: the input itself was refused as bad input (a file that is missing, unreadable
            or holds no concept, an unknown or damaged library concept), as ``add`` and
            ``validate`` refuse it; False for a validation error or a failed render.
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
    rejected: bool = False
    grid: Path | None = None
    thumbnail: Path | None = None
    images: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Not rendered because of an error."""
        return self.error is not None

    @property
    def warnings(self) -> list[Finding]:
        """The validation warnings (they fail the item under ``strict``)."""
        return [f for f in self.findings if f.severity == "warning"]

    def verdict(self, strict: bool = False) -> str:
        """``failed`` (an error; a warning too under ``strict``), ``warning`` or ``ok``."""
        if self.failed or (strict and self.warnings):
            return "failed"
        return "warning" if self.warnings else "ok"

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        """JSON-ready form; ``verdict`` as :meth:`verdict` gives it under ``strict``."""
        return {
            "source": self.source,
            "name": self.name,
            "token": self.token,
            "type": self.type,
            "family": self.family,
            "verdict": self.verdict(strict),
            "findings": [f.to_dict() for f in self.findings],
            "error": self.error,
            "rejected": self.rejected,
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
        skipped: changed files that gave no concept (README, deleted files), with the reason.
        strict: warnings count as failures.
        changed: the git range previewed, when one was.
        listed: the ``from_file`` list previewed, when one was.
    """

    out: Path
    items: list[PreviewItem]
    markdown: Path
    skipped: list[Skipped] = field(default_factory=list)
    strict: bool = False
    changed: str | None = None
    listed: str | None = None

    @property
    def failed(self) -> list[PreviewItem]:
        """The items that fail the preview (errors; warnings too if strict)."""
        return [i for i in self.items if i.verdict(self.strict) == "failed"]

    @property
    def exit_code(self) -> int:
        """The CLI's exit code, the one of ``add`` and ``validate`` for the same inputs.

        2 when an input was refused as bad input (:attr:`PreviewItem.rejected`), else 1 when a
        concept failed (a validation error or a failed render; a warning too if strict), else 0.
        """
        if any(i.rejected for i in self.items):
            return 2
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``preview --json`` prints)."""
        return {
            "out": str(self.out),
            "markdown": str(self.markdown),
            "exit_code": self.exit_code,
            "strict": self.strict,
            "items": [i.to_dict(self.strict) for i in self.items],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def preview_prompts(
    token: str, concept_type: str, *, vectors: int = 1, context: int = CONTEXT_LENGTH
) -> tuple[list[str], str]:
    """The fixed prompts for a concept, and the negative prompt.

    A template is used only when it fits the text encoder's context with the concept's
    vectors; otherwise that prompt is the token alone, so nothing is ever silently truncated
    (a 75-vector embedding fills SD's 77-token context by itself). Template words count as
    one CLIP token each: they are ordinary words, each one token of the CLIP vocabulary
    (a test checks this against the real tokenizer).

    Args:
        token: the concept's token.
        concept_type: ``object``, ``style`` or ``negative``.
        vectors: the concept's number of vectors (the tokens it takes in a prompt).
        context: the text encoder's context length, BOS and EOS included.

    Returns:
        ``(prompts, negative)``: a negative concept is rendered in the negative prompt of
        ordinary prompts; the others fill their type's templates.

    Raises:
        UsageError: the vectors alone do not fit the context (validation refuses such a
            concept before a preview renders it).

    Example:
        >>> preview_prompts("<birb>", "style")[0][0]
        'a painting in the style of <birb>'
        >>> preview_prompts("<huge>", "object", vectors=75)[0][0]
        '<huge>'
    """
    usable = context - 2  # BOS and EOS
    if vectors > usable:
        raise UsageError(f"{vectors} vectors do not fit the {context}-token context ({usable} after BOS/EOS)")
    if concept_type == "negative":
        return list(NEGATIVE_PROMPTS), token
    templates = STYLE_TEMPLATES if concept_type == "style" else OBJECT_TEMPLATES
    prompts = []
    for template in templates:
        words = len(template.replace("{}", " ").split())
        prompts.append(template.format(token) if words + vectors <= usable else token)
    return prompts, ""


def _git(repo: str | os.PathLike[str], *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UsageError("--changed needs git, which is not installed") from None
    if done.returncode != 0:
        reason = " ".join((done.stderr.strip() or "failed").split())
        raise UsageError(f"git {' '.join(args)}: {reason}", hint="run it inside the concepts repository, with the range fetched")
    return done.stdout


def _changed(git_range: str, repo: str | os.PathLike[str]) -> tuple[Path, list[Path], list[Skipped]]:
    from conceptlib.layout import is_thumbnail, own_names

    # git would read `--output=FILE` as an option and write that file: a range is never one.
    if not git_range or git_range.startswith("-"):
        raise UsageError(f"--changed {git_range!r} is not a git range (it may not start with '-')", hint="pass a range such as origin/main...HEAD")
    root = Path(_git(repo, "rev-parse", "--show-toplevel").strip())
    # --end-of-options keeps the range a revision even if it looks like an option; `--` ends
    # the revisions, so it is never read as a path either.
    raw = _git(repo, "diff", "--name-status", "-z", "--diff-filter=ACMRD", "--end-of-options", git_range, "--")
    fields = raw.split("\0")
    changes: list[tuple[str, str]] = []  # (status letter, path in the range's last commit)
    i = 0
    while i < len(fields) and fields[i]:
        status = fields[i]
        if status[:1] in ("R", "C"):  # renamed or copied: old path, then new path
            changes.append((status[0], fields[i + 2]))
            i += 3
        else:
            changes.append((status[:1], fields[i + 1]))
            i += 2
    inputs: list[Path] = []
    skipped: list[Skipped] = []
    real_root = Path(os.path.realpath(root))

    def inside(p: Path) -> bool:
        return Path(os.path.realpath(p)).is_relative_to(real_root)

    for status, name in changes:
        path = root / name
        if status == "D":
            skipped.append(Skipped(name, SKIP_DELETED))
            continue
        if not inside(path):
            # Checked before anything looks at it: even an error quoting its first bytes would
            # put a file of the CI machine into the summary posted on the pull request.
            skipped.append(Skipped(name, SKIP_LINK_OUT))
            continue
        if not path.exists():
            skipped.append(Skipped(name, SKIP_MISSING))
            continue
        concept: Path | None = None
        # A file inside an sd-concepts-library folder (its images included) means the folder.
        for folder in (path.parent, path.parent.parent):
            if folder != root and inside(folder) and folder.is_dir() and any(os.path.lexists(folder / m) for m in _FOLDER_MARKERS):
                concept = folder
                break
        if path.suffix.lower() in PICKLE_OR_SAFETENSORS and not (
            concept is not None and path.parent == concept and path.name in own_names() and path.is_file()
        ):
            # An embedding that is not the folder's own learned_embeds file is a concept of
            # its own, even beside one (the library adds it as one).
            concept = path
        elif concept is None and path.suffix.lower() in PICTURE_SUFFIXES and not is_thumbnail(path.name) and _is_embedding_image(path):
            # A thumbnail is never a concept (the folder walk of add and validate skips it too).
            concept = path  # an AUTOMATIC1111 embedding PNG
        if concept is None:
            skipped.append(Skipped(name, SKIP_NO_CONCEPT))
        elif concept not in inputs:
            inputs.append(concept)
    return root, sorted(inputs), skipped


def changed_concepts(git_range: str, *, repo: str | os.PathLike[str] = ".") -> tuple[list[Path], list[Skipped]]:
    """The concepts a git range adds or modifies in a concepts-library repository.

    Args:
        git_range: anything ``git diff`` accepts (``origin/main...HEAD``, ``HEAD~1``); never
            an option (a range starting with ``-`` is refused).
        repo: a folder inside the repository.

    Returns:
        ``(inputs, skipped)``: concept inputs (embedding files, or sd-concepts-library folders)
        as absolute paths, in path order; and changed files that give no concept, with the
        reason (no concept in them, deleted by the range, missing from the working tree).

    Raises:
        UsageError: not a git repository, a range starting with ``-``, or git rejects the range.

    Example:
        >>> changed_concepts("origin/main...HEAD")  # doctest: +SKIP
        ([PosixPath('/repo/cat-toy')], [Skipped(path='README.md', reason='holds no concept')])
    """
    _root, inputs, skipped = _changed(git_range, repo)
    return inputs, skipped


def _is_embedding_image(path: Path) -> bool:
    from conceptlib.formats import read

    try:
        read(path)
    except (BadInputError, OSError):
        return False
    return True


def _looks_like_path(line: str) -> bool:
    """Whether a line of a ``--from`` file names a file rather than a concept (names are slugs)."""
    return (
        "/" in line or "\\" in line or line.startswith(("~", "."))
        or Path(line).suffix.lower() in (*PICKLE_OR_SAFETENSORS, *PICTURE_SUFFIXES)
    )  # fmt: skip


def _read_list(from_file: str | os.PathLike[str]) -> list[tuple[str, str | Path]]:
    """The entries of a ``--from`` file: (line, a path to add or a library name)."""
    list_path = Path(from_file).expanduser()
    text = read_utf8(list_path, holds="concept paths or names, one a line", called="list")
    base = list_path.absolute().parent
    wanted: list[tuple[str, str | Path]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        candidate = Path(line).expanduser()
        if not candidate.is_absolute():
            candidate = base / candidate  # relative to the list, wherever the command runs
        if candidate.exists():
            wanted.append((line, candidate.resolve()))
        elif _looks_like_path(line):
            wanted.append((line, candidate))  # reported as a missing file, not as an unknown name
        else:
            wanted.append((line, line))
    return wanted


def _outcomes(report: AddReport, what: Path) -> list[tuple[str, str | None, str | None]]:
    """What adding ``what`` to the scratch library gave: (sub-label, scratch name, error) each.

    Adding a concept folder also adds the embeddings beside its own file; only the folder's
    concept is its outcome (a changed file beside it is an input of its own). A folder that
    is no concept itself (a ``token_identifier.txt`` beside loose files) gives every concept
    found in it.
    """
    key, own = str(what), os.fspath(what.resolve())
    for rejected in report.rejected:
        if rejected.path == key:
            return [("", None, rejected.reason)]
    for concept in report.added:
        if concept.source.get("path") == own:
            return [("", concept.name, None)]
    for duplicate in report.duplicates:
        if duplicate.path == key:
            return [("", duplicate.existing, None)]

    def sub(path: str) -> str:
        try:
            return "/" + Path(path).relative_to(what).as_posix()
        except ValueError:
            return ""

    found: list[tuple[str, str | None, str | None]] = []
    found += [(sub(str(c.source.get("path", ""))), c.name, None) for c in report.added]
    found += [(sub(d.path), d.existing, None) for d in report.duplicates]
    found += [(sub(r.path), None, r.reason) for r in report.rejected]
    return found or [("", None, "holds no concept")]


def _relative(path: Path, label: str, what: Path) -> str:
    """``path`` (inside the input ``what``) as the summary names it: from the input's label."""
    try:
        rest = path.relative_to(what).as_posix()
    except ValueError:
        return str(path)
    return label if rest == "." else f"{label}/{rest}"


def _markdown(result: PreviewResult, model: ModelInfo, settings: dict[str, Any], image_base_url: str | None) -> str:
    """The summary a CI job posts on the pull request."""

    def link(path: Path) -> str:
        rel = path.relative_to(result.out).as_posix()
        return f"{image_base_url.rstrip('/')}/{rel}" if image_base_url else rel

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "## conceptlib preview",
        "",
        f"Model **{cell(model.name or Path(model.path or model.source).name)}** ({model.label}) · "
        f"{settings['prompts']} prompts per concept · seed {settings['seed']} · {settings['steps']} steps · "
        f"{settings['size'][0]}x{settings['size'][1]}",
        "",
    ]
    if not result.items:
        # Only a range or a list can give nothing (a name asked for is always an item).
        sources = []
        if result.changed is not None:
            sources.append(f"changed in `{cell(result.changed)}`")
        if result.listed is not None:
            sources.append(f"listed in `{cell(result.listed)}`")
        lines.append(f"**No concepts {' or '.join(sources) or 'asked for'}**: nothing to preview.")
    else:
        failed = len(result.failed)
        lines += [
            f"**{len(result.items) - failed} of {len(result.items)} concepts fit the model**"
            + (f", {failed} failed" if failed else "")
            + (" (--strict: warnings fail)" if result.strict else "") + ".",
            "",
            "| Concept | Token | Type | Base | Validation | Preview |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
    for item in result.items:
        warnings = item.warnings
        if item.failed:
            verdict = f"❌ {cell(item.error or '')}"
        elif warnings and result.strict:
            verdict = f"❌ {cell(warnings[0].message)} (warning, failed under --strict)"
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
        lines += ["", "Skipped changed files:", ""]
        lines += [f"- `{cell(s.path)}`: {cell(s.reason)}" for s in result.skipped]
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
    hypernets: Sequence[str] = (),
) -> PreviewResult:
    """Validate concepts against a model and render a preview grid of each; write a summary.

    Args:
        concepts: library concept names or tokens.
        model: the model to preview with (registered name, diffusers folder, checkpoint).
        out: the output folder: ``<name>/grid.png``, ``<name>/thumb.png``, the images and
            ``preview.md``. Two concepts with one name get ``<name>`` and ``<name>-2``.
        changed: a git range; the concepts it adds or changes are previewed (see
            :func:`changed_concepts`). A range that changes none gives a summary saying so.
        from_file: a file of paths or names, one a line (``#`` comments allowed); relative
            paths are relative to the file's folder. An empty list is like a range that
            changes nothing (a CI job may write one): a summary saying so, exit code 0.
        repo: the repository ``changed`` refers to.
        home: the library ``concepts`` names refer to (default: ``CONCEPTLIB_HOME``).
        seed, steps, guidance, scheduler, size, batch_size, device, dtype: as for
            :class:`conceptlib.render.RenderConfig`; the same seeds for every concept.
        strict: warnings fail the preview too (exit code and summary alike).
        image_base_url: prefix for image links in the summary (where CI publishes ``out``);
            default: paths relative to ``out``.
        progress: ``progress(done, total, message)`` per concept.
        pipeline: a loaded pipeline of ``model`` to reuse.
        model_config: for a single-file checkpoint, the diffusers folder or Hub repository
            with its configs (see :mod:`conceptlib.single_file`).
        hypernets: hypernetworks of the library at ``home`` (``NAME`` or ``NAME:MULT``) applied
            to every preview image; read and validated once, before any concept.

    Returns:
        The result; ``result.exit_code`` is 2 when an input was refused as bad input, else 1
        when any concept failed (see :attr:`PreviewResult.exit_code`).

    Raises:
        UsageError: a setting out of range (:func:`conceptlib.render.check_settings`, sizes as
            :func:`conceptlib.render.parse_size` takes them), nothing asked for, a bad git range,
            an unreadable ``from_file``, ``out`` is a file, or ``model`` is a family name (no
            weights).
        ModelNotFoundError: ``model`` names nothing.
        ModelWeightsMissingError: ``model`` is a diffusers folder of configs alone.

    Example:
        >>> preview(["cat-toy"], model="tiny-sd1", out="preview").exit_code  # doctest: +SKIP
        0
    """
    from conceptlib._deps import quiet_loading
    from conceptlib._images import thumbnail_png
    from conceptlib._inputs import concerns_the_library, unexpected_reason
    from conceptlib._parallel import process_device
    from conceptlib.layout import SKIP_PLAIN_IMAGE, SKIP_THUMBNAIL
    from conceptlib.library import Library
    from conceptlib.models import require_weights, resolve_model
    from conceptlib.pipelines import load_pipeline
    from conceptlib.render import RenderConfig, check_settings, parse_size, render
    from conceptlib.single_file import native_size, resolve_configs
    from conceptlib.slug import numbered
    from conceptlib.validate import validate

    # Before git, the model or any file: these reach render only per concept, after all that.
    check_settings(seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    size = parse_size(size) if size is not None else None
    if not concepts and changed is None and from_file is None:
        raise UsageError("nothing to preview: give concept names, --changed RANGE or --from FILE")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError("is a file; the preview goes into a folder", path=out_dir, hint="pass --out a folder")
    if rank_and_world()[0] == 0:
        # A summary from an earlier run must not outlive a run that stops, early or midway: CI
        # would post it beside this run's grids. No summary means the preview did not finish.
        (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    info = resolve_model(model, home=home)
    if pipeline is None:
        # Before anything is read or written: a model that cannot render fails the run now.
        require_weights(info)
        if not info.path:
            raise UsageError(
                f"{info.display_name} is a family name, without weights to render with",
                hint="pass a diffusers folder or a .safetensors checkpoint, or register one with `conceptlib models add`",
            )
    # The hypernetworks once, from the user's library, and checked against the model now: a
    # network that does not fit would fail every concept's grid alike.
    networks: list[tuple[Any, float]] = []
    if hypernets:
        from conceptlib.render import parse_hypernet, resolve_hypernetworks
        from conceptlib.validate import validate_hypernetwork

        wanted_networks = [parse_hypernet(h) for h in hypernets]
        with Library.open(home) as networks_library:
            found = resolve_hypernetworks([w for w, _m in wanted_networks], info, networks_library)
        for word, multiplier in wanted_networks:
            network = found[word.lower()]
            network.findings = validate_hypernetwork(network.network, info)
            errors = [f for f in network.findings if f.severity == "error"]
            if errors:
                raise ConceptDoesNotFitError(network.name, errors[0].message)
            networks.append((network, multiplier))
    device = process_device(device)  # a device this machine lacks fails now, not after loading
    configs = resolve_configs(info, model_config) if info.kind == "checkpoint" and pipeline is None else None
    native = native_size(info, configs)
    width, height = size or (native, native)
    context = min((e.context_length for e in info.encoders), default=CONTEXT_LENGTH)

    # 1. What to preview: (source label, name in the user's library or a path to add).
    wanted: list[tuple[str, str | Path]] = [(c, c) for c in concepts]
    skipped: list[Skipped] = []
    if changed is not None:
        root, paths, skipped = _changed(changed, repo)
        wanted += [(p.relative_to(root).as_posix(), p) for p in paths]
    if from_file is not None:
        wanted += _read_list(from_file)

    items: list[PreviewItem] = []
    folders: set[str] = set()  # output folder names taken in this preview
    pipe = pipeline

    def _validate_and_render(item: PreviewItem, concept: Concept, embedding: Embedding, lib_home: str | os.PathLike[str] | None) -> None:
        """Validate one concept against the model and, when it fits, render its grid into ``item``."""
        nonlocal pipe
        # 3. Validation decides whether it is rendered at all.
        item.findings = validate(embedding, info, token=concept.token, home=home)
        errors = [f for f in item.findings if f.severity == "error"]
        if errors:
            item.error = errors[0].message
            return

        # 4. The fixed prompt set, rendered with the same seeds as every other concept,
        # into a folder of its own (two concepts may share a name: a library concept
        # and a changed file).
        folder, n = concept.name, 2
        while folder in folders:
            folder, n = numbered(concept.name, n), n + 1
        folders.add(folder)
        if pipe is None:
            pipe = load_pipeline(info, device=device, dtype=dtype, configs=configs)
        prompts, negative = preview_prompts(concept.token, concept.type, vectors=embedding.num_vectors, context=context)
        # transformers and diffusers log each too-long prompt ("Token indices sequence
        # length is longer ..."); the prompts fit, and their logs would bury ours.
        with quiet_loading():
            rendered = render(RenderConfig(
                model=info, prompts=prompts, negative=negative, seed=seed,
                steps=steps, guidance=guidance, scheduler=scheduler, size=(width, height),
                batch_size=batch_size, out=out_dir / folder, grid=True, device=device,
                dtype=dtype, home=lib_home, hypernets=networks,
            ), pipeline=pipe)  # fmt: skip
        item.images = [i.path for i in rendered.images]
        item.grid = rendered.grid
        if rendered.grid is not None:
            item.thumbnail = rendered.grid.with_name("thumb.png")
            atomic_write_bytes(item.thumbnail, thumbnail_png(rendered.grid.read_bytes(), rendered.grid, (THUMB_WIDTH, THUMB_WIDTH * 4)))

    with tempfile.TemporaryDirectory(prefix="conceptlib-preview-") as scratch, Library.open(home) as user_lib:
        # Files go through a scratch library: the same reading and token rules as `add`.
        scratch_lib = Library.open(Path(scratch) / "library")
        try:
            # 2. Each input -> concepts (a folder beside loose files may give several).
            targets: list[tuple[PreviewItem, Library | None, str | None]] = []
            from_scratch: set[str] = set()  # a scratch concept is previewed once
            for label, what in wanted:
                if isinstance(what, Path):
                    if not what.exists():
                        targets.append((PreviewItem(source=label, error=f"{what}: no such file or folder", rejected=True), None, None))
                        continue
                    report = scratch_lib.add(what)
                    # What the add left out of a concept (a link out of its folder, an image
                    # that is not one) is listed with the skipped files; pictures are not news.
                    skipped += [
                        Skipped(_relative(Path(r.path), label, what), r.reason)
                        for r in report.skipped if r.reason not in (SKIP_THUMBNAIL, SKIP_PLAIN_IMAGE)
                    ]
                    for sub, name, error in _outcomes(report, what):
                        if name is not None and name in from_scratch:
                            continue
                        if name is not None:
                            from_scratch.add(name)
                        targets.append((PreviewItem(source=label + sub, error=error, rejected=error is not None), scratch_lib, name))
                else:
                    try:
                        targets.append((PreviewItem(source=label), user_lib, user_lib.resolve(what)))
                    except BadInputError as exc:
                        targets.append((PreviewItem(source=label, error=_message(exc), rejected=True), None, None))

            for done, (item, lib, name) in enumerate(targets):
                items.append(item)
                if progress:
                    progress(done, len(targets), item.source)
                if lib is None or name is None:
                    continue
                lib_home = scratch_lib.home if lib is scratch_lib else home
                try:
                    concept = lib.show(name)
                    embedding = lib.embedding(name)
                except (BadInputError, ConceptDamagedError) as exc:
                    # One damaged concept is its own row; the others still get their grids.
                    item.error, item.rejected = _message(exc), True
                    continue
                item.name, item.token, item.type = concept.name, concept.token, concept.type
                item.family = concept.family_label
                try:
                    _validate_and_render(item, concept, embedding, lib_home)
                except ConceptlibError:
                    raise  # deliberate errors are about the run (a bad scheduler, a missing extra)
                except Exception as exc:
                    # An unforeseen failure with one concept is its row; the others still get
                    # their grids. A damaged library or an exhausted machine stops the preview.
                    if concerns_the_library(exc, lib_home):
                        raise
                    item.error = f"{unexpected_reason(exc)} (rerun with CONCEPTLIB_DEBUG=1 and report it)"

        finally:
            scratch_lib.close()

    if progress:
        progress(len(items), len(items), "done")
    settings = {"prompts": len(OBJECT_TEMPLATES), "seed": seed, "steps": steps, "size": (width, height)}
    listed = os.fspath(from_file) if from_file is not None else None
    result = PreviewResult(out_dir, items, out_dir / SUMMARY_NAME, skipped, strict, changed, listed)
    # Under a launcher only the main process holds the grids (render writes them there).
    if rank_and_world()[0] == 0:
        atomic_write_bytes(result.markdown, _markdown(result, info, settings, image_base_url).encode("utf-8"))
    return result


def _message(exc: BadInputError | ConceptDamagedError) -> str:
    return f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
