"""Output a terminal can trust: text from strangers' files never steers the terminal.

A hostile embedding carries an OSC title sequence and a BEL in its token, a right-to-left
override, escape sequences and rich markup (``[bold red]``, ``[link=...]``) and emoji codes
(``:cat:``) in its metadata and file name. Every human output escapes the invisible characters
(``\\x1b``, ``\\u202e``), prints markup and emoji codes as the text they are, and bounds what it
quotes; ``--json`` keeps the exact values and is always valid JSON. Library warnings (numpy on
huge values, Pillow on huge images) become one ``Warning:`` line or nothing.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conceptlib._terminal import is_invisible
from conceptlib.embedding import Embedding
from conceptlib.formats import write
from conceptlib.tensor import Tensor
from factory import sd1

TOKEN = "\x1b]0;pwned\x07<cat>\u202e"
METADATA = {"evil": "\x1b[2J[bold red]x[/] :cat:", "k\x1b[31m": "v"}


def visible(text: str) -> bool:
    """No character that draws nothing or steers the terminal, line breaks aside."""
    return not any(is_invisible(c) for c in text.replace("\n", ""))


def strict_json(text: str) -> Any:
    """Parse as a strict parser would: bare NaN/Infinity are errors, not numbers."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    path = tmp_path / "ev\x1b[31mil[bold].safetensors"
    emb = sd1(1, seed=5, token=TOKEN, name="[link=http://x]n", checkpoint_name="\x1b[31mckpt", metadata=dict(METADATA))
    write(emb, path, format="diffusers")
    return path


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_escapes_every_field_from_the_file(cli: Any, hostile: Path) -> None:
    result = cli("inspect", str(hostile))
    assert result.exit_code == 0, result.output
    assert visible(result.stdout) and visible(result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == str(hostile).replace("\x1b", "\\x1b")
    assert "  token         \\x1b]0;pwned\\x07<cat>\\u202e" in lines
    assert "  name          [link=http://x]n" in lines  # markup printed as text, not a link
    assert "  checkpoint    \\x1b[31mckpt" in lines
    assert "  meta evil     \\x1b[2J[bold red]x[/] :cat:" in lines  # and :cat: is no emoji
    assert "  meta k\\x1b[31m v" in lines


def test_inspect_json_keeps_exact_values_and_is_valid_json(cli: Any, hostile: Path) -> None:
    result = cli("inspect", str(hostile), "--json")
    assert result.exit_code == 0, result.output
    # The text shows no raw control or bidi character: JSON escapes them...
    assert visible(result.stdout) and "\\u202e" in result.stdout
    # ...and parsing gives back exactly what the file holds.
    [info] = strict_json(result.stdout)
    assert info["token"] == TOKEN and info["metadata"] == METADATA
    assert info["file"]["path"] == str(hostile)


def test_inspect_json_of_a_nan_embedding_is_valid_json(cli: Any, tmp_path: Path) -> None:
    values = np.full((2, 768), np.nan, np.float32)
    values[1] = np.inf
    path = tmp_path / "nan.safetensors"
    write(Embedding({"clip_l": Tensor.from_numpy(values)}, token="<nan>"), path, format="diffusers")
    result = cli("inspect", str(path), "--json")
    assert result.exit_code == 0
    [info] = strict_json(result.stdout)  # was: "norms": {"clip_l": [NaN, Infinity]}
    assert info["norms"] == {"clip_l": [None, None]}
    assert info["non_finite"] == {"clip_l": 2 * 768}


def test_huge_values_warn_through_conceptlib_not_numpy(cli: Any, tmp_path: Path) -> None:
    # A1111's checksum multiplies by 100: 3e38 overflows float32, and numpy said so on stderr
    # with a source line from conceptlib/hashing.py.
    path = tmp_path / "big.safetensors"
    write(Embedding({"clip_l": Tensor.from_numpy(np.full((1, 768), 3e38, np.float32))}, token="<big>"), path, format="diffusers")
    result = cli("inspect", str(path))
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "  checksum      [" in result.stdout


# --- the library: add, list, search, show ------------------------------------------------------


def test_library_output_escapes_file_controlled_text(cli: Any, tmp_path: Path) -> None:
    # A token anyone can type may still be rich markup and an emoji code; the file name and the
    # checkpoint name (from the file) carry escape sequences.
    path = tmp_path / "ev\x1b]0;pwned\x07il[bold].safetensors"
    token = "<[bold red]cat:cat:>"
    write(sd1(1, seed=11, token=token, checkpoint_name="\x1b[31mckpt[link=http://x]", checkpoint_hash="abcd1234"), path, format="diffusers")
    added = cli("add", str(path), "--description", "a plush [i]cat[/i]")
    assert added.exit_code == 0, added.output
    name = added.stdout.split()[1]
    assert added.stdout == f"added      {name}  ({token}, SD 1.x, 1 vector)\n"
    listed = cli("list")
    assert visible(listed.output) and token in listed.stdout
    found = cli("search", "cat")
    assert visible(found.output) and token in found.stdout
    shown = cli("show", name)
    assert shown.exit_code == 0 and visible(shown.output)
    lines = shown.stdout.splitlines()
    assert f"  token         {token}" in lines
    assert "  description   a plush [i]cat[/i]" in lines
    trained = next(line for line in lines if line.startswith("  trained on"))
    assert "[link=http://x]" in trained and "\x1b" not in trained
    source = next(line for line in lines if line.startswith("  source"))
    shown_path = str(path).replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert source == f"  source        {shown_path}"
    data = strict_json(cli("show", name, "--json").stdout)
    assert data["token"] == token and data["source"]["path"] == str(path)


def test_show_escapes_and_bounds_each_field(tmp_path: Path) -> None:
    # describe() is what `show` prints: whatever the index holds (written by an older version,
    # or by hand) is escaped and at most 1,000 characters a field.
    from conceptlib.cli._readonly import describe
    from conceptlib.library import Library

    lib = Library.open(tmp_path / "home")
    write(sd1(1, token="<cat>"), tmp_path / "cat.safetensors")
    lib.add(tmp_path / "cat.safetensors")
    concept = lib.show("cat")
    concept.description = hyperlink = "\x1b]8;;http://evil\x07click\x1b]8;;\x07 " + "x" * 5000
    concept.token = "<c\u202eat>"
    concept.tags = ["a\u200bb"]
    lines = describe(concept)
    assert all(visible(line) for line in lines)
    assert "  token         <c\\u202eat>" in lines
    assert "  tags          a\\u200bb" in lines
    description = next(line for line in lines if line.startswith("  description"))
    assert description.startswith("  description   \\x1b]8;;http://evil\\x07click\\x1b]8;;\\x07 xxx")
    assert description.endswith(f"…(+{len(hyperlink) - 1000} characters)")
    lib.close()


def test_table_cells_escape_before_they_are_cut() -> None:
    from conceptlib.cli._readonly import table

    rows = table(["NAME", "TOKEN"], [["a", "\x1b[2J\u202e" + "y" * 60], ["b", "line\nbreak"]])
    assert all(visible(row) for row in rows)
    assert rows[1].startswith("a     \\x1b[2J\\u202eyyyy") and rows[1].endswith("…")
    assert rows[2] == "b     line break"


# --- errors --------------------------------------------------------------------------------------


def test_error_line_escapes_the_file_name(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "x\x1b]0;pwned\x07\u202egnp.pt"
    bad.write_bytes(b"\x00" * 64)
    result = cli("inspect", str(bad))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and visible(result.stderr)
    assert result.stderr.startswith(f"Error: {tmp_path}/x\\x1b]0;pwned\\x07\\u202egnp.pt: ")


def test_error_lines_are_bounded() -> None:
    from conceptlib.cli._errors import MAX_LINE_CHARS, render_error
    from conceptlib.errors import EmbeddingStructureError

    # A pickle can make a 6 MB repr; the line stays short and keeps its hint.
    huge = EmbeddingStructureError(f"unexpected value {'A' * 6_000_000!r}", path="e.pt", hint="re-save it")
    line, code = render_error(huge)
    assert code == 2 and len(line) <= MAX_LINE_CHARS
    assert line.startswith("Error: e.pt: unexpected value 'AAAA") and line.endswith("characters) (hint: re-save it)")
    # Escapes that make the line longer than the cut are cut again.
    line, _ = render_error(EmbeddingStructureError("\x1b" * 5000, hint="h"))
    assert len(line) <= MAX_LINE_CHARS and visible(line) and line.endswith("… (hint: h)")
    # An unexpected error is bounded the same way.
    line, code = render_error(RuntimeError("\x1b[2J" + "z" * 10_000))
    assert code == 1 and len(line) <= MAX_LINE_CHARS and visible(line)
    assert line.startswith("Error: unexpected RuntimeError: \\x1b[2Jzzz")


# --- warnings ------------------------------------------------------------------------------------


def test_stray_warnings_become_one_line_each(cli: Any, cat_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from conceptlib.cli import formats

    original = formats._inspected

    def noisy(path: Path, strict: bool) -> Any:
        warnings.warn("some library\nsays two lines \x1b[31m", UserWarning, stacklevel=1)
        warnings.warn("some library\nsays two lines \x1b[31m", UserWarning, stacklevel=1)  # once
        warnings.warn(Image.DecompressionBombWarning("Image size (100000000 pixels) exceeds limit of 89478485 pixels"), stacklevel=1)
        warnings.warn("use the new API", FutureWarning, stacklevel=1)  # for developers: dropped
        warnings.warn("old", DeprecationWarning, stacklevel=1)
        np.float32(3e38) * np.float32(100)  # numpy's overflow warning: dropped
        return original(path, strict)

    monkeypatch.setattr(formats, "_inspected", noisy)
    result = cli("inspect", str(cat_file))
    assert result.exit_code == 0
    assert result.stderr == (
        "Warning: some library\n"
        "Warning: a very large image: Image size (100000000 pixels) exceeds limit of 89478485 pixels\n"
    )


def test_the_fast_path_handles_warnings_too(cli: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.cli import _readonly

    def noisy(**kwargs: Any) -> None:
        warnings.warn("from \x1b[2J the index", UserWarning, stacklevel=1)

    monkeypatch.setattr(_readonly, "list_concepts", noisy)
    result = cli("list")
    assert result.exit_code == 0
    assert result.stderr == "Warning: from \\x1b[2J the index\n"


# --- the consoles and JSON writers ---------------------------------------------------------------


def test_the_consoles_print_markup_and_emoji_codes_as_text() -> None:
    from rich.text import Text

    from conceptlib.cli._output import SafeConsole

    buffer = io.StringIO()
    console = SafeConsole(file=buffer, soft_wrap=True, highlight=False, markup=False, emoji=False)
    console.print("a\x1b[31m [bold]b[/bold] [link=http://x]c :cat: \u202e")
    console.print(Text("[i]kept[/i]"))
    assert buffer.getvalue() == "a\\x1b[31m [bold]b[/bold] [link=http://x]c :cat: \\u202e\n[i]kept[/i]\n"


def test_the_progress_bar_prints_file_names_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.cli import _output

    buffer = io.StringIO()
    console = _output.SafeConsole(file=buffer, force_terminal=True, width=120, markup=False, emoji=False)
    monkeypatch.setattr(_output, "err", console)
    bar = _output.StatusBar("Adding")
    bar.update(1, 2, "[bold red]x[/] \x1b[2J")
    bar.close()
    assert "[bold red]x[/] \\x1b[2J" in buffer.getvalue()


def test_json_rows_and_documents_never_hold_nan(capsys: pytest.CaptureFixture[str]) -> None:
    from conceptlib.cli._readonly import _print_rows_json, print_json

    print_json({"norms": [float("nan"), float("inf"), -float("inf"), 1.5], "tag": "a\u202eb"})
    assert strict_json(capsys.readouterr().out) == {"norms": [None, None, None, 1.5], "tag": "a\u202eb"}
    _print_rows_json([{"x": float("nan")}, {"x": 2.0}])
    assert strict_json(capsys.readouterr().out) == [{"x": None}, {"x": 2.0}]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_json_escaping_keeps_every_value(value: str) -> None:
    from conceptlib.cli._readonly import escape_invisible_json

    text = escape_invisible_json(json.dumps({"v": value}, ensure_ascii=False))
    assert visible(text)
    text.encode("utf-8")  # lone surrogates are escapes now, so this cannot fail
    assert json.loads(text) == {"v": value}


@pytest.fixture
def cat_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat-toy>"), path)
    return path


@pytest.fixture
def home() -> Path:
    import os

    return Path(os.environ["CONCEPTLIB_HOME"])
