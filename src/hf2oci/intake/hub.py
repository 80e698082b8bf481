"""The only module that talks to the Hugging Face Hub.

Metadata (what a revision resolves to: commit, files, hashes) is one GET of the Hub API, and
the tree listing (every file with its Xet hash) a GET per 1,000 files once an image is to be
made; small files are one GET each, large files a ``ResumableBody`` each (or one per part,
several at once): all over this thread's ``hub_session``, under the one retry policy.
huggingface_hub finds the token (``get_token``) and reads the hub's refusals
(``hf_raise_for_status``: its typed errors, mapped onto ours here), imported where they are
used. Its ``HfApi`` is not called: loading its client costs 0.2-0.3 s, on every run, where the
answer to one GET is all a no-change sync needs (benchmarks/RESULTS.md, "The hub's library").
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from hf2oci import naming
from hf2oci.digest import git_blob_hash
from hf2oci.errors import (
    DigestMismatch,
    GatedRepo,
    HubError,
    HubUnreachable,
    RepoNotFound,
    RevisionNotFound,
)
from hf2oci.http import ResumableBody, hub_session, read_exactly
from hf2oci.oci.transport import unreachable_reason
from hf2oci.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    Temporary,
    name_not_resolved,
    parse_retry_after,
    retrying,
)
from hf2oci.spec import RepoSpec, RepoType, plural

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: every hub request (metadata, small files, streamed files) is retried by this policy
HUB_POLICY = RetryPolicy()


def endpoint() -> str:
    return naming.hub_endpoint()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo at a commit, with what the hub says its bytes hash to."""

    path: str
    size: int
    #: sha256 of the content, for LFS files
    sha256: str | None = None
    #: git blob sha1 of the content (of the pointer file, for LFS files)
    blob_id: str | None = None
    #: the content's Xet hash, for files the hub stores in Xet (named by the tree listing)
    xet_hash: str | None = None


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
    #: ``files`` are repo info's, not yet the tree listing's: they carry no Xet hash, and from
    #: 1,000 files on some may be missing (``complete_listing`` reads the tree)
    partial: bool = False

    @property
    def url(self) -> str:
        return naming.hub_url(self.repo_id, self.repo_type)

    @functools.cached_property
    def _by_path(self) -> dict[str, HubFile]:
        return {f.path: f for f in self.files}

    def file(self, path: str) -> HubFile:
        return self._by_path[path]


def _what(spec: RepoSpec | RepoState) -> str:
    kind = "dataset" if spec.repo_type == "dataset" else "model"
    return f"{kind} {spec.repo_id}"


def _gated(what: str, has_token: bool) -> GatedRepo:
    """The one message for a gated repo: what to do depends on whether a token was sent."""
    hint = (
        "the token sent (HF_TOKEN or the token file) has no access: accept the terms on the "
        "hub with that account"
        if has_token
        else "accept its terms on the hub and set HF_TOKEN to a token with access"
    )
    return GatedRepo(f"{what} is gated: {hint}")


def _not_found(what: str, has_token: bool) -> RepoNotFound:
    """The one message for a repo the hub does not show: private ones need a token."""
    hint = "" if has_token else " (if it is private, set HF_TOKEN)"
    return RepoNotFound(f"{what} not found on {endpoint()}{hint}")


