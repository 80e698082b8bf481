"""Files of a snapshot → an OCI image: layer grouping, labels and annotations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf2oci.errors import PackError
from hf2oci.hub import RepoState
from hf2oci.oci.image import BaseImage, Image, assemble
from hf2oci.oci.layers import TarLayer
from hf2oci.oci.tarstream import entries_for_files
from hf2oci.spec import RepoSpec

#: where the repo's files live inside the image
REPO_DIR = "REPO"
#: overlayfs stacks at most ~125 layers (with the base's); stay well under it
MAX_REPO_LAYERS = 64
#: files below this size share one layer; each larger file gets a layer of its own, so the
#: same weights file gives the same layer digest in every revision and repo
DEFAULT_SMALL_FILE_LIMIT = 1 << 20

LABEL_PREFIX = "io.huggingface"


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


def group_files(
    sized: Sequence[tuple[str, int]],
    *,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layers: int = MAX_REPO_LAYERS,
) -> list[tuple[str, ...]]:
    """Split files into layers: small files together, each large file alone (deterministic).

    With more large files than ``max_layers`` allows, neighbouring files (by path) share layers.
    """
    ordered = sorted(sized)
    small = tuple(p for p, s in ordered if s < small_limit)
    large = [p for p, s in ordered if s >= small_limit]
    groups: list[tuple[str, ...]] = [small] if small else []
    room = max(1, max_layers - len(groups))
    if len(large) <= room:
        groups.extend((p,) for p in large)
    else:
        per, extra = divmod(len(large), room)
        start = 0
        for i in range(room):
            end = start + per + (1 if i < extra else 0)
            groups.append(tuple(large[start:end]))
            start = end
    return groups


def image_labels(state: RepoState, spec: RepoSpec, base: BaseImage) -> dict[str, str]:
    """Config labels (also used as manifest annotations). No secrets, nothing run-dependent."""
    labels = {
        "org.opencontainers.image.source": state.url,
        "org.opencontainers.image.revision": state.commit,
        "org.opencontainers.image.title": state.repo_id,
        "org.opencontainers.image.created": state.last_modified,
        "org.opencontainers.image.base.name": base.name,
        f"{LABEL_PREFIX}.repo_id": state.repo_id,
        f"{LABEL_PREFIX}.repo_type": state.repo_type,
        f"{LABEL_PREFIX}.revision": state.commit,
        f"{LABEL_PREFIX}.filter": spec.filter_key,
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
) -> Image:
    """Assemble the image: the base's layers, then the repo's files under ``/REPO``."""
    if not files.paths:
        raise PackError("no file to pack: the filters keep nothing")
    sources = {p: files.source(p) for p in files.paths}
    layers = []
    for group in group_files(files.sizes(), small_limit=small_limit):
        entries = entries_for_files([(p, sources[p]) for p in group], prefix=REPO_DIR)
        layers.append(TarLayer(entries))
    return assemble(base, layers, labels=labels, annotations=labels, created=created)
