"""The read-only commands (list, search, show) and their fast path, without Typer or rich.

``conceptlib list``/``search``/``show`` run through :func:`fast_main` from the console script
before Typer is even imported (see ``conceptlib.cli.main``), which keeps them under 0.3 s at
10,000 concepts. The Typer commands in ``cli/library.py`` call the same functions.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib._terminal import is_invisible, printable

if TYPE_CHECKING:
    from conceptlib.concept import Concept, ConceptRow, ConceptSummary
    from conceptlib.library import Library

#: Longest cell in human tables; the full value is in --json and `show`.
_MAX_CELL = 40
#: Longest value `show` prints per field (a token may be 1,000 characters; a pickle's name, 6 MB).
_MAX_SHOWN = 1000


def finite_json(data: Any) -> Any:
    """``data`` with every NaN and ±Infinity float replaced by None.

    JSON has no spelling for them: Python writes bare ``NaN``/``Infinity``, which ``jq``, browsers
    and most parsers refuse. None (``null``) is what JavaScript's ``JSON.stringify`` writes, and
    the fields that can hold such values come with a count of them (``non_finite`` in inspect).
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def escape_invisible_json(text: str) -> str:
    """JSON text with invisible characters written as ``\\uXXXX`` escapes.

    The values stay exactly the same (that is what the escape means to every JSON parser),
    but a bidi override, DEL or C1 control in a token no longer acts on the terminal showing
    the output, and a lone surrogate no longer breaks writing it as UTF-8. Everything else
    stays readable (``ensure_ascii=False``).
    """
    if text.isascii():  # json escapes C0 itself; DEL is the one ASCII character left
        return text.replace("\x7f", "\\u007f") if "\x7f" in text else text
    # Distinct characters only, then one C-speed translate: a 10,000-row list stays fast.
    table = {ord(c): _json_escape(c) for c in set(text) if (c == "\x7f" or c > "\x7f") and is_invisible(c)}
    return text.translate(table) if table else text


def _dumps(data: Any, **options: Any) -> str:
    # The strict encoder is the fast path; only data that really holds NaN/Inf is walked.
    try:
        text = json.dumps(data, ensure_ascii=False, default=str, allow_nan=False, **options)
    except ValueError:
        text = json.dumps(finite_json(data), ensure_ascii=False, default=str, allow_nan=False, **options)
    return escape_invisible_json(text)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout (no colour codes, stable key order).

    Values are exact (control, bidi and other invisible characters are written as ``\\u``
    escapes, see :func:`escape_invisible_json`); NaN and ±Infinity become null, so the output
    is always valid JSON (see :func:`finite_json`).
    """
    sys.stdout.write(_dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def safe_lines(lines: list[str]) -> list[str]:
    """``lines`` with control, bidi and other invisible characters escaped (see ``printable``).

    The backstop for every plain write: fields should already be escaped where they are put
    into a line, but a line that still holds an escape sequence must not reach the terminal.
    """
    if "".join(lines).isprintable():  # C speed; nearly every line of every table
        return lines
    return [line if line.isprintable() else printable(line, None) for line in lines]


def info(message: str) -> None:
    """A one-line message on stderr (invisible characters escaped)."""
    sys.stderr.write(safe_lines([message])[0] + "\n")
    sys.stderr.flush()


def _library(home: Path | None) -> Library:
    from conceptlib.library import Library

    return Library.open(home)


def _write(lines: list[str]) -> None:
    # Plain writes, not rich: printing 10,000 rows through rich costs more than the query.
    if lines:
        sys.stdout.write("\n".join(safe_lines(lines)) + "\n")
        sys.stdout.flush()


def _cell(value: str) -> str:
    if len(value) > _MAX_CELL or not value.isprintable():
        # Whitespace runs (newlines, tabs) read as one space; what stays invisible is escaped
        # before the cut, so an escape sequence cannot survive half-cut either.
        value = printable(" ".join(value.split()), _MAX_CELL * 2)
        value = value if len(value) <= _MAX_CELL else value[: _MAX_CELL - 1] + "…"
    return value


def _width(text: str) -> int:
    # rich's cell_len counts CJK as two columns; ASCII (nearly every cell) needs no lookup.
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, sized by display width (CJK counts double).

    Works column by column with C-level string methods: at 10,000 rows a per-cell Python
    function call costs more than the query behind the table.
    """
    padded: list[list[str]] = []
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in header]
    for i, (title, col) in enumerate(zip(header, columns, strict=True)):
        joined = "".join(col)
        if not joined.isprintable() or (col and max(map(len, col)) > _MAX_CELL):
            col = [_cell(c) for c in col]  # rare: newlines, tabs, very long tokens
            joined = "".join(col)
        col = [title, *col]
        if i == len(header) - 1:
            padded.append(col)
        elif joined.isascii() and title.isascii():
            width = max(map(len, col))
            padded.append([c.ljust(width) for c in col])
        else:
            width = max(map(_width, col))
            padded.append([c + " " * (width - _width(c)) for c in col])
    return ["  ".join(parts).rstrip() for parts in zip(*padded, strict=True)]


