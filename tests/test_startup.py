"""Start-up: list, search, show and --help never import torch, diffusers or transformers.

Each check runs the real entry point in a fresh interpreter and reports, at exit, which heavy
packages ended up in ``sys.modules`` (an import anywhere on the path would show up here, even
one the command did not need).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conceptlib.formats import write
from factory import sd1

HEAVY = ("torch", "diffusers", "transformers")
#: Not heavy like torch, but ~0.5 s: the read-only commands answer through sqlite3 instead.
ORM = ("sqlmodel", "sqlalchemy")

_PROBE = """
import atexit, sys

WATCH = set(sys.argv[1].split(','))

def _report():
    loaded = sorted({m.split('.')[0] for m in sys.modules} & WATCH)
    sys.__stderr__.write('LOADED=' + ','.join(loaded) + '\\n')

atexit.register(_report)
args = sys.argv[2:]
sys.argv = ['conceptlib', *args]
from conceptlib.cli.app import main
sys.exit(main(args))
"""


def run(home: Path, *args: str, watch: tuple[str, ...] = HEAVY + ORM) -> tuple[int, str, list[str]]:
    env = {**os.environ, "CONCEPTLIB_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(watch), *args], capture_output=True, text=True, env=env, timeout=120
    )
    lines = proc.stderr.splitlines()
    loaded = [line.removeprefix("LOADED=") for line in lines if line.startswith("LOADED=")]
    assert len(loaded) == 1, proc.stderr
    return proc.returncode, proc.stdout, [m for m in loaded[0].split(",") if m]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("startup") / "home"
    src = home.parent / "cat.safetensors"
    write(sd1(1, token="<cat-toy>"), src)
    code, _out, _loaded = run(home, "add", str(src), "--tag", "toy")
    assert code == 0
    return home


@pytest.mark.parametrize(
    "args",
    [["list"], ["list", "--json", "--tag", "toy"], ["search", "cat"], ["show", "cat-toy"], ["show", "cat-toy", "--json"]],
)
def test_queries_import_neither_torch_nor_the_orm(home: Path, args: list[str]) -> None:
    code, out, loaded = run(home, *args)
    assert code == 0 and "cat-toy" in out
    assert loaded == []


@pytest.mark.parametrize("args", [["--help"], ["list", "--help"], ["add", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(home: Path, args: list[str]) -> None:
    code, out, loaded = run(home, *args)
    assert code == 0 and out
    assert loaded == []


def test_a_failing_query_imports_nothing_heavy(home: Path) -> None:
    code, _out, loaded = run(home, "show", "nope")
    assert code == 2 and loaded == []


def test_first_run_on_an_empty_home_creates_the_index_without_torch(tmp_path: Path) -> None:
    code, _out, loaded = run(tmp_path / "fresh", "list", watch=HEAVY)
    assert code == 0 and loaded == []
    assert (tmp_path / "fresh" / "index.sqlite").is_file()


def test_the_probe_sees_imports(home: Path) -> None:
    """Negative control: what the commands do import is reported."""
    assert run(home, "list", watch=("typer", "torch"))[2] == ["typer"]


def test_add_does_not_import_torch(tmp_path: Path) -> None:
    src = tmp_path / "x.safetensors"
    write(sd1(1, seed=3, token="<x>"), src)
    code, _out, loaded = run(tmp_path / "h", "add", str(src), watch=HEAVY)
    assert code == 0 and loaded == []
