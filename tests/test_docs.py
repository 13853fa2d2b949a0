"""Every command has help text and is documented in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from conceptlib.cli.app import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def commands() -> list[tuple[str, typer.models.CommandInfo]]:
    found = [(c.name or "", c) for c in app.registered_commands]
    for group in app.registered_groups:
        sub = group.typer_instance
        assert sub is not None
        found += [(f"{group.name} {c.name}", c) for c in sub.registered_commands]
    return found


@pytest.mark.parametrize(("name", "info"), commands(), ids=[n for n, _ in commands()])
def test_command_has_help_and_is_documented(name: str, info: typer.models.CommandInfo) -> None:
    assert info.callback is not None and (info.callback.__doc__ or "").strip(), f"{name} has no help text"
    assert f"conceptlib {name}" in README, f"`conceptlib {name}` is not in the README"


# --- docs/preview-workflow.yml -----------------------------------------------------------------

WORKFLOW = Path(__file__).resolve().parents[1] / "docs" / "preview-workflow.yml"


def workflow() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def step(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["jobs"]["preview"]["steps"] if s.get("name", "").startswith(name))


def test_preview_workflow_runs_on_every_file_preview_reads() -> None:
    # preview reads the suffixes layout names (PICKLE_OR_SAFETENSORS, PICTURE_SUFFIXES).
    from conceptlib.layout import PICKLE_OR_SAFETENSORS, PICTURE_SUFFIXES

    data = workflow()
    paths = data[True]["pull_request"]["paths"]  # YAML 1.1 reads the key `on` as True
    for suffix in (*PICKLE_OR_SAFETENSORS, *PICTURE_SUFFIXES):
        assert f"**/*{suffix}" in paths, suffix
    # Forks' tokens cannot comment: the step is for same-repository pull requests only.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in step(data, "Post or update")["if"]
    assert step(data, "Upload grids")["if"] == "always()"


def test_workflows_pin_every_action_and_keep_no_credentials() -> None:
    import re

    for path in sorted(WORKFLOW.parent.glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        uses = re.findall(r"^\s*(?:- )?uses:\s*(\S+)(.*)$", text, re.M)
        assert uses, path
        for action, rest in uses:
            # A full commit SHA, and its release tag beside it for whoever bumps it.
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), f"{path.name}: {action} is not pinned to a commit"
            assert re.fullmatch(r"\s*# v\d+(\.\d+)*", rest), f"{path.name}: {action} has no '# vX.Y.Z' tag comment"
        checkouts = re.findall(r"uses: actions/checkout@.*\n((?:\s{8,}.*\n)+)", text)
        assert checkouts and all("persist-credentials: false" in block for block in checkouts), path
        assert re.search(r"^permissions: \{\}", text, re.M), f"{path.name}: the workflow-level token should have no permissions"


def test_workflows_pass_zizmor() -> None:
    import shutil
    import subprocess

    zizmor = shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install 'conceptlib[dev]')")
    files = sorted(str(p) for p in WORKFLOW.parent.glob("*.yml"))
    done = subprocess.run([zizmor, "--offline", "--persona", "auditor", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# 2 with a summary: a changed file was refused; 2 without: the preview could not start.
@pytest.mark.parametrize(("code", "writes_summary"), [(0, True), (1, True), (2, True), (2, False)])
def test_preview_workflow_step_always_leaves_a_summary(tmp_path: Path, code: int, writes_summary: bool) -> None:
    import os
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = step(workflow(), "Render previews")["run"]
    # A stand-in for conceptlib: preview.md on exit 0 and 1, one error line on exit 2.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "conceptlib"
    body = "mkdir -p preview && echo '## conceptlib preview' > preview/preview.md" if writes_summary else "echo 'Error: the model has no weights' >&2"
    fake.write_text(f"#!/usr/bin/env bash\n{body}\nexit {code}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GITHUB_OUTPUT": str(tmp_path / "output"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "RANGE": "origin/main...HEAD", "PREVIEW_STEPS": "1", "PREVIEW_SIZE": "8x8"}  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    # GitHub runs `run:` blocks as `bash --noprofile --norc -eo pipefail {0}`.
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the last step fails the job, after posting
    assert (tmp_path / "output").read_text() == f"status={code}\n"
    summary = (work / "preview" / "preview.md").read_text(encoding="utf-8")
    assert (tmp_path / "summary").read_text(encoding="utf-8") == summary
    if not writes_summary:
        assert "could not run (exit status 2)" in summary and "Error: the model has no weights" in summary
        assert "Error: the model has no weights" in done.stderr  # still in the step's log


# --- the README's Python example ------------------------------------------------------------


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The example as printed, on a kohya-style EasyNegative.pt built here (8 SD 1.x vectors).
    import re

    from conceptlib.formats import read, write
    from factory import sd1

    block = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S)
    assert block, "the README has no Python API example"
    monkeypatch.chdir(tmp_path)
    write(sd1(8, seed=5, name="EasyNegative"), tmp_path / "EasyNegative.pt", format="emb-params-pt")
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 - our own documentation
    assert capsys.readouterr().out.startswith("SD 1.x 8 ")
    assert read(tmp_path / "easynegative.safetensors").token == "easynegative"
