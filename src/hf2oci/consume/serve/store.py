"""Repos, revisions and files, found in the images that ``sync`` wrote.

An image is found by its tag (the repo's moving tag, or its ``--<sha12>`` tag for a commit); its
file index comes from the ``.hf2oci/files.json`` layer (one small read), or, for images made
before it existed, from walking the tar headers with Range reads. Manifests by tag are cached
for ``ttl`` seconds (``sync`` moves tags); indexes by manifest digest, for good.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import io
import json
import logging
import re
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import requests
import urllib3.exceptions

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.digest import git_blob_hash
from hf2oci.errors import Hf2ociError, InvalidRepoId, PackError, ServeError, Temporary
from hf2oci.http import new_session
from hf2oci.oci import layout
from hf2oci.oci.credentials import load_credentials
from hf2oci.oci.image import ANNOTATION_REF_NAME, MT_LAYER_TAR, Image, Piece
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.source import StoredLayer, open_image, open_remote, tar_entries
from hf2oci.oci.stores import LayoutStore, RegistryStore, Repository
from hf2oci.oci.transport import Transport
from hf2oci.pack.formats.modelpack import HUB_BLOB_ID, HUB_LFS, file_paths, is_modelpack
from hf2oci.reference import Reference
from hf2oci.repofiles import INDEX_PATH, REPO_DIR, parts_of
from hf2oci.retry import REQUEST_POLICY
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHORT = re.compile(r"[0-9a-f]{12}")
#: for images made before the file index (no hub hashes): what the hub's default .gitattributes
#: stores in LFS, and files of 10 MB and more
LFS_THRESHOLD = 10 * 1000 * 1000
#: bytes read from the storage at a time by one download, at most (see ``ReadBudget``)
CHUNK = 4 << 20
#: connections to the registry kept alive: a download streaming to its client holds one between
#: the worker threads' reads, so as many as downloads in flight (a full pool drops the rest)
UPSTREAM_CONNECTIONS = 256
_LFS_NAMES = re.compile(
    r".*\.(7z|arrow|bin|bz2|ckpt|ftz|gz|h5|joblib|mlmodel|model|msgpack|npy|npz|onnx|ot|parquet"
    r"|pb|pickle|pkl|pt|pth|rar|safetensors|tar|tflite|tgz|wasm|xz|zip|zst|gguf)$|.*tfevents.*"
    r"|saved_model/.*|.*\.tar\..*|.*\.lfs\..*"
)


#: where some of a file's bytes are: ``(layer, offset in its blob, length)``
Span = tuple[StoredLayer, int, int]


@dataclass
class RepoFile:
    """One file of a mirrored repo: where its bytes are (one span of a layer blob, or one per
    part for a file carried in parts) and what the hub says they hash to."""

    path: str
    size: int
    spans: tuple[Span, ...]
    sha256: str | None = None
    blob_id: str | None = None
    #: the hub's Xet hash of the content, when the image recorded one
    xet_hash: str | None = None
    #: the hashes above were recorded at mirror time (False: an image made before the file
    #: index, whose hashes are computed here when first asked)
    recorded: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if sum(n for _, _, n in self.spans) != self.size:
            raise PackError(f"the file index's parts of {self.path!r} do not add up to its size")

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    def chunks(
        self, start: int = 0, length: int | None = None, piece: Piece = CHUNK
    ) -> Iterator[bytes]:
        """The file's bytes from ``start`` (sub-ranges of its layer blobs), ``piece`` at a
        time."""
        n = self.size - start if length is None else length
        if len(self.spans) == 1:  # the common case: one range of one blob
            layer, offset, _ = self.spans[0]
            return layer.iter_range(offset + start, n, piece)
        return self._across(start, n, piece)

    def _across(self, start: int, n: int, piece: Piece) -> Iterator[bytes]:
        at = 0
        for layer, offset, size in self.spans:
            if n <= 0:
                return
            if start < at + size:
                skip = max(0, start - at)
                take = min(size - skip, n)
                yield from layer.iter_range(offset + skip, take, piece)
                start, n = start + take, n - take
            at += size

    def ensure_hashes(self) -> None:
        """Images made before the file index carry no hub hashes: compute them once."""
        if self.blob_id is not None:
            return
        with self._lock:
            if self.blob_id is not None:
                return
            sha1 = git_blob_hash(self.size)
            sha256 = hashlib.sha256()
            for chunk in self.chunks():
                sha1.update(chunk)
                sha256.update(chunk)
            if self.size >= LFS_THRESHOLD or _LFS_NAMES.fullmatch(self.path):
                self.sha256 = sha256.hexdigest()
                pointer = lfs_pointer(self.sha256, self.size)
                blob = git_blob_hash(len(pointer))
                blob.update(pointer)
                self.blob_id = blob.hexdigest()
            else:
                self.blob_id = sha1.hexdigest()

    @property
    def etag(self) -> str:
        self.ensure_hashes()
        return self.sha256 or cast(str, self.blob_id)


class ReadBudget:
    """The downloads in flight share one memory budget: each read is ``budget / n`` bytes
    (within ``low``..``high``), n counted at the time of the read. Fewer, bigger reads cost
    less CPU (8 downloads in 1 MiB reads took 1.4x the time of 4 MiB ones here), and the bytes
    in flight stay near ``budget`` whatever the number of clients."""

    def __init__(self, budget: int = 32 << 20, low: int = 64 << 10, high: int = CHUNK) -> None:
        self.budget, self.low, self.high = budget, low, high
        self.active = 0
        self._lock = threading.Lock()

    def piece(self) -> int:
        """The size of the next read."""
        return max(self.low, min(self.high, self.budget // max(1, self.active)))

    def start(self) -> None:
        with self._lock:
            self.active += 1

    def end(self) -> None:
        with self._lock:
            self.active -= 1


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


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


def read_files(image: Image) -> dict[str, RepoFile]:
    """The file index of ``image``: from its index layer, else by walking its tar headers."""
    layers = [cast(StoredLayer, layer) for layer in image.layers]
    if is_modelpack(image.manifest_doc):
        return _from_modelpack(image, layers)
    descriptors = image.manifest_doc.get("layers") or []
    for position, desc in enumerate(descriptors):
        if (desc.get("annotations") or {}).get(L.FILE_INDEX):
            return _from_index(layers, position)
    files: dict[str, RepoFile] = {}
    for layer in layers:
        if layer.media_type != MT_LAYER_TAR and not layer.media_type.endswith(".tar"):
            continue  # a compressed layer: a base image's (hf2oci writes plain tar)
        for entry in tar_entries(layer):
            if entry.is_file and entry.path.startswith(f"{REPO_DIR}/"):
                rel = entry.path[len(REPO_DIR) + 1 :]
                span = ((layer, entry.offset, entry.size),)
                files[rel] = RepoFile(rel, entry.size, span, recorded=False)
    return files


def _from_modelpack(image: Image, layers: list[StoredLayer]) -> dict[str, RepoFile]:
    """A ModelPack artifact's files: each layer is one (or one part of one), its blob the
    file's bytes (a Range read of a file is one of its blob); the hub's hashes from the layer
    annotations."""
    files = {}
    descriptors = image.manifest_doc.get("layers") or []
    for path, layer, desc in zip(file_paths(image.manifest_doc), layers, descriptors, strict=True):
        notes = desc.get("annotations") or {}
        lfs = notes.get(HUB_LFS) == "true"
        files[path] = RepoFile(
            path, layer.size, ((layer, 0, layer.size),),
            sha256=layer.digest.removeprefix("sha256:") if lfs else None,
            blob_id=notes.get(HUB_BLOB_ID),
        )  # fmt: skip
    return joined(files, L.of_image(image))


def joined(files: dict[str, RepoFile], labels: dict[str, str]) -> dict[str, RepoFile]:
    """``files`` with each file carried in parts (``io.hf2oci.parts``) one file again, over
    its parts' spans; PackError for a join whose parts are not all there."""
    try:
        joins = parts_of(labels)
    except ValueError as e:
        raise PackError(str(e)) from e
    for path, join in joins.items():
        pieces = [files.pop(n, None) for n in join.names]
        sizes = [p.size if p else -1 for p in pieces]
        if path in files or sizes != [join.length(i + 1) for i in range(len(join.names))]:
            raise PackError(f"the parts of {path!r} are not as the image's labels say")
        spans = tuple(s for p in pieces if p for s in p.spans)
        blob_id = _pointer_blob_id(join.sha256, join.size)
        files[path] = RepoFile(path, join.size, spans, sha256=join.sha256, blob_id=blob_id)
    return files


