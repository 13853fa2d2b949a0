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
    """The device this process runs on, checked before anything loads.

    ``auto`` is the CUDA GPU when there is one, else the CPU. A bare ``cuda``/``xpu`` becomes an
    indexed device: the launcher's ``LOCAL_RANK`` GPU in a multi-process run (so each process
    takes its own), else the current one (``torch.cuda.set_device`` needs an index).

    Raises:
        UsageError: not a device name, or a device this machine does not have.
    """
    import torch

    from conceptlib.errors import UsageError

    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device", hint="use cpu, cuda, cuda:N, mps or auto") from None
    multi = rank_and_world()[1] > 1
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {device}: CUDA is not available ({why})", hint="pass --device cpu, or install the CUDA build of torch for your GPU")
        count = torch.cuda.device_count()
        index = parsed.index if parsed.index is not None else int(os.environ.get("LOCAL_RANK", "0")) if multi else torch.cuda.current_device()
        if index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        return f"cuda:{index}"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: Apple's MPS is not available here", hint="pass --device cpu")
    if parsed.type == "xpu" and parsed.index is None and multi:
        return f"xpu:{os.environ.get('LOCAL_RANK', '0')}"
    return str(parsed)


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
