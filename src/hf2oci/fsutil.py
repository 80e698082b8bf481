"""Files written whole or not at all: a temp file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(target: Path, data: bytes | str, *, skip_if_same: bool = False) -> bool:
    """Replace ``target`` with ``data`` atomically and durably; False when it already held it.

    A reader sees the old content or the new, never a part; a crash leaves no temp file under
    the target's name. Raises OSError.
    """
    raw = data.encode() if isinstance(data, str) else data
    if skip_if_same:
        with contextlib.suppress(FileNotFoundError):
            if target.read_bytes() == raw:
                return False
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # mkstemp makes 0600; what we write is meant to be read by everyone
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
