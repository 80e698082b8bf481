"""The only module that talks to the Hugging Face Hub.

Metadata (what a revision resolves to: commit, files, hashes) is one GET of the Hub API, so a
no-change run never loads ``huggingface_hub``; files are downloaded through it (small files) or
streamed over its HTTP client (large files). Every request goes through the one retry policy.
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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

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
from hf2oci.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    Temporary,
    backoff,
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
    #: the repo info named 1,000 files or more and the tree listing was not read yet: ``files``
    #: may miss some (``complete_listing`` reads them all)
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


def _translate(exc: Exception, spec: RepoSpec | RepoState, revision: str) -> HubError:
    """Map huggingface_hub's exceptions onto ours, with a one-line message that says what to do."""
    from huggingface_hub import errors as hf_errors

    what = _what(spec)
    has_token = token() is not None
    if isinstance(exc, hf_errors.GatedRepoError):
        return _gated(what, has_token)
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return _not_found(what, has_token)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RevisionNotFound(f"{what}: revision {revision!r} not found")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return HubError(f"{what}@{revision}: a listed file is missing on the hub ({exc})")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubUnreachable(f"{what}: HF_HUB_OFFLINE is set, cannot reach the hub")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return HubError(f"{what}: the hub answered HTTP {status}: {_first_line(exc)}")
    if isinstance(exc, OSError) or "httpx" in type(exc).__module__:
        return HubUnreachable(f"{what}: cannot reach the hub at {endpoint()}: {_first_line(exc)}")
    return HubError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    """The hub token as huggingface_hub finds it: ``HF_TOKEN``, else the token file
    (``HF_TOKEN_PATH``, default ``$HF_HOME/token``)."""
    found = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if found:
        return found.strip() or None
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


#: from this many files on, repo info's list of files may be cut short (huggingface_hub's
#: snapshot_download trusts it below 1,000 too): the paginated tree listing is read instead
LARGE_REPO_FILES = 1000


