"""Bombs: small hostile files must be refused quickly and within a fixed memory allowance.

Each bomb of ``tests/fuzzing.py`` (:data:`fuzzing.BOMBS`: deflate bombs in a torch zip, DUP and
opcode floods in a deflated ``data.pkl``, storages declaring 10**12 elements, stride-0
broadcasts, tuple DAGs that explode when hashed or printed, zTXt/iTXt bombs, images that decode
to hundreds of MB, container-B zlib bombs, absurd safetensors headers, deep nesting) is read in a
fresh interpreter whose address space is limited to its own baseline (measured after importing
conceptlib, numpy, Pillow and the CLI) plus 300 MiB, first through ``read_bytes`` and then
through ``conceptlib inspect --json``. Both must end in a BadInputError (exit code 2 from the
CLI), never a MemoryError, a crash or a hang, each within 10 s (a generous bound against CI
flakes: the real figures, about a second or less, are in BENCHMARKS.md).

Linux only (``RLIMIT_AS`` and ``/proc``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import fuzzing as fz
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/status").exists(),
    reason="needs RLIMIT_AS and /proc (Linux)",
)

LIMIT_MB = 300
WALL_S = 10.0


@pytest.mark.parametrize("name", sorted(fz.BOMBS))
def test_bomb_is_refused_within_limits(name: str) -> None:
    bomb = fz.BOMBS[name]
    data = bomb.build()
    assert len(data) < 2 * 2**20, "a bomb must be small: the point is what it asks for"
    result = fz.isolated_read(data, bomb.suffix, limit_mb=LIMIT_MB, timeout=2 * WALL_S)
    problems = fz.refused_within_limits(result, wall=WALL_S)
    assert not problems, f"{name} ({bomb.attacks}, {len(data):,} bytes): " + "; ".join(problems)


def test_limit_is_real() -> None:
    """The harness itself: in the child, 50 MiB more than the allowance fails with MemoryError
    and 100 MiB less succeeds, so a passing bomb test means the reader stayed under it."""
    result = fz.isolated_read(b"", ".bin", limit_mb=LIMIT_MB, timeout=60, mode="selftest")
    assert result.api is not None and result.cli is not None, result.describe()
    assert result.api["kind"] == "crash" and result.api["detail"]["type"] == "MemoryError", result.describe()
    assert result.cli["kind"] == "ok", result.describe()


def test_honest_file_reads_within_limits() -> None:
    """A real 75-vector file reads through both paths under the same limit."""
    from conceptlib.formats import _torchpickle as tp
    from factory import vectors

    result = fz.isolated_read(tp.dumps({"emb_params": vectors(75, 768)}), ".pt", limit_mb=LIMIT_MB, timeout=60)
    assert result.api is not None and result.api["kind"] == "ok", result.describe()
    assert result.cli is not None and result.cli["kind"] == "ok" and result.cli["detail"]["code"] == 0, result.describe()
