"""``models`` (inspect, add, list, create-tiny) and ``validate``: concepts against base models.

Nothing heavy is imported at module scope: ``conceptlib.models`` and ``conceptlib.validate`` are
torch-free and imported inside the commands; torch is only touched by ``models create-tiny``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conceptlib._terminal import printable
from conceptlib.cli._options import ForceOpt, HomeOpt, JsonOpt, ModelOpt, StrictOpt
from conceptlib.cli._output import err, info, out, print_json
from conceptlib.errors import ConceptlibError
from conceptlib.layout import EMBEDDING_SUFFIXES

if TYPE_CHECKING:
    from conceptlib._inputs import Skipped
    from conceptlib.embedding import Embedding
    from conceptlib.models import ModelInfo
    from conceptlib.validate import Finding


class OutputFormat(str, Enum):
    """How ``validate`` prints its findings."""

    text = "text"
    github = "github"


NoHashOpt = Annotated[
    bool, typer.Option("--no-hash", help="Skip hashing weight files (fast; no sha256/AutoV2).")
]


# --- models inspect / add / list ---------------------------------------------------------------


def _short(value: str | None, n: int = 12) -> str:
    return value[:n] if value else "-"


def _show_model(model: ModelInfo) -> None:
    rows: list[tuple[str, str]] = []
    kind = {"diffusers": "diffusers folder", "checkpoint": "single-file checkpoint", "family": "family name"}
    what = kind.get(model.kind, model.kind)
    if model.pipeline_class:
        what += f" ({model.pipeline_class})"
    rows.append(("kind", what))
    rows.append(("family", f"{model.label} [{model.family}]"))
    rows.append(("prediction", model.prediction_type or "unknown"))
    if model.sample_size:
        rows.append(("image size", f"{model.sample_size} px"))
    for enc in model.encoders:
        parts = [f"width {enc.width}", f"context {enc.context_length}"]
        if enc.tokenizer:
            tok = enc.tokenizer
            added = f", {len(tok.added_tokens)} added" if tok.added_tokens else ""
            parts.append(f"vocabulary {tok.vocab_size}{added} ({tok.component})")
        elif enc.vocab_size:
            parts.append(f"vocabulary {enc.vocab_size}")
        if enc.fingerprint:
            parts.append(f"fingerprint {_short(enc.fingerprint, 16)} ({enc.dtype})")
        if enc.norms:
            parts.append(f"vocab norms median {enc.norms.median:.3g}, max {enc.norms.max:.3g}")
        rows.append((f"encoder {enc.key}", ", ".join(parts)))
    if model.hashes:
        h = model.hashes
        rows.append(("sha256", h["sha256"]))
        short = f"AutoV2 {h['autov2']}, A1111 legacy {h['autov1']}"
        if "addnet" in h:
            short += f", addnet {_short(h['addnet'])}"
        rows.append(("short hashes", short))
    for rel, h in model.files.items():
        rows.append(("file", f"{rel}  sha256 {_short(h['sha256'], 16)} (AutoV2 {h['autov2']})"))
    if model.model_config:
        rows.append(("configs", model.model_config))
    for note in model.notes:
        rows.append(("note", note))
    out.print(model.name or model.source, markup=False)
    for label, value in rows:
        out.print(f"  {label:<15} {value}", markup=False)


def inspect_model(
    path: Annotated[
        str,
        typer.Argument(help="A diffusers folder, a checkpoint file, a registered name or a family.", show_default=False),
    ],
    json_: JsonOpt = False,
    no_hash: NoHashOpt = False,
    home: HomeOpt = None,
) -> None:
    """Describe a base model: family, prediction type, text encoders, tokenizers, hashes.

    Example: conceptlib models inspect ./stable-diffusion-v1-5 --json
    """
    from conceptlib.models import resolve_model

    model = resolve_model(path, home=home, hash_files=not no_hash)
    if json_:
        print_json(model.describe())
    else:
        _show_model(model)


def add_model(
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a checkpoint file.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="Name to register (default: folder name or file stem).")] = None,
    force: ForceOpt = False,
    no_hash: NoHashOpt = False,
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help="For a single-file checkpoint: a diffusers folder or Hub repo with its configs and tokenizer, "
            "remembered for train/render; its tokenizer then serves token checks.",
            show_default=False,
        ),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Register a base model so `validate --model NAME` works offline.

    Example: conceptlib models add ./stable-diffusion-v1-5 --name sd15
    """
    from conceptlib.models import add_model as do_add

    model = do_add(path, name=name, home=home, force=force, hash_files=not no_hash, model_config=model_config)
    out.print(model.name or "", markup=False)
    info(f"Registered {model.name}: {model.label}, {model.width_label}, prediction {model.prediction_type or 'unknown'}")


