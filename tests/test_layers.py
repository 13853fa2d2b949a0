"""Layers: the Hub client sits below the library, so nothing above it needs a hidden import.

``conceptlib.hubclient`` is the transport that both ``conceptlib.hub`` (sharing) and
``conceptlib.single_file`` (configs of a checkpoint) use. If it imported the library, models or
formats, the circle hub → library → models → single_file → hub would be back, held apart
only by imports inside functions; these tests fail the moment it returns.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import conceptlib

PACKAGE = Path(conceptlib.__file__).parent

#: What the transport must never pull in: the layers above it, and the heavy packages.
ABOVE_THE_CLIENT = (
    "conceptlib.library",
    "conceptlib.models",
    "conceptlib.single_file",
    "conceptlib.formats",
    "conceptlib.hub",
    "torch",
    "diffusers",
)


def test_the_hub_client_imports_no_layer_above_it() -> None:
    # A fresh interpreter: this test process has imported everything already.
    code = (
        "import json, sys, conceptlib.hubclient\n"
        "print(json.dumps(sorted(m for m in %r if m in sys.modules)))" % (ABOVE_THE_CLIENT,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert json.loads(out) == []


def test_the_hub_client_imports_huggingface_hub_only_when_called() -> None:
    # The CLI imports it on the way to commands that never touch the Hub.
    code = "import sys, conceptlib.hubclient; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "False"


def _imports_inside_functions(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every import statement inside a function of ``path``."""
    found: list[tuple[str, int]] = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                # `from conceptlib import hub` names the module as an alias.
                found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
                found.append((node.module or "", node.lineno))
            elif isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names]
    return found


@pytest.mark.parametrize("module", ["single_file.py", "models.py"])
def test_no_function_level_import_of_the_sharing_layer(module: str) -> None:
    # They get the transport from conceptlib.hubclient at module scope; importing
    # conceptlib.hub inside a function would mean the circle is back.
    hub_imports = [
        (name, line)
        for name, line in _imports_inside_functions(PACKAGE / module)
        if name == "conceptlib.hub" or name.startswith("conceptlib.hub.")
    ]
    assert hub_imports == []


def test_single_file_takes_the_transport_from_the_hub_client() -> None:
    tree = ast.parse((PACKAGE / "single_file.py").read_text(encoding="utf-8"))
    top_level = {
        (node.module, alias.name) for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert {("conceptlib.hubclient", "fetch_model_configs"), ("conceptlib.hubclient", "parse_repo_ref")} <= top_level
