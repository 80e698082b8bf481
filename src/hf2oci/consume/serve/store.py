"""Repos, revisions and files, found in the images that ``sync`` wrote.

An image is found by its tag (the repo's moving tag, or its ``--<sha12>`` tag for a commit); its
file index comes from the ``.hf2oci/files.json`` layer (one small read), or, for images made
before it existed, from walking the tar headers with Range reads. Manifests by tag are cached
for ``ttl`` seconds (``sync`` moves tags); indexes by manifest digest, for good.
"""

from __future__ import annotations

import collections
import http.client
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
import urllib3.exceptions

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.consume.serve.files import RepoFile, read_files
from hf2oci.errors import Hf2ociError, InvalidRepoId, ServeError, Temporary
from hf2oci.http import new_session
from hf2oci.oci import layout
from hf2oci.oci.credentials import load_credentials
from hf2oci.oci.image import ANNOTATION_REF_NAME, Image
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.source import open_image, open_remote
from hf2oci.oci.stores import LayoutStore, RegistryStore, Repository
from hf2oci.oci.transport import Transport
from hf2oci.reference import Reference
from hf2oci.retry import REQUEST_POLICY
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHORT = re.compile(r"[0-9a-f]{12}")
#: connections to the registry kept alive: a download streaming to its client holds one between
#: the worker threads' reads, so as many as downloads in flight (a full pool drops the rest)
UPSTREAM_CONNECTIONS = 256


@dataclass
class Snapshot:
    """A repo at one commit, as one image holds it."""

    repo_id: str
    repo_type: RepoType
    commit: str
    image: Image
    files: dict[str, RepoFile]
    #: with a verify key: each file's hash as the verified provenance lists it
    signed: dict[str, dict[str, str]] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return L.of_image(self.image)

    @property
    def last_modified(self) -> str:
        return self.labels.get(L.CREATED, "1970-01-01T00:00:00Z")