def _iso(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "1970-01-01T00:00:00Z"
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


def token() -> str | None:
    """The hub token as huggingface_hub finds it (``get_token``: ``HF_TOKEN``, else the token
    file), the token file located from the environment as it is now.

    huggingface_hub works out the file's place (``HF_TOKEN_PATH``, default ``$HF_HOME/token``)
    once, when it is imported; a process that sets ``HF_HOME`` or ``HF_TOKEN_PATH`` later (a
    test, a program calling hf2oci) would have it read another file. So the place is worked
    out here as huggingface_hub's ``constants`` do, and set there when it differs."""
    from huggingface_hub import constants, get_token  # lazily: CLI start-up time

    path = _token_file()
    if path != constants.HF_TOKEN_PATH:
        constants.HF_TOKEN_PATH = path
        constants.HF_STORED_TOKENS_PATH = os.path.join(os.path.dirname(path), "stored_tokens")
    return get_token()


def _token_file() -> str:
    """The token file's place as huggingface_hub's ``constants`` work it out, from the
    environment as it is now."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = os.path.expandvars(
        os.path.expanduser(os.environ.get("HF_HOME", os.path.join(cache, "huggingface")))
    )
    return os.path.expandvars(
        os.path.expanduser(os.environ.get("HF_TOKEN_PATH", os.path.join(home, "token")))
    )


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, when imported)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def fetch_state(spec: RepoSpec, *, complete: bool = True) -> RepoState:
    """Ask the hub what ``spec`` resolves to now: commit sha and files (one metadata request),
    then every file with its Xet hash from the tree listing (a request per 1,000 files),
    unless not ``complete``: then the state is ``partial``, its files repo info's.

    What a sync asks on every run, for every repo, is the one request: the plan reads the tree
    only for a repo whose image is to be made (``complete_listing``)."""
    revision = spec.revision or "main"
    what = _what(spec)
    url = f"{_api_url(spec)}/revision/{quote(revision, safe='')}"
    info, _ = _api_json(url, what, revision, params={"blobs": "true"})
    if not isinstance(info, dict):
        raise HubError(f"{what}: the hub's answer is not a JSON object")
    commit = info.get("sha")
    if not isinstance(commit, str) or not commit:
        raise HubError(f"{what}: the hub gave no commit for revision {revision!r}")
    files = []
    try:
        for sib in info.get("siblings") or []:
            lfs = sib.get("lfs") or None
            size = sib.get("size")
            size = size if size is not None else (lfs["size"] if lfs else 0)
            files.append(HubFile(path=_checked_path(sib["rfilename"], what), size=int(size),
                                 sha256=str(lfs["sha256"]) if lfs else None,
                                 blob_id=sib.get("blobId")))  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HubError(f"{what}: the hub's file list is malformed ({e!r})") from e
    card = info.get("cardData")
    state = RepoState(
        repo_id=spec.repo_id,
        repo_type=spec.repo_type,
        requested=revision,
        commit=commit,
        files=tuple(sorted(files, key=lambda f: f.path)),
        last_modified=_iso(info.get("lastModified")),
        license=_license(card if isinstance(card, dict) else None),
        partial=True,
    )
    return complete_listing(state) if complete else state


def complete_listing(state: RepoState) -> RepoState:
    """``state`` with every file and its Xet hash, from the tree listing when it is
    ``partial``."""
    if not state.partial:
        return state
    files = sorted(_tree_files(state), key=lambda f: f.path)
    return dataclasses.replace(state, files=tuple(files), partial=False)


def _tree_files(state: RepoState) -> list[HubFile]:
    """Every file of the commit from the recursive tree listing, following its ``Link:
    rel=next`` pages as huggingface_hub's ``list_repo_tree`` does, each page a request of its
    own under the retry policy (a failed page is asked for again, not the listing)."""
    what = _what(state)
    url: str | None = f"{_api_url(state)}/tree/{state.commit}"
    params: dict[str, str] | None = {"recursive": "true", "expand": "false"}
    files: list[HubFile] = []
    seen: set[str] = set()
    while url is not None:
        page, url = _api_json(url, what, state.commit, params=params)
        for entry in _file_entries(page, what, "tree listing"):
            file = _tree_file(entry, what)
            if file.path in seen:
                raise HubError(f"{what}: the hub's tree listing names {file.path!r} twice")
            seen.add(file.path)
            files.append(file)
        params = None  # the next page's URL holds them
    log.debug("%s: %d files from the tree listing", what, len(files))
    return files


def _tree_file(entry: dict[str, Any], what: str) -> HubFile:
    """A file entry of the tree listing as huggingface_hub's ``RepoFile`` reads it: ``oid``
    (git blob), ``lfs.oid`` (sha256), ``xetHash``. (``RepoFile`` itself comes with the
    library's whole API client: 0.1-0.25 s to load, for four fields.)"""
    try:
        lfs = entry.get("lfs") or None
        xet = entry.get("xetHash")
        return HubFile(path=_checked_path(entry["path"], what), size=int(entry["size"]),
                       sha256=str(lfs["oid"]) if lfs else None, blob_id=entry.get("oid"),
                       xet_hash=str(xet) if xet else None)  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HubError(f"{what}: the hub's tree listing is malformed ({e!r})") from e


def security_verdicts(state: RepoState, paths: Sequence[str]) -> dict[str, str]:
    """The hub's own scan verdict (``securityFileStatus.status``: "safe", "unsafe", …) of each
    of ``paths`` that it answers one for, from paths-info with ``expand`` (as
    huggingface_hub's ``get_paths_info`` asks), 100 paths a request."""
    url = f"{_api_url(state)}/paths-info/{state.commit}"
    what = _what(state)
    verdicts: dict[str, str] = {}
    for i in range(0, len(paths), 100):
        form = {"paths": list(paths[i : i + 100]), "expand": "true"}
        answer, _ = _api_json(url, what, state.commit, form=form, failed="paths-info failed")
        for entry in _file_entries(answer, what, "paths-info answer"):
            status = entry.get("securityFileStatus")
            status = status.get("status") if isinstance(status, dict) else None
            if isinstance(status, str) and isinstance(entry.get("path"), str):
                verdicts[entry["path"]] = status
    return verdicts


def _file_entries(answer: Any, what: str, name: str) -> list[dict[str, Any]]:
    """The file entries of a tree or paths-info answer (a JSON list)."""
    if not isinstance(answer, list):
        raise HubError(f"{what}: the hub's {name} is not a list")
    if not all(isinstance(e, dict) for e in answer):
        raise HubError(f"{what}: the hub's {name} is malformed (an entry is not an object)")
    return [e for e in answer if e.get("type") == "file"]


def _checked_path(path: Any, what: str) -> str:
    """A listed path, refused when it could escape the folder it is written to."""
    if not isinstance(path, str):
        raise HubError(f"{what}: the hub lists a file path that is not a string: {path!r}")
    _safe_parts(path, what)
    return path


def _api_url(spec: RepoSpec | RepoState) -> str:
    return f"{endpoint()}/api/{plural(spec.repo_type)}/{spec.repo_id}"


# -- requests --------------------------------------------------------------------------------


def _api_json(
    url: str,
    what: str,
    revision: str,
    *,
    params: Mapping[str, str] | None = None,
    form: Mapping[str, object] | None = None,
    failed: str | None = None,
) -> tuple[Any, str | None]:
    """A Hub API answer (any JSON; POST ``form``, when given) and the URL of its next page
    (``Link: rel="next"``), which must be on the hub: the token goes there too."""
    if _offline():
        raise HubUnreachable(f"{what}: HF_HUB_OFFLINE is set, cannot reach the hub")

    def read(resp: Any) -> tuple[Any, str | None]:
        if resp.status_code >= 400:
            raise _refusal(resp, what, revision)
        try:
            doc = resp.json()
        except ValueError as e:
            raise HubError(f"{what}: the hub's answer is not JSON") from e
        nxt = (resp.links.get("next") or {}).get("url")
        if nxt is not None and not str(nxt).startswith(f"{endpoint()}/"):
            raise HubError(f"{what}: the hub's next page is on another host ({nxt})")
        return doc, nxt

    failed = failed or f"cannot reach the hub at {endpoint()}"
    return _hub_get(url, what, read, params=params, form=form, failed=failed)


def _hub_get(
    url: str,
    what: str,
    read: Callable[[Any], _T],
    *,
    failed: str,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    form: Mapping[str, object] | None = None,
) -> _T:
    """GET ``url`` of the hub (POST ``form``, when given) under its retry policy and give the
    answer to ``read`` (which raises Temporary for a cut body, or the hub's error). Connection
    failures and 429/5xx answers are tried again (``Retry-After`` honoured); a name that does
    not resolve is not. The token goes to the hub only: ``requests`` drops it on a redirect to
    another host."""
    sent = _headers(headers)

    def once() -> _T:
        with _get(url, what, sent, params=params, form=form) as resp:
            try:
                return read(resp)
            except requests.RequestException as e:  # the body cut on the way
                raise Temporary(unreachable_reason(e)) from e

    try:
        return retrying(once, is_temporary=lambda e: isinstance(e, Temporary), what=what,
                        policy=HUB_POLICY)  # fmt: skip
    except Temporary as e:
        raise HubUnreachable(f"{what}: {failed}: {e}") from e


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every hub request sends: who asks, and the token (``requests`` drops it on a
    redirect to another host, such as a CDN or Xet bridge)."""
    sent = {"user-agent": f"hf2oci/{_version()}", **(extra or {})}
    secret = token()
    if secret:
        sent["authorization"] = f"Bearer {secret}"
    return sent


def _get(
    url: str,
    what: str,
    headers: Mapping[str, str],
    *,
    params: Mapping[str, str] | None = None,
    form: Mapping[str, object] | None = None,
) -> Any:
    """One GET (POST of ``form``) of the hub, streamed: Temporary for a connection failure or a
    429/5xx answer (with its Retry-After), HubUnreachable for a name that does not resolve."""
    method = "POST" if form is not None else "GET"
    try:
        resp = hub_session().request(method, url, params=params, data=form, headers=headers,
                                     timeout=(10, 60), stream=True)  # fmt: skip
    except requests.RequestException as e:
        if name_not_resolved(e):
            raise HubUnreachable(
                f"{what}: cannot reach the hub at {endpoint()}: {unreachable_reason(e)}"
            ) from e
        raise Temporary(unreachable_reason(e)) from e
    if resp.status_code in RETRY_STATUSES:
        resp.close()
        after = parse_retry_after(resp.headers.get("Retry-After"))
        raise Temporary(f"the hub answered HTTP {resp.status_code}", retry_after=after)
    return resp


def _refusal(resp: Any, what: str, revision: str, *, path: str | None = None) -> HubError:
    """The hub's refusal as ours: huggingface_hub reads the answer (``hf_raise_for_status``,
    ``X-Error-Code`` first, as for its own requests: it is handed the status, headers and URL)
    and its typed error is mapped onto ours. ``path``: a file's answer, whose plain 404 says
    the file is missing."""
    import httpx2  # lazily: CLI start-up time (what huggingface_hub reads answers with)
    from huggingface_hub import errors, hf_raise_for_status

    body = ("content-length", "content-encoding", "transfer-encoding")  # of a body not handed on
    kept = {k: v for k, v in resp.headers.items() if k.lower() not in body}
    request = httpx2.Request(resp.request.method if resp.request else "GET", str(resp.url))
    status = resp.status_code
    try:
        hf_raise_for_status(httpx2.Response(status, headers=kept, request=request))
    except errors.HfHubHTTPError as e:
        has_token = token() is not None
        if isinstance(e, errors.GatedRepoError):  # before RepositoryNotFoundError: a subclass
            return _gated(what, has_token)
        if isinstance(e, errors.RepositoryNotFoundError):
            return _not_found(what, has_token)
        if isinstance(e, errors.RevisionNotFoundError):
            return RevisionNotFound(f"{what}: revision {revision!r} not found")
        if path is not None and (isinstance(e, errors.EntryNotFoundError) or status == 404):
            return HubError(f"{what}@{revision}: a listed file is missing on the hub ({path})")
    detail = resp.headers.get("X-Error-Message") or resp.reason or ""
    return HubError(f"{what}: the hub answered HTTP {status}: {detail}".rstrip(": "))


def _version() -> str:
    from hf2oci import __version__

    return __version__


def download(
    state: RepoState, paths: Sequence[str], *, cache_dir: Path, max_workers: int = 8
) -> Path:
    """Download ``paths`` at ``state.commit`` into ``cache_dir``/files (plain files at their
    repo paths), several at once; each is checked against the hub's hash and retried on its
    own by the retry policy. Returns that folder.

    One GET per file on a kept-alive connection, not huggingface_hub's per-file HEAD, locks
    and cache links: thousands of small files cost seconds, not minutes.
    """
    root = cache_dir / "files"
    root.mkdir(parents=True, exist_ok=True)
    if not paths:
        return root
    with ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="hub") as pool:
        futures = [pool.submit(_get_file, state, state.file(p), root) for p in paths]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return root


def _safe_parts(path: str, what: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise HubError(f"{what}: the hub lists a file path that could escape: {path!r}")
    return parts


def _get_file(state: RepoState, file: HubFile, root: Path) -> None:
    """GET one file into ``root`` (under the retry policy), hash-checked, then renamed in."""
    what = f"{_what(state)}: {file.path}"
    target = root.joinpath(*_safe_parts(file.path, _what(state)))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")

    def save(resp: Any) -> None:
        hasher, size = _Hasher(file), 0
        try:
            with open(tmp, "wb") as out:
                for chunk in resp.iter_content(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if size != file.size:
                if size < file.size:  # a cut body: try again
                    raise Temporary(f"connection closed at byte {size} of {file.size}")
                raise DigestMismatch(f"{what}: {size} bytes downloaded, the hub says {file.size}")
            hasher.check(what)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)

    _resolve(state, file, save, failed="download failed")


def read_range(state: RepoState, file: HubFile, start: int, length: int) -> bytes:
    """``length`` bytes of a file from ``start`` (fewer at its end): one Range GET, for
    reading a header without downloading the file. Unchecked: no hash covers a part."""
    length = max(0, min(length, file.size - start))
    if length == 0:
        return b""

    def read(resp: Any) -> bytes:
        skip = start if resp.status_code == 200 else 0  # Range ignored: the whole file
        data = bytearray()
        for chunk in resp.iter_content(1 << 20):
            data += chunk
            if len(data) >= skip + length:
                break
        got = bytes(data[skip : skip + length])
        if len(got) < length:
            raise Temporary(f"range read ended at {len(got)} of {length} bytes")
        return got

    rng = {"range": f"bytes={start}-{start + length - 1}"}
    return _resolve(state, file, read, headers=rng, failed="range read failed")


@dataclass(frozen=True)
class RangedFile:
    """A hub file read in parts, for ``RangeReader`` (a file's header without the file)."""

    state: RepoState
    file: HubFile

    @property
    def size(self) -> int:
        return self.file.size

    def read_range(self, start: int, length: int) -> bytes:
        return read_range(self.state, self.file, start, length)


def _resolve(
    state: RepoState,
    file: HubFile,
    body: Callable[[Any], _T],
    *,
    headers: Mapping[str, str] | None = None,
    failed: str,
) -> _T:
    """GET a file's ``resolve`` URL (``_hub_get``) and give the answer to ``body``."""
    url = _resolve_url(state, file)

    def read(resp: Any) -> _T:
        if resp.status_code >= 400:
            raise _file_error(resp, state, file.path)
        return body(resp)

    sent = {"accept-encoding": "identity", **(headers or {})}
    return _hub_get(url, f"{_what(state)}: {file.path}", read, headers=sent, failed=failed)


def _file_headers() -> dict[str, str]:
    """What a file request sends: the file's bytes as stored, not compressed on the way."""
    return _headers({"accept-encoding": "identity"})


def _resolve_url(state: RepoState, file: HubFile) -> str:
    repo = naming.hub_path(state.repo_id, state.repo_type)
    return f"{endpoint()}/{repo}/resolve/{state.commit}/{quote(file.path, safe='/')}"


def _file_error(resp: Any, state: RepoState, path: str) -> HubError:
    """A file answer's refusal as ours (``_refusal``)."""
    return _refusal(resp, _what(state), state.commit, path=path)


# -- streaming -------------------------------------------------------------------------------


class _Hasher:
    """What the hub says a file hashes to: sha256 (LFS) or the git blob sha1. ``background``:
    hashed in a thread of its own, beside the layer's digest in the consumer's (two cores do
    both at once; at most ``AHEAD`` chunks wait for it)."""

    AHEAD = 1

    def __init__(self, file: HubFile, *, background: bool = False) -> None:
        if file.sha256:
            self.expected = file.sha256
            self.h = hashlib.sha256()
        elif file.blob_id:
            self.expected = file.blob_id
            self.h = git_blob_hash(file.size)
        else:
            raise HubError(f"the hub gave no hash for {file.path!r}: cannot verify it")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hub-hash") if background else None
        self._queued: collections.deque[Future[None]] = collections.deque()

    def update(self, chunk: bytes) -> None:
        if self._pool is None:
            self.h.update(chunk)
            return
        self._queued.append(self._pool.submit(self.h.update, chunk))
        while len(self._queued) > self.AHEAD:
            self._queued.popleft().result()

    def check(self, what: str) -> None:
        while self._queued:
            self._queued.popleft().result()
        got = self.h.hexdigest()
        if got != self.expected:
            raise DigestMismatch(f"{what}: content hashes to {got}, the hub says {self.expected}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


#: files from this size on are fetched over several connections at once, in parts of
#: ``PART_SIZE`` (a hub or CDN may cap each connection's speed)
PARALLEL_MIN_SIZE = 64 << 20
PART_SIZE = 4 << 20
#: the part buffers of all files streamed at once: a file takes up to ``connections + 1`` of
#: them while they last, and 2 when they do not (never waiting), so memory stays bounded
PART_BUDGET = 24 << 20
#: a part is given out in copies of this size (its buffer is used again for the next part)
PIECE = 1 << 20
_budget = {"left": PART_BUDGET}
_budget_lock = threading.Lock()
DEFAULT_CONNECTIONS = 6


def connections() -> int:
    """Connections per large file: ``HF2OCI_HUB_CONNECTIONS``, else 6."""
    try:
        return max(1, int(os.environ.get("HF2OCI_HUB_CONNECTIONS", DEFAULT_CONNECTIONS)))
    except ValueError:
        return DEFAULT_CONNECTIONS


def iter_file(
    state: RepoState,
    file: HubFile,
    *,
    chunk_size: int = 1 << 20,
    policy: RetryPolicy = HUB_POLICY,
    parallel: int | None = None,
) -> Iterator[bytes]:
    """Stream one file's bytes from the hub, in order, without touching the disk.

    A large file is fetched as ``parallel`` (default: ``connections()``) Range requests at
    once, each a part given out in order. A cut or failed download resumes where it stopped
    (HTTP Range), with jittered backoff. The bytes are hashed on the way; the last chunk is only
    given out once the hash matches the hub's (LFS sha256 or git blob sha1), so a consumer never
    completes a blob with wrong content.
    """
    what = f"{_what(state)}: {file.path}"
    n = connections() if parallel is None else parallel
    if n > 1 and file.size >= PARALLEL_MIN_SIZE:
        chunks = _parts(state, file, n, policy)
    else:
        chunks = _serial(_body(state, file, policy=policy), chunk_size)
    hasher = _Hasher(file, background=file.size >= PARALLEL_MIN_SIZE)
    pending = b""  # held back until the next chunk (or the hash check) says it may go
    received = 0
    try:
        for chunk in chunks:
            received += len(chunk)
            if received > file.size:
                raise HubError(f"{what}: the hub sent more than {file.size} bytes")
            hasher.update(chunk)
            if pending:
                yield pending
            pending = chunk
        hasher.check(what)
    finally:
        hasher.close()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if pending:
        yield pending


def _serial(body: ResumableBody, chunk_size: int) -> Iterator[bytes]:
    """The body's bytes in chunks of ``chunk_size`` (the last one shorter)."""
    with body:
        while True:
            chunk = bytearray(chunk_size)
            n = read_exactly(body, chunk)
            if not n:
                return
            yield chunk if n == chunk_size else chunk[:n]  # type: ignore[misc]


def _parts(
    state: RepoState,
    file: HubFile,
    n: int,
    policy: RetryPolicy,
    *,
    first: int = 0,
    stop: int | None = None,
) -> Iterator[bytes]:
    """The file's bytes ``[first, stop)`` in order, as parts fetched by ``n`` connections at
    once (n + 1 parts ahead
    while ``PART_BUDGET`` lasts: the next ones to give out are fetched while the consumer is
    slower or a part lags).

    The part buffers are made once and handed on: each part read is copied out to its
    consumer and its buffer goes to the next part's fetch, so memory stays at those buffers
    (fresh buffers per part, freed in other threads, grew glibc's arenas by ~25 MiB a file)."""
    what = f"{_what(state)}: {file.path}"
    last = file.size if stop is None else stop
    starts = iter(range(first, last, PART_SIZE))
    stopped = threading.Event()
    headers = _file_headers()  # read once: the token may come from a file

    def fetch(start: int, buffer: bytearray) -> tuple[bytearray, int]:
        end = min(start + PART_SIZE, last)
        view = memoryview(buffer)[: end - start]
        with _body(state, file, start=start, end=end, policy=policy, headers=headers) as body:
            got = 0
            while got < len(view):
                if stopped.is_set():
                    raise HubError(f"{what}: download stopped")
                got += body.readinto(view[got : got + (256 << 10)])
        return buffer, len(view)

    with _budget_lock:  # the window: n + 1 parts ahead while the budget lasts, else 2
        window = max(2, min(n + 1, _budget["left"] // PART_SIZE))
        _budget["left"] -= window * PART_SIZE
    try:
        with ThreadPoolExecutor(min(n, window), thread_name_prefix="hub-part") as pool:
            ahead: collections.deque[Future[tuple[bytearray, int]]] = collections.deque(
                pool.submit(fetch, start, bytearray(PART_SIZE))
                for start in itertools.islice(starts, window)
            )
            try:
                while ahead:
                    buffer, length = ahead.popleft().result()
                    view = memoryview(buffer)
                    for at in range(0, length, PIECE):  # each piece copied out in turn; once
                        piece = bytes(view[at : min(at + PIECE, length)])
                        if at + PIECE >= length:  # the last one is, the buffer goes on
                            nxt = next(starts, None)
                            if nxt is not None:
                                ahead.append(pool.submit(fetch, nxt, buffer))
                        yield piece
            finally:
                stopped.set()
                for future in ahead:
                    future.cancel()
    finally:  # once the pool has finished with the buffers
        with _budget_lock:
            _budget["left"] += window * PART_SIZE


def _body(
    state: RepoState,
    file: HubFile,
    *,
    start: int = 0,
    end: int | None = None,
    policy: RetryPolicy = HUB_POLICY,
    headers: Mapping[str, str] | None = None,
) -> ResumableBody:
    """A file's bytes ``[start, end)`` from its ``resolve`` URL, resumed where a cut stops it
    (``headers``: ``_file_headers()``, when the caller has them already)."""
    what = f"{_what(state)}: {file.path}"
    stop = file.size if end is None else end
    url, headers = _resolve_url(state, file), headers or _file_headers()

    def open_at(offset: int) -> Any:
        sent = dict(headers)
        if offset or stop < file.size:
            sent["range"] = f"bytes={offset}-{stop - 1}"
        resp = _get(url, what, sent)
        if resp.status_code >= 400:
            error = _file_error(resp, state, file.path)
            resp.close()
            raise error
        return resp

    def gave_up(e: BaseException, offset: int) -> HubUnreachable:
        return HubUnreachable(f"{what}: download failed: {e}")

    return ResumableBody(open_at, what=what, start=start, end=stop, policy=policy, gave_up=gave_up)


def file_source(state: RepoState, file: HubFile) -> Callable[[], Iterator[bytes]]:
    """A chunk source for a tar entry: each call streams the file anew from the hub."""
    return lambda: iter_file(state, file)


def range_source(state: RepoState, file: HubFile) -> Callable[[int, int], Iterator[bytes]]:
    """Reads a file's bytes ``[start, end)`` from the hub, unchecked (the caller checks them
    with the rest of the file: the parts of a file carried in parts), several connections at
    once for a large range."""

    def read(start: int, end: int) -> Iterator[bytes]:
        n = connections()
        if n > 1 and end - start >= PARALLEL_MIN_SIZE:
            return _parts(state, file, n, HUB_POLICY, first=start, stop=end)
        return _serial(_body(state, file, start=start, end=end), 1 << 20)

    return read
