"""A long fuzzing campaign over every reader and the CLI, writing minimised crashers.

Usage:
    python benchmarks/fuzz_campaign.py --minutes 30 --out crashers/ [--seed 1] [--workers 2]
        [--targets read,folder,cli-inspect,cli-json,cli-add,cli-validate] [--shared]
        [--timeout 10] [--memory-mb 600]

It checks the same properties as ``tests/test_fuzz.py`` (see ``tests/fuzzing.py``): reading
returns an Embedding or raises a ConceptlibError naming the file in one line under 1,000
characters, in under 5 s; the CLI exits 0 or 2 (validate: 0-2) with no traceback, never
"unexpected", and ``inspect --json`` prints strict JSON. Inputs are the seed corpus (every
format, family, dtype and size; ``--shared`` adds ../shared/data/embeddings) mutated by a seeded
RNG, with a little feedback: a mutated input whose outcome (format read, or error type and
message shape) was never seen before joins the corpus.

Every input runs in a worker process under an address-space limit (its baseline plus
``--memory-mb``) and a wall-clock timeout, so memory bombs, hangs and crashes of the
interpreter itself are caught too: the worker is killed and restarted. Each new kind of
failure (violation, exception type, innermost conceptlib frame) is minimised by delta
debugging and written to ``--out`` as

* ``<kind>-<sha>.<suffix>``: the input bytes (a folder input: ``<kind>-<sha>/``),
* ``<kind>-<sha>.txt``: the violation, the traceback, the seed and RNG step that produced it,
  the sizes before and after minimising, and a regression test to paste;

plus ``summary.json`` (inputs tried per target, outcomes seen, crashers). The run is
reproducible from ``--seed`` (with one worker; several workers share the same input stream
but finish in a different order).

Turning a crasher into a regression test:

1. Read the ``.txt``: it names the violated rule and the reader function that raised.
2. Build the file from scratch in ``tests/test_fuzz_regressions.py``: paste the bytes literal
   the ``.txt`` proposes (small crashers) or, better, write a builder in ``tests/fuzzing.py``
   that makes the same structure (``legacy_pickle``, ``zip_pickle``, ``safetensors_with_header``,
   ``png_retext``, ``pixel_png``, ... are there for that), so the test says what the file is.
3. Assert the right outcome with ``assert_refused(data, suffix)`` (a BadInputError naming the
   file, one bounded line) or ``assert_reads(...)``, and for hangs or bombs use
   ``fuzzing.isolated_read`` so the test suite cannot hang or run out of memory itself.
4. Run it: it fails until the reader is fixed; list it for the reader's owner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import re
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TARGETS = ("read", "folder", "cli-inspect", "cli-json", "cli-add", "cli-validate")
#: How often each target is picked (reads are cheap, CLI runs cost more).
WEIGHTS = {"read": 10, "folder": 2, "cli-inspect": 2, "cli-json": 2, "cli-add": 1, "cli-validate": 1}


# =============================================================================================
# The worker: runs one job at a time under limits, answers with a JSON line
# =============================================================================================


def _frames(exc: BaseException) -> list[str]:
    """``path:line:function`` of each frame, paths relative to the repository when inside it."""
    out = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        try:
            shown = str(path.resolve().relative_to(REPO))
        except ValueError:
            shown = path.name
        out.append(f"{shown}:{frame.lineno}:{frame.name}")
    return out


def _innermost(frames: list[str]) -> str:
    """``file:function`` of the innermost frame in conceptlib's own code (what its owner fixes),
    else the innermost frame at all."""
    ours = [f for f in frames if f.startswith(("conceptlib/", "cli/", "registry/"))]
    path, _line, function = (ours or frames or ["?:0:?"])[-1].split(":", 2)
    return f"{path}:{function}"


def _shape(message: str) -> str:
    """An error message with the file name, numbers and quoted values stripped: the outcome's
    'shape', for novelty feedback."""
    text = re.sub(r"^\S+?: ", "", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", text)
    return re.sub(r"\d+", "N", text)[:120]


def worker_main(memory_mb: int) -> None:
    source = os.environ.get("CONCEPTLIB_FUZZ_SOURCE")
    if source:  # fuzz another checkout's conceptlib (see tests/fuzzing.py: isolated_read)
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, source)
    import fuzzing as fz

    from conceptlib.errors import ConceptlibError

    # Warm every import and code path, then cap the address space.
    for seed in fz.file_seeds("small", shared=False)[:40]:
        try:
            fz.check_read_bytes(seed.data, "warm" + seed.suffix, memory=False)
        except fz.PropertyViolation:
            pass
    fz.run_cli(["formats"])
    if memory_mb > 0:
        with open("/proc/self/status") as handle:
            vm = next((int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:")), 0)
        if vm:
            resource.setrlimit(resource.RLIMIT_AS, (vm + memory_mb * 2**20, resource.RLIM_INFINITY))
    home = Path(tempfile.mkdtemp(prefix="conceptlib-campaign-"))
    os.environ["CONCEPTLIB_HOME"] = str(home / "home")
    done = 0
    # Answers go to a private copy of fd 1; anything else printing to stdout lands on stderr.
    stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack("<I", head)
        job = pickle.loads(stdin.read(size))
        result = run_job(job, home / f"job{done}", fz, ConceptlibError)
        done += 1
        stdout.write(json.dumps(result, default=str) + "\n")
        stdout.flush()


def run_job(job: dict[str, Any], where: Path, fz: Any, conceptlib_error: type) -> dict[str, Any]:
    """One input through one target; returns {'ok': ..., 'outcome': ...} or a violation."""
    import shutil

    target = job["target"]
    where.mkdir(parents=True, exist_ok=True)
    try:
        if target == "read":
            outcome = fz.check_read_bytes(job["data"], f"/fuzz/input{job['suffix']}", memory=False)
            return {"ok": True, "outcome": _outcome(outcome)}
        if target == "folder":
            folder = fz.Seed("job", tuple(job["files"]), folder=True).materialise(where)
            outcome = fz.check_read_path(folder, memory=False)
            return {"ok": True, "outcome": _outcome(outcome)}
        path = where / f"input{job['suffix']}"
        if job.get("files"):
            path = fz.Seed("job", tuple(job["files"]), folder=True).materialise(where)
        else:
            path.write_bytes(job["data"])
        if target == "cli-inspect":
            run = fz.run_cli(["inspect", str(path)])
            fz.check_cli(run)
        elif target == "cli-json":
            run = fz.run_cli(["inspect", "--json", str(path)])
            fz.check_cli(run, json_out=True)
        elif target == "cli-add":
            run = fz.run_cli(["add", str(path), "--home", str(where / "home")])
            fz.check_cli(run)
        elif target == "cli-validate":
            run = fz.run_cli(["validate", str(path), "--model", "sd1", "--json"])
            fz.check_cli(run, allowed=(0, 1, 2), json_out="if-any")
        else:
            raise ValueError(target)
        return {"ok": True, "outcome": f"exit {run.code}: {_shape(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else '')}"}
    except fz.PropertyViolation as exc:
        cause = exc.__cause__
        frames = _frames(cause) if cause is not None else []
        location = _innermost(frames) if frames else target
        if cause is None and target.startswith("cli-"):  # the CLI caught it: name the type it printed
            found = re.search(r"unexpected (\w+)", exc.detail)
            location = f"{target}:{found.group(1) if found else _shape(exc.detail.split(': ', 1)[-1])[:50]}"
        return {
            "ok": False, "kind": exc.kind, "detail": exc.detail[:2000], "frames": frames,
            "where": location,
            "traceback": "".join(traceback.format_exception(cause)) if cause is not None else "",
        }  # fmt: skip
    except MemoryError:
        return {"ok": False, "kind": "MemoryError", "detail": "outside the reader", "frames": [], "where": target, "traceback": traceback.format_exc()}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _outcome(outcome: Any) -> str:
    if outcome.embedding is not None:
        return f"ok {outcome.embedding.source_format} {outcome.embedding.width_label}"
    return f"{type(outcome.error).__name__}: {_shape(str(outcome.error))}"


# =============================================================================================
# The parent: mutation loop, worker supervision, minimisation
# =============================================================================================


class Worker:
    """A worker process; restarted after a hang, a crash or a memory kill."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env.pop("CONCEPTLIB_DEBUG", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--memory-mb", str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        blob = pickle.dumps(job)
        started = time.perf_counter()
        try:
            self.proc.stdin.write(struct.pack("<I", len(blob)) + blob)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            return self.run(job, timeout)
        # The first job after a start also waits for the worker's imports and warm-up.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 30)
        line = self.proc.stdout.readline() if ready else b""
        elapsed = time.perf_counter() - started
        if not ready:
            self.kill()
            return {"ok": False, "kind": "hang", "detail": f"no answer after {elapsed:.0f} s", "frames": [], "where": job["target"], "traceback": ""}
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"ok": False, "kind": "worker-died", "detail": f"exit status {code} (killed for memory, or the interpreter crashed)", "frames": [], "where": job["target"], "traceback": ""}
        result: dict[str, Any] = json.loads(line)
        result["seconds"] = elapsed
        return result


