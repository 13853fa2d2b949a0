"""The library commands: add, list, search, show, remove, tag, rename, export, reindex, verify.

Each command parses its arguments, calls one :class:`conceptlib.library.Library` method and
renders the result: data on stdout (``--json`` for scripts), messages and progress on stderr.
Errors are not caught here; ``conceptlib.cli.app.main`` turns them into one line.

``conceptlib.library`` is imported inside the commands so that ``conceptlib --help`` does not
pay for it, and ``list``/``search``/``show`` never import sqlmodel, torch or numpy-heavy code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conceptlib._terminal import printable
from conceptlib.cli._options import (
    BaseOpt,
    ConceptArg,
    ConceptsArg,
    ForceOpt,
    HomeOpt,
    JsonOpt,
    TokenOpt,
    TypeOpt,
    YesOpt,
)
from conceptlib.cli._output import StatusBar, info, print_json, warn
from conceptlib.cli._readonly import (  # noqa: F401  (table, describe, fast_main, parse_fast: public here too)
    _library,
    _plural,
    _write,
    describe,
    fast_main,
    list_concepts,
    parse_fast,
    search_concepts,
    show_concept,
    table,
)

if TYPE_CHECKING:
    from conceptlib.concept import Concept
    from conceptlib.library import Problem



# --- add ---------------------------------------------------------------------------------------


def add(
    paths: Annotated[list[Path], typer.Argument(help="Embedding files, concept folders, or folders holding them.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="Name in the library (one concept only; default: from the token).", show_default=False)] = None,
    token: TokenOpt = None,
    type_: TypeOpt = None,
    images: Annotated[Path | None, typer.Option("--images", help="Folder of sample or training images (one concept only).", show_default=False)] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag to attach (repeatable).", show_default=False)] = None,
    license_: Annotated[str | None, typer.Option("--license", help="License id or text, e.g. mit.", show_default=False)] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="Free-text description.", show_default=False)] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Add embeddings in any format, concept folders, or whole folders of them.

    Duplicates (the same vectors already in the library) are reported and skipped; a token
    already used in the same base family is refused (choose another with --token).

    Example: conceptlib add EasyNegative.safetensors --type negative --tag quality
    """
    lib = _library(home)
    bar = StatusBar("Adding", enabled=not json_, min_total=2)
    try:
        report = lib.add(
            paths,
            name=name,
            token=token,
            type=type_,
            images=images,
            tags=tags or (),
            license=license_,
            description=description,
            progress=lambda done, total, path: bar.update(done, total, path.name[:40]),
        )
    finally:
        bar.close()
    # Paths, tokens and reasons come from strangers' files: escaped, so an escape sequence or
    # a bidi override in a file name cannot rewrite or disguise the report.
    skipped_lines = [f"skipped    {printable(r.path, None)}: {printable(r.reason, None)}" for r in report.skipped]
    if report.total == 1 and report.rejected and report.rejected[0].error is not None and not json_:
        # One input: its error is the command's error (one line, exit 2). Scripts asking
        # for --json get the report instead, with the same exit code.
        _write(skipped_lines)
        raise report.rejected[0].error
    if json_:
        print_json(report.to_dict())
    else:
        lines = [
            *(f"added      {c.name}  ({printable(c.token)}, {c.family_label}, {_added_what(c)})" for c in report.added),
            *(f"duplicate  {printable(d.path, None)}  (same vectors as {d.existing})" for d in report.duplicates),
            *(f"rejected   {printable(r.path, None)}: {printable(r.reason, None)}" for r in report.rejected),
            *(f"near-dup   {n.name}  (near-duplicate of {n.existing} ({n.score:.2f}))" for n in report.near_duplicates),
            *skipped_lines,
        ]
        _write(lines)
        skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
        info(
            f"Added {_plural(len(report.added), 'concept')}, {_plural(len(report.duplicates), 'duplicate')}, "
            f"{len(report.rejected)} rejected{skipped}."
        )
    if report.rejected:
        raise typer.Exit(2)


# --- merge -------------------------------------------------------------------------------------


