"""The concept library: add 1,000 concepts, then list, search and show at 10,000.

Usage: python benchmarks/bench_library.py [--add 1000] [--size 10000] [--runs 7] [--keep DIR]

* ``add``: ``conceptlib add FOLDER`` on 1,000 files (the real command, start-up included;
  total wall time / files), and ``Library.add`` one file at a time while the library grows to
  ``--size`` (per-file times for the first and the last thousand, to show they do not degrade).
* ``list``, ``search``, ``show`` at ``--size`` concepts: wall time of the real ``conceptlib``
  command in a fresh process, start-up included; best and median of ``--runs`` after a warm-up.
  For reference the same table has ``python -c pass``, ``conceptlib --version``, and the
  three commands run through the Typer app (the console script runs their plain forms without
  importing Typer; see ``conceptlib.cli.main``).
* ``reindex`` and ``verify`` at ``--size``, in process; then ``dedupe`` (first run: every
  concept signed) and ``similar``.

Files are synthesized with conceptlib.formats (no torch): 60 % diffusers ``.safetensors``
(1-2 × 768), 25 % AUTOMATIC1111 ``.pt`` (8 × 768), 15 % SDXL ``.safetensors`` (2 × 768+1280).

Subprocesses get a bytecode cache (``PYTHONPYCACHEPREFIX``), as an installed package has; a
``PYTHONDONTWRITEBYTECODE`` environment would otherwise recompile conceptlib on every start.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["cat", "toy", "dog", "style", "watercolor", "oil", "sketch", "anime", "portrait", "landscape", "neon", "cyber", "steampunk", "pixel", "gothic", "baroque", "vintage", "film", "noir", "pastel", "ink", "charcoal", "clay", "glass", "marble", "wood", "metal", "forest", "ocean", "desert", "city", "castle", "robot", "dragon", "fox", "owl", "wolf", "bear", "koi", "lotus", "rose", "tulip"]


def make_files(folder: Path, start: int, count: int) -> list[Path]:
    import numpy as np

    from conceptlib.embedding import Embedding
    from conceptlib.formats import write
    from conceptlib.tensor import Tensor

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        rng = np.random.default_rng(i)

        def vec(n: int, width: int) -> Tensor:
            return Tensor.from_numpy((rng.standard_normal((n, width)) * 0.02).astype(np.float32))  # noqa: B023

        kind = i % 20
        word = f"{WORDS[i % len(WORDS)]}-{i}"
        if kind < 12:
            path = folder / f"{word}.safetensors"
            write(Embedding({"clip_l": vec(1 + i % 2, 768)}, token=f"<{word}>"), path, format="diffusers")
        elif kind < 17:
            path = folder / f"{word}.pt"
            write(Embedding({"clip_l": vec(8, 768)}, name=word, step=1000 + i), path, format="a1111")
        else:
            path = folder / f"{word}-xl.safetensors"
            write(Embedding({"clip_l": vec(2, 768), "clip_g": vec(2, 1280)}, token=f"<{word}-xl>"), path, format="sdxl")
        paths.append(path)
    return paths


def env_for(home: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    env["CONCEPTLIB_HOME"] = str(home)
    return env


def wall(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Best and median wall time of ``cmd`` over ``runs`` runs, after one warm-up run."""
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


