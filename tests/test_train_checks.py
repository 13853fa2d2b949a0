"""train()'s torch-free steps, without torch: the library's pre-flight, the resume checks, and
landing the result in the library.

They are named functions beside :func:`conceptlib.train.train` so that these rules can be tested
here, on plain values and a library of factory embeddings, in a run without the torch extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import factory
from conceptlib.errors import ConceptExistsError, TokenInUseError, UsageError
from conceptlib.formats import write
from conceptlib.library import Library
from conceptlib.models import ModelInfo, family_model
from conceptlib.train import (
    OBJECT_FILEWORDS_TEMPLATES,
    STYLE_TEMPLATES,
    TrainConfig,
    _add_to_library,
    _check_library,
    _check_resume,
    _check_run_folder,
    _templates,
)


def _config(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"model": "sd1", "images": "imgs", "token": "<toy>", "steps": 10, **kw})


def _state(config: TrainConfig, info: ModelInfo, **kw: Any) -> dict[str, Any]:
    """A checkpoint's plain values, as load_checkpoint returns them (no tensors read here)."""
    return {"config": config.to_dict(), "model": info.fingerprints(), "frozen": "f", "images": "i", "prompts": "p", "step": 4, **kw}


def _resume(state: dict[str, Any], config: TrainConfig, *, total_steps: int = 10, ours: str | None = None) -> None:
    _check_resume(
        state, config, family_model("sd1"), checkpoint_path=Path("run/checkpoint.safetensors"), native=512, home=None,
        frozen="f", images="i", prompts="p", total_steps=total_steps, ours=ours,
    )  # fmt: skip


def test_resume_checks() -> None:
    info, config = family_model("sd1"), _config(resume=True)
    _resume(_state(config, info), config)  # the same run: resumes
    _resume(_state(config, info), _config(resume=True, steps=20), total_steps=20)  # --steps may change
    with pytest.raises(UsageError, match="these settings differ from the checkpoint's: lr"):
        _resume(_state(config, info), _config(resume=True, lr=0.1))
    for key, what in (("frozen", "its UNet or VAE weights differ"), ("images", "the images in imgs changed"), ("prompts", "the training prompts changed")):
        with pytest.raises(UsageError, match=what):
            _resume(_state(config, info, **{key: "other"}), config)
    with pytest.raises(UsageError, match="the checkpoint is at step 10; --steps 10 leaves nothing to train") as caught:
        _resume(_state(config, info, step=10), config, ours="toy")
    assert caught.value.hint == "pass --steps above 10 to train on"
    with pytest.raises(UsageError, match="--lr-schedule ends at step 8"):
        _resume(_state(config, info, step=8), config, total_steps=8, ours="toy")
    # Trained to the end but never added (its add failed): finished, not refused.
    _resume(_state(config, info, step=10), config)


def _library_with_toy(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    src = tmp_path / "toy.safetensors"
    write(factory.sd1(1, token="<toy>"), src)
    with Library.open(home) as lib:
        lib.add(src, name="toy").one()
    return home


def test_library_preflight(tmp_path: Path) -> None:
    home = _library_with_toy(tmp_path)
    info, run = family_model("sd1"), tmp_path / "run" / "toy.safetensors"
    assert _check_library(_config(token="<new>"), home, info, token="<new>", name="new", embedding_path=run) is None
    with pytest.raises(TokenInUseError):
        _check_library(_config(), home, info, token="<toy>", name="toy", embedding_path=run)
    with pytest.raises(ConceptExistsError):
        _check_library(_config(token="<new>", name="toy"), home, info, token="<new>", name="toy", embedding_path=run)


def test_landing_adds_then_updates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = tmp_path / "run" / "toy.safetensors"
    run.parent.mkdir()
    write(factory.sd1(2, token="<toy>", seed=3), run)
    notes: list[str] = []
    kw: dict[str, Any] = {"config": _config(), "token": "<toy>", "images": [], "metadata": {"trained_by": "conceptlib"}, "notes": notes}
    concept, action = _add_to_library(home, None, run, **kw)
    assert action == "added" and concept is not None and concept.token == "<toy>"
    # A resumed run updates the concept it made: the pre-flight finds it by its source file.
    assert _check_library(_config(resume=True), home, family_model("sd1"), token="<toy>", name="toy", embedding_path=run) == concept.name
    write(factory.sd1(2, token="<toy>", seed=4), run, force=True)
    again, action = _add_to_library(home, concept.name, run, **kw)
    assert action == "updated" and again is not None and again.name == concept.name
    assert notes == []


def test_run_folder_checks(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _check_run_folder(_config(), out, out / "checkpoint.safetensors")  # a new folder: fine
    with pytest.raises(UsageError, match="--resume: no checkpoint to resume from") as caught:
        _check_run_folder(_config(resume=True), out, out / "checkpoint.safetensors")
    assert caught.value.hint == "run without --resume to start, or pass the run's --out"
    out.write_text("not a folder")
    with pytest.raises(UsageError, match="is a file; the run folder must be a folder"):
        _check_run_folder(_config(), out, out / "checkpoint.safetensors")


def test_template_choice(tmp_path: Path) -> None:
    assert _templates(_config(), "<toy>", ["", ""])[0] == "a photo of a [name]"
    assert _templates(_config(type="style"), "<toy>", [""]) == list(STYLE_TEMPLATES)
    assert _templates(_config(captions="txt"), "<toy>", ["red"]) == list(OBJECT_FILEWORDS_TEMPLATES)
    own = tmp_path / "own.txt"
    own.write_text("\ufeffa [filewords]\n\n")
    # No [name] anywhere: only a caption that holds the token can teach the concept.
    with pytest.raises(UsageError, match="no template uses \\[name\\] and no caption holds the token '<toy>'"):
        _templates(_config(templates=str(own)), "<toy>", ["a red ball"])
    assert _templates(_config(templates=str(own)), "<toy>", ["a <toy> on a table"]) == ["a [filewords]"]


def test_the_checks_run_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from conceptlib.models import family_model\n"
        "from conceptlib.train import TrainConfig, _check_library, _check_resume, _check_run_folder, _templates\n"
        "c = TrainConfig(model='sd1', images='i', token='<t>', resume=True)\n"
        "info = family_model('sd1')\n"
        "_check_resume({'config': c.to_dict(), 'model': {}, 'step': 1}, c, info, checkpoint_path=Path('c'), native=512,\n"
        "              home=None, frozen='f', images='i', prompts='p', total_steps=10, ours=None)\n"
        "_check_library(c, sys.argv[1], info, token='<t>', name='t', embedding_path=Path('e'))\n"
        "_check_run_folder(TrainConfig(model='sd1', images='i', token='<t>'), Path('new'), Path('new/c'))\n"
        "_templates(c, '<t>', [''])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