def fetch_state(spec: RepoSpec, *, complete: bool = True) -> RepoState:
    """Ask the hub what ``spec`` resolves to now: commit sha and files (one metadata request;
    for a repo of 1,000 files or more, the tree listing too, page by page, unless not
    ``complete``: then the state is ``partial``)."""
    revision = spec.revision or "main"
    what = _what(spec)
    if _offline():
        raise HubUnreachable(f"{what}: HF_HUB_OFFLINE is set, cannot reach the hub")
    kind = plural(spec.repo_type)
    url = f"{endpoint()}/api/{kind}/{spec.repo_id}/revision/{quote(revision, safe='')}"
    info = _api_get(url, spec, revision, params={"blobs": "true"})
    commit = info.get("sha")
    if not isinstance(commit, str) or not commit:
        raise HubError(f"{what}: the hub gave no commit for revision {revision!r}")
    siblings = info.get("siblings") or []
    big = isinstance(siblings, list) and len(siblings) >= LARGE_REPO_FILES
    if big and complete:
        return _with_files(spec, revision, info, commit, _tree_files(spec, kind, commit))
    files = []
    try:
        for sib in siblings:
            lfs = sib.get("lfs") or None
            size = sib.get("size")
            files.append(
                HubFile(
                    path=str(sib["rfilename"]),
                    size=int(size if size is not None else (lfs["size"] if lfs else 0)),
                    sha256=str(lfs["sha256"]) if lfs else None,
                    blob_id=sib.get("blobId"),
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HubError(f"{what}: the hub's file list is malformed ({e})") from e
    return dataclasses.replace(_with_files(spec, revision, info, commit, files), partial=big)


def complete_listing(state: RepoState) -> RepoState:
    """``state`` with every file, from the tree listing when it is ``partial``."""
    if not state.partial:
        return state
    kind = plural(state.repo_type)
    spec = RepoSpec(state.repo_id, state.repo_type, state.requested)
    files = sorted(_tree_files(spec, kind, state.commit), key=lambda f: f.path)
    return dataclasses.replace(state, files=tuple(files), partial=False)


def _with_files(
    spec: RepoSpec, revision: str, info: dict[str, Any], commit: str, files: list[HubFile]
) -> RepoState:
    card = info.get("cardData")
    return RepoState(
        repo_id=spec.repo_id,
        repo_type=spec.repo_type,
        requested=revision,
        commit=commit,
        files=tuple(sorted(files, key=lambda f: f.path)),
        last_modified=_iso(info.get("lastModified")),
        license=_license(card if isinstance(card, dict) else None),
    )


def _tree_files(spec: RepoSpec, kind: str, commit: str) -> list[HubFile]:
    """Every file of the commit from the recursive tree listing, following its ``Link: rel=next``
    pages as huggingface_hub's ``list_repo_tree`` does."""
    what = _what(spec)
    url: str | None = f"{endpoint()}/api/{kind}/{spec.repo_id}/tree/{commit}"
    params: dict[str, str] = {"recursive": "true", "expand": "false"}
    files: list[HubFile] = []
    seen: set[str] = set()
    while url is not None:
        page, link = _api_page(url, spec, commit, params=params)
        if not isinstance(page, list):
            raise HubError(f"{what}: the hub's tree listing is not a list")
        try:
            for entry in page:
                if entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs") or None
                path = str(entry["path"])
                if path in seen:
                    raise HubError(f"{what}: the hub's tree listing names {path!r} twice")
                seen.add(path)
                files.append(
                    HubFile(
                        path=path,
                        size=int(entry["size"]),
                        sha256=str(lfs["oid"]) if lfs else None,
                        blob_id=entry.get("oid"),
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HubError(f"{what}: the hub's tree listing is malformed ({e})") from e
        url, params = link, {}
    log.debug("%s: %d files from the tree listing", what, len(files))
    return files


_session_lock = threading.Lock()
_sessions: dict[int, Any] = {}


def _http() -> Any:
    """One ``requests`` session per thread (connections kept alive between repos)."""
    import requests

    key = threading.get_ident()
    with _session_lock:
        if key not in _sessions:
            _sessions[key] = requests.Session()
        return _sessions[key]


def _api_get(url: str, spec: RepoSpec, revision: str, *, params: dict[str, str]) -> dict[str, Any]:
    """GET a Hub API document under the retry policy; hub errors become ours."""
    doc, _ = _api_page(url, spec, revision, params=params)
    if not isinstance(doc, dict):
        raise HubError(f"{_what(spec)}: the hub's answer is not a JSON object")
    return doc


def _api_page(
    url: str, spec: RepoSpec, revision: str, *, params: dict[str, str]
) -> tuple[Any, str | None]:
    """A Hub API answer (any JSON) and the URL of its next page (``Link: rel="next"``)."""
    what = _what(spec)

    def read(resp: Any) -> tuple[Any, str | None]:
        if resp.status_code >= 400:
            raise _api_error(resp, spec, revision)
        try:
            doc = resp.json()
        except ValueError as e:
            raise HubError(f"{what}: the hub's answer is not JSON") from e
        nxt = (resp.links.get("next") or {}).get("url")
        if nxt is not None and not str(nxt).startswith(f"{endpoint()}/"):
            raise HubError(f"{what}: the hub's next page is on another host ({nxt})")
        return doc, nxt

    return _hub_get(url, what, read, params=params, failed=f"cannot reach the hub at {endpoint()}")


def _hub_get(
    url: str,
    what: str,
    read: Callable[[Any], _T],
    *,
    failed: str,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> _T:
    """GET ``url`` of the hub under its retry policy and give the answer to ``read`` (which
    raises Temporary for a cut body, or the hub's error). Connection failures and 429/5xx
    answers are tried again (``Retry-After`` honoured); a name that does not resolve is not.
    The token goes to the hub only: ``requests`` drops it on a redirect to another host."""
    import requests

    from hf2oci.oci.transport import unreachable_reason

    sent = {"user-agent": f"hf2oci/{_version()}", **(headers or {})}
    secret = token()
    if secret:
        sent["authorization"] = f"Bearer {secret}"

    def once() -> _T:
        try:
            with _http().get(
                url, params=params, headers=sent, timeout=(10, 60), stream=True
            ) as resp:
                if resp.status_code in RETRY_STATUSES:
                    after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise Temporary(f"the hub answered HTTP {resp.status_code}", retry_after=after)
                return read(resp)
        except requests.RequestException as e:
            if name_not_resolved(e):
                raise HubUnreachable(
                    f"{what}: cannot reach the hub at {endpoint()}: {unreachable_reason(e)}"
                ) from e
            raise Temporary(unreachable_reason(e)) from e

    try:
        return retrying(once, is_temporary=lambda e: isinstance(e, Temporary), what=what,
                        policy=HUB_POLICY)  # fmt: skip
    except Temporary as e:
        raise HubUnreachable(f"{what}: {failed}: {e}") from e


def _api_error(resp: Any, spec: RepoSpec, revision: str) -> HubError:
    """The hub's error as ours, read as huggingface_hub reads it (``X-Error-Code`` first)."""
    what = _what(spec)
    code = resp.headers.get("X-Error-Code", "")
    message = resp.headers.get("X-Error-Message", "")
    has_token = token() is not None
    if code == "GatedRepo":
        return _gated(what, has_token)
    if code == "RevisionNotFound":
        return RevisionNotFound(f"{what}: revision {revision!r} not found")
    if code == "RepoNotFound" or (
        resp.status_code == 401 and message != "Invalid credentials in Authorization header"
    ):
        return _not_found(what, has_token)
    detail = message or resp.reason or ""
    return HubError(f"{what}: the hub answered HTTP {resp.status_code}: {detail}".rstrip(": "))


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
    repo = naming.hub_path(state.repo_id, state.repo_type)
    url = f"{endpoint()}/{repo}/resolve/{state.commit}/{quote(file.path, safe='/')}"

    def read(resp: Any) -> _T:
        if resp.status_code >= 400:
            raise _file_error(resp, state, file.path)
        return body(resp)

    sent = {"accept-encoding": "identity", **(headers or {})}
    return _hub_get(url, f"{_what(state)}: {file.path}", read, headers=sent, failed=failed)


def _file_error(resp: Any, state: RepoState, path: str) -> HubError:
    """A file request's error as ours (``X-Error-Code`` first, as huggingface_hub reads it)."""
    if resp.headers.get("X-Error-Code") == "EntryNotFound" or (
        resp.status_code == 404 and not (resp.headers.get("X-Error-Code"))
    ):
        return HubError(f"{_what(state)}@{state.commit}: a listed file is missing on the hub "
                        f"({path})")  # fmt: skip
    spec = RepoSpec(state.repo_id, state.repo_type, state.commit)
    return _api_error(resp, spec, state.commit)


# -- streaming -------------------------------------------------------------------------------


class _Hasher:
    """What the hub says a file hashes to: sha256 (LFS) or the git blob sha1."""

    def __init__(self, file: HubFile) -> None:
        if file.sha256:
            self.expected = file.sha256
            self.h = hashlib.sha256()
        elif file.blob_id:
            self.expected = file.blob_id
            self.h = git_blob_hash(file.size)
        else:
            raise HubError(f"the hub gave no hash for {file.path!r}: cannot verify it")

    def update(self, chunk: bytes) -> None:
        self.h.update(chunk)

    def check(self, what: str) -> None:
        got = self.h.hexdigest()
        if got != self.expected:
            raise DigestMismatch(f"{what}: content hashes to {got}, the hub says {self.expected}")


#: files from this size on are fetched over several connections at once, in parts of
#: ``PART_SIZE`` (a hub or CDN may cap each connection's speed); at most ``connections + 1``
#: parts are held, so memory stays bounded whatever the file's size
PARALLEL_MIN_SIZE = 64 << 20
PART_SIZE = 2 << 20
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
        chunks = _resuming(_Download(state, file, chunk_size), policy, what)
    hasher = _Hasher(file)
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
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    hasher.check(what)
    if pending:
        yield pending


def _resuming(download: _Download, policy: RetryPolicy, what: str) -> Iterator[bytes]:
    """The download's chunks; a failure resumes at the offset reached (a generator cannot be
    re-run by a retry wrapper)."""
    for attempt in itertools.count(1):
        try:
            yield from download.chunks()
            return
        except Temporary as e:
            if attempt >= policy.attempts:
                raise HubUnreachable(f"{what}: download failed after {attempt} tries: {e}") from e
            delay = backoff(policy, attempt, e.retry_after)
            log.info("%s: %s; resuming at byte %d in %.1fs", what, e, download.offset, delay)
            time.sleep(delay)


def _parts(state: RepoState, file: HubFile, n: int, policy: RetryPolicy) -> Iterator[bytes]:
    """The file in order, as parts fetched by ``n`` connections at once (n + 1 parts ahead:
    the next ones to give out are fetched while the consumer is slower or a part lags)."""
    what = f"{_what(state)}: {file.path}"
    starts = iter(range(0, file.size, PART_SIZE))
    stop = threading.Event()

    def fetch(start: int) -> bytes:
        end = min(start + PART_SIZE, file.size)
        download = _Download(state, file, 256 << 10, offset=start, end=end)
        data = bytearray(end - start)  # filled in place: one buffer per part, no copies
        view = memoryview(data)
        for chunk in _resuming(download, policy, f"{what} (bytes {start}-{end - 1})"):
            if stop.is_set():
                raise HubError(f"{what}: download stopped")
            at = download.offset - start
            view[at - len(chunk) : at] = chunk
        return data  # type: ignore[return-value]  # bytes-like: hashed and written as is

    with ThreadPoolExecutor(n, thread_name_prefix="hub-part") as pool:
        ahead: collections.deque[Future[bytes]] = collections.deque(
            pool.submit(fetch, start) for start in itertools.islice(starts, n + 1)
        )
        try:
            while ahead:
                data = ahead.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    ahead.append(pool.submit(fetch, nxt))
                yield data
        finally:
            stop.set()
            for future in ahead:
                future.cancel()


class _Download:
    """One file's bytes over huggingface_hub's HTTP client, from ``offset`` on (Range)."""

    def __init__(
        self,
        state: RepoState,
        file: HubFile,
        chunk_size: int,
        *,
        offset: int = 0,
        end: int | None = None,
    ) -> None:
        from huggingface_hub import hf_hub_url

        self.state, self.file, self.chunk_size = state, file, chunk_size
        self.url = hf_hub_url(
            state.repo_id, file.path, repo_type=state.repo_type, revision=state.commit,
            endpoint=endpoint(),
        )  # fmt: skip
        self.offset = offset
        #: where the bytes wanted end (exclusive): the file's end unless a part is wanted
        self.end = file.size if end is None else end
        self.ranged = offset > 0 or self.end < file.size

    def chunks(self) -> Iterator[bytes]:
        """The bytes from ``offset`` to the end; Temporary when another try may help."""
        import httpx2
        from huggingface_hub.utils import (  # type: ignore[attr-defined]
            build_hf_headers,
            get_session,
            hf_raise_for_status,
        )

        headers = build_hf_headers()
        if self.offset or self.ranged:
            headers["Range"] = f"bytes={self.offset}-{self.end - 1}"
        try:
            with get_session().stream(
                "GET", self.url, headers=headers, follow_redirects=True, timeout=60.0
            ) as resp:
                if resp.status_code in RETRY_STATUSES:
                    after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise Temporary(f"HTTP {resp.status_code}", retry_after=after)
                try:
                    hf_raise_for_status(resp)
                except Exception as e:
                    raise _translate(e, self.state, self.state.commit) from e
                if "Range" in headers and resp.status_code != 206:
                    what = f"{_what(self.state)}: {self.file.path}"
                    raise HubError(f"{what}: the hub ignored a Range request")
                for chunk in resp.iter_bytes(self.chunk_size):
                    if self.offset + len(chunk) > self.end:
                        what = f"{_what(self.state)}: {self.file.path}"
                        raise HubError(f"{what}: the hub sent more than asked for")
                    self.offset += len(chunk)
                    yield chunk
        except (httpx2.TransportError, OSError) as e:
            raise Temporary(f"{type(e).__name__}: {_first_line(e)}") from e
        if self.offset < self.end:
            raise Temporary(f"connection closed at byte {self.offset} of {self.end}")


def file_source(state: RepoState, file: HubFile) -> Callable[[], Iterator[bytes]]:
    """A chunk source for a tar entry: each call streams the file anew from the hub."""
    return lambda: iter_file(state, file)
