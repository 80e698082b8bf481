"""Remembers which layer blob a content key produced, so a rerun can skip the download.

A layer is a pure function of its files (paths + hub hashes, see ``labels.CONTENT_KEY``), so once
a layer was streamed anywhere its digest is known for good; whether the destination still has
the blob is always checked (HEAD) before it is relied on. Kept in ``$HF2OCI_CACHE`` (default
``~/.cache/hf2oci``) as one small JSON file, updated atomically after every layer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hf2oci.fsutil import atomic_write

log = logging.getLogger(__name__)

_lock = threading.Lock()


def cache_dir() -> Path:
    explicit = os.environ.get("HF2OCI_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hf2oci"


class LayerCache:
    """content key → (digest, size)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "layers.json"

    def load(self) -> dict[str, tuple[str, int]]:
        try:
            doc = json.loads(self.path.read_text())
            return {k: (str(v[0]), int(v[1])) for k, v in doc.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as e:
            log.warning("ignoring unreadable layer cache %s: %s", self.path, e)
            return {}

    def add(self, key: str, digest: str, size: int) -> None:
        try:
            with self._locked():
                entries = self.load()
                entries[key] = (digest, size)
                self._write(entries)
        except OSError as e:  # a cache that cannot be written only costs a download later
            log.warning("cannot update the layer cache %s: %s", self.path, e)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _lock, open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, entries: dict[str, tuple[str, int]]) -> None:
        atomic_write(self.path, json.dumps({k: list(v) for k, v in sorted(entries.items())}))
