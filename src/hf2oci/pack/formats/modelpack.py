"""Files → one CNCF ModelPack artifact (https://github.com/modelpack/model-spec): each file its own
raw layer, so a layer's digest is the file's sha256 (the hub's LFS oid) and the registry holds
each weights file once, whatever repo or revision it came in; a model config with what the
files say cheaply (format, architecture, parameter count, precision)."""

from __future__ import annotations

import json
import logging
import re
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from hf2oci import labels as L
from hf2oci.digest import sha256_digest, sha256_file
from hf2oci.errors import PackError
from hf2oci.gguf import KNOWN_QUANT, gguf_metadata
from hf2oci.oci.blobs import FileBlobLayer, RawStreamLayer
from hf2oci.oci.image import MT_MANIFEST, Descriptor, Image, Layer, canonical_json
from hf2oci.pack.formats.image import PackFile, raw_parts
from hf2oci.repofiles import Join, split
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MT_MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MT_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MT_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MT_DOC = "application/vnd.cncf.model.doc.v1.raw"
MT_CODE = "application/vnd.cncf.model.code.v1.raw"
MT_DATASET = "application/vnd.cncf.model.dataset.v1.raw"
#: every layer media type of the spec (raw, tar, tar+gzip, tar+zstd of each kind)
LAYER_TYPES = frozenset(
    f"application/vnd.cncf.model.{kind}.v1.{form}"
    for kind in ("weight", "weight.config", "doc", "code", "dataset")
    for form in ("raw", "tar", "tar+gzip", "tar+zstd")
)
FILEPATH = "org.cncf.model.filepath"
UNTESTED = "org.cncf.model.file.mediatype.untested"
#: the hub's hashes of the file, for a Hub API server: LFS ("true" when the digest is the
#: hub's LFS sha256) and the git blob sha1
HUB_LFS = "io.hf2oci.lfs"
HUB_BLOB_ID = "io.hf2oci.blob-id"
#: more layers than this make a manifest registries refuse (4 MiB) and clients crawl
MAX_LAYERS = 4000

_WEIGHTS = {
    ".safetensors": "safetensors", ".gguf": "gguf", ".bin": "pytorch", ".pt": "pytorch",
    ".pth": "pytorch", ".ckpt": "pytorch", ".onnx": "onnx", ".h5": "keras", ".keras": "keras",
    ".msgpack": "flax", ".tflite": "tflite", ".pb": "tensorflow", ".mlmodel": "coreml",
    ".ot": "rust-bert", ".npz": "numpy", ".nemo": "nemo", ".pdparams": "paddle",
}  # fmt: skip
_CONFIGS = {".json", ".model", ".jinja", ".yaml", ".yml", ".tiktoken", ".spm"}
_CONFIG_NAMES = re.compile(r"(vocab|merges|added_tokens|special_tokens).*\.txt$|.*tokenizer.*")
_CODE = {".py", ".sh", ".ipynb", ".js", ".ts", ".c", ".cc", ".cpp", ".cu", ".h", ".rs", ".go"}
_DOCS = {".md", ".txt", ".rst", ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".html"}
_DOC_NAMES = re.compile(r"(LICEN[CS]E|NOTICE|COPYING|USE_POLICY|README|CITATION)([.-].*)?", re.I)
_DATA_FORMATS = {
    ".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl", ".json": "json", ".csv": "csv",
    ".tsv": "tsv", ".txt": "text", ".tar": "webdataset", ".zip": "zip",
}  # fmt: skip
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip

#: opens the first bytes of a file for reading its header (a local file, or hub Range reads)
Opener = Callable[[PackFile], AbstractContextManager[BinaryIO]]


def media_type(path: str, repo_type: RepoType) -> tuple[str, bool]:
    """The spec's raw media type for a repo file, and whether that is a guess (``untested``)."""
    p = PurePosixPath(path)
    suffix = p.suffix.lower()
    if _DOC_NAMES.fullmatch(p.name) or (suffix == ".md"):
        return MT_DOC, False
    if repo_type == "dataset":
        return MT_DATASET, False
    if suffix in _WEIGHTS:
        return MT_WEIGHT, False
    if suffix in _CONFIGS or _CONFIG_NAMES.fullmatch(p.name.lower()):
        return MT_WEIGHT_CONFIG, False
    if suffix in _CODE:
        return MT_CODE, False
    if suffix in _DOCS:
        return MT_DOC, False
    return MT_DOC, True  # .gitattributes and the like: not model content, kept as documents


