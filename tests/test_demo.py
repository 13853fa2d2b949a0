"""The README's first command: ``conceptlib demo`` on a fresh library, with and without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'diffusers', 'transformers', 'accelerate'}:
            raise ImportError(f'{name} is blocked for this test')
        return None
sys.meta_path.insert(0, _Block())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    if name.split('.')[0] in {'torch', 'diffusers', 'transformers', 'accelerate'}:
        return None
    return _find(name, package)
importlib.util.find_spec = find_spec
from conceptlib.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def run_demo(home: Path, *, block_torch: bool) -> str:
    code = BLOCK_TORCH if block_torch else "import sys; from conceptlib.cli.app import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "demo", "--home", str(home)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def check(output: str, home: Path) -> None:
    assert output.startswith(f"conceptlib demo: a fresh library in {home / 'library'}, sample files beside it\n")
    assert "  added      cat-toy          <cat-toy>        object    SD 1.x" in output
    assert "  duplicate  cat-toy-copy.safetensors: same vectors as cat-toy" in output
    assert "  rejected   learned_embeds.bin: is a Git LFS pointer" in output
    assert "search 'negative': easy-negative, bad-artist" in output
    assert "  nfixer           embedding width 1024 fits SD 2.x, this model is SD 1.x (768)" in output
    assert "  cat-toy          fits" in output
    assert "same content hash: True" in output
    assert "clean: every hash matches" in output
    # The gallery of the demo library, at the address printed.
    index = home / "gallery" / "index.html"
    assert f"; open {index.resolve().as_uri()}\n" in output and index.is_file()
    assert sorted(p.name for p in (home / "a1111-embeddings").iterdir()) == [
        "bad-artist.safetensors", "birb-style.safetensors", "cat-toy.safetensors", "easy-negative.safetensors"
    ]
    # The command the demo suggests last works as printed.
    suggested = next(line for line in output.splitlines() if line.startswith("Try: conceptlib "))
    argv = suggested.removeprefix("Try: conceptlib ").split()
    proc = subprocess.run([sys.executable, "-m", "conceptlib", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["NAME", "TOKEN", "TYPE", "BASE", "VECTORS", "TAGS"] and "xl-detail" in proc.stdout


def test_demo_without_torch(tmp_path: Path) -> None:
    output = run_demo(tmp_path / "demo", block_torch=True)
    assert "install conceptlib[torch] for its weights" in output
    assert "  (skipped: training needs conceptlib[torch])\n" in output and "  (skipped: rendering needs conceptlib[torch])\n" in output
    assert "  6 concepts; open " in output
    check(output, tmp_path / "demo")


@pytest.mark.torch
def test_demo_with_tiny_model(tmp_path: Path) -> None:
    output = run_demo(tmp_path / "demo", block_torch=False)
    assert "a runnable tiny model with seeded weights" in output
    check(output, tmp_path / "demo")
    assert (tmp_path / "demo" / "models" / "tiny-sd1" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # It trains a concept, renders it beside two others, and shows all seven in the gallery.
    assert re.search(r"  demo-cat: 12 steps, evaluation loss [\d.]+ -> [\d.]+, added to the library\n", output)
    assert f"  4 images with demo-cat, birb-style, bad-artist; grid {tmp_path / 'demo' / 'renders' / 'grid.png'}\n" in output
    assert "  7 concepts; open " in output


def test_demo_refuses_a_non_empty_home(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "conceptlib", "demo", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, f"Error: {tmp_path} is not empty (hint: give --dir a new or empty folder)\n")
