"""``inspect``, ``convert`` and ``formats``: work on embedding files directly, no library needed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conceptlib._terminal import printable
from conceptlib.cli._options import ForceOpt, HomeOpt, JsonOpt, StrictOpt, TokenOpt
from conceptlib.cli._output import err, out, print_json, warn

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

#: Longest metadata value `inspect` shows (the full text is in --json).
_MAX_META = 120


def _file_facts(path: Path) -> dict[str, Any]:
    from conceptlib._inputs import read_named
    from conceptlib.errors import EmbeddingFileError
    from conceptlib.formats import MAX_FILE_SIZE
    from conceptlib.hashing import bytes_hashes

    if path.is_dir():
        return {"path": str(path), "size": None}
    # Read as the readers read it: bounded, and a FIFO swapped in is refused, not waited on.
    data = read_named(path, limit=MAX_FILE_SIZE, what="embedding file", error=EmbeddingFileError)
    facts: dict[str, Any] = {"path": str(path), "size": len(data)}
    facts.update(bytes_hashes(data))
    return facts


def inspect_path(path: Path, strict: bool) -> dict[str, Any]:
    """Everything ``inspect`` shows about one file, as a JSON-ready dict."""
    return _inspected(path, strict)[0]


def _inspected(path: Path, strict: bool) -> tuple[dict[str, Any], Embedding | None]:
    """:func:`inspect_path`'s dict, and the embedding decoded for it (None for a hypernetwork),
    so that ``--model`` reads the same vectors without decoding the file again."""
    from conceptlib.errors import IsHypernetworkError, IsOptimizerStateError
    from conceptlib.formats import FORMATS, read
    from conceptlib.hashing import a1111_checksum

    try:
        emb = read(path, strict=strict)
    except IsHypernetworkError:
        from conceptlib import hypernet

        return {"file": _file_facts(path), **hypernet.read(path).describe()}, None
    except IsOptimizerStateError:
        from conceptlib import hypernet

        return {"file": _file_facts(path), **hypernet.describe_optimizer_state(path)}, None
    info: dict[str, Any] = {"file": _file_facts(path)}
    info.update(emb.describe())
    info["format_description"] = FORMATS[emb.source_format].description if emb.source_format in FORMATS else None
    info["prompt_word"] = emb.prompt_word()
    info["a1111_checksum"] = {k: a1111_checksum(t) for k, t in emb.vectors.items()}
    info["norms"] = {k: [round(n, 4) for n in v] for k, v in emb.norms().items()}
    info["non_finite"] = emb.non_finite()
    return info, emb


def _show(info: dict[str, Any]) -> None:
    # Tokens, names, metadata and checkpoint names come from the file: each is escaped and
    # bounded where it goes into a line (the console escapes whole lines as a backstop).
    enc = ", ".join(f"{k} {v['width']}" for k, v in info["encoders"].items())
    family = info["family_label"] or "unknown"
    if info["family"] == "sdxl" and not info["complete"]:
        family += " (incomplete: only " + ", ".join(info["encoders"]) + ")"
    token = info["token"]
    token_line = printable(token) if token else f"{printable(info['prompt_word'])} (no token stored: the prompt word is the name or file name)"
    rows = [
        ("format", f"{info['format']}: {info['format_description']}"),
        ("token", token_line),
        ("vectors", f"{info['vectors']} × {' + '.join(str(v['width']) for v in info['encoders'].values())} ({enc})"),
        ("dtype", info["dtype"]),
        ("family", family),
    ]
    for key, label in (("name", "name"), ("step", "step"), ("checkpoint_hash", "trained on"), ("checkpoint_name", "checkpoint")):
        if info.get(key) is not None:
            rows.append((label, printable(info[key])))
    for key, value in sorted(info["metadata"].items()):
        rows.append((f"meta {printable(key, 60)}", printable(value, _MAX_META)))
    rows.append(("content hash", info["content_hash"]))
    f = info["file"]
    if f.get("sha256"):
        rows.append(("file sha256", f"{f['sha256']} (AutoV2 {f['autov2']}, A1111 {f['a1111']})"))
        if "addnet" in f:
            rows.append(("addnet hash", f["addnet"]))
    rows.append(("checksum", ", ".join(f"[{v}]" for v in info["a1111_checksum"].values()) + " (AUTOMATIC1111)"))
    out.print(printable(f["path"], None), markup=False)
    for label, value in rows:
        out.print(f"  {label:<13} {value}", markup=False)


def _library_file(target: Path, home: Path | None) -> Path:
    """``target`` itself when it exists; a library concept's embedding file when it names one."""
    from conceptlib.slug import is_slug

    if target.exists() or target.is_symlink() or not is_slug(str(target)):
        return target
    from conceptlib.library import Library

    library = Library.open(home)
    try:
        if not library.has(str(target)):
            return target  # read as a path: "no such file" names it
        concept = library.show(str(target))
    finally:
        library.close()
    return concept.path / concept.canonical_name if concept.path else target


