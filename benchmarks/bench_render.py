"""Rendering: loading many concepts in one step, and batched rendering.

Usage: python benchmarks/bench_render.py [--n 1,10,50,100] [--runs 3] [--loop-cap 10] [--full]
                                         [--skip-load] [--skip-batch] [--images 16]

1. **Loading N concepts** into an SD 1.5-sized text encoder (``CLIPTextModel`` built from
   ``../shared/data/models/sd15/text_encoder/config.json`` with seeded random weights: 123 M
   parameters, a 49,408 × 768 token matrix) and the real SD 1.5 tokenizer from
   ``../shared/data/models/sd15/tokenizer``. Concepts have 1 or 2 vectors (alternating).

   * ``conceptlib``: :func:`conceptlib.render.load_concepts`, one ``add_tokens`` call, one new
     matrix, one write of all rows (vectors start as numpy, as the library reads them).
   * ``diffusers list``: ``load_textual_inversion([sd, ...], token=[...])``: one
     ``resize_token_embeddings`` (with transformers' default mean-resizing, which samples new
     rows from the vocabulary's covariance) and one ``add_tokens`` call per token.
   * ``diffusers loop``: one ``load_textual_inversion`` call per concept (a resize each).
     Each call costs seconds at this size, so by default only the first ``--loop-cap`` calls
     are timed and the rest extrapolated (marked ``≈``); ``--full`` times them all.

   Both start from state in memory (no file reading) and from a pristine tokenizer and encoder.
   ``unload`` is :func:`conceptlib.render.unload_concepts` (exactness is checked each time).
   Skipped with a message when ``../shared`` is absent.

2. **Batched rendering** on the built-in tiny SD 1.x model (64 px, 4 steps, ``--images``
   images from 8 prompts that use two concepts): plain per-prompt pipeline calls (diffusers,
   one image per call, concepts loaded once) against :func:`conceptlib.render.render` with
   batch sizes 1, 4 and 16 (which also writes PNGs with metadata and a manifest).

Prints Markdown tables with the machine's description.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SD15 = REPO.parent / "shared" / "data" / "models" / "sd15"


def machine() -> str:
    import diffusers
    import torch
    import transformers

    threads = torch.get_num_threads()
    return (
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({threads} torch threads), Python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__} ({time.strftime('%Y-%m-%d')})"
    )


def concepts(n: int) -> list[Any]:
    """N seeded concepts of 1 or 2 vectors (768 wide), as conceptlib.render uses them."""
    import numpy as np

    from conceptlib.embedding import Embedding
    from conceptlib.render import UsedConcept
    from conceptlib.tensor import Tensor

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        rows = (rng.standard_normal((1 + i % 2, 768)) * 0.3).astype(np.float32)
        emb = Embedding({"clip_l": Tensor.from_numpy(rows)}, token=f"<bench-{i}>")
        out.append(UsedConcept(f"bench-{i}", f"<bench-{i}>", "object", "sd1", f"{i:064x}", f"{i}", emb))
    return out


class _Host:
    """The smallest object diffusers' TextualInversionLoaderMixin loads into."""

    hf_device_map = None

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def components(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}