class Counts:
    """Event counts that serve's metrics show (thread-safe)."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Store:
    """Images under ``namespace``: in a registry (``client``) or in layouts under ``root``."""

    def __init__(
        self,
        namespace: str,
        *,
        client: RegistryClient | None = None,
        root: Path | None = None,
        ttl: float = 30.0,
        stale: float = 60.0,
        max_indexes: int = 256,
        counts: Counts | None = None,
        verify_key: bytes | None = None,
    ) -> None:
        if (client is None) == (root is None):
            raise ValueError("a store reads a registry or layouts, one of them")
        self.namespace, self.client, self.root, self.ttl = namespace, client, root, ttl
        #: past ``ttl``, how long an image read before still answers while the registry fails
        self.stale = stale
        self.counts = counts or Counts()
        self.max_indexes = max_indexes
        self._by_tag: dict[tuple[str, str], tuple[float, Image | None]] = {}
        self._files: OrderedDict[str, dict[str, RepoFile]] = OrderedDict()
        self._lock = threading.Lock()
        #: a public key (PEM): only images it verifies are served
        self.verify_key = verify_key
        self._verified: dict[str, tuple[float, Any]] = {}

    def repository(self, repo_type: RepoType) -> str:
        return naming.image_repository(self.namespace, repo_type)

    # -- images --------------------------------------------------------------------------

    def image(self, repo_type: RepoType, tag: str) -> Image | None:
        """The image at ``tag`` (None: no such tag), cached for ``ttl`` seconds."""
        key = (repo_type, tag)
        now = time.monotonic()
        with self._lock:
            cached = self._by_tag.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            found = self._open(repo_type, tag, cached[1] if cached is not None else None)
        except Hf2ociError as e:
            if cached is None or now - cached[0] >= self.ttl + self.stale:
                raise
            self.counts.add("stale")  # stale-if-error: the metadata, never file bytes
            log.warning("storage: %s; answering %s:%s as read %.0f s ago", e,
                        self.repository(repo_type), tag, now - cached[0])  # fmt: skip
            return cached[1]
        with self._lock:
            self._by_tag[key] = (now, found)
        return found

    def _open(self, repo_type: RepoType, tag: str, before: Image | None = None) -> Image | None:
        """The image at ``tag``; ``before`` (read earlier) again when the tag has not moved."""
        repo = self.repository(repo_type)
        if self.client is not None:
            found = self.client.get_manifest(repo, tag)
            if found is None:
                return None
            if before is not None and found[2] == before.digest:
                return before  # one GET: the config is the same
            ref = Reference(self.client.registry, repo, tag)
            return open_remote(self.client, ref, None, found)
        path, name = self._in_layout(repo, tag)
        if not (path / layout.INDEX_FILE).is_file() or layout.resolve_tag(path, name) is None:
            return None
        return open_image(f"oci:{path}:{name}")

    def _in_layout(self, repository: str, tag: str) -> tuple[Path, str]:
        """Where a tag is: a layout per repository (``root/hgfkeep/models``, as sync writes
        them), or one layout at ``root`` naming ``repository:tag`` (a bundle)."""
        assert self.root is not None
        if (self.root / layout.LAYOUT_FILE).is_file():
            return self.root, f"{repository}:{tag}"
        return self.root / repository, tag

    def tags(self, repo_type: RepoType) -> list[str]:
        """Every tag of the repo type's image repository."""
        repo = self.repository(repo_type)
        if self.client is not None:
            return self.client.list_tags(repo)
        path, prefix = self._in_layout(repo, "")
        if not (path / layout.INDEX_FILE).is_file():
            return []
        manifests = layout.read_index(path).get("manifests") or []
        names = [(m.get("annotations") or {}).get(ANNOTATION_REF_NAME) for m in manifests]
        return sorted(
            {n[len(prefix) :] for n in names if isinstance(n, str) and n.startswith(prefix)}
        )

    def healthy(self) -> bool:
        try:
            if self.client is not None:
                self.client.list_tags(self.repository("model"), page_size=1)
                return True
            assert self.root is not None
            return self.root.is_dir()
        except Hf2ociError:
            return False

    # -- revisions -----------------------------------------------------------------------

    def snapshot(self, repo_type: RepoType, repo_id: str, revision: str) -> Snapshot:
        """The repo at ``revision``: ``main`` or the ref the image was made from, a commit sha
        (40 hex), or its first 12 hex. ServeError RepoNotFound / RevisionNotFound otherwise."""
        try:
            naming.validate_repo_id(repo_id)
        except InvalidRepoId as e:
            raise ServeError(404, "RepoNotFound", f"{repo_id!r} is not a repo id") from e
        current = self.image(repo_type, naming.repo_tag(repo_id))
        if current is None or L.of_image(current).get(L.REPO_ID, repo_id) != repo_id:
            raise ServeError(404, "RepoNotFound", f"Repository {repo_id} not found")
        image = None
        if _COMMIT.fullmatch(revision) or _SHORT.fullmatch(revision):
            image = self.image(repo_type, naming.revision_tag(repo_id, revision))
            commit = L.of_image(image).get(L.REVISION, "") if image is not None else ""
            if image is None or not commit.startswith(revision):
                image = None
        elif revision in ("main", L.of_image(current).get(L.REF, "main")):
            image = current
        if image is None:
            raise ServeError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        commit = L.of_image(image).get(L.REVISION, "")
        if not _COMMIT.fullmatch(commit):
            raise ServeError(404, "RevisionNotFound", f"{repo_id}: the image names no commit")
        signed = None
        if self.verify_key is not None:
            report = self.verification(repo_type, image)
            failed = [f.line() for f in report.findings if not f.ok]
            if failed:
                raise ServeError(403, "UnverifiedImage",
                                 f"{repo_id}: the image is not verified ({failed[0]})")  # fmt: skip
            signed = report.files or None
        return Snapshot(repo_id, repo_type, commit, image, self.files(image), signed)

    def verification(self, repo_type: RepoType, image: Image) -> Any:
        """``hf2oci verify``'s report on ``image`` (by digest) with the store's key, kept for
        ``ttl`` seconds: a signature deleted or replaced is seen within that time."""
        from hf2oci.trust.verify import check

        assert self.verify_key is not None
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(image.digest)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        repository = self.repository(repo_type)
        if self.client is not None:
            repo = Repository.of(RegistryStore(self.client), repository)
        else:
            assert self.root is not None
            single = (self.root / layout.LAYOUT_FILE).is_file()  # a bundle
            repo = Repository.of(LayoutStore(self.root, single=single), repository)
        report = check(f"{repository}@{image.digest}", repo, image.digest, image.manifest,
                       L.of_image(image), self.verify_key)  # fmt: skip
        with self._lock:
            self._verified[image.digest] = (now, report)
        return report

    def listed(
        self, repo_type: RepoType, tags: list[str] | None = None, workers: int = 1
    ) -> list[tuple[str, Image]]:
        """``(repo id, image at its moving tag)`` of every mirrored repo of a type, its images
        opened ``workers`` at a time."""
        moving = [t for t in (self.tags(repo_type) if tags is None else tags)
                  if not _is_revision_tag(t) and not t.startswith("sha256-")]  # fmt: skip

        def one(tag: str) -> tuple[str, Image] | None:
            image = self.image(repo_type, tag)
            repo_id = L.of_image(image).get(L.REPO_ID) if image is not None else None
            if image is not None and repo_id and naming.repo_tag(repo_id) == tag:
                return repo_id, image
            return None

        if workers <= 1:
            found = [one(t) for t in moving]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="listed") as pool:
                found = list(pool.map(one, moving))
        return [f for f in found if f is not None]

    # -- files ---------------------------------------------------------------------------

    def files(self, image: Image) -> dict[str, RepoFile]:
        """The files under /REPO of ``image`` by path, cached by manifest digest."""
        digest = image.digest
        with self._lock:
            if digest in self._files:
                self._files.move_to_end(digest)
                return self._files[digest]
        found = read_files(image)
        with self._lock:
            self._files[digest] = found
            while len(self._files) > self.max_indexes:
                self._files.popitem(last=False)
        return found


