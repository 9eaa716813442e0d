"""glibc's allocator, kept from returning the server's freed tensors to the system.

Each batch allocates and frees activations of a few hundred kilobytes to megabytes, of sizes that
change with the batch. glibc serves blocks above its mmap threshold (128 KiB at first, adapting
up to 32 MiB) with fresh mmaps, and gives memory freed at the top of a thread's heap back to the
system, so the next batch faults those pages in again. Measured on the embedded model: encodes
of 1, 4, 2 and 4 clips in a thread, 16 of them, took 50306 minor page faults, 138 with the
thresholds below; through the server with 4 clients, 678-1062 faults a request, 14-24 with them,
and 1.06x the requests per second (paired servers, 8 rounds; one client the same). A fixed 32 MiB
mmap threshold and a 256 MiB trim threshold keep that memory in the process for the next batch,
as a long-running server wants: its high-water mark stays mapped. Larger blocks (a long video's
frames and tokens) still come and go as mmaps.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # where glibc's own adaptive threshold stops (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set the thresholds for this whole process (a server or a long run, not a library call).
    False where they were not set: the C library is not glibc, or the user tuned its allocator
    through the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES'
    glibc.malloc), which is theirs to keep."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    users = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(k in os.environ for k in users):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    # Trim first: set alone, it only keeps more of the heap; the mmap threshold is what moves blocks.
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