def bench_load(ns: list[int], runs: int, loop_cap: int, full: bool) -> None:
    import torch
    from diffusers.loaders import TextualInversionLoaderMixin
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as tlogging

    from conceptlib.render import _clone_backend, load_concepts, unload_concepts

    if not (SD15 / "tokenizer").is_dir():
        print(f"Skipping the loading benchmark: {SD15} is not present (../shared is missing).\n")
        return
    tlogging.set_verbosity_error()  # mean-resizing prints a notice on every resize
    host_cls = type("Host", (_Host, TextualInversionLoaderMixin), {})
    tokenizer = CLIPTokenizer.from_pretrained(SD15 / "tokenizer")
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder")).eval()
    pristine_backend = tokenizer._tokenizer
    pristine_module = encoder.get_input_embeddings()
    pristine_weight = pristine_module.weight.detach().clone()
    pristine_len = len(tokenizer)
    components = {"clip_l": ("tokenizer", "text_encoder")}

    def fresh() -> None:
        # diffusers adds tokens to the backend in place, and transformers' resize writes the new
        # matrix into the existing module: give both throw-away copies (not timed).
        tokenizer._tokenizer = _clone_backend(pristine_backend)
        encoder.set_input_embeddings(torch.nn.Embedding(*pristine_weight.shape, _weight=pristine_weight.clone()))
        encoder.config.vocab_size = pristine_len

    def reset() -> None:
        # Put back the untouched objects after a diffusers load (not timed).
        tokenizer._tokenizer = pristine_backend
        encoder.set_input_embeddings(pristine_module)
        encoder.config.vocab_size = pristine_len

    def check() -> None:
        assert len(tokenizer) == pristine_len
        assert encoder.get_input_embeddings() is pristine_module
        assert torch.equal(pristine_module.weight, pristine_weight)

    # Warm-up: first-call costs (lazy imports, allocator) belong to no N.
    unload_concepts(load_concepts(host_cls(tokenizer, encoder), concepts(2), components))
    check()

    rows = []
    for n in ns:
        used = concepts(n)
        host = host_cls(tokenizer, encoder)
        ours, unload, listed, loop = [], [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            loaded = load_concepts(host, used, components)
            ours.append(time.perf_counter() - t)
            assert len(tokenizer) == pristine_len + sum(len(c.tokens) for c in used)
            t = time.perf_counter()
            unload_concepts(loaded)
            unload.append(time.perf_counter() - t)
            check()
        # diffusers takes torch state dicts; building them is not timed.
        state = [{c.token: torch.from_numpy(c.embedding.vectors["clip_l"].to_float32())} for c in used]
        tokens = [c.token for c in used]
        for _ in range(max(1, runs - 1)):
            fresh()
            t = time.perf_counter()
            host.load_textual_inversion(state, token=tokens, tokenizer=tokenizer, text_encoder=encoder)
            listed.append(time.perf_counter() - t)
            reset()
        timed = n if full else min(n, loop_cap)
        fresh()
        t = time.perf_counter()
        for sd, token in zip(state[:timed], tokens[:timed], strict=True):
            host.load_textual_inversion(sd, token=token, tokenizer=tokenizer, text_encoder=encoder)
        elapsed = time.perf_counter() - t
        reset()
        loop.append(elapsed * n / timed)
        best = min(ours)
        rows.append((
            n, best, min(unload), min(listed), loop[0], timed < n,
            min(listed) / best, loop[0] / best,
        ))  # fmt: skip
        print(f"  N={n}: conceptlib {best * 1e3:.1f} ms, diffusers list {min(listed):.2f} s, loop {loop[0]:.1f} s", file=sys.stderr)

    print("### Loading N concepts into an SD 1.5-sized text encoder (CPU)\n")
    print("| N | conceptlib load (one step) | unload | diffusers list form | diffusers loop of single calls | speed-up vs list | speed-up vs loop |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, best, un, listed_s, loop_s, extrapolated, vs_list, vs_loop in rows:
        approx = "≈ " if extrapolated else ""
        print(f"| {n} | {best * 1e3:.1f} ms | {un * 1e3:.2f} ms | {listed_s * 1e3:,.0f} ms | {approx}{loop_s * 1e3:,.0f} ms | "
              f"{vs_list:,.0f}× | {approx}{vs_loop:,.0f}× |")
    print(f"\nBest of {runs} runs for conceptlib, best of {max(1, runs - 1)} for the list form; "
          f"the loop is timed once{'' if full else f' (first {loop_cap} calls, then extrapolated: ≈)'}.\n")


def bench_batch(images: int) -> None:
    import numpy as np
    import torch

    from conceptlib.embedding import Embedding
    from conceptlib.formats import write
    from conceptlib.library import Library
    from conceptlib.models import resolve_model
    from conceptlib.render import (
        RenderConfig,
        encoder_components,
        load_concepts,
        load_pipeline,
        render,
        unload_concepts,
    )
    from conceptlib.tensor import Tensor
    from conceptlib.tiny import create_tiny

    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        root = Path(tmp)
        model_dir = create_tiny(root / "tiny-sd1", "sd1", seed=0)
        home = root / "home"
        with Library.open(home) as lib:
            for i, token in enumerate(("<cat-toy>", "<birb-style>")):
                rows = (np.random.default_rng(i).standard_normal((2, 768)) * 0.3).astype(np.float32)
                path = root / f"c{i}.safetensors"
                write(Embedding({"clip_l": Tensor.from_numpy(rows)}, token=token), path)
                lib.add(path, token=token)
        model = resolve_model(model_dir)
        pipe = load_pipeline(model)
        subjects = ["a photo of <cat-toy>", "a <cat-toy> on a table", "a painting in the style of <birb-style>",
                    "a house in the style of <birb-style>", "a <cat-toy> in the style of <birb-style>",
                    "a red car", "a dog in a garden", "a city street at night"]  # fmt: skip
        prompts = [subjects[i % len(subjects)] for i in range(images)]
        steps, size = 4, 64

        # Warm-up (first-call allocations, lazy imports).
        pipe("a cat", num_inference_steps=1, height=size, width=size)

        # Baseline: one pipeline call per image, concepts loaded once by conceptlib.
        from conceptlib.render import resolve_concepts

        concept_set = resolve_concepts(prompts, model, home=home)
        loaded = load_concepts(pipe, concept_set.used, encoder_components(model))
        t = time.perf_counter()
        for i, prompt in enumerate(prompts):
            pipe(concept_set.expand(prompt)[0], num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator().manual_seed(i))  # fmt: skip
        per_prompt = time.perf_counter() - t
        unload_concepts(loaded)

        results = [("per-prompt pipeline calls (diffusers)", per_prompt)]
        for batch in (1, 4, 16):
            config = RenderConfig(model=model, prompts=prompts, steps=steps, size=(size, size), batch_size=batch,
                                  out=root / f"out-{batch}", home=home)  # fmt: skip
            t = time.perf_counter()
            render(config, pipeline=pipe)
            results.append((f"conceptlib render --batch-size {batch}", time.perf_counter() - t))

    print(f"### Rendering {images} images on the tiny SD 1.x model ({size} px, {steps} steps, CPU)\n")
    print("| how | wall time | images/s | vs per-prompt calls |")
    print("|---|---:|---:|---:|")
    for label, seconds in results:
        print(f"| {label} | {seconds:.2f} s | {images / seconds:.1f} | {per_prompt / seconds:.2f}× |")
    print("\nconceptlib's rows include resolving and loading the concepts, writing the PNGs with "
          "their parameters chunk and the manifest; the baseline writes nothing.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,10,50,100", help="concept counts for the loading benchmark")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loop-cap", type=int, default=10, help="time at most this many single calls, extrapolate the rest")
    parser.add_argument("--full", action="store_true", help="time every single call of the diffusers loop")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()
    print(machine() + "\n")
    if not args.skip_load:
        bench_load([int(x) for x in args.n.split(",")], args.runs, args.loop_cap, args.full)
    if not args.skip_batch:
        bench_batch(args.images)


if __name__ == "__main__":
    main()