# The same commands parsed by Typer, for comparison with the console script's fast path.
THROUGH_TYPER = (
    "import sys\n"
    "from conceptlib.cli.app import app\n"
    "sys.exit(app(args=sys.argv[1:], standalone_mode=False) or 0)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", type=int, default=1000, help="files for the CLI bulk add")
    parser.add_argument("--size", type=int, default=10000, help="library size for the queries")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="work folder to keep (and reuse a filled library from)")
    args = parser.parse_args()

    from conceptlib.library import Library

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-library-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "pycache"
    exe = str(Path(sys.executable).with_name("conceptlib"))
    rows: list[tuple[str, str]] = []

    # --- add: the real command on a folder of files -----------------------------------------
    bulk_home = work / "bulk-home"
    bulk_files = work / "bulk-files"
    if not bulk_files.exists():
        make_files(bulk_files, 10**6, args.add)
    if bulk_home.exists():
        import shutil

        shutil.rmtree(bulk_home)
    env = env_for(bulk_home, cache)
    # Warm the bytecode cache and the OS file cache with a one-file add elsewhere.
    scratch = work / "scratch-home"
    if not (work / "scratch-files").exists():
        make_files(work / "scratch-files", 2 * 10**6, 1)
    subprocess.run([exe, "add", str(work / "scratch-files"), "--home", str(scratch)], env=env, capture_output=True)
    start = time.perf_counter()
    subprocess.run([exe, "add", str(bulk_files)], env=env, check=True, capture_output=True)
    bulk = time.perf_counter() - start
    rows.append((f"`conceptlib add FOLDER` of {args.add:,} files (start-up included)", f"{bulk:.1f} s total, {bulk / args.add * 1000:.1f} ms/file"))

    # --- fill a library to --size through the API, one add per file -------------------------
    home = work / "home"
    lib = Library.open(home)
    have = len(lib.list())
    per_file: list[float] = []
    if have < args.size:
        files = make_files(work / "files", have, args.size - have)
        for i, path in enumerate(files, start=have):
            t0 = time.perf_counter()
            lib.add(path, tags=[WORDS[i % 7], WORDS[(i * 3) % 11]], description=f"a {WORDS[(i * 5) % len(WORDS)]} concept")
            per_file.append(time.perf_counter() - t0)
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1:,} concepts", file=sys.stderr)
    count = len(lib.list())
    if len(per_file) >= 2000:
        first, last = per_file[:1000], per_file[-1000:]
        rows.append(("`Library.add`, one file per call, concepts 1-1,000", f"median {statistics.median(first) * 1000:.1f} ms, mean {statistics.mean(first) * 1000:.1f} ms"))
        rows.append((f"`Library.add`, one file per call, concepts {count - 999:,}-{count:,}", f"median {statistics.median(last) * 1000:.1f} ms, mean {statistics.mean(last) * 1000:.1f} ms"))

    # --- queries at --size: the real command, fresh process each time ------------------------
    env = env_for(home, cache)
    name = lib.list()[count // 2].name
    word = "pastel"  # in 1 of 42 descriptions and tokens
    narrow = lib.list()[count // 3].token.strip("<>")  # one concept's own word
    typer_script = work / "typer_conceptlib.py"
    typer_script.write_text(THROUGH_TYPER)
    py = sys.executable
    refs = [("`python -c pass`", [py, "-c", "pass"]), ("`conceptlib --version`", [exe, "--version"])]
    for label, cmd in refs:
        best, med = wall(cmd, env, args.runs)
        rows.append((label, f"best {best:.3f} s, median {med:.3f} s"))
    queries = [
        ("list", ["list"]),
        ("list --json", ["list", "--json"]),
        (f"search {word}", ["search", word]),
        (f"search {narrow}", ["search", narrow]),
        ("show NAME", ["show", name]),
    ]
    for label, argv in queries:
        best, med = wall([exe, *argv], env, args.runs)
        rows.append((f"`conceptlib {label}` at {count:,} concepts", f"best {best:.3f} s, median {med:.3f} s"))
    for label, argv in queries:
        best, med = wall([py, str(typer_script), *argv], env, args.runs)
        rows.append((f"`conceptlib {label}` at {count:,}, through Typer", f"best {best:.3f} s, median {med:.3f} s"))
    rows.append((f"(`search {word}` / `search {narrow}` match)", f"{len(lib.search(word)):,} / {len(lib.search(narrow)):,} concepts"))

    # --- in-process costs ----------------------------------------------------------------------
    for label, fn in (
        ("`Library.list()` in process", lambda: lib.list()),
        ("`Library.rows()` in process (what the `list` table prints)", lambda: lib.rows()),
        (f"`Library.search({word!r})` in process", lambda: lib.search(word)),
        ("`Library.show(NAME)` in process", lambda: lib.show(name)),
    ):
        fn()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append((label, f"best {min(times) * 1000:.1f} ms"))
    t0 = time.perf_counter()
    lib.reindex()
    rows.append((f"`reindex` of {count:,} concepts", f"{time.perf_counter() - t0:.1f} s"))
    # Similar and near-duplicates: the first run after a re-index signs every concept (decodes
    # each file once); later runs read the signatures from the index.
    for label in ("first, signing every concept", "signatures in the index"):
        t0 = time.perf_counter()
        groups = lib.near_duplicates()
        rows.append((f"`dedupe` of {count:,} concepts ({label})", f"{time.perf_counter() - t0:.2f} s, {len(groups)} groups"))
    fresh = Library.open(home)  # a new process's view: the signatures come from the index
    t0 = time.perf_counter()
    fresh.similar(name)
    rows.append((f"`similar NAME` at {count:,} concepts (signatures read from the index)", f"{time.perf_counter() - t0:.2f} s"))
    fresh.close()
    t0 = time.perf_counter()
    ok = lib.verify().ok
    rows.append((f"`verify` of {count:,} concepts (every hash, every embedding decoded)", f"{time.perf_counter() - t0:.1f} s, ok={ok}"))
    lib.close()

    import typer

    print(
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, typer {typer.__version__} ({time.strftime('%Y-%m-%d')})\n"
    )
    print("| measurement | result |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    print(f"\nWork folder: {work}")


if __name__ == "__main__":
    main()
