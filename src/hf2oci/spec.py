"""Value types shared by the pipeline stages: what to mirror and where to."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from hf2oci.errors import RecordError

RepoType = Literal["model", "dataset"]
REPO_TYPES: tuple[RepoType, ...] = ("model", "dataset")
#: what a repo becomes: the busybox image with /REPO, or a CNCF ModelPack artifact
Format = Literal["image", "modelpack"]
FORMATS: tuple[Format, ...] = ("image", "modelpack")
#: what a dangerous import in a pickle-based file does: fail the repo, be recorded, or nothing
#: is scanned
ScanPolicy = Literal["refuse", "warn", "off"]
SCAN_POLICIES: tuple[ScanPolicy, ...] = ("refuse", "warn", "off")
#: files the hub keeps in Xet: read through hf_xet ("auto") or over plain HTTP ("off")
XetMode = Literal["auto", "off"]
XET_MODES: tuple[XetMode, ...] = ("auto", "off")


def plural(repo_type: RepoType) -> str:
    """``models`` or ``datasets``: the hub's API paths, image repositories, list files, pages,
    the ledger's sections and the HF cache's folders all name a repo type so."""
    return f"{repo_type}s"


@dataclass(frozen=True)
class RepoSpec:
    """One repo to mirror, as parsed from a list line or the command line."""

    repo_id: str
    repo_type: RepoType = "model"
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    preset: str | None = None
    #: None: the configured format
    format: Format | None = None
    #: where the spec came from, e.g. ``get_hf/to_get_models.txt:8`` (for messages)
    origin: str = field(default="", compare=False)

    @property
    def filter_key(self) -> str:
        """A short stable hash of what selects the files (so a changed filter re-mirrors)."""
        doc = json.dumps(
            {"include": list(self.include), "exclude": list(self.exclude), "preset": self.preset},
            sort_keys=True,
        )
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        kind = "dataset " if self.repo_type == "dataset" else ""
        return f"{kind}{self.repo_id}{rev}"


@dataclass(frozen=True)
class Mirrored:
    """A successful mirror: what the record stage writes into the ledger."""

    repo_id: str
    repo_type: RepoType
    #: the hub commit sha that was mirrored
    revision: str
    #: the revision that was asked for ("main", a branch, a tag or a sha)
    requested_revision: str
    #: image repository without tag, e.g. "docker.io/hgfkeep/models" or "oci-images/hgfkeep/models"
    image: str
    #: tags written, the moving one first: ("org--name", "org--name--0123456789ab")
    tags: tuple[str, ...]
    digest: str
    #: bytes of the files under /REPO
    size: int
    file_count: int
    #: ISO 8601 UTC, e.g. "2026-11-23T14:00:00Z"
    mirrored_at: str
    #: "registry" (pushed) or "oci-layout" (written to disk)
    destination: str = "registry"
    builder: str = "oci"
    license: str | None = None
    format: Format = "image"
    #: what the pickle scan found (``clean (1 pickle file)``); None: no pickle-based files
    scan: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the ledger's entries, the workflow's result files)."""
        doc = dataclasses.asdict(self)
        doc["tags"] = list(self.tags)
        return doc

    @classmethod
    def from_json(cls, doc: object, *, where: str) -> Mirrored:
        """Parse ``to_json``'s output; unknown keys are dropped (a newer hf2oci's records still
        read). ``RecordError`` naming ``where`` when it is not one."""
        if not isinstance(doc, dict):
            raise RecordError(f"{where}: expected an object")
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in doc]
        if missing:
            raise RecordError(f"{where}: missing {', '.join(missing)}")
        known = {f.name: doc[f.name] for f in fields if f.name in doc}
        tags = known["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RecordError(f"{where}: tags must be a list of strings")
        known["tags"] = tuple(tags)
        try:
            return cls(**known)
        except TypeError as e:
            raise RecordError(f"{where}: {e}") from e