def _pointer_blob_id(sha256: str, size: int) -> str:
    """The git blob id of an LFS file: its pointer's (what the hub lists as its ``oid``)."""
    pointer = lfs_pointer(sha256, size)
    blob = git_blob_hash(len(pointer))
    blob.update(pointer)
    return str(blob.hexdigest())


def _from_index(layers: list[StoredLayer], at: int) -> dict[str, RepoFile]:
    """The files the index layer (at position ``at``) lists. Its positions are those of the
    first platform's image; the repo layers end just before the index layer on every one, so
    a base with another number of layers shifts them all alike."""
    holder = layers[at]
    raw = b"".join(holder.iter_range(0, holder.size))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        member = tar.getmember(INDEX_PATH)
        data = tar.extractfile(member)
        if data is None:
            raise PackError("the file index is not a file")
        doc: Any = json.loads(data.read())
    files = {}
    try:
        entries = doc["files"]
        spans = {str(e["path"]): _spans(e) for e in entries}
        last = max((i for s in spans.values() for i, _, _ in s), default=at - 1)
        shift = at - (last + 1)
        for e in entries:
            path = str(e["path"])
            placed = []
            for i, offset, size in spans[path]:
                if not 0 <= i + shift < at:
                    raise IndexError(f"layer {i} of {path!r} is not in the image")
                placed.append((layers[i + shift], offset, size))
            files[path] = RepoFile(
                path, int(e["size"]), tuple(placed),
                sha256=e.get("sha256"), blob_id=e.get("blob_id"), xet_hash=e.get("xet_hash"),
            )  # fmt: skip
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise PackError(f"the file index is malformed ({e})") from e
    return files


def _spans(entry: dict[str, Any]) -> list[tuple[int, int, int]]:
    """An index entry's ``(layer, offset, length)`` spans: one, or its ``parts``."""
    if "parts" in entry:
        return [(int(i), int(o), int(n)) for i, o, n in entry["parts"]]
    return [(int(entry["layer"]), int(entry["offset"]), int(entry["size"]))]


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

    def on_retry(e: BaseException) -> None:
        counts.add("retries")
        counts.add(f"fault:{fault_kind(e)}")

    policy = replace(REQUEST_POLICY, on_retry=on_retry)
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
