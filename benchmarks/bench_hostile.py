"""Time and memory of reading (or refusing) files of growing size, honest and hostile.

Usage: python benchmarks/bench_hostile.py [--sizes 1K,16K,256K,4M,16M,64M] [--no-reference]
       [--bombs-only | --honest-only] [--timeout 120] [--reference-memory-mb 4096]

Issue 17's claim, measured: any file of N bytes is read or refused in O(N) time and memory.
For each reader the script writes honest files of about N bytes (many vectors, or one long
metadata value) and every bomb of ``tests/fuzzing.py`` (small files that ask for gigabytes or
hours), then reads each one in a fresh interpreter: conceptlib's ``formats.read`` and, beside it
on the same file, the reference tool (``torch.load(weights_only=True)`` for .pt,
``safetensors.numpy.load_file`` for .safetensors, Pillow + ``json`` for the PNG text chunk,
Pillow alone for pixel-only PNGs, whose container no other tool reads).

Each figure comes from its own process: imports and a warm-up read of a small file of the same
kind happen first, then the peak resident set is reset (``/proc/self/clear_refs``) and the file
is read up to 9 times (3 above 4 MiB, none past 5 s): the time is the median, "peak" is the
first read's VmHWM minus the resident set before it (``ru_maxrss`` is not used: Linux carries it
over an exec from the parent). Reference runs of bombs get an address-space
cap (``--reference-memory-mb``) and the same timeout, so a bomb that works on the reference tool
shows as "MemoryError at the cap" or "timeout" instead of taking the machine down.
Prints a markdown table and the machine; the results are kept in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

_CHILD = textwrap.dedent(
    r'''
    import io, json, os, resource, sys, time
    tool, path, warm, cap_mb, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

    def status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    if tool == "conceptlib":
        from conceptlib.errors import ConceptlibError
        from conceptlib.formats import read
        import conceptlib.formats._torchpickle, conceptlib.formats._png, conceptlib.formats._safetensors
        def run(p):
            try:
                emb = read(p)
                return f"read {emb.num_vectors} x {emb.width_label}"
            except ConceptlibError as exc:
                return f"refused: {type(exc).__name__}"
    elif tool == "torch":
        import torch
        def run(p):
            obj = torch.load(p, weights_only=True, map_location="cpu")
            return f"loaded {type(obj).__name__}"
    elif tool == "safetensors":
        from safetensors.numpy import load_file
        def run(p):
            return f"loaded {len(load_file(p))} tensors"
    elif tool == "pillow-json":
        import base64
        from PIL import Image
        def run(p):
            with Image.open(p) as image:
                image.load()
                text = image.text.get("sd-ti-embedding")
                if text is None:
                    image.convert("RGB")
                    return "decoded pixels, no text chunk"
                doc = json.loads(base64.b64decode(text))
                return f"parsed JSON ({type(doc).__name__})"
    else:
        raise SystemExit(f"unknown tool {tool}")

    try:
        run(warm)
    except Exception:
        pass
    if cap_mb > 0:
        vm = status("VmSize")
        resource.setrlimit(resource.RLIMIT_AS, (vm + cap_mb * 2**20, resource.RLIM_INFINITY))
    before = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    times = []
    for attempt in range(repeat):
        started = time.perf_counter()
        try:
            outcome = run(path)
        except MemoryError:
            outcome = f"MemoryError at the {cap_mb} MiB cap" if cap_mb > 0 else "MemoryError"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
        times.append(time.perf_counter() - started)
        if attempt == 0:
            peak = max(0, status("VmHWM") - before)  # the first read's peak
        if sum(times) > 5:
            break
    times.sort()
    print("@@" + json.dumps({"seconds": times[len(times) // 2], "peak": peak, "outcome": outcome, "runs": len(times)}))
    '''
)


def measure(tool: str, path: Path, warm: Path, *, timeout: float, cap_mb: int) -> dict[str, object]:
    """One tool on one file in a fresh interpreter: the median time of up to 9 reads (fewer
    for large files), the first read's peak."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    repeat = 9 if path.stat().st_size < 4 * 2**20 else 3
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, tool, str(path), str(warm), str(cap_mb), str(repeat)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"seconds": None, "peak": None, "outcome": f"timeout ({timeout:.0f} s)"}
    marker = proc.stdout.rfind("@@")
    if marker < 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"seconds": None, "peak": None, "outcome": f"died (rc {proc.returncode}): {tail[:60]} after {time.perf_counter() - started:.0f} s"}
    result: dict[str, object] = json.loads(proc.stdout[marker + 2 :])
    return result


