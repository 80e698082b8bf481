"""Image → folder (or Hugging Face cache), without a Docker engine: verified and safe.

Reads an image from a registry or a local OCI layout, checks every blob against its digest while
streaming it, and unpacks what is under ``/REPO`` into a staging folder next to DEST that is
renamed into place only when everything checked out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf2oci import labels as L
from hf2oci.consume.hfcache import cache_place, into_hf_cache
from hf2oci.consume.unpack import UnpackedFile, Unpacker, modelpack_paths, unpack_all
from hf2oci.errors import ExtractError, UsageError
from hf2oci.labels import REF as LABEL_REF
from hf2oci.labels import REPO_ID as LABEL_REPO_ID
from hf2oci.labels import REPO_TYPE as LABEL_REPO_TYPE
from hf2oci.labels import REVISION as LABEL_REVISION
from hf2oci.oci.source import open_image
from hf2oci.repofiles import parts_of
from hf2oci.trust.verify import model_signature, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    dest: Path
    files: int
    bytes: int
    #: manifest digest of the image extracted
    digest: str
    repo_id: str | None
    repo_type: str | None
    revision: str | None
    #: in --hf-cache mode: the snapshot folder inside the cache
    snapshot: Path | None = None
    #: the revision the image was made from as asked for (refs/<ref> in the cache)
    ref: str | None = None


def _staging_for(dest: Path) -> Path:
    """A fresh ``.NAME.partial-XXXX`` beside ``dest``; earlier killed runs' ones are removed."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for old in dest.parent.glob(f".{dest.name}.partial-*"):
            log.debug("removing %s, left by an interrupted extract", old)
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as e:
        raise ExtractError(f"cannot create a folder beside {dest}: {e}") from e


def extract(
    image: str,
    dest: Path,
    *,
    hf_cache: bool = False,
    include: Sequence[str] = (),
    workers: int = 4,
    force: bool = False,
    direct: bool = True,
    plain_http: bool | None = None,
    on_layer: Callable[[str], None] | None = None,
    meter: Callable[[int], Callable[[int], None]] | None = None,
    verify_key: bytes | None = None,
    signature: Path | None = None,
) -> ExtractResult:
    """Unpack ``/REPO`` of ``image`` into ``dest`` (or into the HF hub cache at ``dest``).

    DEST appears only once every layer has been read and checked; a non-empty DEST is replaced
    only with ``force``. In cache mode other repos in the cache are left alone. ``direct``
    writes big files with O_DIRECT where the filesystem allows it. ``meter``, given the bytes
    to read, returns what to tell of each part read (progress). ``verify_key`` (a PEM public
    key): the image must verify (``hf2oci verify``) before anything is written, and every file
    must match the signed provenance's hash of it before DEST appears. ``signature``: where
    to write the image's OpenSSF model signature (for ``model_signing verify``); an image
    without one fails before anything is written.
    """
    dest = Path(dest).absolute()
    if not hf_cache and dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise UsageError(f"{dest} exists and is not empty (use --force to replace it)")
    signed: dict[str, dict[str, str]] | None = None
    if verify_key is not None:
        report = verify(image, verify_key, plain_http=plain_http)
        failed = [f.line() for f in report.findings if not f.ok]
        if failed:
            raise ExtractError(f"{image}: not verified, nothing written: {failed[0]}")
        signed = report.files or None  # none listed: a prepare hook made the files
    source = open_image(image, plain_http=plain_http)
    if verify_key is not None and source.digest not in (report.digest, *report.platforms):
        raise ExtractError(f"{image}: the tag moved while it was verified; nothing written")
    modelpack_paths(source)  # checked before anything is written
    bundle = None
    if signature is not None:
        bundle = model_signature(image, plain_http=plain_http)
        if bundle is None:
            raise ExtractError(f"{image}: no model signature refers to it; nothing written")
    labels = L.of_image(source)
    place = cache_place(image, labels) if hf_cache else None
    try:
        joins = parts_of(labels)
    except ValueError as e:
        raise ExtractError(f"{image}: {e}") from e
    cache_existed = dest.exists()
    staging = _staging_for(dest / ".hf2oci" if hf_cache else dest)
    on_bytes = meter(sum(layer.size for layer in source.layers)) if meter else None
    unpacker = Unpacker(
        staging, include, hash_files=hf_cache or signed is not None, direct=direct,
        on_bytes=on_bytes, joins=joins,
    )  # fmt: skip
    snapshot = None
    try:
        unpack_all(source, unpacker, workers, on_layer)
        unpacker.finish_joins()
        if signed is not None:
            _check_signed(unpacker.files, signed, image, complete=not include)
        if place is not None:
            snapshot = into_hf_cache(unpacker, dest, place)
        else:
            _replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if hf_cache and not cache_existed:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        if hf_cache:
            shutil.rmtree(staging, ignore_errors=True)
    if signature is not None and bundle is not None:
        try:
            signature.write_bytes(bundle)
        except OSError as e:
            raise ExtractError(
                f"{signature}: cannot write the model signature ({e.strerror})"
            ) from e
    log.debug("extracted %d files of %s into %s", len(unpacker.files), source.digest, dest)
    return ExtractResult(
        dest=dest,
        files=len(unpacker.files),
        bytes=sum(f.size for f in unpacker.files.values()),
        digest=source.digest,
        repo_id=labels.get(LABEL_REPO_ID),
        repo_type=labels.get(LABEL_REPO_TYPE),
        revision=labels.get(LABEL_REVISION),
        snapshot=snapshot,
        ref=labels.get(LABEL_REF),
    )


def _check_signed(
    files: dict[str, UnpackedFile], signed: dict[str, dict[str, str]], image: str, *, complete: bool
) -> None:
    """Each file unpacked is one the provenance lists, with its hash (sha256, else git blob
    id); with ``complete``, every listed file was unpacked. ExtractError names the first that
    is not."""
    for rel in sorted(files):
        f, want = files[rel], signed.get(rel)
        if want is None:
            raise ExtractError(f"{image}: {rel} is not in the signed file list; nothing written")
        ok = f.sha256 == want["sha256"] if "sha256" in want else f.git_sha1 == want.get("gitBlob")
        if not ok:
            raise ExtractError(f"{image}: {rel} does not match its signed hash; nothing written")
    if complete:
        missing = sorted(set(signed) - set(files))
        if missing:
            raise ExtractError(f"{image}: {missing[0]} is signed but not in the image; nothing "
                               "written")  # fmt: skip


def _replace(staging: Path, dest: Path) -> None:
    """Put the complete folder in place; an old DEST is swapped out, then deleted."""
    old = None
    try:
        if dest.exists() or dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(staging, dest)
    except OSError as e:
        raise ExtractError(f"cannot put the extracted folder at {dest}: {e.strerror}") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