def _show_analysis(report: dict[str, Any], explained: bool) -> None:
    for key, data in report["encoders"].items():
        vocab = data["vocabulary"]
        out.print(f"  against {printable(report['model'])} ({key}, {vocab['size']:,} tokens; norm median {vocab['norm_median']}, 99th percentile {vocab['norm_p99']})", markup=False)
        for i, row in enumerate(data["vectors"]):
            words = ", ".join(f"{printable(n['word'], 40)} {n['cosine']:.2f}" for n in row["neighbors"])
            out.print(f"    vector {i:<3} |v| {row['norm']:.4f} ({row['norm_percentile']:.0f}th pct)  min {row['min']:.4f} max {row['max']:.4f} std {row['std']:.4f}", markup=False)
            if words:
                out.print(f"      nearest: {words}", markup=False)
            if explained:
                terms = row["explanation"]["terms"]
                text = " + ".join(f"{t['weight']:.2f} × {printable(t['word'], 40)}" for t in terms) or "nothing"
                out.print(f"      ≈ {text} (residual {row['explanation']['residual']:.2f})", markup=False)
        if data["mean"]["neighbors"]:
            words = ", ".join(f"{printable(n['word'], 40)} {n['cosine']:.2f}" for n in data["mean"]["neighbors"])
            out.print(f"    mean       |v| {data['mean']['norm']:.4f}  nearest: {words}", markup=False)


