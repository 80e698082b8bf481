"""One file of a mirrored repo as serve reads it: where its bytes are in an image's layer blobs
and what the hub says they hash to; an image's files from its file index (or its tar headers,
or a ModelPack's layers)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from hf2oci import labels as L
from hf2oci.digest import git_blob_hash
from hf2oci.errors import PackError
from hf2oci.oci.image import MT_LAYER_TAR, Image, Piece
from hf2oci.oci.source import StoredLayer, tar_entries
from hf2oci.pack.formats.modelpack import HUB_BLOB_ID, HUB_LFS, file_paths, is_modelpack
from hf2oci.repofiles import INDEX_PATH, REPO_DIR, parts_of

#: for images made before the file index (no hub hashes): what the hub's default .gitattributes
#: stores in LFS, and files of 10 MB and more
LFS_THRESHOLD = 10 * 1000 * 1000
#: bytes read from the storage at a time by one download, at most (see ``ReadBudget``)
CHUNK = 4 << 20
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


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


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
