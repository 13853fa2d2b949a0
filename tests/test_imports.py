"""Start-up stays light: inspect and convert never import torch, diffusers or sqlmodel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conceptlib.formats import write
from factory import sd1

HEAVY = ("torch", "diffusers", "transformers", "sqlmodel", "sqlalchemy", "accelerate")

PROBE = """
import json, sys
from conceptlib.cli.app import main
code = main(sys.argv[1:])
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
""" % (HEAVY,)


def run_cli(*args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["formats"]])
def test_help_is_light(args: list[str]) -> None:
    assert run_cli(*args) == {"code": 0, "heavy": []}


def test_inspect_and_convert_are_light(tmp_path: Path) -> None:
    src = tmp_path / "a.pt"
    write(sd1(2, token="<a>"), src)
    assert run_cli("inspect", str(src)) == {"code": 0, "heavy": []}
    assert run_cli("convert", str(src), str(tmp_path / "b.safetensors")) == {"code": 0, "heavy": []}
    assert run_cli("convert", str(src), str(tmp_path / "c.png")) == {"code": 0, "heavy": []}


def test_importing_the_package_is_light() -> None:
    code = "import sys, conceptlib, conceptlib.formats; print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
