"""Memory the server gives back: the C allocator tuned so that freed image buffers leave the
process (`tune_allocator`, called by `personsearch serve`)."""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD_BYTES = 1024 * 1024  # blocks from 1 MB up are mapped, and unmapped when freed


def tune_allocator() -> bool:
    """Make the C allocator give large freed blocks back to the system at once; True where that
    was possible (glibc). Called by `personsearch serve`.

    Decoded images live in blocks of up to 16 MB (Pillow) and arrays of tens of MB. glibc raises
    its mmap threshold after such frees, so later blocks come from its per-thread arenas, which
    keep freed memory: a burst of large decodes left the server holding gigabytes. A fixed 1 MB
    threshold maps every large block and unmaps it when freed; at most 2 arenas per core.
    Measured in docs/serve.md ("Memory under hostile load").
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
    mapped = mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES) == 1
    return mallopt(m_arena_max, 2 * (os.cpu_count() or 1)) == 1 and mapped
