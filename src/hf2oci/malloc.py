"""glibc's allocator, set for processes that stream many large buffers from several threads.

Each thread that allocates gets an arena of its own by default, and buffers freed in another
thread than the one that made them stay in its arena: a mirror reading several files at once
(hf_xet's windows, HTTP parts) or a server answering many downloads grows by tens of MiB for
nothing. Settings the environment gives (``MALLOC_ARENA_MAX``…) win. Does nothing where there is
no glibc (musl).
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameters by their environment names: (parameter, value)
ARENAS = {"MALLOC_ARENA_MAX": (-8, 2)}
#: and a server's: its 4 MiB reads kept in the heap (not fresh pages from the kernel each)
SERVER = {**ARENAS, "MALLOC_MMAP_THRESHOLD_": (-3, 8 << 20),
          "MALLOC_TRIM_THRESHOLD_": (-1, 64 << 20)}  # fmt: skip


def tune(settings: dict[str, tuple[int, int]]) -> None:
    """Set ``settings`` unless the environment sets them (call it before threads start)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for var, (param, value) in settings.items():
        if var not in os.environ:
            mallopt(param, value)
