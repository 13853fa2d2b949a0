"""The import contract: at module scope, imports only point down the layers.

A module may import, at module scope, only modules of its own layer or of the layers below
(`LAYERS`, lowest first); `cli` is imported by nothing outside it; torch, diffusers,
transformers and accelerate are never imported at module scope (they load inside the
functions that need them, so the index, formats and Hub run without them and start-up stays
fast), and sqlmodel only by the index's table module. A new module must be given a layer here:
the test fails for a module it does not know.

Imports inside functions (kept there for start-up time, or for the heavy packages) point down
too: a lazy import is a matter of cost, never a way around the layers. Only ``if TYPE_CHECKING:``
blocks, which never run, may name any module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Lowest first. Each module's layer is the first entry whose name equals it or is a package
#: prefix of it (``conceptlib.formats`` covers ``conceptlib.formats._png``).
LAYERS: list[tuple[str, ...]] = [
    # leaves: no conceptlib import but each other
    ("conceptlib", "conceptlib.errors", "conceptlib.config", "conceptlib.families", "conceptlib.tensor",
     "conceptlib._terminal", "conceptlib._parallel", "conceptlib._deps", "conceptlib._atomic", "conceptlib._filecache", "conceptlib._mapped",
     "conceptlib._text", "conceptlib.slug", "conceptlib.hashing", "conceptlib.registry.migrations",
     "conceptlib.registry.tables"),
    # records
    ("conceptlib.concept", "conceptlib.embedding", "conceptlib.similarity"),
    # files: formats and the link-safe readers
    ("conceptlib.formats", "conceptlib._inputs", "conceptlib._images", "conceptlib.hypernet"),
    # which files make a concept, and reading them
    ("conceptlib.layout", "conceptlib._snapshots"),
    # models, the index, the Hub transport
    ("conceptlib.models", "conceptlib.hubclient", "conceptlib.registry", "conceptlib.single_file",
     "conceptlib.validate", "conceptlib.tiny", "conceptlib.samples"),
    # the library, the diffusers loader
    ("conceptlib.library", "conceptlib.pipelines", "conceptlib.hypernet_apply"),
    # operations on the library and on models
    ("conceptlib.hub", "conceptlib.render", "conceptlib.preview", "conceptlib.train", "conceptlib.train_hypernet", "conceptlib.analysis", "conceptlib.merge", "conceptlib.gallery"),
    # the command line
    ("conceptlib.cli", "conceptlib.__main__"),
]  # fmt: skip

HEAVY = ("torch", "diffusers", "transformers", "accelerate")
SQLMODEL_ALLOWED = {"conceptlib.registry.tables"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("cli", "registry"):  # installed as conceptlib.cli and conceptlib.registry
        parts = ["conceptlib", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*(REPO / "conceptlib").rglob("*.py"), *(REPO / "cli").glob("*.py"), *(REPO / "registry").glob("*.py")]
    return {_module_name(p): p for p in files}


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the match, layer)
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def _module_scope_imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import run when the module loads (TYPE_CHECKING blocks excluded)."""
    found: list[tuple[int, str]] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from conceptlib import config` imports the module conceptlib.config.
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if f"{node.module}.{a.name}" in known]
    return found


SOURCES = _sources()


def test_every_module_has_a_layer() -> None:
    assert [m for m in SOURCES if _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_module_scope_imports_point_down(module: str) -> None:
    own = _layer(module)
    assert own is not None
    upward = []
    for line, imported in _module_scope_imports(SOURCES[module], set(SOURCES)):
        top = imported.split(".")[0]
        if top in HEAVY:
            upward.append(f"line {line}: {imported} (heavy: import it inside the function that needs it)")
        elif top == "sqlmodel" and module not in SQLMODEL_ALLOWED:
            upward.append(f"line {line}: sqlmodel (only the index's tables import it at module scope)")
        elif top == "conceptlib":
            theirs = _layer(imported)
            if theirs is not None and theirs > own:
                upward.append(f"line {line}: {imported} (layer {theirs}) from layer {own}")
            if imported.startswith("conceptlib.cli") and not module.startswith(("conceptlib.cli", "conceptlib.__main__")):
                upward.append(f"line {line}: {imported} (nothing outside the CLI imports it)")
    assert upward == []


def _function_level_imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every conceptlib import inside a function or class, TYPE_CHECKING excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in top or id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if f"{node.module}.{a.name}" in known]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "conceptlib"]


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_imports_inside_functions_point_down_too(module: str) -> None:
    own = _layer(module)
    assert own is not None
    upward = [
        f"line {line}: {imported} (layer {_layer(imported)}) from layer {own}"
        for line, imported in _function_level_imports(SOURCES[module], set(SOURCES))
        if (_layer(imported) or 0) > own
    ]
    assert upward == []


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    # The check itself: a leaf that imported the library would be reported.
    leaf = tmp_path / "leaf.py"
    leaf.write_text(
        "from conceptlib.library import Library\nimport torch\n\ndef f():\n    from conceptlib.hub import pull\n",
        encoding="utf-8",
    )
    imported = [m for _, m in _module_scope_imports(leaf, set(SOURCES))]
    assert "conceptlib.library" in imported and "torch" in imported
    assert [m for _, m in _function_level_imports(leaf, set(SOURCES))] == ["conceptlib.hub"]
    assert _layer("conceptlib.library") > _layer("conceptlib.errors")  # type: ignore[operator]


# --- the tests drive the CLI one way -----------------------------------------------------------

#: What runs a command: the entry points and the Typer app (``app.main``, ``conceptlib.cli.main``,
#: ``_main``, ``run``, ``fast_main``, ``app(...)``).
CLI_ENTRY_POINTS = {"main", "_main", "run", "fast_main", "app"}
#: Test files that may drive the CLI their own way. conftest.py holds the ``cli`` fixture itself.
#: fuzzing.py is a library of the fuzz tests, not a test file: its ``run_cli`` runs the console
#: script (``conceptlib.cli.main``, whose fast path for list/search/show is its own, not
#: ``app.main``) and times each run, called as a plain function in test_fuzz.py's loops over
#: generated inputs; its other run is a child interpreter under memory limits.
CLI_DRIVERS = {"conftest.py", "fuzzing.py", Path(__file__).name}


def _other_cli_drivers(path: Path) -> list[str]:
    """``line N: ...`` for each CliRunner and each direct call of a CLI entry point in ``path``.

    The source is parsed, not searched: a subprocess probe that runs ``main`` in a fresh
    interpreter (test_startup.py, test_imports.py) holds that call in a string, and stays allowed.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}  # local name -> what it was imported as, for imports from conceptlib.cli
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module in ("typer.testing", "click.testing"):
                found.append(f"line {node.lineno}: imports {node.module}")
            if node.module == "conceptlib.cli" or node.module.startswith("conceptlib.cli."):
                bound.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.Import):
            bound.update({a.asname: a.name.rsplit(".", 1)[-1] for a in node.names if a.asname and a.name.startswith("conceptlib.cli")})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Name) and node.id == "CliRunner") or (isinstance(node, ast.Attribute) and node.attr == "CliRunner"):
            found.append(f"line {node.lineno}: CliRunner")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and bound.get(func.id) in CLI_ENTRY_POINTS:
                found.append(f"line {node.lineno}: {ast.unparse(func)}(...)")
            elif isinstance(func, ast.Attribute) and func.attr in CLI_ENTRY_POINTS:
                base = func.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                dotted = ast.unparse(func)
                if (isinstance(base, ast.Name) and base.id in bound) or dotted.startswith("conceptlib.cli."):
                    found.append(f"line {node.lineno}: {dotted}(...)")
    return sorted(set(found), key=lambda f: int(f.split(":")[0].split()[1]))


def test_tests_drive_the_cli_one_way(tmp_path: Path) -> None:
    # The check itself: each other way of running a command is reported.
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "from typer.testing import CliRunner\nfrom conceptlib.cli.app import app, main\n"
        "from conceptlib.cli import app as app_module\nimport conceptlib.cli\n\n"
        "def test_x():\n    CliRunner().invoke(app, ['list'])\n    main(['list'])\n    app_module.main(['list'])\n"
        "    conceptlib.cli.main(['list'])\n    PROBE = 'from conceptlib.cli.app import main; main([])'\n",
        encoding="utf-8",
    )
    assert [f.split(": ", 1)[0] for f in _other_cli_drivers(sample)] == ["line 1", "line 7", "line 8", "line 9", "line 10"]
    # Every test runs commands through the `cli` fixture of conftest.py (app.main, in-process).
    others = {
        f"tests/{path.name}": found
        for path in sorted((REPO / "tests").glob("*.py"))
        if path.name not in CLI_DRIVERS and (found := _other_cli_drivers(path))
    }
    assert others == {}, "use the `cli` fixture of tests/conftest.py to run a command"
