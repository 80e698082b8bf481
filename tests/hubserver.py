"""A local Hugging Face Hub for tests: the real `huggingface_hub` client talks to it over HTTP.

Serves repo info, tree listings and `resolve` downloads (with ranges) from in-memory commits,
answers errors the way huggingface.co does, logs requests and injects faults on demand.

It can also be a Xet hub, as huggingface.co is: repos added with ``xet=True`` have their LFS
files uploaded by `hf_xet` itself into a real CAS (`xetcas.XetCas`, ``hub.cas``), and then

- tree and ``paths-info`` entries carry ``"xetHash"``;
- ``HEAD``/``GET resolve`` answers 302 to the CAS bridge (`XetBridge`, ``hub.bridge``, on
  127.0.0.2) with ``X-Xet-Hash``, ``Link: <…/xet-read-token/{commit}>; rel="xet-auth"``,
  ``X-Linked-Size``, ``X-Linked-Etag`` (the sha256), ``X-Repo-Commit`` and ``ETag``; the bridge
  serves the bytes over plain HTTP (reconstructed from the CAS) up to ``hub.bridge_limit``
  bytes a file and answers 400 above (the real one's limit is 50 GB);
- ``GET /api/{models,datasets}/{repo}/xet-read-token/{rev}`` issues a CAS token valid
  ``hub.xet_token_ttl`` seconds, in headers (``X-Xet-Cas-Url``, ``X-Xet-Access-Token``,
  ``X-Xet-Token-Expiration``, read by huggingface_hub) and JSON (``casUrl``, ``accessToken``,
  ``exp``, read by hf_xet's refresh), with the hub's gated/private errors.

``hub.xet_enabled = False`` makes the hub answer as one without Xet (plain ``resolve`` bytes, no
Xet headers, no ``xetHash``, no token route) for the same repos; `HubServer.clear_faults`
turns it back on and clears the CAS's faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from xetcas import XetCas

log = logging.getLogger(__name__)

LFS_SUFFIXES = (
    ".safetensors", ".bin", ".gguf", ".parquet", ".pt", ".h5", ".onnx", ".msgpack", ".ckpt",
    ".pth",
)  # fmt: skip
LFS_THRESHOLD = 10 * 1024 * 1024
#: the real CAS bridge refuses files above 50 GB (xet-core #592)
BRIDGE_LIMIT = 50_000_000_000
XET_TOKEN_TTL = 3600.0
_CHUNK = 1024 * 1024
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")

# Hashes of files served from disk, computed once: (path, size, mtime_ns) -> (git sha1, sha256).
_PATH_HASHES: dict[tuple[str, int, int], tuple[str, str]] = {}
_PATH_HASHES_LOCK = threading.Lock()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as the hub reports for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _hash_path(path: Path) -> tuple[int, str, str]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _PATH_HASHES_LOCK:
        cached = _PATH_HASHES.get(key)
    if cached is None:
        sha1 = hashlib.sha1(b"blob %d\0" % st.st_size)
        sha256 = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                sha1.update(chunk)
                sha256.update(chunk)
        cached = (sha1.hexdigest(), sha256.hexdigest())
        with _PATH_HASHES_LOCK:
            _PATH_HASHES[key] = cached
    return st.st_size, cached[0], cached[1]


@dataclass(frozen=True)
class Generated:
    """A file's content made on the fly, never stored: ``size`` bytes of 1 MiB blocks, each a
    fixed random block with its index in its first 8 bytes (for huge-file tests).

    Xet dedups such content about tenfold (most 64 KiB chunks repeat from block to block):
    ``unique=True`` stamps every 4 KiB with its offset instead, so no chunk repeats and the
    xorbs are as large as the file, as for real weights."""

    size: int
    seed: str = "generated"
    unique: bool = False

    def read(self, start: int, end: int) -> Iterator[bytes]:
        base = random.Random(self.seed).randbytes(_CHUNK)
        pos = start
        while pos < end:
            index, offset = divmod(pos, _CHUNK)
            if self.unique:
                stamped = bytearray(base)
                for at in range(0, _CHUNK, 4096):
                    stamped[at : at + 8] = struct.pack("<Q", index * _CHUNK + at)
                block = bytes(stamped)
            else:
                block = struct.pack("<Q", index) + base[8:]
            piece = block[offset : min(_CHUNK, offset + end - pos)]
            yield piece
            pos += len(piece)


@dataclass(frozen=True)
class Blob:
    """One file's content: bytes in memory, a file on disk or generated (streamed, never
    loaded)."""

    size: int
    git_sha1: str
    sha256: str
    lfs: bool
    data: bytes | None = None
    path: Path | None = None
    generated: Generated | None = None
    #: the Xet hash of the content once uploaded to the hub's CAS (Xet repos' LFS files)
    xet_hash: str | None = None

    @classmethod
    def make(cls, name: str, content: bytes | Path | Generated) -> Blob:
        if isinstance(content, Generated):
            sha1 = hashlib.sha1(b"blob %d\0" % content.size)
            sha256 = hashlib.sha256()
            for chunk in content.read(0, content.size):
                sha1.update(chunk)
                sha256.update(chunk)
            return cls(content.size, sha1.hexdigest(), sha256.hexdigest(), True,
                       generated=content)  # fmt: skip
        if isinstance(content, Path):
            size, sha1, sha256 = _hash_path(content)
        else:
            content = bytes(content)
            size, sha1 = len(content), git_blob_sha1(content)
            sha256 = hashlib.sha256(content).hexdigest()
        lfs = name.lower().endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD
        if isinstance(content, Path):
            return cls(size, sha1, sha256, lfs, path=content)
        return cls(size, sha1, sha256, lfs, data=content)

    @property
    def oid(self) -> str:
        """The git object id in the tree: of the pointer file for LFS files, as on the hub."""
        return git_blob_sha1(self.pointer) if self.lfs else self.git_sha1

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def lfs_info(self, key: str) -> dict[str, Any]:
        """LFS metadata; the hub names the hash "oid" in trees and "sha256" in siblings."""
        return {key: self.sha256, "size": self.size, "pointerSize": len(self.pointer)}

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in chunks."""
        if self.data is not None:
            for pos in range(start, end, _CHUNK):
                yield self.data[pos : min(pos + _CHUNK, end)]
            return
        if self.generated is not None:
            yield from self.generated.read(start, end)
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.path} shrank while being served")
                left -= len(chunk)
                yield chunk


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: Mapping[str, Blob]
    date: datetime


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    gated: bool
    private: bool
    card_data: dict[str, Any] | None
    created: datetime
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    #: LFS files of its commits are stored in Xet (uploaded to the hub's CAS)
    xet: bool = False

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision)
        if sha is None and _SHA_RE.fullmatch(revision):
            sha = revision
        return self.commits.get(sha) if sha else None