def _print_rows_json(rows: list[dict[str, Any]]) -> None:
    """A JSON array with one object per line.

    ``json.dumps(indent=...)`` runs in pure Python (3× the whole query at 10,000 concepts);
    encoding each row compactly uses the C encoder and still reads and diffs line by line.
    """
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # one encoder, not one per row
    try:
        body = ",\n".join(map(encode, rows))
    except ValueError:  # a NaN or Infinity somewhere: null, as in print_json
        body = ",\n".join(encode(finite_json(row)) for row in rows)
    sys.stdout.write(escape_invisible_json(f"[\n{body}\n]\n") if rows else "[]\n")
    sys.stdout.flush()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary_rows(concepts: list[ConceptRow] | list[ConceptSummary]) -> list[str]:
    return table(
        ["NAME", "TOKEN", "TYPE", "BASE", "VECTORS", "TAGS"],
        [[c.name, c.token, c.type, c.family_label, str(c.vectors), ", ".join(c.tags)] for c in concepts],
    )


def describe(concept: Concept) -> list[str]:
    """The lines ``show`` prints for one concept."""
    rows: list[tuple[str, str | None]] = [("token", concept.token), ("type", concept.type)]
    if concept.kind == "hypernetwork":
        meta = concept.metadata
        rows += [
            ("kind", f"hypernetwork ({meta.get('hypernetwork_layout', '?')} layout); call it as <hypernet:{concept.token}:1>"),
            ("base", concept.family_label),
            ("widths", meta.get("hypernetwork_widths")),
            ("structure", f"{meta.get('layer_structure')}, {meta.get('activation_func')}"
             + (", layer norm" if meta.get("is_layer_norm") == "true" else "") + (", dropout" if meta.get("use_dropout") == "true" else "")),
            ("parameters", f"{meta.get('parameters')}, {concept.dtype}"),
        ]
    else:
        rows += [
            ("base", f"{concept.family_label} ({', '.join(f'{k} {w}' for k, w in concept.encoders.items())})"),
            ("vectors", f"{concept.vectors} × {concept.width_label}, {concept.dtype}"),
        ]
    rows += [
        ("tags", ", ".join(concept.tags) or None),
        ("description", concept.description),
        ("license", concept.license),
        ("content hash", concept.content_hash),
    ]
    if concept.file_sha256:
        rows.append(("file sha256", f"{concept.file_sha256} (AutoV2 {concept.file_sha256[:10]})"))
    rows.append(("format", concept.format))
    trained = [concept.checkpoint_name, f"[{concept.checkpoint_hash}]" if concept.checkpoint_hash else None]
    trained_text = " ".join(t for t in trained if t)
    if concept.steps is not None:
        trained_text = f"{trained_text}, {concept.steps} steps" if trained_text else f"{concept.steps} steps"
    rows.append(("trained on", trained_text or None))
    source = concept.source
    if source.get("repo_id"):
        revision = source.get("commit") or source.get("revision") or ""
        rows.append(("source", f"{source['repo_id']}@{revision[:12]}" + (f" {source['url']}" if source.get("url") else "")))
    elif source.get("type") == "merge":
        rows.append(("merged from", str(source.get("expression", ""))))
        parents = source.get("parents") or []
        rows.append(("parents", ", ".join(f"{p.get('name')} ({str(p.get('content_hash', ''))[:12]})" for p in parents if isinstance(p, dict)) or None))
    elif source.get("path"):
        rows.append(("source", str(source["path"])))
    rows.append(("files", ", ".join(f.path for f in concept.files) or None))
    rows.append(("images", ", ".join(i.path for i in concept.images) or None))
    if concept.history:
        rows.append(("history", ", ".join(str(h.get("content_hash", "?"))[:12] for h in concept.history)))
    rows += [("created", concept.created), ("updated", concept.updated), ("folder", str(concept.path) if concept.path else None)]
    # Tokens, descriptions, checkpoint names and file names come from strangers' files.
    return [printable(concept.name)] + [f"  {label:<13} {printable(value, _MAX_SHOWN)}" for label, value in rows if value is not None]