def check_file_count(n: int) -> None:
    """PackError when ``n`` files would make too many layers (checked when planning)."""
    if n > MAX_LAYERS:
        raise PackError(
            f"{n} files: a ModelPack artifact has one layer per file, and more than "
            f"{MAX_LAYERS} make a manifest registries refuse; mirror this repo with format=image"
        )


def build_modelpack(
    files: Sequence[PackFile],
    *,
    repo_type: RepoType,
    descriptor: Mapping[str, Any],
    labels: Mapping[str, str],
    open_head: Opener,
    max_layer_size: int | None = None,
) -> Image:
    """The ModelPack artifact of ``files``: raw layers in path order, each annotated with its
    path; the config's ``descriptor`` as given, its ``config`` read from the files' headers.
    Streamed files learn nothing new from being written: their digest is the hub's sha256. A
    file over ``max_layer_size`` goes in parts, a raw layer each (``io.hf2oci.parts`` says how
    to join them)."""
    if not files:
        raise PackError("no file to pack: the filters keep nothing")
    ordered = sorted(files, key=lambda f: f.path)
    if len({f.path for f in ordered}) != len(ordered):
        raise PackError("a file is listed twice")
    layers: list[Layer] = []
    notes: list[dict[str, str]] = []
    joins: dict[str, object] = {}
    for f in ordered:
        kind, guessed = media_type(f.path, repo_type)
        note = {FILEPATH: f.path, L.TITLE: f.path}
        if guessed:
            note[UNTESTED] = "true"
        if f.sha256:
            note[HUB_LFS] = "true"
        if f.blob_id:
            note[HUB_BLOB_ID] = f.blob_id
        if max_layer_size is None or f.size <= max_layer_size:
            layers.append(_layer(f, kind))
            notes.append(note)
            continue
        parts = split(f.path, f.size, max_layer_size, lambda _name, _size: 0)
        sha256, sources = raw_parts(f, parts)
        joins[f.path] = Join.of(sha256, parts).to_json()
        for part, source in zip(parts, sources, strict=True):
            layers.append(RawStreamLayer(source, part.size, media_type=kind))
            notes.append({**note, FILEPATH: part.name, L.TITLE: part.name, HUB_LFS: "false"})
    check_file_count(len(layers))
    if joins:
        labels = {**labels, L.PARTS: canonical_json(joins).decode()}
    model = model_config(ordered, repo_type, open_head)

    def render() -> tuple[bytes, bytes]:
        config = canonical_json(
            {
                "descriptor": dict(descriptor),
                "config": model,
                "modelfs": {"type": "layers", "diffIds": [layer.digest for layer in layers]},
            }
        )
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": Descriptor(MT_MODEL_CONFIG, sha256_digest(config), len(config)).to_json(),
            "layers": [
                Descriptor(layer.media_type, layer.digest, layer.size, note).to_json()
                for layer, note in zip(layers, notes, strict=True)
            ],
        }
        if labels:
            manifest["annotations"] = dict(labels)
        return config, canonical_json(manifest)

    return Image(layers, render=render, media_type=MT_MANIFEST, name="modelpack")


def _layer(f: PackFile, kind: str) -> Layer:
    known = f"sha256:{f.sha256}" if f.sha256 else None
    if isinstance(f.source, Path):
        digest = known or _sha256_file(f.source)
        return FileBlobLayer(f.source, media_type=kind, diff_id=digest, digest=digest, size=f.size)
    return RawStreamLayer(f.source, f.size, media_type=kind, digest=known)


