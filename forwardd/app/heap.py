"""The C heap of a forwardd process: glibc's malloc set for buffers of hundreds of KiB, and handed back.

Most of what forwardd allocates on its hot paths is big: socket reads, chunks' entries, a batch's JSON
lines or an HTTP body (200-400 KiB for 1000 docker events). glibc serves an allocation that big with a
fresh ``mmap`` unless its threshold has moved, and returns the top of its heap to the OS whenever more
than ``M_TRIM_THRESHOLD`` is free there: either way the next buffer starts on pages the kernel must fault
in and zero again. Measured on the C transcoder alone (1000 docker events into JSON lines, one call at a
time as the outputs make them): 71 page faults per call and 0.57 us per event, 41% of it in the kernel;
with the thresholds below, 2 faults per call and 0.25 us per event. So the daemon's processes keep
buffers below ``MMAP_THRESHOLD`` in the heap and leave up to ``TRIM_THRESHOLD`` free at its top, and
:func:`trimmer` (every ``TRIM_INTERVAL`` seconds, from the daemon) hands what stays free back to the OS,
so that memory still goes back after a burst or a wave of connections.

Only forwardd's own processes are tuned (:func:`tune`, from the command line's worker start): an embedded
test server lives in someone else's process and leaves its allocator alone. Elsewhere than glibc both
are no-ops.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["MMAP_THRESHOLD", "TRIM_INTERVAL", "TRIM_THRESHOLD", "trimmer", "tune"]

#: Allocations below this come from the heap (glibc starts at 128 KiB and moves it up to 32 MiB).
MMAP_THRESHOLD = 16 * 1024**2
#: Free bytes at the heap's top that free() keeps rather than returning them at once.
TRIM_THRESHOLD = 32 * 1024**2
#: How often freed heap memory is handed back to the OS by the daemon (see :func:`trimmer`).
TRIM_INTERVAL = 10.0

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune() -> bool:
    """Set glibc's thresholds for this process (see the module doc); False where they cannot be set."""
    libc = _libc()
    try:
        mallopt = libc.mallopt if libc is not None else None
    except AttributeError:
        return False
    if mallopt is None:
        return False
    # mallopt returns 1 on success; setting either also stops glibc from moving them on its own.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def trimmer() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere.

    Connections come and go with read and frame buffers of hundreds of KiB; glibc keeps what they freed in
    its heap, fragmented, and RSS creeps up with every wave of connections (bench/soak.py showed ~10 MiB
    a minute). Trimming every few seconds gives it back, free pages inside the heap included; it costs a
    heap walk of a few ms.
    """
    libc = _libc()
    try:
        trim: Callable[[int], int] | None = libc.malloc_trim if libc is not None else None
    except AttributeError:
        return None
    return trim