# --- inputs ---------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def honest_builders() -> dict[str, tuple[str, str, Callable[[int], bytes]]]:
    """reader -> (suffix, reference tool, build(size) -> bytes of about ``size``)."""
    import fuzzing as fz

    from conceptlib.formats import _safetensors
    from conceptlib.formats import _torchpickle as tp
    from factory import vectors

    def rows(size: int, width: int = 768, per: int = 4) -> int:
        return max(1, (size - 1024) // (width * per))

    def a1111(size: int) -> bytes:
        return tp.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(rows(size), 768)}, "name": "bench", "step": 1})

    def a1111_name(size: int) -> bytes:
        return tp.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(1, 768)}, "name": "n" * max(1, size - 4096), "step": 1})

    def legacy(size: int) -> bytes:
        return fz.legacy_pickle({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(rows(size), 768)}, "name": "bench", "step": 1})

    def diffusers(size: int) -> bytes:
        return _safetensors.dumps({"<bench>": vectors(rows(size), 768)}, {"format": "pt"})

    def st_meta(size: int) -> bytes:
        return _safetensors.dumps({"<bench>": vectors(1, 768)}, {"format": "pt", "note": "m" * max(1, size - 4096)})

    def a1111_json(size: int, per_value: float) -> bytes:
        # json.dumps of float32 values widened to float64, as A1111 writes them.
        n = max(1, int(size / (per_value * 768)))
        values = vectors(n, 768).array.astype("float64").tolist()
        doc = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": values}}, "name": "bench", "step": 1}
        return json.dumps(doc).encode()

    def png_text(size: int) -> bytes:  # about 29 bytes of base64 per value
        return fz.tiny_png(extra=[fz.text_chunk(base64.b64encode(a1111_json(size, 29)), "tEXt")])

    def png_pixels(size: int) -> bytes:  # the pixel blocks store compressed JSON, about 10 bytes per value
        return fz.pixel_png(a1111_json(size, 10))

    return {
        "torch zip (.pt, many vectors)": (".pt", "torch", a1111),
        "torch zip (.pt, long name)": (".pt", "torch", a1111_name),
        "torch legacy (.pt, many vectors)": (".pt", "torch", legacy),
        "safetensors (many vectors)": (".safetensors", "safetensors", diffusers),
        "safetensors (long metadata)": (".safetensors", "safetensors", st_meta),
        "PNG tEXt (many vectors)": (".png", "pillow-json", png_text),
        "PNG pixels only (many vectors)": (".png", "pillow-json", png_pixels),
    }


REFERENCE_FOR_SUFFIX = {".pt": "torch", ".safetensors": "safetensors", ".png": "pillow-json"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for name in ("torch", "numpy", "PIL", "safetensors"):
        try:
            module = __import__(name)
            versions.append(f"{'Pillow' if name == 'PIL' else name} {module.__version__}")
        except ImportError:
            versions.append(f"{name} absent")
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {', '.join(versions)} ({datetime.date.today().isoformat()})"
    )


def cell(result: dict[str, object] | None) -> tuple[str, str, str]:
    if result is None:
        return ("", "", "")
    seconds, peak = result["seconds"], result["peak"]
    time_text = "—" if seconds is None else (f"{float(seconds) * 1e3:.1f} ms" if float(seconds) < 1 else f"{float(seconds):.2f} s")  # type: ignore[arg-type]
    peak_text = "—" if peak is None else human(float(peak))  # type: ignore[arg-type]
    return time_text, peak_text, str(result["outcome"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1K,16K,256K,4M,16M,64M")
    parser.add_argument("--png-max", default="16M", help="largest honest pixel-only PNG (building one takes memory)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--bombs-only", action="store_true")
    parser.add_argument("--honest-only", action="store_true")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--reference-memory-mb", type=int, default=4096)
    args = parser.parse_args()

    import fuzzing as fz

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    png_max = parse_size(args.png_max)
    rows: list[tuple[str, str, int, dict[str, object], str, dict[str, object] | None]] = []
    with tempfile.TemporaryDirectory(prefix="conceptlib-hostile-") as tmp:
        folder = Path(tmp)
        warm = {}
        for suffix, seed_label in ((".pt", "a1111/sd1/float32/1"), (".safetensors", "diffusers/sd1/float32/1"), (".png", "png/sd1/float32/1")):
            seed = next(s for s in fz.file_seeds("small", shared=False) if s.label == seed_label)
            warm[suffix] = folder / f"warm{suffix}"
            warm[suffix].write_bytes(seed.data)

        def run(label: str, what: str, suffix: str, data: bytes, reference: str | None) -> None:
            path = folder / f"input{suffix}"
            path.write_bytes(data)
            ours = measure("conceptlib", path, warm[suffix], timeout=args.timeout, cap_mb=0 if not what.startswith("bomb") else args.reference_memory_mb)
            theirs = None
            if reference and not args.no_reference:
                theirs = measure(reference, path, warm[suffix], timeout=args.timeout, cap_mb=args.reference_memory_mb)
            rows.append((label, what, len(data), ours, reference or "", theirs))
            print(f"{label:36s} {what:38s} {human(len(data)):>10s}  conceptlib {cell(ours)}  {reference} {cell(theirs)}", flush=True)
            path.unlink()

        if not args.bombs_only:
            for label, (suffix, reference, build) in honest_builders().items():
                for size in sizes:
                    if label.startswith("PNG pixels") and size > png_max:
                        continue
                    run(label, f"honest, about {human(size)}", suffix, build(size), reference)
        if not args.honest_only:
            for bomb in fz.BOMBS.values():
                run(bomb.name, f"bomb: {bomb.attacks}", bomb.suffix, bomb.build(), REFERENCE_FOR_SUFFIX.get(bomb.suffix))

    print()
    print(f"Machine: {machine()}")
    print()
    print("| reader / input | file | conceptlib time | conceptlib peak | conceptlib outcome | reference | ref. time | ref. peak | ref. outcome |")
    print("|---|---:|---:|---:|---|---|---:|---:|---|")
    for label, what, size, ours, reference, theirs in rows:
        t, p, o = cell(ours)
        rt, rp, ro = cell(theirs)
        print(f"| {label}: {what} | {human(size)} | {t} | {p} | {o} | {reference} | {rt} | {rp} | {ro} |")


if __name__ == "__main__":
    main()