def list_models_cmd(json_: JsonOpt = False, home: HomeOpt = None) -> None:
    """List the registered base models.

    Example: conceptlib models list --json
    """
    from conceptlib.models import list_models

    models = list_models(home)
    if json_:
        print_json([m.to_dict() for m in models])
        return
    if not models:
        info("No models registered; add one with `conceptlib models add PATH`.")
        return
    width = max(len(m.name or "") for m in models)
    for m in models:
        ident = m.hashes.get("autov2") if m.hashes else None
        ident = ident or _short(next(iter(m.fingerprints().values()), None), 10)
        out.print(
            f"{m.name or '':<{width}}  {m.label:<22} {m.prediction_type or 'unknown':<13} {ident:<10}  {m.source}",
            markup=False,
        )


class TinyFamily(str, Enum):
    """Families ``create-tiny`` can build."""

    sd1 = "sd1"
    sd2 = "sd2"
    sd2_v = "sd2-v"
    sdxl = "sdxl"


def create_tiny_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create.", show_default=False)],
    family: Annotated[TinyFamily, typer.Option("--family", help="Model family.")] = TinyFamily.sd1,
    seed: Annotated[int, typer.Option("--seed", help="Weights are a pure function of family and seed.")] = 0,
    force: ForceOpt = False,
) -> None:
    """Write a tiny runnable Stable Diffusion model (diffusers folder) for tests and demos.

    Real text-encoder widths (so real embeddings load), everything else tiny; runs in about a
    second on a CPU. Needs the torch extra.

    Example: conceptlib models create-tiny ./tiny-sdxl --family sdxl --seed 0
    """
    from conceptlib.tiny import create_tiny

    path = create_tiny(out_dir, family.value, seed, force=force)
    out.print(str(path), markup=False)
    info(f"Created a tiny {family.value} model (seed {seed}).")


# --- validate ----------------------------------------------------------------------------------


@dataclass
class Target:
    """One concept to validate, as resolved from the command line.

    Attributes:
        label: how messages name it (the path as found, or the concept name).
        path: the file or folder read, for annotations.
        token: the token to validate (library concepts), else None for the file's own.
        embedding: the vectors, or None when the file could not be read.
        error: why it could not be read.
    """

    label: str
    path: Path | None = None
    token: str | None = None
    embedding: Embedding | None = None
    error: str | None = None
    findings: list[Finding] = field(default_factory=list)
    hypernetwork: Any = None  # a conceptlib.hypernet.Hypernetwork, checked instead of vectors


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.lower().endswith(EMBEDDING_SUFFIXES)


def _concept_target(name: str, home: Path | None) -> Target:
    import importlib.util

    from conceptlib.errors import UsageError

    if importlib.util.find_spec("conceptlib.library") is None:
        raise UsageError(
            f"{name!r} is not a file or folder, and this build has no concept library to look it up",
            hint="pass embedding files or folders",
        )
    from conceptlib.library import Library

    with Library.open(home) as lib:
        concept = lib.show(name)
        if concept.kind == "hypernetwork":
            network = lib.hypernetwork(concept.name)
            return Target(label=concept.name, path=concept.path / concept.canonical_name if concept.path else None, token=concept.token, hypernetwork=network)
        embedding = lib.embedding(concept.name)
    return Target(label=concept.name, path=concept.embedding_path, token=concept.token, embedding=embedding)


