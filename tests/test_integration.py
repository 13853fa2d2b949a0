"""Cross-module behaviour: library listing by model compatibility, file modes of atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from conceptlib.formats import write
from conceptlib.library import Library
from factory import sd1, sd2, sdxl


@pytest.fixture
def library(tmp_path: Path) -> Library:
    files = tmp_path / "files"
    write(sd1(1, token="<one>", seed=1), files / "one.safetensors")
    write(sd2(2, token="<two>", seed=2), files / "two.safetensors")
    write(sdxl(2, token="<xl>", seed=3), files / "xl.safetensors", format="sdxl")
    lib = Library.open(tmp_path / "home")
    report = lib.add(files)
    assert len(report.added) == 3
    return lib


@pytest.mark.parametrize(("model", "expected"), [("sd1", ["one"]), ("sd2", ["two"]), ("sdxl", ["xl"])])
def test_list_compatible_with_family(cli: Any, library: Library, model: str, expected: list[str]) -> None:
    assert [c.name for c in library.list(compatible_with=model)] == expected
    result = cli("list", "--compatible-with", model, "--json", "--home", str(library.home))
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == expected


def test_list_compatible_with_registered_model(library: Library, tmp_path: Path) -> None:
    from conceptlib.models import add_model
    from conceptlib.samples import write_model_description

    add_model(write_model_description(tmp_path / "tiny"), name="tiny", home=library.home)
    assert [c.name for c in library.list(compatible_with="tiny")] == ["one"]


def test_list_compatible_with_unknown_model(cli: Any, library: Library) -> None:
    run = cli("list", "--compatible-with", "nope", "--home", str(library.home))
    assert run.exit_code == 2
    err = run.stderr
    assert err.startswith("Error: ") and "nope" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_written_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    from conceptlib import _atomic

    path = tmp_path / "a.safetensors"
    write(sd1(token="<a>"), path)
    # mkstemp alone would leave 0600, unreadable to a web UI running as another user.
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_atomic._UMASK


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_a_failed_write_names_the_destination_not_the_temporary_file(tmp_path: Path, cli: Any) -> None:
    source = tmp_path / "a.safetensors"
    write(sd1(token="<a>"), source)
    run = cli("convert", str(source), "/proc/x.safetensors")
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == "Error: /proc/x.safetensors: no such file or folder (hint: check the path)\n"
