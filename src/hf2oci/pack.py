"""Files of a snapshot → an OCI image: layer grouping, labels and annotations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hf2oci.errors import PackError
from hf2oci.oci.image import BaseImage, Image, assemble, canonical_json, sha256_digest
from hf2oci.oci.layers import TarLayer
from hf2oci.oci.tarstream import entries_for_files
from hf2oci.spec import RepoSpec

if TYPE_CHECKING:  # the hub module loads huggingface_hub: not needed to read images
    from hf2oci.hub import HubFile, RepoState

#: where the repo's files live inside the image
REPO_DIR = "REPO"
#: overlayfs stacks at most ~125 layers (with the base's); stay well under it
MAX_REPO_LAYERS = 64
#: files below this size share one layer; each larger file gets a layer of its own, so the
#: same weights file gives the same layer digest in every revision and repo
DEFAULT_SMALL_FILE_LIMIT = 1 << 20

LABEL_PREFIX = "io.huggingface"
LABEL_REPO_ID = f"{LABEL_PREFIX}.repo_id"
LABEL_REPO_TYPE = f"{LABEL_PREFIX}.repo_type"
#: the hub commit the image holds
LABEL_REVISION = f"{LABEL_PREFIX}.revision"
#: the revision asked for (a branch, a tag or a commit sha), as the hub cache's refs/ names it
LABEL_REF = f"{LABEL_PREFIX}.ref"
LABEL_FILTER = f"{LABEL_PREFIX}.filter"
DEFAULT_REF = "main"
#: layer annotation: what the layer holds (paths and hub hashes), so a later run can reuse the
#: layer without downloading the files again (the tar is a pure function of them)
CONTENT_KEY = "io.hf2oci.content"
#: bump when the tar bytes for the same files change, so old content keys stop matching
TAR_FORMAT = "hf2oci-tar-1"


@dataclass(frozen=True)
class RepoFiles:
    """The files that go under ``/REPO``: repo paths, read from ``root`` (symlinks followed)."""

    root: Path
    paths: tuple[str, ...]

    def source(self, path: str) -> Path:
        return (self.root / path).resolve()

    def sizes(self) -> list[tuple[str, int]]:
        out = []
        for p in self.paths:
            try:
                out.append((p, self.source(p).stat().st_size))
            except OSError as e:
                raise PackError(f"cannot read {p!r}: {e.strerror}") from e
        return out

    @property
    def total_size(self) -> int:
        return sum(size for _, size in self.sizes())

    @classmethod
    def scan(cls, root: Path) -> RepoFiles:
        """Every regular file under ``root`` (what a prepare hook left in OUT_DIR)."""
        paths = []
        for p in sorted(root.rglob("*")):
            if p.is_symlink() and not p.resolve().is_relative_to(root.resolve()):
                raise PackError(f"{p.relative_to(root)} links outside the output folder")
            if p.is_file():
                paths.append(p.relative_to(root).as_posix())
        return cls(root=root, paths=tuple(paths))


def split_files(
    sized: Sequence[tuple[str, int]],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """``(small files, groups of large files)``: small files share one layer, large files get
    one each; with more large files than ``max_layers`` allows, neighbours (by path) share."""
    ordered = sorted(sized)
    small = tuple(p for p, s in ordered if s < small_limit)
    large = [p for p, s in ordered if s >= small_limit]
    room = max(1, max_layers - (1 if small else 0))
    if len(large) <= room:
        return small, [(p,) for p in large]
    per, extra = divmod(len(large), room)
    groups, start = [], 0
    for i in range(room):
        end = start + per + (1 if i < extra else 0)
        groups.append(tuple(large[start:end]))
        start = end
    return small, groups


def group_files(
    sized: Sequence[tuple[str, int]],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
) -> list[tuple[str, ...]]:
    """The layers' file groups in image order: the small files' layer first (deterministic)."""
    small, large = split_files(sized, small_limit=small_limit, max_layers=max_layers)
    return ([small] if small else []) + large


def file_hashes(files: Sequence[HubFile]) -> dict[str, str]:
    """The hub's hash of each file: ``sha256:…`` for LFS files, ``gitsha1:…`` for the others."""
    out = {}
    for f in files:
        if f.sha256:
            out[f.path] = f"sha256:{f.sha256}"
        elif f.blob_id:
            out[f.path] = f"gitsha1:{f.blob_id}"
    return out


def layer_annotations(group: Sequence[str], hashes: Mapping[str, str]) -> dict[str, str]:
    """Annotations of a layer: its content key, and its file name when it holds one file."""
    if any(p not in hashes for p in group):
        return {}
    key = sha256_digest(
        canonical_json({"format": TAR_FORMAT, "files": [[p, hashes[p]] for p in group]})
    )
    out = {CONTENT_KEY: key}
    if len(group) == 1:
        out["org.opencontainers.image.title"] = group[0]
    return out


def image_labels(state: RepoState, spec: RepoSpec, base: BaseImage) -> dict[str, str]:
    """Config labels (also used as manifest annotations). No secrets, nothing run-dependent."""
    labels = {
        "org.opencontainers.image.source": state.url,
        "org.opencontainers.image.revision": state.commit,
        "org.opencontainers.image.title": state.repo_id,
        "org.opencontainers.image.created": state.last_modified,
        "org.opencontainers.image.base.name": base.name,
        LABEL_REPO_ID: state.repo_id,
        LABEL_REPO_TYPE: state.repo_type,
        LABEL_REVISION: state.commit,
        LABEL_REF: state.requested,
        LABEL_FILTER: spec.filter_key,
    }
    if base.digest:
        labels["org.opencontainers.image.base.digest"] = base.digest
    if state.license:
        labels["org.opencontainers.image.licenses"] = state.license
    return labels


def build_image(
    files: RepoFiles,
    *,
    labels: Mapping[str, str],
    base: BaseImage,
    created: str,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    hashes: Mapping[str, str] | None = None,
) -> Image:
    """Assemble the image: the base's layers, then the repo's files under ``/REPO``.

    ``hashes`` (the hub's, when the files are the hub's unchanged) add content-key annotations.
    """
    if not files.paths:
        raise PackError("no file to pack: the filters keep nothing")
    sources = {p: files.source(p) for p in files.paths}
    layers = []
    notes = []
    for group in group_files(files.sizes(), small_limit=small_limit):
        entries = entries_for_files([(p, sources[p]) for p in group], prefix=REPO_DIR)
        layers.append(TarLayer(entries))
        notes.append(layer_annotations(group, hashes or {}))
    return assemble(
        base,
        layers,
        labels=labels,
        annotations=labels,
        created=created,
        layer_annotations=notes,
    )