def _read_error(exc: BaseException) -> str:
    """The reason a file could not be read, without repeating its path."""
    from conceptlib.cli._errors import render_error

    if isinstance(exc, ConceptlibError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    line = render_error(exc)[0].removeprefix("Error: ")
    filename = getattr(exc, "filename", None)
    return line.removeprefix(f"{filename}: ") if filename else line


def resolve_targets(specs: list[str], home: Path | None = None, skipped: list[Skipped] | None = None) -> list[Target]:
    """Turn TARGET arguments into concepts to validate.

    One bad target never stops the others: each file that cannot be read, each missing path
    or unknown name becomes a target carrying ``error``. With a single TARGET, its error is
    raised instead (the command's one-line error). A damaged library, a full disk or no
    memory stop everything, whatever the number of targets.

    Args:
        specs: concept names, embedding files or folders (scanned recursively, without
            following links out of them).
        home: the library folder for concept names.
        skipped: collects links and special files left alone while scanning folders.

    Returns:
        One target per concept; files that cannot be read carry ``error`` instead of vectors.

    Raises:
        FileNotFoundError: a path-like target does not exist (single target).
        ConceptNotFoundError: a name is neither a path nor a concept (single target).
        UsageError: a folder holds no embedding file (single target).
    """
    from conceptlib._inputs import concerns_the_library

    targets: list[Target] = []
    for spec in specs:
        try:
            targets += _targets_of(spec, home, skipped)
        except (ConceptlibError, OSError) as exc:
            if len(specs) == 1 or concerns_the_library(exc):
                raise
            targets.append(Target(label=spec, error=_read_error(exc)))
    return targets


def _targets_of(spec: str, home: Path | None, skipped: list[Skipped] | None) -> list[Target]:
    """The targets one TARGET argument gives; a file that cannot be read carries its error."""
    from conceptlib._inputs import Skipped, concerns_the_library
    from conceptlib._snapshots import read_input
    from conceptlib.errors import IsHypernetworkError, NoEmbeddingInImageError, UsageError
    from conceptlib.layout import SKIP_PLAIN_IMAGE, find_inputs

    path = Path(spec).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise FileNotFoundError(2, f"No such file or directory (a symbolic link to {printable(os.readlink(path))})", spec)
        if _looks_like_path(spec):
            raise FileNotFoundError(2, "No such file or directory", spec)
        return [_concept_target(spec, home)]
    # The same walk as ``add``'s, so both find the same concepts and skip the same files.
    inputs = find_inputs([path])
    if skipped is not None:
        skipped.extend(inputs.skipped)
    refused = [(r.path, r.error) for r in inputs.rejected if r.error is not None]
    if not inputs.concepts:
        if refused:
            raise refused[0][1]
        raise UsageError(f"holds no embedding files ({', '.join(EMBEDDING_SUFFIXES)})", path=path)
    # A folder inside that cannot be listed is an unreadable target; the others are still checked.
    targets = [Target(label=where, path=Path(where), error=_read_error(exc)) for where, exc in refused]
    for found in inputs.concepts:
        target = Target(label=str(found.path), path=found.path)
        try:
            # A concept folder is read under its own link rule; a file under its folder's.
            target.embedding, left_out = read_input(found.path, within=None if found.kind == "folder" else found.within)
            if skipped is not None:
                skipped.extend(left_out)
        except IsHypernetworkError:
            from conceptlib import hypernet

            try:
                target.hypernetwork = hypernet.read(found.path)
            except (ConceptlibError, OSError) as exc:
                if concerns_the_library(exc):
                    raise
                target.error = _read_error(exc)
        except NoEmbeddingInImageError as exc:
            if not found.picture:
                target.error = _read_error(exc)
            else:  # a sample picture met in a folder: skipped, as ``add`` skips it
                if skipped is not None:
                    skipped.append(Skipped(str(found.path), SKIP_PLAIN_IMAGE, exc))
                continue
        except (ConceptlibError, OSError) as exc:
            if concerns_the_library(exc):
                raise
            target.error = _read_error(exc)
        targets.append(target)
    if not targets:  # only pictures without an embedding: the folder gave nothing, as for add
        raise UsageError("holds no embeddings, only images without one", path=path)
    return targets


def _escape(value: str, *, prop: bool = False) -> str:
    """Escape for GitHub workflow commands (properties also escape ':' and ',')."""
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def _annotation_path(path: Path | None) -> str | None:
    if path is None:
        return None
    absolute = path.resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def github_annotation(severity: str, message: str, *, path: Path | None, code: str) -> str:
    """One ``::error``/``::warning``/``::notice`` workflow command line."""
    level = {"error": "error", "warning": "warning"}.get(severity, "notice")
    props = []
    file = _annotation_path(path)
    if file:
        props.append(f"file={_escape(file, prop=True)}")
    props.append(f"title={_escape(f'conceptlib {code}', prop=True)}")
    return f"::{level} {','.join(props)}::{_escape(message)}"


def _target_dict(t: Target) -> dict[str, Any]:
    emb = t.embedding
    family = emb.family if emb else None
    if t.hypernetwork is not None:
        from conceptlib.hypernet import family_of

        return {
            "target": t.label,
            "path": str(t.path) if t.path else None,
            "kind": "hypernetwork",
            "token": t.token or (t.path.stem if t.path else None),
            "family": family_of(t.hypernetwork.widths),
            "widths": t.hypernetwork.widths,
            "ok": not any(f.severity == "error" for f in t.findings),
            "findings": [f.to_dict() for f in t.findings],
        }
    return {
        "target": t.label,
        "path": str(t.path) if t.path else None,
        "token": (t.token or (emb.prompt_word() if emb else None)),
        "family": family.key if family else None,
        "vectors": emb.num_vectors if emb else None,
        "widths": emb.widths if emb else None,
        "ok": not any(f.severity == "error" for f in t.findings),
        "findings": [f.to_dict() for f in t.findings],
    }


def validate_cmd(
    targets: Annotated[
        list[str], typer.Argument(help="Concept names, embedding files or folders.", show_default=False)
    ],
    model: ModelOpt,
    json_: JsonOpt = False,
    format_: Annotated[
        OutputFormat, typer.Option("--format", help="text, or github for workflow annotations.")
    ] = OutputFormat.text,
    strict: StrictOpt = False,
    home: HomeOpt = None,
) -> None:
    """Check that concepts fit a base model: widths, tokens, context, values, hashes.

    Exit code 0 when clean, 1 on errors (and on warnings with --strict), 2 on bad input
    (unreadable files, unknown model).

    Example: conceptlib validate embeddings/ --model sd15 --format github --strict
    """
    from pathlib import Path as _Path

    from conceptlib.models import resolve_model
    from conceptlib.validate import (
        Finding,
        coverage,
        exit_status,
        summarize,
        validate_hypernetwork,
        validate_many,
    )

    # Hash single files (AUTOMATIC1111 embeddings record a checkpoint's hash); a folder's file
    # hashes never match those, so skip that cost there.
    info_model = resolve_model(model, home=home, hash_files=_Path(model).expanduser().is_file())
    skipped: list[Skipped] = []
    resolved = resolve_targets(targets, home, skipped)
    readable = [t for t in resolved if t.embedding is not None]
    results = validate_many(
        [(t.label, t.embedding, t.token) for t in readable if t.embedding is not None], info_model, home=home
    )
    for t, findings in zip(readable, results, strict=True):
        t.findings = findings
    for t in resolved:
        if t.hypernetwork is not None:
            t.findings = validate_hypernetwork(t.hypernetwork, info_model)
    for t in resolved:
        if t.error is not None:
            t.findings = [Finding("unreadable", "error", t.error)]
    notes = coverage(info_model, home=home)
    everything = [f for t in resolved for f in t.findings]
    counts = summarize(everything)
    unreadable = sum(t.error is not None for t in resolved)
    if json_:
        print_json({
            "model": {
                "name": info_model.display_name, "label": info_model.label, "family": info_model.family,
                "prediction_type": info_model.prediction_type, "widths": info_model.widths,
            },
            "notes": [n.to_dict() for n in notes],
            "results": [_target_dict(t) for t in resolved],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "summary": {**counts, "targets": len(resolved), "unreadable": unreadable},
        })  # fmt: skip
    else:
        for note in notes:
            info(f"Note: {note.message}")
        for s in skipped:
            info(f"Skipped {printable(s.path, None)}: {printable(s.reason, None)}")
        # Labels and messages carry names and tokens from strangers' files: escaped.
        for t in resolved:
            label = printable(t.label, None)
            if format_ is OutputFormat.github:
                for f in t.findings:
                    out.print(github_annotation(f.severity, printable(f.message, None), path=t.path, code=f.code), markup=False, soft_wrap=True)
            elif not t.findings:
                out.print(f"{label}: ok", markup=False)
            else:
                for f in t.findings:
                    out.print(f"{label}: {f.severity} [{f.code}] {printable(f.message, None)}", markup=False)
    err.print(
        f"Validated {len(resolved)} concept{'s' if len(resolved) != 1 else ''} against "
        f"{info_model.display_name} ({info_model.label}): {counts['error']} error(s), "
        f"{counts['warning']} warning(s), {counts['info']} note(s).",
        markup=False,
    )
    if unreadable:
        raise typer.Exit(2)
    code = exit_status(everything, strict=strict)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the ``models`` group and the ``validate`` command."""
    models_app = typer.Typer(
        name="models",
        help="Base models: inspect, register and create tiny ones.",
        no_args_is_help=True,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    models_app.command("inspect")(inspect_model)
    models_app.command("add")(add_model)
    models_app.command("list")(list_models_cmd)
    models_app.command("create-tiny")(create_tiny_cmd)
    app.add_typer(models_app, name="models")
    app.command("validate")(validate_cmd)