@dataclass
class _Fault:
    substring: str
    times: int
    status: int = 503
    retry_after: int | None = None
    after_bytes: int = 0


class HubError(Exception):
    """An error answered with the hub's headers (`X-Error-Code`, `X-Error-Message`)."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class HubServer:
    """An in-process hub on 127.0.0.1 (random port); use as a context manager or start()/stop()."""

    def __init__(
        self, address: tuple[str, int] = ("127.0.0.1", 0), *, xet_root: Path | None = None
    ) -> None:
        """``xet_root``: where the CAS keeps its xorbs once Xet is used (default: a temporary
        folder removed by `stop`; a kept folder lets benchmarks reuse GiBs of uploads)."""
        self.address = address
        self.tokens: set[str] = set()  # `Authorization: Bearer <t>` with t here is authorised
        self.requests: list[tuple[str, str]] = []  # (method, url-decoded path with query)
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of 206 answers
        #: bytes per second for file bodies (None: as fast as possible), to test slow hubs
        self.throttle: float | None = None
        #: as the real hub may: repo info lists at most this many siblings (None: all)
        self.siblings_limit: int | None = None
        #: entries per page of a tree listing (a Link header names the next page), as the hub
        self.tree_page = 1000
        self._repos: dict[tuple[str, str], Repo] = {}
        self._fails: list[_Fault] = []
        self._cuts: list[_Fault] = []
        self._flaky: tuple[int, str] = (0, "")
        self._flaky_seen = 0
        self._flaky_kinds: tuple[str, ...] = ("503", "cut")
        self.flaky_hits = 0
        #: Xet-era redirects: LFS files' resolve answers 302 to a CDN on another host
        self.cdn: Cdn | None = None
        #: the hub's own scan verdicts, answered by ``paths-info`` with ``expand``:
        #: (repo_type, repo_id, path) -> securityFileStatus
        self.security: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: the Xet storage (started by `start_xet`, or the first ``xet=True`` repo)
        self.cas: XetCas | None = None
        self.bridge: XetBridge | None = None
        #: answer as a Xet hub (False: as a hub without Xet, for the same repos)
        self.xet_enabled = True
        #: lifetime of the CAS tokens that ``xet-read-token`` issues, in seconds
        self.xet_token_ttl = XET_TOKEN_TTL
        #: the bridge answers 400 for files above this many bytes
        self.bridge_limit = BRIDGE_LIMIT
        self._xet_root = xet_root
        self._lock = threading.RLock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        if self._httpd is None:
            self._httpd = _Server(self.address, _Handler)
            self._httpd.hub = self
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self.cdn is not None:
            self.cdn.stop()
            self.cdn = None
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        if self.cas is not None:
            self.cas.stop()
            self.cas = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path | Generated],
        *,
        repo_type: str = "model",
        gated: bool = False,
        private: bool = False,
        card_data: dict[str, Any] | None = None,
        branch: str = "main",
        date: datetime | None = None,
        xet: bool = False,
    ) -> str:
        """Create (or replace) a repo whose `branch` holds `files`; returns the commit sha.

        ``date`` fixes the commit (and repo creation) time, for reproducible images. ``xet``
        makes it a Xet repo: its LFS files (and those of later commits) are uploaded through
        hf_xet into the hub's CAS (started if need be), one after another, so a file shares
        chunks with earlier ones; `Generated` contents are streamed and files on disk read
        from disk, so files of many GiB never sit in memory."""
        when = date or datetime.now(timezone.utc)
        repo = Repo(repo_id, repo_type, gated, private, card_data, when, xet=xet)
        blobs = {name: Blob.make(name, content) for name, content in files.items()}
        if xet:
            blobs = self._xet_upload(blobs)
        with self._lock:
            commit = self._new_commit(repo, None, blobs, date=date)
            repo.refs[branch] = commit.sha
            self._repos[(repo_type, repo_id)] = repo
        return commit.sha

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        repo_type: str = "model",
        branch: str = "main",
        delete: tuple[str, ...] | list[str] = (),
        xet: bool | None = None,
    ) -> str:
        """Add a commit on `branch` (created from main when new) updating files; returns its sha.

        ``xet``: whether its new LFS files go to Xet (None: as the repo was added)."""
        blobs = {name: Blob.make(name, content) for name, content in files.items()}
        with self._lock:
            repo_xet = self._repo(repo_id, repo_type).xet
        if repo_xet if xet is None else xet:
            blobs = self._xet_upload(blobs)
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            head = repo.commits[repo.refs.get(branch) or repo.refs["main"]]
            tree = {k: v for k, v in head.files.items() if k not in set(delete)}
            tree.update(blobs)
            commit = self._new_commit(repo, head.sha, tree)
            repo.refs[branch] = commit.sha
        return commit.sha

    def start_xet(self) -> XetCas:
        """Start the CAS (its xorbs under ``xet_root``) and the bridge, if not yet; returns the
        CAS. Xet repos do it themselves."""
        with self._lock:
            if self.cas is None:
                self.cas = XetCas(self._xet_root).start()
                self.bridge = XetBridge(self).start()
            return self.cas

    def _xet_upload(self, blobs: dict[str, Blob]) -> dict[str, Blob]:
        """The blobs, LFS ones (not empty) given the Xet hash of their content once uploaded."""
        cas = self.start_xet()
        names = [n for n, b in blobs.items() if b.lfs and b.size and b.xet_hash is None]
        contents: list[bytes | Path | Iterable[bytes]] = []
        for name in names:
            blob = blobs[name]
            if blob.data is not None:
                contents.append(blob.data)
            elif blob.path is not None:
                contents.append(blob.path)
            else:
                contents.append(blob.chunks(0, blob.size))
        hashes = cas.upload(contents, sha256s=[blobs[n].sha256 for n in names])
        done = {n: replace(blobs[n], xet_hash=h) for n, h in zip(names, hashes, strict=True)}
        return {**blobs, **done}

    def tag(
        self, repo_id: str, tag: str, *, revision: str = "main", repo_type: str = "model"
    ) -> str:
        """Point tag (or branch) `tag` at `revision`; returns the commit sha."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"unknown revision {revision!r} of {repo_id}")
            repo.refs[tag] = commit.sha
        return commit.sha

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test hub") from None

    def _new_commit(
        self,
        repo: Repo,
        parent: str | None,
        files: dict[str, Blob],
        *,
        date: datetime | None = None,
    ) -> Commit:
        manifest = {
            "repo": f"{repo.repo_type}s/{repo.repo_id}",
            "parent": parent,
            "files": sorted((name, blob.oid) for name, blob in files.items()),
        }
        sha = hashlib.sha1(json.dumps(manifest).encode()).hexdigest()
        when = date or datetime.now(timezone.utc)
        commit = Commit(sha, parent, dict(sorted(files.items())), when)
        repo.commits[sha] = commit
        return commit

    # -- instrumentation and faults ----------------------------------------------------------

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.ranges.clear()
            if self.cas is not None:
                self.cas.reset_log()
            if self.bridge is not None:
                self.bridge.requests.clear()

    def count(self, method: str, path_substring: str) -> int:
        """How many logged requests had this method and a path containing the substring."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and path_substring in p)

    def fail_next(
        self,
        path_substring: str,
        *,
        status: int = 503,
        times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` requests whose path contains the substring with `status`."""
        with self._lock:
            self._fails.append(_Fault(path_substring, times, status, retry_after))

    def cut_next(self, path_substring: str, *, after_bytes: int, times: int = 1) -> None:
        """Close the connection after `after_bytes` of the body of the next matching downloads."""
        with self._lock:
            self._cuts.append(_Fault(path_substring, times, after_bytes=after_bytes))

    def xet_redirects(self, on: bool = True) -> Cdn:
        """Answer ``resolve`` of LFS files as the Xet-era hub does: 302 to a CDN on another host
        (127.0.0.2) with ``X-Xet-Hash``, ``X-Linked-*`` and a ``Link: rel="xet-auth"``."""
        if self.cdn is None:
            self.cdn = Cdn(self).start()
        self.cdn.enabled = on
        return self.cdn

    def set_security(
        self,
        repo_id: str,
        path: str,
        status: str,
        *,
        repo_type: str = "model",
        imports: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        """The hub's verdict on a file as the real hub words it (``status`` "safe", "unsafe",
        …; ``imports``: (module, name, safety) as its pickle import scan lists them)."""
        scan = None
        if imports:
            levels = ["innocuous", "suspicious", "dangerous"]
            highest = max((i[2] for i in imports), key=levels.index)
            listed = [{"module": m, "name": n, "safety": v} for m, n, v in imports]
            scan = {"highestSafetyLevel": highest, "imports": listed}
        with self._lock:
            self.security[(repo_type, repo_id, path)] = {
                "status": status,
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": scan,
            }

    def blob_by_sha256(self, sha256: str) -> Blob | None:
        with self._lock:
            for repo in self._repos.values():
                for commit in repo.commits.values():
                    for blob in commit.files.values():
                        if blob.sha256 == sha256:
                            return blob
        return None

    def flaky(
        self, every: int, path_substring: str = "/resolve/", kinds: tuple[str, ...] = ("503", "cut")
    ) -> None:
        """Fail every ``every``-th GET whose path has the substring, with each of ``kinds`` in
        turn: "503", "cut" (a body cut in the middle) or "429" (with ``Retry-After: 1``);
        ``every=0`` stops it. ``self.flaky_hits`` counts the failures given."""
        with self._lock:
            self._flaky = (every, path_substring)
            self._flaky_kinds = kinds
            self._flaky_seen = 0
            self.flaky_hits = 0

    def _flaky_fault(self, method: str, path: str) -> str | None:
        """ "503", "cut", "429" or None for this request, by the flaky setting."""
        with self._lock:
            every, substring = self._flaky
            if not every or method != "GET" or substring not in path:
                return None
            self._flaky_seen += 1
            if self._flaky_seen % every:
                return None
            self.flaky_hits += 1
            kinds = self._flaky_kinds
            return kinds[(self._flaky_seen // every) % len(kinds)]

    def clear_faults(self) -> None:
        with self._lock:
            self.siblings_limit, self.tree_page = None, 1000
            self._fails.clear()
            self._cuts.clear()
            self._flaky = (0, "")
            if self.cdn is not None:
                self.cdn.enabled = False
            self.xet_enabled, self.xet_token_ttl = True, XET_TOKEN_TTL
            self.bridge_limit = BRIDGE_LIMIT
            if self.cas is not None:
                self.cas.clear_faults()

    def _take(self, faults: list[_Fault], path: str) -> _Fault | None:
        with self._lock:
            for fault in faults:
                if fault.substring in path:
                    fault.times -= 1
                    if fault.times <= 0:
                        faults.remove(fault)
                    return fault
        return None

    def _authorised(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self.tokens

    # -- request handling (called from server threads) ---------------------------------------

    def _lookup(self, repo_type: str, segments: list[str], authorised: bool) -> tuple[Repo, int]:
        """Find the repo named by the first one or two path segments; returns it and its length."""
        with self._lock:
            for n in (2, 1):
                repo = self._repos.get((repo_type, unquote("/".join(segments[:n]))))
                if repo is not None and len(segments) >= n:
                    break
            else:
                repo = None
        if repo is None or (repo.private and not authorised):
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo, n

    @staticmethod
    def _split_revision(repo: Repo, tail: list[str]) -> tuple[Commit, str]:
        """Split `rev/path...`; the revision is url-encoded by the client but may hold '/'."""
        if not tail or not tail[0]:
            raise HubError(404, "RevisionNotFound", "Invalid rev id: ")
        for n in range(1, len(tail) + 1):
            commit = repo.resolve(unquote("/".join(tail[:n])))
            if commit is not None:
                return commit, unquote("/".join(tail[n:]))
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(tail[0])}")

    def _info(self, repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for name, blob in list(commit.files.items())[: self.siblings_limit]:
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.lfs:
                    sibling["lfs"] = blob.lfs_info("sha256")
            siblings.append(sibling)
        tags = [f"license:{repo.card_data['license']}"] if repo.card_data else []
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [*tags, "region:us"],
            "siblings": siblings,
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.card_data is not None:
            info["cardData"] = repo.card_data
        return info

    def _tree(self, commit: Commit, path: str, *, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and path.strip("/") in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} is a file, not a directory")
        dirs: dict[str, list[str]] = {}
        files: list[str] = []
        for name in commit.files:
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.setdefault(prefix + "/".join(parts[:depth]), []).append(name)
            if recursive or len(parts) == 1:
                files.append(name)
        if prefix and not files and not dirs:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on the revision")
        entries: list[dict[str, Any]] = []
        for d, members in dirs.items():
            listing = sorted((m, commit.files[m].oid) for m in members)
            oid = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        for name in files:
            blob = commit.files[name]
            entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size}
            entry["path"] = name
            if blob.lfs:
                entry["lfs"] = blob.lfs_info("oid")
            if blob.xet_hash and self.xet_enabled:
                entry["xetHash"] = blob.xet_hash
            entries.append(entry)
        return sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))


class Cdn:
    """The CDN an Xet-era hub redirects LFS downloads to: serves blobs by sha256 (with Range)
    on another host, and records the headers of every request it gets."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.enabled = True
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Cdn:
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                cdn.requests.append((self.command, self.path, dict(self.headers.items())))
                blob = cdn.hub.blob_by_sha256(self.path.rsplit("/", 1)[-1])
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end, status = 0, blob.size, 200
                match = _RANGE_RE.fullmatch(self.headers.get("Range", "").strip())
                if match and match[1]:
                    start, status = int(match[1]), 206
                    end = min(int(match[2]) + 1, blob.size) if match[2] else blob.size
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                for chunk in blob.chunks(start, end):
                    self.wfile.write(chunk)

        self._httpd = _Quiet(("127.0.0.2", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


class XetBridge:
    """The hub's plain-HTTP face of Xet files, as the real "CAS bridge" behind ``resolve``'s 302:
    ``GET``/``HEAD /xet-bridge/{xet hash}`` on 127.0.0.2 answers the file's bytes, reconstructed
    from the hub's CAS by hf_xet (its requests are labelled ``who="bridge"`` in the CAS log),
    with ``Range`` → 206 and ``Content-Range`` (a start past the end → 416), and 400 for files
    above ``hub.bridge_limit`` bytes, as the real one above 50 GB. ``requests`` records
    (method, path, headers) of each request, ``bytes_served`` the body bytes sent."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_served = 0
        self._session: Any = None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> XetBridge:
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 120

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                with bridge._lock:
                    bridge.requests.append((self.command, self.path, dict(self.headers.items())))
                bridge._serve(self)

        self._httpd = _Quiet(("127.0.0.2", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._session = None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        import hf_xet

        cas = self.hub.cas
        xet_hash = h.path.partition("?")[0].rpartition("/xet-bridge/")[2]

        def answer(status: int, message: str, extra: Mapping[str, str] | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            h.send_response(status)
            for key, value in (extra or {}).items():
                h.send_header(key, value)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)

        if cas is None or not cas.has_file(xet_hash):
            answer(404, "Not found")
            return
        size = cas.file_size(xet_hash)
        if size > self.hub.bridge_limit:
            answer(400, f"File too large for the bridge ({size} > {self.hub.bridge_limit} bytes)")
            return
        start, end, status = 0, size, 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        match = _RANGE_RE.fullmatch(h.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]) + 1, size) if match[2] else size
            else:
                start = max(size - int(match[2]), 0)
            if start >= size or start >= end:
                answer(416, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(end - start))
        h.end_headers()
        if h.command == "HEAD" or start == end:
            return
        with self._lock:
            if self._session is None:
                self._session = cas.session()
            session = self._session
        token, expires = cas.issue_token(3600, who="bridge")
        group = session.new_download_stream_group(
            endpoint=cas.url, token=token, token_expiry_unix_secs=int(expires)
        )
        stream = group.download_stream(hf_xet.XetFileInfo(xet_hash, size), start=start, end=end)
        sent = 0
        try:
            for piece in stream:
                h.wfile.write(piece)
                sent += len(piece)
                with self._lock:
                    self.bytes_served += len(piece)
        except Exception:  # the client left, or hf_xet failed: the body stays short
            log.debug("bridge: %s cut after %d bytes", xet_hash, sent, exc_info=True)
            stream.cancel()
        finally:
            with contextlib.suppress(Exception):
                group.finish()
        if sent != end - start:
            # a short body (hf_xet may also end a failed stream early without an error): close
            # the connection, so that the client sees it cut and not a next answer
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections mid-download are expected; keep test output clean.
        log.debug("test hub: error serving %s", client_address, exc_info=True)


class _Server(_Quiet):
    allow_reuse_address = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hf2oci-test-hub/1.0"
    timeout = 120  # idle keep-alive connections do not pin a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("test hub: " + format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        """``paths-info``: the entries of the paths asked for (form ``paths``, ``expand``)."""
        hub = self.server.hub
        shown = unquote(self.path)
        with hub._lock:
            hub.requests.append((self.command, shown))
        self._flaky_cut = False
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        segments = self.path.partition("?")[0].split("/")[1:]
        try:
            if segments[:1] != ["api"] or segments[1:2] not in (["models"], ["datasets"]):
                raise HubError(404, None, "Not found")
            authorised = hub._authorised(self.headers.get("Authorization"))
            repo_type = segments[1][:-1]
            repo, n = hub._lookup(repo_type, segments[2:], authorised)
            rest = segments[2 + n :]
            if rest[:1] != ["paths-info"]:
                raise HubError(404, None, "Not found")
            commit, _ = hub._split_revision(repo, ["/".join(rest[1:])])
            expand = form.get("expand", ["false"])[0].lower() in ("true", "1")
            entries = []
            for path in form.get("paths", []):
                blob = commit.files.get(path)
                if blob is None:
                    continue
                entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size,
                                         "path": path}  # fmt: skip
                if blob.lfs:
                    entry["lfs"] = blob.lfs_info("oid")
                if blob.xet_hash and hub.xet_enabled:
                    entry["xetHash"] = blob.xet_hash
                status = hub.security.get((repo_type, repo.repo_id, path))
                if expand and status is not None:
                    entry["securityFileStatus"] = status
                entries.append(entry)
            self._json(200, entries)
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)

    def _handle(self) -> None:
        hub = self.server.hub
        raw_path, _, query = self.path.partition("?")
        shown = unquote(self.path)
        with hub._lock:
            hub.requests.append((self.command, shown))
        self._flaky_cut = False
        flaky = hub._flaky_fault(self.command, shown)
        if flaky in ("503", "429"):
            extra = {"Retry-After": "1"} if flaky == "429" else {}
            self._json(int(flaky), {"error": "injected flaky failure"}, extra)
            return
        self._flaky_cut = flaky == "cut"
        fault = hub._take(hub._fails, shown)
        if fault is not None:
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._json(fault.status, {"error": f"injected failure {fault.status}"}, extra)
            return
        try:
            self._route(hub, raw_path, parse_qs(query))
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._json(e.status, {"error": e.message}, headers)

    def _route(self, hub: HubServer, raw_path: str, query: dict[str, list[str]]) -> None:
        authorised = hub._authorised(self.headers.get("Authorization"))
        segments = raw_path.split("/")[1:]
        if raw_path == "/api/agent-harnesses":
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in ("models", "datasets"):
            repo, n = hub._lookup(segments[1][:-1], segments[2:], authorised)
            rest = segments[2 + n :]
            if rest in ([], [""]):
                commit, _ = hub._split_revision(repo, ["main"])
            elif rest[0] == "revision":
                commit, _ = hub._split_revision(repo, ["/".join(rest[1:])])
            elif rest[0] == "tree":
                commit, path = hub._split_revision(repo, rest[1:])
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                entries = hub._tree(commit, path, recursive=recursive)
                start = int(query.get("cursor", ["0"])[0] or 0)
                page = entries[start : start + hub.tree_page]
                headers = {}
                if start + hub.tree_page < len(entries):
                    nxt = urlencode({**{k: v[0] for k, v in query.items()},
                                     "cursor": str(start + hub.tree_page)})  # fmt: skip
                    url = f"{hub.url}{raw_path}?{nxt}"
                    headers["Link"] = f'<{url}>; rel="next"'
                self._json(200, page, headers)
                return
            elif rest[0] == "xet-read-token" and hub.xet_enabled and hub.cas is not None:
                self._xet_read_token(hub, repo, rest[1:], authorised)
                return
            else:
                raise HubError(404, None, "Not found")
            blobs = query.get("blobs", ["false"])[0].lower() in ("true", "1")
            self._json(200, hub._info(repo, commit, blobs=blobs))
            return
        if segments[0] == "datasets":
            repo_type, rest = "dataset", segments[1:]
        else:
            repo_type, rest = "model", segments
        if "resolve" in rest[1:3]:
            repo, n = hub._lookup(repo_type, rest, authorised)
            if rest[n : n + 1] == ["resolve"]:
                self._resolve(repo, rest[n + 1 :], authorised)
                return
        raise HubError(404, None, "Not found")

    def _gate(self, repo: Repo, authorised: bool) -> None:
        """A gated repo's files need an authorised token: 401 without one, 403 with another."""
        if repo.gated and not authorised:
            kind = "dataset" if repo.repo_type == "dataset" else "model"
            msg = f"Access to {kind} {repo.repo_id} is restricted"
            if self.headers.get("Authorization"):
                raise HubError(403, "GatedRepo", f"{msg} and you are not in the authorized list.")
            raise HubError(401, "GatedRepo", f"{msg}. You must be authenticated to access it.")

    def _xet_read_token(
        self, hub: HubServer, repo: Repo, tail: list[str], authorised: bool
    ) -> None:
        """A CAS read token for the repo's revision, in both forms clients read."""
        self._gate(repo, authorised)
        commit, _ = HubServer._split_revision(repo, tail)
        assert hub.cas is not None
        token, expires = hub.cas.issue_token(hub.xet_token_ttl)
        exp = int(expires)
        headers = {
            "X-Xet-Cas-Url": hub.cas.url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(exp),
            "X-Repo-Commit": commit.sha,
        }
        self._json(200, {"casUrl": hub.cas.url, "accessToken": token, "exp": exp}, headers)

    def _resolve(self, repo: Repo, tail: list[str], authorised: bool) -> None:
        self._gate(repo, authorised)
        commit, path = HubServer._split_revision(repo, tail)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", "Entry not found", commit=commit.sha)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.etag}"', "X-Linked-Size": str(blob.size)}
        hub = self.server.hub
        if blob.xet_hash and hub.xet_enabled and hub.bridge is not None:
            kind = "datasets" if repo.repo_type == "dataset" else "models"
            headers |= {
                "Location": f"{hub.bridge.url}/xet-bridge/{blob.xet_hash}",
                "X-Xet-Hash": blob.xet_hash,
                "Link": f"<{hub.url}/api/{kind}/{repo.repo_id}/xet-read-token/{commit.sha}>;"
                ' rel="xet-auth"',
            }
            self._send(302, headers, 0, [])
            return
        cdn = self.server.hub.cdn
        if blob.lfs and cdn is not None and cdn.enabled:
            kind = "datasets" if repo.repo_type == "dataset" else "models"
            hub_url = self.server.hub.url
            headers |= {
                "Location": f"{cdn.url}/blobs/{blob.sha256}",
                "X-Xet-Hash": hashlib.sha256(blob.sha256.encode()).hexdigest(),
                "Link": f"<{hub_url}/api/{kind}/{repo.repo_id}/xet-read-token/{commit.sha}>;"
                ' rel="xet-auth"',
            }
            self._send(302, headers, 0, [])
            return
        start, end, status = 0, blob.size, 200
        match = _RANGE_RE.fullmatch(self.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]) + 1, blob.size) if match[2] else blob.size
            else:  # suffix range: the last N bytes
                start = max(blob.size - int(match[2]), 0)
            if start >= blob.size or start >= end:
                headers["Content-Range"] = f"bytes */{blob.size}"
                self._json(416, {"error": "Requested range not satisfiable"}, headers)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
            with self.server.hub._lock:
                self.server.hub.ranges.append((unquote(self.path), self.headers["Range"]))
        self._send(status, headers, end - start, blob.chunks(start, end))

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        headers = {**(headers or {}), "Content-Type": "application/json"}
        self._send(status, headers, len(data), [data])

    def _send(self, status: int, headers: Mapping[str, str], length: int, body: Any) -> None:
        """Send a response; always with Content-Length so keep-alive works."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        # only file bodies get cut (not the error answers of fail_next)
        cut = (
            self.server.hub._take(self.server.hub._cuts, unquote(self.path))
            if status in (200, 206)
            else None
        )
        if cut is None and self._flaky_cut and status in (200, 206):
            cut = _Fault("", 1, after_bytes=length // 2)
        budget = cut.after_bytes if cut is not None else length
        try:
            for chunk in body:
                if budget <= 0:
                    break
                self.wfile.write(chunk[:budget])
                budget -= len(chunk)
                if self.server.hub.throttle:
                    time.sleep(len(chunk) / self.server.hub.throttle)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut is not None:
            # Drop the connection mid-body, as a flaky network would.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
