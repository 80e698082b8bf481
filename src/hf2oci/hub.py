"""The only module that talks to the Hugging Face Hub (through ``huggingface_hub``)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import (  # type: ignore[attr-defined]
    build_hf_headers,
    disable_progress_bars,
    enable_progress_bars,
    get_session,
    hf_raise_for_status,
)

from hf2oci import naming
from hf2oci.errors import (
    DigestMismatch,
    GatedRepo,
    Hf2ociError,
    HubError,
    HubUnreachable,
    RepoNotFound,
    RevisionNotFound,
)
from hf2oci.oci.retry import (
    RetryPolicy,
    Temporary,
    backoff,
    name_not_resolved,
    parse_retry_after,
    retrying,
)
from hf2oci.spec import RepoSpec, RepoType

log = logging.getLogger(__name__)

#: every hub request (metadata, small files, streamed files) is retried by this policy
HUB_POLICY = RetryPolicy()
T = TypeVar("T")


def endpoint() -> str:
    return naming.hub_endpoint()


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
        return naming.hub_url(self.repo_id, self.repo_type)

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
    info = _call(
        lambda: api.repo_info(
            spec.repo_id, repo_type=spec.repo_type, revision=revision, files_metadata=True
        ),
        spec,
        revision,
        what=f"{_what(spec)}: repo info",
    )
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
    """Download ``paths`` at ``state.commit`` into an HF cache, each file checked against the
    hub's hash and retried on its own by the retry policy; returns the snapshot folder."""

    def one(path: str) -> Path:
        def get() -> str:
            return str(
                hf_hub_download(
                    state.repo_id,
                    path,
                    repo_type=state.repo_type,
                    revision=state.commit,
                    cache_dir=cache_dir,
                    endpoint=endpoint(),
                )
            )

        local = Path(_call(get, state, state.commit, what=f"{_what(state)}: {path}"))
        verify_file(state, state.file(path), local)
        return local

    if not paths:
        return cache_dir
    with ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="hub") as pool:
        futures = [pool.submit(one, p) for p in paths]
        try:
            locals_ = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    # hf_hub_download gives snapshots/<commit>/<path>: the snapshot folder is above the first
    first = locals_[0]
    return Path(str(first)[: -len(paths[0])].rstrip("/"))


def verify_file(state: RepoState, file: HubFile, local: Path) -> None:
    """Check a downloaded file against the hub's size and hash (one read of the file)."""
    what = f"{_what(state)}: {file.path}"
    hasher = _Hasher(file)
    try:
        with open(local, "rb") as f:
            size = 0
            while chunk := f.read(1 << 20):
                size += len(chunk)
                hasher.update(chunk)
    except OSError as e:
        raise HubError(f"{what}: download incomplete ({e.strerror})") from e
    if size != file.size:
        raise DigestMismatch(f"{what}: {size} bytes downloaded, the hub says {file.size}")
    hasher.check(what)


# -- retries ---------------------------------------------------------------------------------

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _transient(exc: BaseException) -> Temporary | None:
    """``exc`` as a Temporary (with the hub's Retry-After) when another try may help."""
    if isinstance(exc, hf_errors.HfHubHTTPError):
        resp = exc.response
        status = resp.status_code if resp is not None else None
        if status in _RETRY_STATUSES:
            after = parse_retry_after(resp.headers.get("Retry-After") if resp is not None else None)
            return Temporary(f"HTTP {status}", retry_after=after)
        return None
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return None
    if name_not_resolved(exc):
        return None  # no retry makes a name resolve (an offline machine fails at once)
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return Temporary(f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, OSError) and "consistency check" in str(exc).lower():
        return Temporary(_first_line(exc))  # a download cut short, as huggingface_hub says it
    return None


def _call(fn: Callable[[], T], spec: RepoSpec | RepoState, revision: str, *, what: str) -> T:
    """Run one hub request (through huggingface_hub) under the retry policy; errors translated."""

    def once() -> T:
        try:
            return fn()
        except Exception as e:
            temporary = _transient(e)
            if temporary is not None:
                raise temporary from e
            raise

    try:
        return retrying(
            once, is_temporary=lambda e: isinstance(e, Temporary), what=what, policy=HUB_POLICY
        )
    except Temporary as e:
        cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
        raise _translate(cause, spec, revision) from cause
    except Hf2ociError:
        raise
    except Exception as e:
        raise _translate(e, spec, revision) from e


