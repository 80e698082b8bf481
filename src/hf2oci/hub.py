"""The only module that talks to the Hugging Face Hub (through ``huggingface_hub``)."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import (  # type: ignore[attr-defined]
    disable_progress_bars,
    enable_progress_bars,
)

from hf2oci.errors import (
    GatedRepo,
    HubError,
    HubUnreachable,
    RepoNotFound,
    RevisionNotFound,
)
from hf2oci.spec import RepoSpec, RepoType

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
T = TypeVar("T")


def endpoint() -> str:
    """The hub URL, read from ``HF_ENDPOINT`` at call time (huggingface_hub reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_url(repo_id: str, repo_type: RepoType, *, base: str | None = None) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{base or endpoint()}/{prefix}{repo_id}"


def set_progress_bars(enabled: bool) -> None:
    """Turn huggingface_hub's own download progress bars on or off."""
    if enabled:
        enable_progress_bars()
    else:
        disable_progress_bars()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo at a commit, with what the hub says its bytes hash to."""

    path: str
    size: int
    #: sha256 of the content, for LFS files
    sha256: str | None = None
    #: git blob sha1 of the content (of the pointer file, for LFS files)
    blob_id: str | None = None


@dataclass(frozen=True)
class RepoState:
    """A repo as the hub has it now at the requested revision."""

    repo_id: str
    repo_type: RepoType
    #: what was asked for ("main", a branch, a tag, a sha)
    requested: str
    #: the commit sha that revision resolves to
    commit: str
    files: tuple[HubFile, ...]
    #: ISO 8601 UTC time of the commit (used as the image's creation time: reproducible)
    last_modified: str
    license: str | None = None
    gated: bool = False

    @property
    def url(self) -> str:
        return repo_url(self.repo_id, self.repo_type)

    def file(self, path: str) -> HubFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def _what(spec: RepoSpec | RepoState) -> str:
    kind = "dataset" if spec.repo_type == "dataset" else "model"
    return f"{kind} {spec.repo_id}"


def _translate(exc: Exception, spec: RepoSpec | RepoState, revision: str) -> HubError:
    """Map huggingface_hub's exceptions onto ours, with a one-line message that says what to do."""
    what = _what(spec)
    has_token = bool(os.environ.get("HF_TOKEN"))
    if isinstance(exc, hf_errors.GatedRepoError):
        hint = (
            "the token in HF_TOKEN has no access: accept the terms on the hub with that account"
            if has_token
            else "accept its terms on the hub and set HF_TOKEN to a token with access"
        )
        return GatedRepo(f"{what} is gated: {hint}")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        hint = "" if has_token else " (if it is private, set HF_TOKEN)"
        return RepoNotFound(f"{what} not found on {endpoint()}{hint}")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RevisionNotFound(f"{what}: revision {revision!r} not found")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return HubError(f"{what}@{revision}: a listed file is missing on the hub ({exc})")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubUnreachable(f"{what}: HF_HUB_OFFLINE is set, cannot reach the hub")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return HubError(f"{what}: the hub answered HTTP {status}: {_first_line(exc)}")
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        return HubUnreachable(f"{what}: cannot reach the hub at {endpoint()}: {_first_line(exc)}")
    return HubError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return str(value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return "1970-01-01T00:00:00Z"


def _license(card_data: Any) -> str | None:
    if card_data is None:
        return None
    value = card_data.get("license") if hasattr(card_data, "get") else None
    if isinstance(value, list):
        value = " AND ".join(str(v) for v in value)
    return str(value) if value else None


def fetch_state(spec: RepoSpec) -> RepoState:
    """Ask the hub what ``spec`` resolves to now: commit sha and files (metadata calls only)."""
    revision = spec.revision or "main"
    api = HfApi(endpoint=endpoint())
    try:
        info = api.repo_info(
            spec.repo_id, repo_type=spec.repo_type, revision=revision, files_metadata=True
        )
    except Exception as exc:
        raise _translate(exc, spec, revision) from exc
    if not info.sha:
        raise HubError(f"{_what(spec)}: the hub gave no commit for revision {revision!r}")
    files = []
    for sib in getattr(info, "siblings", None) or ():
        lfs = sib.lfs
        files.append(
            HubFile(
                path=sib.rfilename,
                size=int(sib.size if sib.size is not None else (lfs.size if lfs else 0)),
                sha256=lfs.sha256 if lfs else None,
                blob_id=sib.blob_id,
            )
        )
    return RepoState(
        repo_id=spec.repo_id,
        repo_type=spec.repo_type,
        requested=revision,
        commit=info.sha,
        files=tuple(sorted(files, key=lambda f: f.path)),
        last_modified=_iso(getattr(info, "last_modified", None)),
        license=_license(getattr(info, "card_data", None)),
        gated=bool(getattr(info, "gated", False)),
    )


def download(
    state: RepoState, paths: Sequence[str], *, cache_dir: Path, max_workers: int = 8
) -> Path:
    """Download ``paths`` at ``state.commit`` into an HF cache; returns the snapshot folder."""
    # Exact names, escaped: a file called "a[1].txt" must not be read as a glob.
    patterns = [glob.escape(p) for p in paths]
    try:
        folder = snapshot_download(
            state.repo_id,
            repo_type=state.repo_type,
            revision=state.commit,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            max_workers=max_workers,
            endpoint=endpoint(),
        )
    except Exception as exc:
        raise _translate(exc, state, state.commit) from exc
    root = Path(folder)
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise HubError(f"{_what(state)}: download incomplete, missing {missing[0]!r}")
    return root