def inspect(
    files: Annotated[list[Path], typer.Argument(help="Embedding files, concept folders or library concept names.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Read the vectors against this model's vocabulary (a diffusers folder, a checkpoint or a registered name).", show_default=False),
    ] = None,
    neighbors: Annotated[int, typer.Option("--neighbors", help="With --model: nearest vocabulary tokens per vector, 0 to 1000.")] = 10,
    explain_: Annotated[bool, typer.Option("--explain", help="With --model: the few vocabulary tokens whose weighted sum best reproduces each vector.")] = False,
    terms: Annotated[int, typer.Option("--terms", help="Tokens per --explain, 1 to 32.")] = 4,
    plot: Annotated[Path | None, typer.Option("--plot", help="With --model: also draw norms, values and nearest words to this PNG.", show_default=False)] = None,
    home: HomeOpt = None,
    json_: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Show format, token, vectors, family, metadata and hashes of embedding files.

    With --model, each vector is also read against the model's vocabulary: its norm beside the
    vocabulary's, its nearest tokens, and with --explain the tokens that reproduce it.

    Example: conceptlib inspect EasyNegative.safetensors learned_embeds.bin

    Example: conceptlib inspect cat-toy --model sd15 --explain --plot cat-toy.png
    """
    from conceptlib.analysis import MAX_NEIGHBORS, MAX_TERMS
    from conceptlib.cli._errors import render_error
    from conceptlib.errors import ConceptlibError, UsageError
    from conceptlib.render import check_range

    check_range("--neighbors", neighbors, 0, MAX_NEIGHBORS)
    check_range("--terms", terms, 1, MAX_TERMS)
    if model is None and (explain_ or plot is not None):
        raise UsageError(f"{'--explain' if explain_ else '--plot'} reads the vectors against a model's vocabulary", hint="pass --model (a diffusers folder, a checkpoint or a registered name)")
    if plot is not None and len(files) > 1:
        raise UsageError("--plot draws one concept: give one file or name")
    described = None
    if model is not None:
        from conceptlib.analysis import check_model
        from conceptlib.models import resolve_model

        described = resolve_model(model, home=home, hash_files=False)
        check_model(described)

    results: list[dict[str, Any]] = []
    failed = 0
    for i, path in enumerate(files):
        try:
            path = _library_file(path, home)
            info, emb = _inspected(path, strict)
            if described is not None and emb is None:
                raise UsageError(f"--model reads a concept's vectors against a vocabulary: this file is {'a hypernetwork' if info.get('kind') == 'hypernetwork' else 'an optimizer state'}", path=path)
            if described is not None and emb is not None:
                from conceptlib.analysis import analyse
                from conceptlib.analysis import plot as draw

                info["analysis"] = analyse(emb, described, neighbors=neighbors, terms=terms if explain_ else 0, home=home)
                if plot is not None:
                    info["plot"] = str(draw(info["analysis"], emb, plot))
        except (ConceptlibError, OSError) as exc:
            failed += 1
            message, _code = render_error(exc)
            err.print(message, markup=False)
            results.append({"file": {"path": str(path)}, "error": message.removeprefix("Error: ")})
            continue
        results.append(info)
        for key, count in info.get("non_finite", {}).items():
            warn(f"{printable(str(path), None)}: {count} NaN/Inf values in {key} (the concept is damaged; --strict makes this an error)")
        for line in info.get("warnings", []):
            warn(f"{printable(str(path), None)}: {line}")
        if not json_:
            if i:
                out.print()
            if info.get("kind") == "hypernetwork":
                _show_hypernetwork(info)
                continue
            if info.get("kind") == "optimizer-state":
                _show_optimizer_state(info)
                continue
            _show(info)
            if "analysis" in info:
                _show_analysis(info["analysis"], explain_)
            if info.get("plot"):
                err.print(f"Plot: {printable(info['plot'], None)}", markup=False)
    if json_:
        print_json(results)
    if failed:
        raise typer.Exit(2)


def convert(
    src: Annotated[Path, typer.Argument(help="Embedding file or concept folder to read.", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="Destination; its name picks the format.", show_default=False)],
    to: Annotated[str | None, typer.Option("--to", help="Target format (see `conceptlib formats`).")] = None,
    token: TokenOpt = None,
    force: ForceOpt = False,
    strict: StrictOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Convert an embedding to another format, losslessly and atomically.

    The format comes from DST's name (.safetensors → diffusers or sdxl, .pt → a1111,
    .bin → diffusers-bin, .png → png, a folder → concepts-library) unless --to is given.

    Example: conceptlib convert bad-artist.pt bad-artist.safetensors --token bad-artist
    """
    from conceptlib.errors import IsHypernetworkError
    from conceptlib.formats import convert as do_convert

    try:
        result = do_convert(src, dst, to=to, token=token, force=force, strict=strict)
    except IsHypernetworkError:
        _convert_hypernetwork(src, dst, to=to, force=force, json_=json_)
        return
    emb = result.embedding
    if json_ and token is not None and not result.token_stored:
        err.print(
            f"Note: the {result.format} format stores no token; tools use the file name, {printable(repr(result.token))}, "
            "as the prompt word (rename the file to change it)",
            markup=False,
        )
    if json_:
        print_json(
            {
                "source": str(result.source),
                "source_format": result.source_format,
                "format": result.format,
                "files": [str(p) for p in result.files],
                "token": result.token,
                "token_stored": result.token_stored,
                "content_hash": emb.content_hash(),
            }
        )
        return
    for path in result.files:
        out.print(str(path), markup=False)
    shown = printable(repr(result.token))
    word = f"token {shown}" if result.token_stored else f"no token stored (the file name {shown} is the prompt word)"
    err.print(
        f"Converted {src} ({result.source_format}) to {result.format}: {emb.num_vectors} × {emb.width_label}, {emb.dtype}, {word}",
        markup=False,
    )


def _convert_hypernetwork(src: Path, dst: Path, *, to: str | None, force: bool, json_: bool) -> None:
    """``convert`` of a hypernetwork: AUTOMATIC1111 ``.pt`` <-> the safetensors form."""
    from conceptlib import hypernet
    from conceptlib.errors import UsageError

    if to is not None and to not in ("a1111", "safetensors"):
        raise UsageError(f"--to {to}: a hypernetwork converts to a1111 (.pt) or safetensors", path=src)
    network = hypernet.read(src)
    written = hypernet.write(network, dst, format=to, force=force)
    chosen = to or {".pt": "a1111", ".safetensors": "safetensors"}[written.suffix.lower()]
    if json_:
        print_json({"source": str(src), "source_format": f"hypernetwork-{network.layout}", "format": f"hypernetwork-{chosen}", "files": [str(written)], "kind": "hypernetwork"})
        return
    out.print(str(written), markup=False)
    err.print(f"Converted the hypernetwork {src} ({network.layout}) to {chosen}: widths {', '.join(map(str, network.widths))}", markup=False)


def _show_optimizer_state(info: dict[str, Any]) -> None:
    belongs = info["belongs_to"]
    if belongs is None:
        owner = f"a file whose sha256 starts with {info['hash']} (not beside it)"
    else:
        owner = f"{printable(belongs)}" + ("" if info["matches"] else f" by name only: its sha256 does not start with {printable(info['hash'])}, so AUTOMATIC1111 will not resume from it")
    out.print(printable(info["file"]["path"], None), markup=False)
    for label, value in (
        ("kind", "AUTOMATIC1111 optimizer state (it only resumes training in AUTOMATIC1111)"),
        ("optimizer", printable(info["optimizer_name"] or "?")),
        ("parameters", str(info["parameters"]) if info["parameters"] is not None else "?"),
        ("belongs to", owner),
    ):
        out.print(f"  {label:<13} {value}", markup=False)


def _show_hypernetwork(info: dict[str, Any]) -> None:
    fields = info["fields"]
    structure = ", ".join(f"{x:g}" for x in fields["layer_structure"])
    rows = [
        ("kind", f"hypernetwork ({info['layout']} layout)"),
        ("name", printable(fields.get("name") or "")),
        ("widths", ", ".join(str(w) for w in info["widths"])),
        ("structure", f"[{structure}], activation {printable(str(fields['activation_func']))}, layer norm {'yes' if fields['is_layer_norm'] else 'no'}, "
         f"dropout {'yes' if fields['use_dropout'] else 'no'}, output activated {'yes' if fields['activate_output'] else 'no'}"),
        ("parameters", f"{info['parameters']:,} ({info['dtype']})"),
    ]  # fmt: skip
    if fields.get("step") is not None:
        rows.append(("step", str(fields["step"])))
    if fields.get("sd_checkpoint") or fields.get("sd_checkpoint_name"):
        rows.append(("trained on", printable(f"{fields.get('sd_checkpoint_name') or ''} [{fields.get('sd_checkpoint') or '?'}]".strip())))
    if info["defaulted"]:
        rows.append(("defaults", "not in the file, AUTOMATIC1111's taken: " + ", ".join(info["defaulted"])))
    f = info["file"]
    rows.append(("file sha256", f"{f['sha256']} (AutoV2 {f['autov2']})"))
    out.print(printable(f["path"], None), markup=False)
    for label, value in rows:
        out.print(f"  {label:<13} {value}", markup=False)


def formats(json_: JsonOpt = False) -> None:
    """List the formats conceptlib reads and writes."""
    from conceptlib.formats import FORMATS

    rows = [
        {
            "name": f.name,
            "writable": f.writer is not None,
            "suffix": f.suffix or "(folder)",
            "sd1_sd2": f.single,
            "sdxl": f.sdxl,
            "description": f.description,
        }
        for f in FORMATS.values()
    ]
    if json_:
        print_json(rows)
        return
    for row in rows:
        mode = "read/write" if row["writable"] else "read only "
        out.print(f"{row['name']:<17} {mode}  {row['description']}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``convert`` and ``formats``."""
    app.command("inspect")(inspect)
    app.command("convert")(convert)
    app.command("formats")(formats)