def list_concepts(
    *,
    type_: str | None = None,
    base: str | None = None,
    tag: str | None = None,
    compatible_with: str | None = None,
    kind: str | None = None,
    json_: bool = False,
    home: Path | None = None,
) -> None:
    """``conceptlib list``."""
    library = _library(home)
    concepts: list[ConceptRow] | list[ConceptSummary]
    if json_ or compatible_with is not None:  # every indexed field: for scripts, or to check widths
        concepts = library.list(type=type_, base=base, tag=tag, compatible_with=compatible_with, kind=kind)
        if json_:
            _print_rows_json([c.to_dict() for c in concepts])
            return
    else:
        concepts = library.rows(type=type_, base=base, tag=tag, kind=kind)
    if not concepts:
        filtered = type_ is not None or base is not None or tag is not None or compatible_with is not None or kind is not None
        info("No concept matches these filters." if filtered else "The library is empty: add concepts with `conceptlib add FILE...`.")
        return
    _write(_summary_rows(concepts))


def search_concepts(*, query: str, json_: bool = False, home: Path | None = None) -> None:
    """``conceptlib search``."""
    concepts = _library(home).search(query)
    if json_:
        _print_rows_json([c.to_dict() for c in concepts])
        return
    if not concepts:
        info(f"No concept matches {printable(repr(query))}.")
        return
    _write(_summary_rows(concepts))


def show_concept(*, name: str, json_: bool = False, home: Path | None = None) -> None:
    """``conceptlib show``."""
    concept = _library(home).show(name)
    if json_:
        print_json({**concept.to_dict(), "path": str(concept.path) if concept.path else None})
        return
    _write(describe(concept))


# --- fast path ---------------------------------------------------------------------------------

# Importing Typer and rich and building Typer's parameters (a pydantic adapter per parameter
# in Typer 0.29) costs about 0.3 s per run, the whole budget for list, search and show at
# 10,000 concepts. For the plain forms of these three commands, fast_main parses the arguments
# itself and calls the same functions the Typer commands call; anything else (help, unknown
# options, missing arguments, unusual spellings) returns None and goes through Typer, so
# messages and errors stay Typer's. tests/test_cli_library.py runs every form both ways.
_FAST_COMMANDS: dict[str, tuple[dict[str, str], str | None]] = {
    "list": ({"--type": "type_", "--base": "base", "--tag": "tag", "-t": "tag", "--compatible-with": "compatible_with", "--kind": "kind"}, None),
    "search": ({}, "query"),
    "show": ({}, "name"),
}


def parse_fast(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """The command and keyword arguments for a plain list/search/show, or None for Typer."""
    if not argv or argv[0] not in _FAST_COMMANDS:
        return None
    options, positional_name = _FAST_COMMANDS[argv[0]]
    kwargs: dict[str, Any] = {"json_": False, "home": None}
    positional: list[str] = []
    seen: set[str] = set()
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--json":
            kwargs["json_"] = True
        elif arg.startswith("-"):
            key, eq, value = arg.partition("=")
            if key != "--home" and key not in options or (eq and key == "-t"):
                return None  # --help, --, unknown or attached short options: Typer decides
            if not eq:
                i += 1
                if i == len(args):
                    return None
                value = args[i]
            dest = "home" if key == "--home" else options[key]
            if not value or value.startswith("-") or dest in seen:
                return None
            seen.add(dest)
            kwargs[dest] = Path(value) if dest == "home" else value
        else:
            positional.append(arg)
        i += 1
    if len(positional) != (1 if positional_name else 0):
        return None
    if positional_name:
        kwargs[positional_name] = positional[0]
    return argv[0], kwargs


def fast_main(argv: list[str]) -> int | None:
    """Run a plain ``list``, ``search`` or ``show`` without Typer; None means "use Typer".

    Errors propagate exactly as from the Typer path, to the caller's error boundary.
    """
    parsed = parse_fast(argv)
    if parsed is None:
        return None
    command, kwargs = parsed
    commands: dict[str, Callable[..., None]] = {"list": list_concepts, "search": search_concepts, "show": show_concept}
    commands[command](**kwargs)
    return 0
