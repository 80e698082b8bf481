"""Value types shared by the pipeline stages: what to mirror and where to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

RepoType = Literal["model", "dataset"]
REPO_TYPES: tuple[RepoType, ...] = ("model", "dataset")


@dataclass(frozen=True)
class RepoSpec:
    """One repo to mirror, as parsed from a list line or the command line."""

    repo_id: str
    repo_type: RepoType = "model"
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    preset: str | None = None
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
