"""Read and convert 1,000 embedding files; compare with torch.load(weights_only=True).

Usage: python benchmarks/bench_formats.py [--files 1000] [--out DIR]

The files are written by torch itself (torch.save, safetensors.torch) in the three layouts that
dominate real collections: AUTOMATIC1111 .pt (8 vectors), sd-concepts-library learned_embeds.bin
(one 1-D vector) and diffusers .safetensors (2 vectors). Each tool reads the same files in the
same run; the figures are per file (median and mean over all files, after one warm-up pass).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def make_files(folder: Path, count: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            path = folder / f"a1111-{i}.pt"
            torch.save(
                {
                    "string_to_token": {"*": 265},
                    "string_to_param": {"*": torch.randn(8, 768, generator=gen)},
                    "name": f"concept-{i}",
                    "step": 1000 + i,
                    "sd_checkpoint": "a9263745",
                    "sd_checkpoint_name": "sd-1.5",
                },
                path,
            )
        elif kind == 1:
            path = folder / f"concepts-{i}.bin"
            torch.save({f"<c{i}>": torch.randn(768, generator=gen)}, path)
        else:
            path = folder / f"diffusers-{i}.safetensors"
            save_file({f"<c{i}>": torch.randn(2, 768, generator=gen)}, str(path), metadata={"format": "pt"})
        paths.append(path)
    return paths


def per_file(paths: list[Path], fn: Callable[[Path], object]) -> list[float]:
    for path in paths[:20]:  # warm caches and imports
        fn(path)
    times = []
    for path in paths:
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from conceptlib.formats import read, write

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_files(folder, args.files)
        out = folder / "out"
        out.mkdir()

        def torch_load(path: Path) -> object:
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, weights_only=True, map_location="cpu")

        def torch_convert(path: Path) -> object:
            # What a torch user does to convert: load, then save as safetensors.
            from safetensors.torch import save_file

            state = torch_load(path)
            tensors = state.get("string_to_param", state)
            tensors = {k: v.reshape(-1, v.shape[-1]).contiguous() for k, v in tensors.items()}
            save_file(tensors, str(out / (path.stem + ".torch.safetensors")))
            return None

        def cl_convert(path: Path) -> object:
            emb = read(path)
            return write(emb.with_token(emb.prompt_word()), out / (path.stem + ".safetensors"), force=True)

        rows = [
            ("conceptlib read", per_file(paths, read)),
            ("torch.load(weights_only=True) / safetensors.torch", per_file(paths, torch_load)),
            ("conceptlib convert → .safetensors", per_file(paths, cl_convert)),
            ("torch load + safetensors save", per_file(paths, torch_convert)),
        ]

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"files: {args.files} (1/3 A1111 .pt 8×768, 1/3 learned_embeds.bin 768, 1/3 .safetensors 2×768)\n")
    print("| operation | median ms/file | mean ms/file | total s |")
    print("|---|---:|---:|---:|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times) * 1e3:.3f} | {statistics.mean(times) * 1e3:.3f} | {sum(times):.2f} |")


if __name__ == "__main__":
    main()