def signature(result: dict[str, Any]) -> str:
    return f"{result['kind']}@{result['where']}"


def ddmin(data: bytes, still_fails: Any, budget_s: float) -> bytes:
    """Delta debugging over bytes: remove chunks while the failure keeps its signature."""
    deadline = time.monotonic() + budget_s
    # Cheap first: cut the tail while the failure stays (errors in headers need no payload).
    while len(data) > 16 and time.monotonic() < deadline and still_fails(data[: len(data) // 2]):
        data = data[: len(data) // 2]
    chunks = 2
    while len(data) >= 2 and time.monotonic() < deadline:
        size = max(1, len(data) // chunks)
        removed = False
        for start in range(0, len(data), size):
            if time.monotonic() > deadline:
                break
            candidate = data[:start] + data[start + size :]
            if candidate and still_fails(candidate):
                data = candidate
                chunks = max(chunks - 1, 2)
                removed = True
                break
        if not removed:
            if size == 1:
                break
            chunks = min(len(data), chunks * 2)
    return data


def regression_snippet(name: str, data: bytes | None, suffix: str, result: dict[str, Any]) -> str:
    test = re.sub(r"\W+", "_", name.lower()).strip("_")
    if data is not None and len(data) <= 600:
        literal = repr(data)
        body = f"    data = {literal}\n    assert_refused(data, {suffix!r})  # or assert_reads(...), if the file is fine"
    else:
        body = (
            f"    data = ...  # {len(data) if data is not None else 0} bytes: build it in tests/fuzzing.py\n"
            f"    assert_refused(data, {suffix!r})"
        )
    return f"def test_{test}() -> None:\n    \"\"\"{result['kind']} in {result['where']}.\"\"\"\n{body}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("crashers"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--shared", action="store_true", help="add ../shared/data/embeddings to the seeds")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--memory-mb", type=int, default=600, help="address space per worker above its baseline")
    parser.add_argument("--minimise-s", type=float, default=60.0, help="seconds spent minimising each new crasher")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.memory_mb)
        return

    import fuzzing as fz

    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    chooser = fz.RandomChooser(rng)
    files = list(fz.file_seeds("small", shared=args.shared))
    folders = list(fz.folder_seeds("small"))
    corpus = [s.data for s in files if len(s.data) < 256 * 1024]
    workers = [Worker(args.memory_mb) for _ in range(max(1, args.workers))]
    weighted = [t for t in targets for _ in range(WEIGHTS[t])]

    tried: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    crashers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + args.minutes * 60
    step = 0
    started = time.monotonic()
    last_report = started
    while time.monotonic() < deadline:
        step += 1
        target = chooser.choice(weighted)
        if target == "folder" or (target.startswith("cli-") and rng.random() < 0.15):
            seed = chooser.choice(folders)
            job = {"target": target, "files": list(fz.mutate_folder(chooser, seed, corpus)), "suffix": ""}
        else:
            seed = chooser.choice(files)
            data = fz.mutate(chooser, seed.data, corpus, rounds=chooser.integer(1, 4))
            suffix = seed.suffix if rng.random() < 0.8 else chooser.choice([".pt", ".bin", ".safetensors", ".png", ""])
            job = {"target": target, "data": data, "suffix": suffix}
        worker = workers[step % len(workers)]
        result = worker.run(job, args.timeout)
        tried[target] += 1
        if result["ok"]:
            key = f"{target}: {result['outcome']}"
            if key not in outcomes and "data" in job and len(job["data"]) < 256 * 1024:
                corpus.append(job["data"])  # a new behaviour: keep the input as a seed
                files.append(fz.Seed(f"found/{step}", ((f"found{job['suffix'] or '.bin'}", job["data"]),)))
            outcomes[key] += 1
        else:
            sig = signature(result)
            if sig in crashers:
                crashers[sig]["count"] += 1
            else:
                crashers[sig] = record_crasher(args, fz, worker, job, result, seed.label, step)
                print(f"[{time.monotonic() - started:7.1f}s] NEW {sig}: {result['detail'][:160]}", flush=True)
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            rate = sum(tried.values()) / (last_report - started)
            print(f"[{last_report - started:7.1f}s] {sum(tried.values())} inputs ({rate:.0f}/s), {len(outcomes)} outcomes, {len(crashers)} crashers", flush=True)
    for worker in workers:
        worker.kill()
    summary = {
        "seconds": time.monotonic() - started, "seed": args.seed, "tried": dict(tried),
        "outcomes": len(outcomes), "crashers": {k: {x: v[x] for x in ("count", "file", "kind", "where", "detail")} for k, v in crashers.items()},
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))


def record_crasher(args: Any, fz: Any, worker: Worker, job: dict[str, Any], result: dict[str, Any], seed_label: str, step: int) -> dict[str, Any]:
    """Minimise ``job`` (single-file inputs), write the input and a report, return the record."""
    sig = signature(result)
    original = job.get("data")
    data = original
    if data is not None and result["kind"] not in ("hang", "worker-died"):

        def still_fails(candidate: bytes) -> bool:
            again = worker.run({**job, "data": candidate}, args.timeout)
            return not again["ok"] and signature(again) == sig

        data = ddmin(data, still_fails, args.minimise_s)
        if data != original:
            final = worker.run({**job, "data": data}, args.timeout)
            if not final["ok"]:
                result = {**final, "seconds": final.get("seconds", 0)}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", sig).strip("-")[:60]
    digest = hashlib.sha256(data if data is not None else pickle.dumps(job.get("files"))).hexdigest()[:10]
    name = f"{slug}-{digest}"
    suffix = job.get("suffix") or ".bin"
    if data is not None:
        target = args.out / f"{name}{suffix}"
        target.write_bytes(data)
    else:
        target = args.out / name
        target.mkdir(exist_ok=True)
        for rel, blob in job["files"]:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(blob)
    report = [
        f"signature: {sig}",
        f"target: {job['target']}",
        f"violation: {result['kind']}: {result['detail']}",
        f"innermost frames: {' <- '.join(reversed(result.get('frames', [])[-6:]))}",
        f"seed: {seed_label}, campaign --seed {args.seed}, step {step}",
        f"input: {target.name}" + (f", {len(original)} bytes minimised to {len(data)}" if data is not None and original is not None else " (a folder)"),
        "",
        "reproduce:",
        f"  python -c \"from conceptlib.formats import read_bytes; p='{target}'; read_bytes(open(p,'rb').read(), p)\""
        if data is not None else f"  python -c \"from conceptlib.formats import read; read('{target}')\"",
        f"  conceptlib inspect --json '{target}'",
        "",
        "traceback:",
        result.get("traceback") or "(none: the worker hung or died)",
        "",
        "regression test (tests/test_fuzz_regressions.py):",
        regression_snippet(name, data, suffix, result),
    ]
    (args.out / f"{name}.txt").write_text("\n".join(report) + "\n")
    return {"count": 1, "file": str(target), **result}


if __name__ == "__main__":
    main()
