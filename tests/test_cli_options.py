"""Every numeric option of every command refuses out-of-range values with one line and exit 2.

Typer parses ``nan``, ``inf`` and ``1e38`` as floats and any digit string as an int, so each
option needs its own range: without one, ``train --lr 1e38`` ended in "unexpected RuntimeError:
value cannot be converted to type float without overflow" after loading the model. The checks
run before anything loads (no model, images or torch are needed to see them), through the real
error boundary (``app.main``), and name the option first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TRAIN = ["train", "-m", "sd1", "-i", "no-images", "--token", "<t>"]
RENDER = ["render", "a cat", "-m", "sd1"]
PREVIEW = ["preview", "cat", "-m", "sd1"]

TOO_BIG_SEED = str(2**63)

#: (command line, the error line's start). Each row is one value of one option.
CASES: list[tuple[list[str], str]] = [
    # --- train ---------------------------------------------------------------------------------
    ([*TRAIN, "--vectors", "0"], "Error: --vectors: must be a whole number from 1 to 75, got 0"),
    ([*TRAIN, "--vectors", "76"], "Error: --vectors: must be a whole number from 1 to 75, got 76"),
    ([*TRAIN, "--steps", "0"], "Error: --steps: must be a whole number from 1 to 1000000, got 0"),
    ([*TRAIN, "--steps", "1000001"], "Error: --steps: must be a whole number from 1 to 1000000, got 1000001"),
    ([*TRAIN, "--steps", "1.5"], "Error: --steps: input should be a valid integer"),
    ([*TRAIN, "--batch-size", "0"], "Error: --batch-size: must be a whole number from 1 to 1024, got 0"),
    ([*TRAIN, "--batch-size", "1025"], "Error: --batch-size: must be a whole number from 1 to 1024, got 1025"),
    ([*TRAIN, "--grad-accum", "0"], "Error: --grad-accum: must be a whole number from 1 to 1024, got 0"),
    ([*TRAIN, "--grad-accum", "1025"], "Error: --grad-accum: must be a whole number from 1 to 1024, got 1025"),
    ([*TRAIN, "--lr", "0"], "Error: --lr: must be a number greater than 0 and at most 1, got 0"),
    ([*TRAIN, "--lr", "-0.1"], "Error: --lr: must be a number greater than 0 and at most 1, got -0.1"),
    ([*TRAIN, "--lr", "1.5"], "Error: --lr: must be a number greater than 0 and at most 1, got 1.5"),
    ([*TRAIN, "--lr", "1e38"], "Error: --lr: must be a number greater than 0 and at most 1, got 1e+38"),
    ([*TRAIN, "--lr", "nan"], "Error: --lr: must be a number greater than 0 and at most 1, got nan"),
    ([*TRAIN, "--lr", "inf"], "Error: --lr: must be a number greater than 0 and at most 1, got inf"),
    ([*TRAIN, "--lr-schedule", "1e38"], "Error: --lr-schedule: learning rate '1e38' must be a number greater than 0 and at most 1"),
    ([*TRAIN, "--lr-schedule", "0.01:10, nan"], "Error: --lr-schedule: learning rate 'nan' must be a number greater than 0 and at most 1"),
    ([*TRAIN, "--warmup-steps", "-1"], "Error: --warmup-steps: must be a whole number from 0 to 1000000, got -1"),
    ([*TRAIN, "--warmup-steps", "1000001"], "Error: --warmup-steps: must be a whole number from 0 to 1000000, got 1000001"),
    ([*TRAIN, "--resolution", "0"], "Error: --resolution: must be a whole number from 8 to 16384, got 0"),
    ([*TRAIN, "--resolution", "12"], "Error: --resolution: must be a multiple of 8, got 12"),
    ([*TRAIN, "--resolution", "16392"], "Error: --resolution: must be a whole number from 8 to 16384, got 16392"),
    ([*TRAIN, "--seed", "-1"], "Error: --seed: must be a whole number from 0 to 9223372036854775807, got -1"),
    ([*TRAIN, "--seed", TOO_BIG_SEED], f"Error: --seed: must be a whole number from 0 to 9223372036854775807, got {TOO_BIG_SEED}"),
    ([*TRAIN, "--clip-grad-norm", "-1"], "Error: --clip-grad-norm: must be a number from 0 to 1e+06, got -1"),
    ([*TRAIN, "--clip-grad-norm", "nan"], "Error: --clip-grad-norm: must be a number from 0 to 1e+06, got nan"),
    ([*TRAIN, "--clip-grad-norm", "1e308"], "Error: --clip-grad-norm: must be a number from 0 to 1e+06, got 1e+308"),
    ([*TRAIN, "--clip-grad-value", "inf"], "Error: --clip-grad-value: must be a number from 0 to 1e+06, got inf"),
    ([*TRAIN, "--clip-grad-value", "1e308"], "Error: --clip-grad-value: must be a number from 0 to 1e+06, got 1e+308"),
    ([*TRAIN, "--tag-dropout", "-0.1"], "Error: --tag-dropout: must be a number from 0 up to (not including) 1, got -0.1"),
    ([*TRAIN, "--tag-dropout", "1"], "Error: --tag-dropout: must be a number from 0 up to (not including) 1, got 1"),
    ([*TRAIN, "--tag-dropout", "nan"], "Error: --tag-dropout: must be a number from 0 up to (not including) 1, got nan"),
    ([*TRAIN, "--save-every", "-1"], "Error: --save-every: must be a whole number from 0 to 1000000, got -1"),
    ([*TRAIN, "--preview-every", "-1"], "Error: --preview-every: must be a whole number from 0 to 1000000, got -1"),
    ([*TRAIN, "--preview-steps", "0"], "Error: --preview-steps: must be a whole number from 1 to 1000, got 0"),
    ([*TRAIN, "--preview-steps", "1001"], "Error: --preview-steps: must be a whole number from 1 to 1000, got 1001"),
    # --- render --------------------------------------------------------------------------------
    ([*RENDER, "--seed", "-1"], "Error: --seed: must be a whole number from 0 to 9223372036854775807, got -1"),
    ([*RENDER, "--seed", TOO_BIG_SEED], f"Error: --seed: must be a whole number from 0 to 9223372036854775807, got {TOO_BIG_SEED}"),
    ([*RENDER, "--steps", "0"], "Error: --steps: must be a whole number from 1 to 1000, got 0"),
    ([*RENDER, "--steps", "1001"], "Error: --steps: must be a whole number from 1 to 1000, got 1001"),
    ([*RENDER, "--guidance", "nan"], "Error: --guidance: must be a number from 0 to 100, got nan"),
    ([*RENDER, "--guidance", "inf"], "Error: --guidance: must be a number from 0 to 100, got inf"),
    ([*RENDER, "--guidance", "-inf"], "Error: --guidance: must be a number from 0 to 100, got -inf"),
    ([*RENDER, "--guidance", "-0.5"], "Error: --guidance: must be a number from 0 to 100, got -0.5"),
    ([*RENDER, "--guidance", "100.5"], "Error: --guidance: must be a number from 0 to 100, got 100.5"),
    ([*RENDER, "--guidance", "1e308"], "Error: --guidance: must be a number from 0 to 100, got 1e+308"),
    ([*RENDER, "-n", "0"], "Error: -n: must be a whole number from 1 to 10000, got 0"),
    ([*RENDER, "-n", "10001"], "Error: -n: must be a whole number from 1 to 10000, got 10001"),
    ([*RENDER, "--batch-size", "0"], "Error: --batch-size: must be a whole number from 1 to 1024, got 0"),
    ([*RENDER, "--batch-size", "1025"], "Error: --batch-size: must be a whole number from 1 to 1024, got 1025"),
    ([*RENDER, "--size", "0x0"], "Error: size 0x0: width and height must be multiples of 8 from 8 to 16384"),
    ([*RENDER, "--size", "16392x512"], "Error: size 16392x512: width and height must be multiples of 8 from 8 to 16384"),
    ([*RENDER, "--size", "512x99999999999999999999"], "Error: size 512x99999999999999999999: width and height must be multiples of 8"),
    ([*RENDER, "--size", "1e3x8"], "Error: size '1e3x8' is not WIDTHxHEIGHT"),
    # --- preview: the same checks, before git, validation or any model ------------------------
    ([*PREVIEW, "--seed", "-1"], "Error: --seed: must be a whole number from 0 to 9223372036854775807, got -1"),
    ([*PREVIEW, "--steps", "0"], "Error: --steps: must be a whole number from 1 to 1000, got 0"),
    ([*PREVIEW, "--guidance", "nan"], "Error: --guidance: must be a number from 0 to 100, got nan"),
    ([*PREVIEW, "--guidance", "1e308"], "Error: --guidance: must be a number from 0 to 100, got 1e+308"),
    ([*PREVIEW, "--batch-size", "0"], "Error: --batch-size: must be a whole number from 1 to 1024, got 0"),
    ([*PREVIEW, "--size", "12x12"], "Error: size 12x12: width and height must be multiples of 8 from 8 to 16384"),
    # --- pull and models: Typer's own range checks, in the same one-line form --------------------
    (["pull", "--author", "someone", "--limit", "-1"], "Error: --limit: input should be greater than or equal to 0 (hint: see `conceptlib pull --help`)"),
    (["pull", "--author", "someone", "--jobs", "0"], "Error: --jobs: input should be greater than or equal to 1 (hint: see `conceptlib pull --help`)"),
    (["pull", "--author", "someone", "--jobs", "65"], "Error: --jobs: input should be less than or equal to 64 (hint: see `conceptlib pull --help`)"),
    (["pull", "--author", "someone", "--jobs", str(2**64)], "Error: --jobs: input should be less than or equal to 64 (hint: see `conceptlib pull --help`)"),
    (["models", "create-tiny", "tiny", "--seed", "-1"], "Error: --seed: must be a whole number from 0 to 9223372036854775807, got -1"),
    (["models", "create-tiny", "tiny", "--seed", "99999999999999999999999"], "Error: --seed: must be a whole number from 0 to 9223372036854775807, got 99999999999999999999999"),
]


@pytest.mark.parametrize(("args", "start"), CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_out_of_range_values_get_one_line_and_exit_2(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], start: str) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the checkout
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(start), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_the_help_states_every_range(cli: Any) -> None:
    # The ranges are documented where users look for them.
    train_help = cli("train", "--help").stdout
    for text in ("1 to 75", "1 to 1000000", "greater than 0 and at most 1", "from 8 to 16384", "0 to 2**63-1", "0 to 1e6", "up to (not including) 1"):
        assert text in " ".join(train_help.split()), text
    render_help = " ".join(cli("render", "--help").stdout.split())
    for text in ("1 to 1000", "0 to 100", "1 to 10000", "1 to 1024", "from 8 to 16384", "0 to 2**63-1"):
        assert text in render_help, text


def test_check_range_wording() -> None:
    from conceptlib.errors import UsageError
    from conceptlib.render import check_range

    check_range("--x", None, 0, 1)  # absent: nothing to check
    check_range("--x", 1.0, 0.0, 1.0)
    for value, message in [
        (float("nan"), "--x: must be a number greater than 0 and below 1, got nan"),
        (1.0, "--x: must be a number greater than 0 and below 1, got 1"),
        (0.0, "--x: must be a number greater than 0 and below 1, got 0"),
    ]:
        with pytest.raises(UsageError) as info:
            check_range("--x", value, 0.0, 1.0, above=True, below=True)
        assert str(info.value) == message
    with pytest.raises(UsageError) as info:
        check_range("--n", 10**5000, 0, 10)  # str() of a 5,000-digit int raises; the message must not
    assert str(info.value) == "--n: must be a whole number from 0 to 10, got a 16610-bit number"


def test_pull_jobs_bound_is_the_librarys(tmp_path: Path) -> None:
    # The CLI writes the bound out (importing conceptlib.hub would slow start-up): keep them equal.
    import typing

    from conceptlib.cli import hub as cli_hub
    from conceptlib.errors import UsageError
    from conceptlib.hub import MAX_JOBS, pull_author
    from conceptlib.library import Library

    hints = typing.get_type_hints(cli_hub.pull, include_extras=True)
    (option,) = [m for m in hints["jobs"].__metadata__ if hasattr(m, "max")]
    assert option.max == MAX_JOBS
    with pytest.raises(UsageError, match=f"--jobs must be from 1 to {MAX_JOBS}, got {MAX_JOBS + 1}"):
        pull_author(Library.open(tmp_path / "lib"), "someone", jobs=MAX_JOBS + 1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "--steps: must be a whole number from 1 to 1000, got 0"),
        ({"seed": -1}, "--seed: must be a whole number from 0 to 9223372036854775807, got -1"),
        ({"guidance": float("nan")}, "--guidance: must be a number from 0 to 100, got nan"),
        ({"batch_size": 1025}, "--batch-size: must be a whole number from 1 to 1024, got 1025"),
        ({"size": (12, 12)}, "size 12x12: width and height must be multiples of 8 from 8 to 16384"),
    ],
)
def test_preview_checks_its_settings_through_the_python_api(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    from conceptlib.errors import UsageError
    from conceptlib.preview import preview

    out = tmp_path / "pv"
    out.mkdir()
    (out / "preview.md").write_text("an earlier run's summary")
    # An unknown model: checked later, it would raise ModelNotFoundError instead.
    with pytest.raises(UsageError) as info:
        preview(["cat-toy"], model="no-such-model", out=out, home=tmp_path / "home", **settings)
    assert str(info.value) == message
    # Before any work: not even the earlier summary is removed, and no library is created.
    assert (out / "preview.md").read_text() == "an earlier run's summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pv"]


def test_the_hint_names_the_command_however_python_was_started() -> None:
    # `python -m conceptlib` makes Click's root name three words; the hint names the command.
    for argv, command in ((["pull", "--limit", "-1", "x"], "conceptlib pull"), (["models", "add", "m", "--jobs", "3"], "conceptlib models add")):
        done = subprocess.run([sys.executable, "-m", "conceptlib", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.endswith(f"(hint: see `{command} --help`)\n"), done.stderr
