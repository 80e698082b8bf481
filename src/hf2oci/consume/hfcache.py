"""A repo's files laid out as huggingface_hub's cache (``blobs``, ``snapshots/<commit>``,
``refs/<ref>``), so unchanged code finds them offline by repo id; where in the cache comes from
the image's labels, checked first (they are as untrusted as its files)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hf2oci.consume.unpack import Unpacker
from hf2oci.errors import ExtractError
from hf2oci.fsutil import atomic_write
from hf2oci.labels import DEFAULT_REF
from hf2oci.labels import REF as LABEL_REF
from hf2oci.labels import REPO_ID as LABEL_REPO_ID
from hf2oci.labels import REPO_TYPE as LABEL_REPO_TYPE
from hf2oci.labels import REVISION as LABEL_REVISION
from hf2oci.naming import InvalidRepoId, validate_repo_id
from hf2oci.spec import REPO_TYPES, plural

_COMMIT = re.compile(r"[0-9a-f]{40}")
#: a branch or tag name (or refs/pr/N), as a relative path with no empty or dot-only part
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")


@dataclass(frozen=True)
class CachePlace:
    """Where an image goes in the hub cache, from its labels (checked: they name paths)."""

    folder: str  # models--org--name
    commit: str
    ref: str | None  # refs/<ref> to write; None for an image of a commit asked for by its sha


def cache_place(image: str, labels: dict[str, str]) -> CachePlace:
    """The labels that --hf-cache turns into paths, refused unless they are what hf2oci writes:
    an image's labels are as untrusted as its files."""
    repo_id, commit = labels.get(LABEL_REPO_ID), labels.get(LABEL_REVISION)
    if not (repo_id and commit):
        raise ExtractError(f"{image}: no {LABEL_REPO_ID}/{LABEL_REVISION} labels for --hf-cache")
    try:
        validate_repo_id(repo_id)
    except InvalidRepoId as e:
        raise ExtractError(f"{image}: label {LABEL_REPO_ID}: {e}") from e
    if not _COMMIT.fullmatch(commit):
        raise ExtractError(f"{image}: label {LABEL_REVISION} {commit!r} is not a commit sha")
    repo_type = labels.get(LABEL_REPO_TYPE, "model")
    if repo_type not in REPO_TYPES:
        raise ExtractError(f"{image}: label {LABEL_REPO_TYPE} {repo_type!r} is not model/dataset")
    ref = labels.get(LABEL_REF, DEFAULT_REF)  # images made before the label: main
    if not _REF.fullmatch(ref) or ".." in ref or len(ref) > 255:
        raise ExtractError(f"{image}: label {LABEL_REF} {ref!r} is not a revision name")
    return CachePlace(
        folder=f"{plural(repo_type)}--{repo_id.replace('/', '--')}",
        commit=commit,
        # like huggingface_hub: a revision asked for by its sha gets no ref of its own
        ref=None if _COMMIT.fullmatch(ref) else ref,
    )


def into_hf_cache(unpacker: Unpacker, cache: Path, place: CachePlace) -> Path:
    """Lay the files out as huggingface_hub's cache: blobs, snapshots/<commit>, refs/<ref>.

    The hub names a blob by its ETag (sha256 for LFS files, git sha1 for others); readers with
    ``local_files_only`` only follow ``refs/`` and the snapshot links, so every blob is named by
    its sha256 here (an image does not say which files were LFS). The snapshot is built aside
    and renamed in, and the ref is written last: a reader never sees a partial snapshot.
    """
    commit = place.commit
    repo_dir = cache / place.folder
    blobs = repo_dir / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        snap_tmp = Path(tempfile.mkdtemp(prefix=f".{commit}.partial-", dir=repo_dir))
        try:
            for rel, f in sorted(unpacker.files.items()):
                assert f.sha256 is not None
                blob = blobs / f.sha256
                if not blob.exists():
                    os.replace(unpacker.staging.joinpath(*rel.split("/")), blob)
                link = snap_tmp.joinpath(*rel.split("/"))
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = rel.count("/") + 2  # snapshots/<commit>/<folders…> → ../../blobs
                link.symlink_to(Path(*([".."] * depth), "blobs", blob.name))
            snapshots = repo_dir / "snapshots"
            snapshots.mkdir(exist_ok=True)
            final = snapshots / commit
            if final.exists():
                shutil.rmtree(final)
            os.replace(snap_tmp, final)
        except BaseException:
            shutil.rmtree(snap_tmp, ignore_errors=True)
            raise
        refs = [place.ref] if place.ref is not None else []
        if place.ref != DEFAULT_REF and not (repo_dir / "refs" / DEFAULT_REF).exists():
            # the only copy this cache has: code that names no revision finds it; an image made
            # from main replaces it later, an image of another revision never moves it
            refs.append(DEFAULT_REF)
        for ref in refs:
            ref_file = repo_dir.joinpath("refs", *ref.split("/"))
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(ref_file, commit)
    except OSError as e:
        raise ExtractError(f"cannot write the HF cache at {cache}: {e}") from e
    return final
