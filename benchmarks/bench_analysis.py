"""Reading a concept against a model's vocabulary: the time of ``analyse`` once the matrix is cached.

Usage: python benchmarks/bench_analysis.py MODEL [--vectors 75] [--neighbors 10] [--terms 4] [--runs 5]

MODEL is a diffusers folder or checkpoint with text-encoder weights (e.g. the SD 1.5
architecture ``bench_train.py`` builds: 49,408 x 768). A seeded concept of ``--vectors`` vectors
is analysed: the first run reads and unit-normalises the vocabulary (and caches it under
``<home>/cache/vocabulary``); the later runs map the cache. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from conceptlib.analysis import analyse
from conceptlib.embedding import Embedding
from conceptlib.models import read_model
from conceptlib.tensor import Tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--vectors", type=int, default=75)
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--terms", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-analysis-")
    model = read_model(args.model, hash_files=False, home=home)
    key = model.encoder_keys[0]
    width = model.widths[key]
    vectors = (np.random.default_rng(0).standard_normal((args.vectors, width)) * 0.02).astype(np.float32)
    concept = Embedding({key: Tensor.from_numpy(vectors)}, token="<bench>")
    rows = []
    for label, terms in (("neighbours", 0), ("neighbours + explain", args.terms)):
        times = []
        for _ in range(args.runs + 1):
            started = time.perf_counter()
            analyse(concept, model, neighbors=args.neighbors, terms=terms, home=home)
            times.append(time.perf_counter() - started)
        rows.append((label, times[0], statistics.median(times[1:])))
    vocab = model.encoder(key)
    print(f"\n{args.vectors} vectors x {width} against {vocab.vocab_size if vocab else '?'} tokens ({key}), {args.neighbors} neighbours, explain with {args.terms} terms:\n")
    print("| what | first run (reads and caches the matrix) | cached (median) |\n|---|---:|---:|")
    for label, first, cached in rows:
        print(f"| {label} | {first:.3f} s | {cached:.3f} s |")


if __name__ == "__main__":
    main()