def _sha256_file(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise PackError(f"cannot read {str(path)!r}: {e.strerror}") from e


# -- what the files say ------------------------------------------------------------------------


def model_config(
    files: Sequence[PackFile], repo_type: RepoType, open_head: Opener
) -> dict[str, str]:
    """The spec's ``config`` object: format, architecture, parameter count, precision and
    quantization, from file names, ``config.json`` and the weights' headers (a few KiB each)."""
    if repo_type == "dataset":
        found = Counter(
            _DATA_FORMATS[s]
            for f in files
            if (s := PurePosixPath(f.path).suffix.lower()) in _DATA_FORMATS
        )
        return {"format": found.most_common(1)[0][0]} if found else {}
    config: dict[str, str] = {}
    weights = [f for f in files if PurePosixPath(f.path).suffix.lower() in _WEIGHTS]
    formats = Counter(_WEIGHTS[PurePosixPath(f.path).suffix.lower()] for f in weights)
    if formats:
        # safetensors beside .bin copies of the same weights: the format loaders prefer
        fmt = "safetensors" if "safetensors" in formats else formats.most_common(1)[0][0]
        config["format"] = fmt
        weights = [f for f in weights if _WEIGHTS[PurePosixPath(f.path).suffix.lower()] == fmt]
    top = next((f for f in files if f.path == "config.json"), None)
    if top is not None and isinstance(top.source, Path):
        config.update(_transformers_config(top.source))
    try:
        if config.get("format") == "safetensors":
            config.update(_safetensors_summary(weights, open_head))
        elif config.get("format") == "gguf":
            config.update(_gguf_summary(weights, open_head))
    except (OSError, ValueError, struct.error) as e:  # a header we cannot read: say less
        log.info("model config: weights headers not read: %s", e)
    return config


def _transformers_config(path: Path) -> dict[str, str]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out = {}
    arches = doc.get("architectures")
    if isinstance(arches, list) and arches and isinstance(arches[0], str):
        out["architecture"] = arches[0]
    elif isinstance(doc.get("model_type"), str):
        out["architecture"] = doc["model_type"]
    dtype = doc.get("torch_dtype") or doc.get("dtype")
    if isinstance(dtype, str):
        out["precision"] = dtype
    return out


def _safetensors_summary(weights: Sequence[PackFile], open_head: Opener) -> dict[str, str]:
    """Parameter count and the dtype holding most of them, from each file's JSON header."""
    by_dtype: Counter[str] = Counter()
    for f in weights:
        with open_head(f) as head:
            (n,) = struct.unpack("<Q", _read(head, 8))
            if n > 100 << 20:
                raise ValueError(f"{f.path}: a header of {n} bytes")
            header = json.loads(_read(head, n))
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape") or []:
                count *= int(dim)
            by_dtype[str(tensor.get("dtype"))] += count
    if not by_dtype:
        return {}
    dtype = by_dtype.most_common(1)[0][0]
    return {
        "paramSize": _param_size(sum(by_dtype.values())),
        "precision": _SAFETENSORS_DTYPES.get(dtype, dtype.lower()),
    }


def _gguf_summary(weights: Sequence[PackFile], open_head: Opener) -> dict[str, str]:
    """Architecture, size label and quantization of the first GGUF (the metadata comes first
    in the file; reading stops once the keys are found)."""
    first = weights[0]
    keys = ("general.architecture", "general.size_label")
    with open_head(first) as head:
        meta = gguf_metadata(head, keys)
    out = {}
    if meta.get("general.architecture"):
        out["architecture"] = str(meta["general.architecture"])
    if meta.get("general.size_label"):
        out["paramSize"] = str(meta["general.size_label"])
    quant = KNOWN_QUANT.search(PurePosixPath(first.path).name)
    if quant:
        out["quantization"] = quant.group(1).upper()
        out["precision"] = out["quantization"]
    return out


def _read(head: BinaryIO, n: int) -> bytes:
    data = head.read(n)
    if len(data) != n:
        raise ValueError("the file ends inside its header")
    return data


def _param_size(n: int) -> str:
    """A parameter count as model cards write it: 22.7M, 7.24B."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def is_modelpack(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest document is a ModelPack artifact's."""
    config = manifest.get("config")
    return manifest.get("artifactType") == ARTIFACT_TYPE or (
        isinstance(config, dict) and config.get("mediaType") == MT_MODEL_CONFIG
    )


def file_paths(manifest: Mapping[str, Any]) -> list[str]:
    """Each layer's file path (``org.cncf.model.filepath``), checked: relative, no ``.``/``..``
    or empty parts, no NUL or backslash, each path once and none inside another; PackError
    naming the bad one otherwise. A layer must be raw: its blob is the file."""
    paths: list[str] = []
    for i, desc in enumerate(manifest.get("layers") or []):
        notes = (desc.get("annotations") if isinstance(desc, dict) else None) or {}
        path = notes.get(FILEPATH) or notes.get(L.TITLE)
        kind = desc.get("mediaType") if isinstance(desc, dict) else None
        if kind not in LAYER_TYPES or not str(kind).endswith(".raw"):
            raise PackError(f"layer {i} is {kind!r}: only raw ModelPack layers are read")
        if not isinstance(path, str) or not path:
            raise PackError(f"layer {i} names no file path ({FILEPATH})")
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise PackError(f"refusing layer {i}: unsafe file path {path!r}")
        if "\0" in path or "\\" in path:
            raise PackError(f"refusing layer {i}: unsafe file path {path!r}")
        paths.append(path)
    seen = set(paths)
    if len(seen) != len(paths):
        twice = sorted(p for p in seen if paths.count(p) > 1)[0]
        raise PackError(f"refusing the artifact: {twice!r} is the path of two layers")
    for path in paths:
        parts = path.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in seen:
                raise PackError(
                    f"refusing the artifact: {path!r} is inside the file {'/'.join(parts[:n])!r}"
                )
    return paths
