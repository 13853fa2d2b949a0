"""Pages of memory-mapped weight files: which tensors live in one, and giving their pages back.

safetensors (and so diffusers and transformers) map a weight file privately and hand out tensors
that are views of the mapping: nothing is read until it is touched, and what is touched counts
in the process's resident memory until it is unmapped. A tensor replaced by a re-laid copy (the
trainer's channels-last UNet weights) would keep its original pages resident beside the copy,
2.2 GB for SD 1.5. :func:`release` gives those pages back with ``madvise(MADV_DONTNEED)``.

That is safe for a private mapping of a regular file only: a page given back reads the file's
bytes again if anything touches it, so a stray view of the old tensor still sees the same
values, as long as nothing had written to those pages (the trainers never write to frozen
weights; an in-place write would be lost). Anonymous memory would read back as zeros, so it is
never released; neither is a page that the range shares with a neighbouring tensor (only whole
pages inside the range go).

Linux only (``/proc/self/maps``); elsewhere :func:`file_mappings` is empty and nothing is
released, which costs memory, never correctness. Imports point down: standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

_MADV_DONTNEED = 4  # the same value on every Linux architecture


@dataclass(frozen=True)
class FileMappings:
    """The process's private mappings of regular files, as sorted address ranges."""

    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    def holds(self, start: int, end: int) -> bool:
        """Whether the bytes ``[start, end)`` lie inside one private file mapping."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and end <= self.ends[i]


def file_mappings() -> FileMappings:
    """Read the private file mappings from ``/proc/self/maps`` (empty where there is none).

    Read once before releasing a batch of tensors: the weights' mappings do not move while
    their tensors are alive.
    """
    if not sys.platform.startswith("linux"):
        return FileMappings()
    ranges: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                # start-end perms offset dev inode [path]; a path is absolute for a file.
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[1][3:4] != "p" or fields[4] == "0" or not fields[5].startswith("/"):
                    continue
                start, _, end = fields[0].partition("-")
                ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        return FileMappings()
    ranges.sort()
    return FileMappings(tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))


@functools.cache
def _madvise() -> Any:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        function = ctypes.CDLL(name, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def release(tensor: Any, mappings: FileMappings) -> int:
    """Give back the whole pages of a CPU tensor's bytes when they map a file; the bytes given back.

    Call it on a tensor nothing will use again (its replacement already made): the pages leave
    the resident set, and a later read of them would fetch the file's bytes again. Returns 0,
    changing nothing, for anonymous memory, a range that is not in one file mapping, a device or
    non-contiguous tensor, or where ``madvise`` is unavailable.
    """
    if tensor.device.type != "cpu" or tensor.numel() == 0 or not tensor.is_contiguous():
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if not mappings.holds(start, end):
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    first = -(-start // page) * page  # pages shared with the bytes either side stay
    last = end // page * page
    madvise = _madvise()
    if last <= first or madvise is None:
        return 0
    if madvise(first, last - first, _MADV_DONTNEED) != 0:
        return 0
    return last - first
