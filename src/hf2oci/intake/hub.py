"""The hub's API: what a repo revision is, and the requests every hub call goes through.

Metadata (what a revision resolves to: commit, files, hashes) is one GET of the Hub API, and
the tree listing (every file with its Xet hash) a GET per 1,000 files once an image is to be
made, all over this thread's ``hub_session``, under the one retry policy (``hub_get``); the
files' bytes are ``files.py``'s, over the same requests. huggingface_hub finds the token
(``get_token``) and reads the hub's refusals (``hf_raise_for_status``: its typed errors,
mapped onto ours here), imported where they are used. Its ``HfApi`` is not called: loading its
client costs 0.2-0.3 s, on every run, where the answer to one GET is all a no-change sync needs
(benchmarks/RESULTS.md, "The hub's library").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from hf2oci import __version__, naming
from hf2oci.errors import (
    GatedRepo,
    HubError,
    HubUnreachable,
    RepoNotFound,
    RevisionNotFound,
)
from hf2oci.http import hub_session, unreachable_reason
from hf2oci.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    Temporary,
    is_temporary,
    parse_retry_after,
    retrying,
)
from hf2oci.spec import RepoSpec, RepoType, plural

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: every hub request (metadata, small files, streamed files) is retried by this policy
HUB_POLICY = RetryPolicy(read_timeout=60.0)


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


def what_of(spec: RepoSpec | RepoState) -> str:
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
    what = what_of(spec)
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
    what = what_of(state)
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
    what = what_of(state)
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
    safe_parts(path, what)
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
            raise refusal(resp, what, revision)
        try:
            doc = resp.json()
        except ValueError as e:
            raise HubError(f"{what}: the hub's answer is not JSON") from e
        nxt = (resp.links.get("next") or {}).get("url")
        if nxt is not None and not str(nxt).startswith(f"{endpoint()}/"):
            raise HubError(f"{what}: the hub's next page is on another host ({nxt})")
        return doc, nxt

    failed = failed or f"cannot reach the hub at {endpoint()}"
    return hub_get(url, what, read, params=params, form=form, failed=failed)


def hub_get(
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
    sent = request_headers(headers)

    def once() -> _T:
        with request(url, what, sent, params=params, form=form) as resp:
            try:
                return read(resp)
            except requests.RequestException as e:  # the body cut on the way
                raise Temporary(unreachable_reason(e)) from e

    try:
        return retrying(once, is_temporary=lambda e: isinstance(e, Temporary), what=what,
                        policy=HUB_POLICY)  # fmt: skip
    except Temporary as e:
        raise HubUnreachable(f"{what}: {failed}: {e}") from e


def request_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every hub request sends: who asks, and the token (``requests`` drops it on a
    redirect to another host, such as a CDN or Xet bridge)."""
    sent = {"user-agent": f"hf2oci/{_version()}", **(extra or {})}
    secret = token()
    if secret:
        sent["authorization"] = f"Bearer {secret}"
    return sent


def request(
    url: str,
    what: str,
    headers: Mapping[str, str],
    *,
    params: Mapping[str, str] | None = None,
    form: Mapping[str, object] | None = None,
) -> Any:
    """One GET (POST of ``form``) of the hub, streamed, with the hub policy's timeouts:
    Temporary for what another try may help (``retry.is_temporary``: a connection failure, a
    429/5xx answer with its Retry-After), HubUnreachable for what it cannot (a name that does
    not resolve, TLS that failed)."""
    method = "POST" if form is not None else "GET"
    timeout = (HUB_POLICY.connect_timeout, HUB_POLICY.read_timeout)
    try:
        resp = hub_session().request(method, url, params=params, data=form, headers=headers,
                                     timeout=timeout, stream=True)  # fmt: skip
    except requests.RequestException as e:
        if not is_temporary(e):
            raise HubUnreachable(
                f"{what}: cannot reach the hub at {endpoint()}: {unreachable_reason(e)}"
            ) from e
        raise Temporary(unreachable_reason(e)) from e
    if resp.status_code in RETRY_STATUSES:
        resp.close()
        after = parse_retry_after(resp.headers.get("Retry-After"))
        raise Temporary(f"the hub answered HTTP {resp.status_code}", retry_after=after)
    return resp


def refusal(resp: Any, what: str, revision: str, *, path: str | None = None) -> HubError:
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
    return __version__


def safe_parts(path: str, what: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise HubError(f"{what}: the hub lists a file path that could escape: {path!r}")
    return parts