def _is_revision_tag(tag: str) -> bool:
    return re.search(r"--[0-9a-f]{12}$", tag) is not None


def fault_kind(e: BaseException) -> str:
    """What went wrong with a registry read, for the metrics: ``status`` (a 429/5xx answer),
    ``cut`` (a body that ended or broke early) or ``connection`` (refused, reset, timed out)."""
    if getattr(e, "status", None):
        return "status"
    # a body that ended early, or broke while read (urllib3 wraps http.client's errors)
    cut = (Temporary, http.client.IncompleteRead, urllib3.exceptions.ProtocolError,
           requests.exceptions.ChunkedEncodingError)  # fmt: skip
    return "cut" if isinstance(e, cut) else "connection"


def registry_store(
    registry: str,
    namespace: str,
    *,
    plain_http: bool | None = None,
    ttl: float = 30.0,
    stale: float = 60.0,
    verify_key: bytes | None = None,
) -> Store:
    """A store over a registry, read under a request's budget of the one retry policy (a blip
    never reaches a client; a registry that is gone fails in seconds), with its retries
    counts; credentials from where the mirror finds them."""
    counts = Counts()

    def on_failure(e: BaseException) -> None:  # a read given up on included
        counts.add(f"fault:{fault_kind(e)}")

    policy = replace(REQUEST_POLICY, on_retry=lambda e: counts.add("retries"),
                     on_failure=on_failure)  # fmt: skip
    # more kept connections than the default 16: a streaming answer holds its connection
    # between reads, and bursts of clients opened connections only to drop them (a 40 s soak of
    # 256 clients: 927 dropped with 16, 261 with 48)
    session = new_session(pool=UPSTREAM_CONNECTIONS)
    transport = Transport(
        registry, retry=policy, credentials=load_credentials(registry), session=session
    )
    client = RegistryClient(registry, transport=transport, plain_http=plain_http)
    return Store(
        namespace, client=client, ttl=ttl, stale=stale, counts=counts, verify_key=verify_key
    )