# -- streaming -------------------------------------------------------------------------------


class _Hasher:
    """What the hub says a file hashes to: sha256 (LFS) or the git blob sha1."""

    def __init__(self, file: HubFile) -> None:
        if file.sha256:
            self.expected = file.sha256
            self.h = hashlib.sha256()
        elif file.blob_id:
            self.expected = file.blob_id
            self.h = hashlib.sha1(b"blob %d\0" % file.size, usedforsecurity=False)
        else:
            raise HubError(f"the hub gave no hash for {file.path!r}: cannot verify it")

    def update(self, chunk: bytes) -> None:
        self.h.update(chunk)

    def check(self, what: str) -> None:
        got = self.h.hexdigest()
        if got != self.expected:
            raise DigestMismatch(f"{what}: content hashes to {got}, the hub says {self.expected}")


def iter_file(
    state: RepoState, file: HubFile, *, chunk_size: int = 1 << 20, policy: RetryPolicy = HUB_POLICY
) -> Iterator[bytes]:
    """Stream one file's bytes from the hub, in one pass and without touching the disk.

    A cut or failed download resumes where it stopped (HTTP Range), with jittered backoff. The
    bytes are hashed on the way; the last chunk is only given out once the hash matches the hub's
    (LFS sha256 or git blob sha1), so a consumer never completes a blob with wrong content.
    """
    what = f"{_what(state)}: {file.path}"
    url = hf_hub_url(
        state.repo_id,
        file.path,
        repo_type=state.repo_type,
        revision=state.commit,
        endpoint=endpoint(),
    )
    hasher = _Hasher(file)
    offset = 0
    pending = b""  # held back until the next chunk (or the hash check) says it may go

    def fetch() -> Iterator[bytes]:
        nonlocal offset
        headers = build_hf_headers()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with get_session().stream(
                "GET", url, headers=headers, follow_redirects=True, timeout=60.0
            ) as resp:
                if resp.status_code in _RETRY_STATUSES:
                    after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise Temporary(f"HTTP {resp.status_code}", retry_after=after)
                try:
                    hf_raise_for_status(resp)
                except Exception as e:
                    raise _translate(e, state, state.commit) from e
                if offset and resp.status_code != 206:
                    raise HubError(f"{what}: the hub ignored a resume request (Range)")
                for chunk in resp.iter_bytes(chunk_size):
                    offset += len(chunk)
                    yield chunk
        except (httpx2.TransportError, OSError) as e:
            raise Temporary(f"{type(e).__name__}: {_first_line(e)}") from e
        if offset < file.size:
            raise Temporary(f"connection closed at byte {offset} of {file.size}")

    # a generator cannot be re-run by a retry wrapper: each attempt resumes from ``offset``
    for attempt in itertools.count(1):
        try:
            for chunk in fetch():
                if offset > file.size:
                    raise HubError(f"{what}: the hub sent more than {file.size} bytes")
                hasher.update(chunk)
                if pending:
                    yield pending
                pending = chunk
            break
        except Temporary as e:
            if attempt >= policy.attempts:
                raise HubUnreachable(f"{what}: download failed after {attempt} tries: {e}") from e
            delay = backoff(policy, attempt, e.retry_after)
            log.info("%s: %s; resuming at byte %d in %.1fs", what, e, offset, delay)
            time.sleep(delay)
    hasher.check(what)
    if pending:
        yield pending


def file_source(state: RepoState, file: HubFile) -> Callable[[], Iterator[bytes]]:
    """A chunk source for a tar entry: each call streams the file anew from the hub."""
    return lambda: iter_file(state, file)


def file_hashes(files: Sequence[HubFile]) -> dict[str, str]:
    """The hub's hash of each file: ``sha256:…`` for LFS files, ``gitsha1:…`` for the others."""
    out = {}
    for f in files:
        if f.sha256:
            out[f.path] = f"sha256:{f.sha256}"
        elif f.blob_id:
            out[f.path] = f"gitsha1:{f.blob_id}"
    return out
