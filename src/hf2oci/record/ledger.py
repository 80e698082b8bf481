"""The ledger, ``get_hf/mirrored.json``: every repo mirrored so far, written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hf2oci.errors import RecordError
from hf2oci.fsutil import atomic_write
from hf2oci.spec import REPO_TYPES, Mirrored, RepoType, plural

LEDGER_VERSION = 1
DEFAULT_LEDGER = "mirrored.json"
SECTIONS: Mapping[RepoType, str] = MappingProxyType({t: plural(t) for t in REPO_TYPES})


@dataclass(frozen=True)
class Ledger:
    """Every repo mirrored so far, by type and repo id; the source of the markdown pages."""

    models: Mapping[str, Mirrored] = field(default_factory=lambda: MappingProxyType({}))
    datasets: Mapping[str, Mirrored] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # read-only views, so a Ledger shared between callers cannot change under them
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "datasets", MappingProxyType(dict(self.datasets)))

    def section(self, repo_type: RepoType) -> Mapping[str, Mirrored]:
        return self.models if repo_type == "model" else self.datasets

    def entries(self, repo_type: RepoType) -> list[Mirrored]:
        """The entries of one type, sorted by repo id."""
        section = self.section(repo_type)
        return [section[key] for key in sorted(section)]

    def merge(self, results: Iterable[Mirrored]) -> Ledger:
        """A new ledger with ``results`` added; the newer mirror of a repo replaces the older."""
        merged: dict[RepoType, dict[str, Mirrored]] = {
            "model": dict(self.models),
            "dataset": dict(self.datasets),
        }
        for result in results:
            if result.repo_type not in merged:
                raise RecordError(f"{result.repo_id}: unknown repo type {result.repo_type!r}")
            section = merged[result.repo_type]
            old = section.get(result.repo_id)
            if old is None or _timestamp(old) <= _timestamp(result):
                section[result.repo_id] = result
        return Ledger(models=merged["model"], datasets=merged["dataset"])

    def lookup_tag(self, tag: str, *, repo_type: RepoType | None = None) -> Mirrored | None:
        """The entry that wrote ``tag`` (the way back from a shortened tag to its repo)."""
        for kind in (repo_type,) if repo_type else REPO_TYPES:
            for entry in self.entries(kind):
                if tag in entry.tags:
                    return entry
        return None

    def to_json(self) -> str:
        """Sorted keys, 2-space indent and a final newline, so that git diffs stay small."""
        doc = {
            "version": LEDGER_VERSION,
            **{
                SECTIONS[kind]: {e.repo_id: e.to_json() for e in self.entries(kind)}
                for kind in REPO_TYPES
            },
        }
        return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<ledger>") -> Ledger:
        """Parse a ledger; errors name ``source`` (and the line, for bad JSON)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{source}:{e.lineno}: not valid JSON: {e.msg}") from e
        if not isinstance(doc, dict):
            raise RecordError(f"{source}: expected a JSON object")
        if doc.get("version") != LEDGER_VERSION:
            raise RecordError(
                f"{source}: unsupported ledger version {doc.get('version')!r}"
                f" (this hf2oci reads version {LEDGER_VERSION})"
            )
        sections: dict[RepoType, dict[str, Mirrored]] = {}
        for kind in REPO_TYPES:
            raw = doc.get(SECTIONS[kind], {})
            if not isinstance(raw, dict):
                raise RecordError(f"{source}: {SECTIONS[kind]!r} must be an object")
            sections[kind] = {
                key: _entry(key, value, kind=kind, where=f"{source}: {SECTIONS[kind]}[{key!r}]")
                for key, value in raw.items()
            }
        return cls(models=sections["model"], datasets=sections["dataset"])


def _entry(key: str, value: object, *, kind: RepoType, where: str) -> Mirrored:
    entry = Mirrored.from_json(value, where=where)
    if entry.repo_id != key:
        raise RecordError(f"{where}: repo_id is {entry.repo_id!r}, not the key")
    if entry.repo_type != kind:
        raise RecordError(f"{where}: repo_type is {entry.repo_type!r}, expected {kind!r}")
    return entry


def _timestamp(entry: Mirrored) -> datetime:
    """When it was mirrored; an unreadable time sorts first, so any real mirror replaces it."""
    try:
        when = datetime.fromisoformat(entry.mirrored_at.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def load_ledger(path: Path) -> Ledger:
    """The ledger at ``path``; a missing file is an empty ledger."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Ledger()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"cannot read {path}: {e}") from e
    return Ledger.from_json(text, source=str(path))


def carried_records(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Each entry of the ledger at ``path`` as JSON by (repo type, repo id), for a bundle to
    carry to the other side; none when there is no ledger."""
    if not path.is_file():
        return {}
    ledger = load_ledger(path)
    return {(kind, e.repo_id): e.to_json() for kind in ("model", "dataset")
            for e in ledger.entries(kind)}  # fmt: skip


def save_ledger(ledger: Ledger, path: Path) -> None:
    """Write the ledger atomically: readers see the old file or the new one, never half."""
    _atomic_write(path, ledger.to_json())


def _atomic_write(path: Path, text: str, *, skip_if_same: bool = False) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, text, skip_if_same=skip_if_same)
    except OSError as e:
        raise RecordError(f"cannot write {path}: {e.strerror or e}") from e


def write_if_changed(path: Path, text: str) -> bool:
    return _atomic_write(path, text, skip_if_same=True)
