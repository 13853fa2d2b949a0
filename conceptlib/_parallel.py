"""Data parallelism under ``accelerate launch`` or ``torchrun``, with torch.distributed directly.

Both launchers start one process per device and describe the run in environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Train and render
need only a process group, a barrier and a sum, so they use torch.distributed rather than
accelerate's state objects (whose CPU multi-process mode is MPI-only).
"""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    return (rank, world) if world > 1 else (0, 1)


def process_device(device: str) -> str:
    """``device`` for this process: a bare ``cuda``/``xpu`` becomes the launcher's
    ``LOCAL_RANK`` GPU in a multi-process run, so each process takes its own."""
    if device in ("cuda", "xpu") and rank_and_world()[1] > 1:
        return f"{device}:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def join(backend: str = "gloo") -> tuple[int, int]:
    """Join the launcher's process group (once) and return (rank, world size).

    Args:
        backend: ``"nccl"`` to reduce CUDA tensors; ``"gloo"`` for CPU tensors and barriers.
    """
    rank, world = rank_and_world()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend)
    return rank, world


def barrier() -> None:
    """Wait for every process of the group (no-op outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
