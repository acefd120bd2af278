"""Process-wide tuning for processes that move block data: node processes
(``server.run_node``) and, by choice, a client process that streams large
files (``bench/data_bench`` does; a library never does it on its own).

``tune_malloc`` sets glibc malloc's mmap and trim thresholds and its arena
count (values in ``limits``): megabyte messages and blocks then come from
the arenas and freed memory is kept up to the trim threshold, instead of
each buffer being a fresh mmap, or being given back with madvise and faulted
in (zeroed) again for the next message. That churn was about a fifth of a
node's CPU per byte written and a third of a reading client's. The cost is
memory held: at most ``malloc_arenas_max x malloc_trim_threshold_bytes``
of freed memory stays with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from cistern.blockstore import limits

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8   # glibc's malloc.h


def tune_malloc() -> bool:
    """Set this process's glibc malloc thresholds (see the module doc);
    False, and nothing changed, where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, limits.malloc_arenas_max), (_M_MMAP_THRESHOLD, limits.malloc_mmap_threshold_bytes),
        (_M_TRIM_THRESHOLD, limits.malloc_trim_threshold_bytes)))
