"""``models`` and ``validate`` through the CLI: output, exit codes, annotations, start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.cli.models import github_annotation, resolve_targets
from conceptlib.errors import UsageError
from conceptlib.formats import write
from conceptlib.tensor import Tensor
from factory import sd1, sd2, vectors


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "emb"
    folder.mkdir()
    paths = {
        "good": folder / "good.safetensors",
        "wide": folder / "wide.safetensors",
        "long": folder / "long.safetensors",
    }
    write(sd1(1, token="<good>"), paths["good"])
    write(sd2(1, token="<wide>"), paths["wide"])
    write(sd1(70, token="<long>"), paths["long"])
    return paths


# --- validate ----------------------------------------------------------------------------------


def test_validate_clean_file(cli: Any, files: dict[str, Path]) -> None:
    result = cli("validate", str(files["good"]), "--model", "sd1")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{files['good']}: ok\n"


def test_validate_error_exit_1(cli: Any, files: dict[str, Path]) -> None:
    run = cli("validate", str(files["wide"]), "-m", "sd1")
    assert run.exit_code == 1
    assert run.stdout == (
        f"{files['wide']}: error [width-mismatch] embedding width 1024 fits SD 2.x, this model is SD 1.x (768): "
        "use it with an SD 2.x model, or find the SD 1.x version of this concept\n"
    )
    assert "Validated 1 concept against sd1 (SD 1.x): 1 error(s), 0 warning(s), 0 note(s)." in run.stderr


def test_validate_strict_makes_warnings_fail(cli: Any, files: dict[str, Path]) -> None:
    run = cli("validate", str(files["long"]), "-m", "sd1")
    assert run.exit_code == 0
    assert "warning [context-tight] 70 vectors" in run.stdout
    assert cli("validate", str(files["long"]), "-m", "sd1", "--strict").exit_code == 1


def test_validate_folder_json(cli: Any, files: dict[str, Path]) -> None:
    result = cli("validate", str(files["good"].parent), "--model", "sd1", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["model"] == {"name": "sd1", "label": "SD 1.x", "family": "sd1", "prediction_type": "epsilon", "widths": {"clip_l": 768}}
    assert [r["target"] for r in data["results"]] == [str(files[k]) for k in ("good", "long", "wide")]
    good, long, wide = data["results"]
    assert good["ok"] and good["findings"] == [] and good["token"] == "<good>" and good["vectors"] == 1
    assert long["ok"] and [f["code"] for f in long["findings"]] == ["context-tight"]
    assert not wide["ok"] and wide["findings"][0]["severity"] == "error" and wide["family"] == "sd2"
    assert data["summary"] == {"error": 1, "warning": 1, "info": 0, "targets": 3, "unreadable": 0}
    assert [n["code"] for n in data["notes"]] == ["no-vocabulary", "no-weights", "no-hashes"]


def test_validate_github_annotations(cli: Any, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["good"].parent.parent)
    result = cli("validate", "emb", "--model", "sd1", "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [
        "::warning file=emb/long.safetensors,title=conceptlib context-tight::70 vectors use 70 of the 75 prompt "
        "tokens, leaving 5 for everything else: longer prompts get truncated (diffusers) or split into a second "
        "chunk (AUTOMATIC1111); keep the rest of the prompt short",
        "::error file=emb/wide.safetensors,title=conceptlib width-mismatch::embedding width 1024 fits SD 2.x, "
        "this model is SD 1.x (768): use it with an SD 2.x model, or find the SD 1.x version of this concept",
    ]


def test_github_annotation_escaping(tmp_path: Path) -> None:
    line = github_annotation("info", "50% done\nnext", path=Path("/abs/a,b:c.pt"), code="x")
    assert line == "::notice file=/abs/a%2Cb%3Ac.pt,title=conceptlib x::50%25 done%0Anext"


def test_validate_unreadable_file_exit_2(cli: Any, files: dict[str, Path]) -> None:
    bad = files["good"].parent / "broken.pt"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    run = cli("validate", str(files["good"].parent), "-m", "sd1", "--format", "github")
    assert run.exit_code == 2
    out = run.stdout
    assert "::error file=" in out and "broken.pt,title=conceptlib unreadable::is a Git LFS pointer" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "missing.pt", "-m", "sd1"], "Error: missing.pt: no such file or folder"),
        (["validate", "{good}", "-m", "sd9"], "Error: no model named 'sd9'"),
    ],
)
def test_validate_bad_input_exit_2(cli: Any, files: dict[str, Path], args: list[str], message: str) -> None:
    args = [a.format(good=files["good"]) for a in args]
    run = cli(*args)
    assert run.exit_code == 2
    assert run.stderr.startswith(message)


def test_validate_against_registered_model(cli: Any, shared_models: Path, files: dict[str, Path]) -> None:
    assert cli("models", "add", str(shared_models / "sd15")).exit_code == 0
    cat = files["good"].parent / "cat.safetensors"
    write(sd1(1, token="cat"), cat)
    run = cli("validate", str(cat), str(files["good"]), "--model", "sd15")
    assert run.exit_code == 1
    out = run.stdout
    assert f"{cat}: error [token-in-vocabulary] token 'cat' is already in the tokenizer's vocabulary" in out
    assert f"{files['good']}: ok" in out


def test_validate_token_clash_between_files(cli: Any, files: dict[str, Path]) -> None:
    write(sd1(1, token="<good>_1"), files["good"].parent / "clash.safetensors")
    run = cli("validate", str(files["good"]), str(files["good"].parent / "clash.safetensors"), "-m", "sd1")
    assert run.exit_code == 1
    assert run.stdout.count("[token-conflict]") == 2


def test_validate_library_concept(cli: Any, files: dict[str, Path]) -> None:
    library = pytest.importorskip("conceptlib.library")
    with library.Library.open() as lib:
        lib.add([files["wide"]], name="wide-one", token="<wide-one>")
    run = cli("validate", "wide-one", "-m", "sd1")
    assert run.exit_code == 1
    assert run.stdout.startswith("wide-one: error [width-mismatch] embedding width 1024 fits SD 2.x")
    assert cli("validate", "wide-one", "-m", "sd2").exit_code == 0
    assert cli("validate", "nope", "-m", "sd2").exit_code == 2


# --- helpers -----------------------------------------------------------------------------------


def test_find_inputs_lists_what_validate_checks(tmp_path: Path) -> None:
    from conceptlib.layout import find_inputs

    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / ".hidden.pt").write_bytes(b"x")
    (tmp_path / "pair.safetensors").write_bytes(b"x")
    (tmp_path / "pair_2.safetensors").write_bytes(b"x")
    (tmp_path / "lone_2.safetensors").write_bytes(b"x")
    concept = tmp_path / "sub" / "concept"
    concept.mkdir(parents=True)
    (concept / "learned_embeds.bin").write_bytes(b"x")
    (concept / "token_identifier.txt").write_text("<x>")
    assert [found.path for found in find_inputs([tmp_path]).concepts] == [
        tmp_path / "a.pt", tmp_path / "lone_2.safetensors", tmp_path / "pair.safetensors", concept,
    ]  # fmt: skip


def test_resolve_targets(tmp_path: Path, files: dict[str, Path]) -> None:
    targets = resolve_targets([str(files["good"])])
    assert [(t.label, t.embedding is not None, t.error) for t in targets] == [(str(files["good"]), True, None)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no embedding files"):
        resolve_targets([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError):
        resolve_targets([str(tmp_path / "nope.safetensors")])
    nan = vectors(1, 768).array.copy()
    nan[0, 0] = np.nan
    from conceptlib.embedding import Embedding

    write(Embedding({"clip_l": Tensor.from_numpy(nan)}, token="<nan>"), tmp_path / "nan.safetensors")
    [target] = resolve_targets([str(tmp_path / "nan.safetensors")])
    assert target.embedding is not None and target.error is None  # NaN is a finding, not a read error


def test_shared_embeddings_folder(cli: Any, shared_embeddings: Path, shared_models: Path) -> None:
    # empty.pt cannot be read: that is bad input, exit 2, and the other files are still checked.
    run = cli("validate", str(shared_embeddings), "-m", str(shared_models / "sd15"), "--json")
    assert run.exit_code == 2
    data = json.loads(run.stdout)
    by_name = {Path(r["target"]).name: r for r in data["results"]}
    assert [f["code"] for f in by_name["fgjd4j23423f+sd+empty.pt"]["findings"]] == ["unreadable"]
    not_sd1 = {n for n, r in by_name.items() if not r["ok"]}
    assert not_sd1 == {
        "fgjd4j23423f+sd+empty.pt",
        "lazealia+Stable_Diff_WebUI_with_Ext+nfixer.pt",
        "Kaleidia+Embeddings-for-AI-Imagery+SDXL-Detail.safetensors",
        "oss-roettger+XL-Textual-Inversion+myPuppet768.pt",
    }


# --- models ------------------------------------------------------------------------------------


def test_models_inspect(cli: Any, shared_models: Path) -> None:
    result = cli("models", "inspect", str(shared_models / "sdxl-base"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:5] == [
        str(shared_models / "sdxl-base"),
        "  kind            diffusers folder (StableDiffusionXLPipeline)",
        "  family          SDXL [sdxl]",
        "  prediction      epsilon",
        "  image size      1024 px",
    ]
    assert "  encoder clip_g  width 1280, context 77, vocabulary 49408 (tokenizer_2)" in result.stdout
    data = json.loads(cli("models", "inspect", "sd2-v", "--json").stdout)
    assert (data["family"], data["prediction_type"], data["kind"]) == ("sd2", "v_prediction", "family")


def test_models_inspect_lfs_pointer(cli: Any, shared_models: Path) -> None:
    pointer = shared_models / "sd15" / "unet" / "diffusion_pytorch_model.safetensors.lfs-pointer"
    run = cli("models", "inspect", str(pointer))
    assert run.exit_code == 2
    err = run.stderr
    assert err.startswith(f"Error: {pointer}: is a Git LFS pointer") and "git lfs pull" in err


def test_models_add_and_list(cli: Any, shared_models: Path) -> None:
    result = cli("models", "list")
    assert result.exit_code == 0 and result.stdout == ""
    run = cli("models", "add", str(shared_models / "sd21-base"), "--name", "sd21")
    assert run.exit_code == 0
    assert run.stdout == "sd21\n"
    run = cli("models", "add", str(shared_models / "sd21-base"), "--name", "sd21")
    assert run.exit_code == 2
    assert "already registered" in run.stderr
    result = cli("models", "list")
    assert result.stdout == f"sd21  SD 2.x base (512 px)   epsilon       -           {shared_models / 'sd21-base'}\n"
    data = json.loads(cli("models", "list", "--json").stdout)
    assert [(m["name"], m["family"]) for m in data] == [("sd21", "sd2")]
    shown = cli("models", "inspect", "sd21")  # a registered name works too
    assert shown.exit_code == 0 and shown.stdout.startswith("sd21\n  kind            diffusers folder")


@pytest.mark.torch
def test_models_create_tiny(cli: Any, tmp_path: Path) -> None:
    result = cli("models", "create-tiny", str(tmp_path / "tiny"), "--family", "sd2-v", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{(tmp_path / 'tiny').resolve()}\n"
    data = json.loads(cli("models", "inspect", str(tmp_path / "tiny"), "--json").stdout)
    assert (data["family"], data["prediction_type"]) == ("sd2", "v_prediction")


def test_models_create_tiny_bad_family(cli: Any, tmp_path: Path) -> None:
    result = cli("models", "create-tiny", str(tmp_path / "t"), "--family", "sd3")
    assert result.exit_code == 2


# --- start-up cost -----------------------------------------------------------------------------

PROBE = """
import sys
from conceptlib.cli.app import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "sqlmodel") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args",
    [["models", "list"], ["validate", "--help"], ["models", "--help"], ["validate", "{good}", "-m", "sdxl", "--json"]],
)
def test_no_torch_at_start_up(files: dict[str, Path], args: list[str]) -> None:
    args = [a.format(good=files["good"]) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env={**os.environ}, timeout=60
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "HEAVY=\n" in proc.stdout
