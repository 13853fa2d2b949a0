"""The wheel installs cli/ and registry/ inside the conceptlib namespace, nothing at top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_the_conceptlib_namespace(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = list(tmp_path.glob("conceptlib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"conceptlib", next(t for t in tops if t.endswith(".dist-info"))}
    for module in ("conceptlib/cli/app.py", "conceptlib/formats/_torchpickle.py", "conceptlib/library/_store.py", "conceptlib/py.typed"):
        assert module in names
    assert any(n.startswith("conceptlib/registry/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "conceptlib = conceptlib.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