def merge(
    expression: Annotated[str, typer.Argument(help="What to compute, e.g. \"0.6*<cat-toy> + 0.4*<birb-style>\" (the language is above).", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Name of the new concept.", show_default=False)],
    token: TokenOpt = None,
    type_: TypeOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="For 'words' and norm(): the model whose vocabulary gives their vectors; the result is validated against it.", show_default=False),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="Free-text description.", show_default=False)] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag to attach (repeatable).", show_default=False)] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Make a new concept from others and add it with its lineage.

    EXPRESSION: weighted sums (0.6*<a> + 0.4*<b>; a one-vector term is added to each vector),
    slices (<a>[0:2], <a>[1]), concat(<a>, <b>), words and prompts ('watercolor', "a red fox",
    with --model), norm(x) (each vector at the vocabulary's median norm, with --model) and
    SDXL parts from any source ({clip_l: <a>, clip_g: <b>.clip_g}). Concepts are <token>s or
    names; a minus between two names needs spaces.

    Example: conceptlib merge "0.6*<cat-toy> + 0.4*<birb-style>" --name cat-birb
    """
    from conceptlib.merge import merge_into

    lib = _library(home)
    described = None
    if model is not None:
        from conceptlib.models import resolve_model

        described = resolve_model(model, home=lib.home, hash_files=False)
    report = merge_into(lib, expression, name=name, token=token, type=type_, model=described, description=description, tags=tuple(tags or ()))
    if json_:
        print_json(report.to_dict())
        return
    concept = report.one()
    lines = [f"merged     {concept.name}  ({printable(concept.token)}, {concept.family_label}, {_plural(concept.vectors, 'vector')})"]
    lines += [f"near-dup   {n.name}  (near-duplicate of {n.existing} ({n.score:.2f}))" for n in report.near_duplicates]
    _write(lines)


# --- gallery -----------------------------------------------------------------------------------


def gallery(
    out: Annotated[Path, typer.Argument(help="Folder of the gallery (created; an earlier build there is brought up to date).", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Validate every concept against this model and show the result as a badge.", show_default=False),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="The page title.")] = "Concepts",
    steps: Annotated[int, typer.Option("--steps", help="With --model and the torch extra: sampling steps of the preview rendered for a concept without sample images, 1 to 1000.")] = 20,
    no_previews: Annotated[bool, typer.Option("--no-previews", help="Never render previews (concepts without images show their vectors).")] = False,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Build a static gallery of the library: open OUT/index.html, or publish OUT on GitHub Pages.

    Cards with thumbnails, search and filters, a page per concept with its hashes, lineage and
    downloads (AUTOMATIC1111/ComfyUI and diffusers), and index.json for tools. No server, no
    network at view time; the same library gives the same bytes; a rebuild writes what changed.

    Example: conceptlib gallery site --model sd15 --title "Our concepts"
    """
    from conceptlib.gallery import build
    from conceptlib.render import check_range

    check_range("--steps", steps, 1, 1000)
    lib = _library(home)
    described = None
    if model is not None:
        from conceptlib.models import resolve_model

        described = resolve_model(model, home=lib.home, hash_files=False)
    report = build(lib, out, model=described, title=title, previews=not no_previews, steps=steps)
    if json_:
        print_json(report.to_dict())
        return
    for line in report.skipped:
        warn(f"skipped {line}")
    _write([(report.out / "index.html").resolve().as_uri()])
    info(f"{_plural(report.items, 'concept')}; {_plural(report.written, 'file')} written, {report.removed} removed.")


# --- similar and near-duplicate concepts ----------------------------------------------------


def similar(
    name: ConceptArg,
    top: Annotated[int, typer.Option("--top", help="How many to list, 1 to 1000.")] = 10,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List the concepts of the same family most like NAME, with their scores.

    The score is the symmetric best-match cosine of the two vector sets: 1.00 is the same
    directions (whatever the vectors' order, count or dtype), about 0 unrelated.

    Example: conceptlib similar cat-toy --top 5
    """
    from conceptlib.render import check_range

    check_range("--top", top, 1, 1000)
    matches = _library(home).similar(name, top=top)
    if json_:
        print_json([m.to_dict() for m in matches])
        return
    _write([f"{m.score:.4f}  {m.name}" for m in matches])
    info(f"{_plural(len(matches), 'concept')} like {name}." if matches else f"No other concept of {name}'s family.")


def dedupe(
    threshold: Annotated[float, typer.Option("--threshold", help="Least score that makes two concepts near-duplicates, 0 to 1.")] = 0.95,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Find groups of near-duplicate concepts: re-uploads under other names, fp16 copies, other training steps.

    Exact duplicates never enter the library (the content hash refuses them); this finds
    concepts whose vectors are close without being the same. Nothing is removed.

    Example: conceptlib dedupe --threshold 0.9
    """
    from conceptlib.render import check_range

    check_range("--threshold", threshold, 0.0, 1.0)
    groups = _library(home).near_duplicates(threshold=threshold)
    if json_:
        print_json([[m.to_dict() for m in group] for group in groups])
        return
    lines = []
    for i, group in enumerate(groups):
        if i:
            lines.append("")
        lines += [f"{m.score:.4f}  {m.name}" for m in group]
    _write(lines)
    info(f"{_plural(len(groups), 'group')} of near-duplicates at {threshold:g}." if groups else f"No near-duplicates at {threshold:g}.")


def _added_what(concept: Concept) -> str:
    if concept.kind == "hypernetwork":
        return f"hypernetwork, widths {concept.metadata.get('hypernetwork_widths', '?')}; call it as <hypernet:{printable(concept.token)}:1>"
    return _plural(concept.vectors, "vector")


# --- queries -----------------------------------------------------------------------------------


def list_(
    type_: TypeOpt = None,
    base: BaseOpt = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only concepts with this tag.", show_default=False)] = None,
    compatible_with: Annotated[
        str | None,
        typer.Option("--compatible-with", help="Only concepts that fit this base model (registered name, path or family).", show_default=False),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only items of this kind: embedding or hypernetwork.", show_default=False)] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List the concepts (and hypernetworks) in the library, sorted by name.

    Example: conceptlib list --type negative --base sd1
    """
    list_concepts(type_=type_, base=base, tag=tag, compatible_with=compatible_with, kind=kind, json_=json_, home=home)


def search(
    query: Annotated[str, typer.Argument(help="Words to find in names, tokens, descriptions and tags.", show_default=False)],
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Search names, tokens, descriptions and tags; best matches first.

    Example: conceptlib search "cat toy"
    """
    search_concepts(query=query, json_=json_, home=home)


def show(
    name: ConceptArg,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Show everything the library records about a concept.

    Example: conceptlib show cat-toy --json
    """
    show_concept(name=name, json_=json_, home=home)


# --- changes -----------------------------------------------------------------------------------


def remove(
    names: ConceptsArg,
    yes: YesOpt = False,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Delete concepts from the library (their folders and index entries).

    Example: conceptlib remove cat-toy old-style --yes
    """
    lib = _library(home)
    resolved = list(dict.fromkeys(lib.resolve(n) for n in names))
    if not yes:
        typer.confirm(f"Remove {_plural(len(resolved), 'concept')}: {', '.join(resolved)}?", abort=True, err=True)
    removed = lib.remove(resolved)
    if json_:
        print_json({"removed": removed})
        return
    info(f"Removed {', '.join(removed)}.")


def tag(
    name: ConceptArg,
    changes: Annotated[list[str] | None, typer.Argument(help="+TAG to add, -TAG to remove (a bare TAG adds).", show_default=False)] = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Add (+tag) and remove (-tag) tags; with no changes, print the tags.

    Example: conceptlib tag cat-toy +toy +cute -wip
    """
    from conceptlib.errors import UsageError

    adding: list[str] = []
    removing: list[str] = []
    for change in changes or []:
        if change.startswith("-"):
            removing.append(change[1:])
        else:
            adding.append(change.removeprefix("+"))
    if any(not t.strip() for t in adding + removing):
        raise UsageError("an empty tag", hint="write +TAG or -TAG")
    lib = _library(home)
    concept = lib.tag(name, add=adding, remove=removing) if adding or removing else lib.show(name)
    if json_:
        print_json({"name": concept.name, "tags": concept.tags})
        return
    _write([f"{concept.name}: {printable(', '.join(concept.tags)) if concept.tags else '(no tags)'}"])


def rename(
    name: ConceptArg,
    new: Annotated[str | None, typer.Argument(help="The new name (leave out to change only the token).", show_default=False)] = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Rename a concept, change its token, or both.

    Example: conceptlib rename cat-toy kitty --token "<kitty>"
    """
    from conceptlib.errors import UsageError

    if new is None and token is None:
        raise UsageError("give a new name, --token, or both", hint='conceptlib rename cat-toy kitty --token "<kitty>"')
    concept = _library(home).rename(name, new, token=token)
    if json_:
        print_json({"name": concept.name, "token": concept.token})
        return
    _write([concept.name])
    info(f"{printable(name)} is now {concept.name} (token {printable(concept.token)}).")


def export(
    names: ConceptsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Destination folder (created if missing).", show_default=False)],
    format_: Annotated[str | None, typer.Option("--format", help="Format to write (see `conceptlib formats`).", show_default=False)] = None,
    for_: Annotated[
        str | None,
        typer.Option("--for", help="Write files ready for a UI's embeddings folder: a1111, comfyui or invokeai.", show_default=False),
    ] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Write concepts out in a format, or as files ready for AUTOMATIC1111, ComfyUI or InvokeAI.

    With --for, each file is named after the concept's token without angle brackets, made
    into one word the UI reads (spaces and brackets become '-'): that name is what you type,
    as printed: cat-toy (a1111), embedding:cat-toy (comfyui), <cat-toy> (invokeai).

    Example: conceptlib export cat-toy easynegative --for a1111 --out ~/webui/embeddings
    """
    results = _library(home).export(names, format_, out, target=for_, force=force)
    if json_:
        print_json([r.to_dict() for r in results])
        return
    # One line per concept: the files, then the word to type (printed exactly as written in a
    # prompt: the word is made of characters that need no quoting there).
    _write([f"{printable(r.name)} -> {', '.join(printable(str(p), None) for p in r.files)} (type: {printable(r.prompt)})" for r in results])
    for r in results:
        if r.note:
            warn(f"{r.name}: {r.note}")


# --- maintenance -------------------------------------------------------------------------------


def _problem_lines(problems: list[Problem]) -> list[str]:
    return [f"{p.kind:<10} {p.where}: {p.message}" + ("" if p.repairable else " (not repairable)") for p in problems]


def reindex(json_: JsonOpt = False, home: HomeOpt = None) -> None:
    """Rebuild the index from the concept folders (after a crash, or manual changes).

    Example: conceptlib reindex
    """
    report = _library(home).reindex()
    if json_:
        print_json(report.to_dict())
    else:
        for line in report.cleaned:
            info(line)
        _write(_problem_lines(report.problems))
        info(f"Indexed {_plural(report.indexed, 'concept')}" + (f"; {_plural(len(report.problems), 'problem')}." if report.problems else "."))
    if report.problems:
        raise typer.Exit(1)


def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed: leftovers, the index, damaged canonical files.")] = False,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Check every file's hash, the manifests against the index, and look for orphans.

    Exits with 1 and lists the problems when something is wrong.

    Example: conceptlib verify --repair
    """
    report = _library(home).verify(repair=repair)
    if json_:
        print_json(report.to_dict())
    else:
        for line in report.repaired:
            info(f"repaired: {line}")
        _write(_problem_lines(report.problems))
        if report.ok:
            info(f"OK: {_plural(report.checked, 'concept')} checked, no problems.")
        else:
            hint = " Run `conceptlib verify --repair`." if any(p.repairable for p in report.problems) and not repair else ""
            info(f"{_plural(len(report.problems), 'problem')} in {_plural(report.checked, 'concept')}.{hint}")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the library commands to ``app``."""
    app.command("add")(add)
    app.command("list")(list_)
    app.command("search")(search)
    app.command("show")(show)
    app.command("remove")(remove)
    # +tag/-tag arguments: unknown "options" such as -wip must reach the argument list.
    app.command("tag", context_settings={"ignore_unknown_options": True})(tag)
    app.command("rename")(rename)
    app.command("export")(export)
    app.command("reindex")(reindex)
    app.command("verify")(verify)
    app.command("merge")(merge)
    app.command("gallery")(gallery)
    app.command("similar")(similar)
    app.command("dedupe")(dedupe)
