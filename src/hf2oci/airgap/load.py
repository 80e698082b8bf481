"""``load``: a bundle (opened and checked by ``read.py``) into the inside registry, checked
before anything is published.

Before a byte is uploaded: the bundle read as ``read.py`` reads it, and every blob the bundle
expects the inside to hold there (HEAD, else a cross-repository mount). Then each blob goes up as
push does (HEAD, mount, upload), its bytes hashed on the way and the upload cut before its last
byte when they do not match its name, so a damaged blob never lands. With a key, each image's
signature and provenance are checked against the bundle's own copies. Manifests go next, tags
last. Running ``load`` again after a kill uploads only what had not arrived.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from hf2oci import labels as L
from hf2oci.airgap.read import KEEP_SMALL, Opened
from hf2oci.airgap.schema import BUNDLE_FILE, BundleInfo, Ref
from hf2oci.digest import CheckedReader, Expected
from hf2oci.errors import BundleError, Hf2ociError
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.stores import Repository
from hf2oci.spec import Mirrored
from hf2oci.trust.verify import check

log = logging.getLogger(__name__)

# -- publishing ------------------------------------------------------------------------------


class _Verified(CheckedReader):
    """A blob's bytes read through, checked: the read that would end it raises BundleError when
    they do not hash to its name, so the upload never completes; with ``keep``, the bytes are
    kept too (manifests, and what a signature check reads)."""

    def __init__(
        self,
        stream: IO[bytes],
        digest: str,
        size: int,
        where: str,
        keep: bool,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        def refuse(n: int, got: str) -> BundleError:
            return BundleError(
                f"{where}: blobs/sha256/{digest[7:]} is damaged: its {n} bytes hash to "
                f"sha256:{got[:12]}…, not to its name"
            )

        super().__init__(
            self._keeping, Expected.of_digest(digest, size), refuse=refuse, on_bytes=on_bytes
        )
        self.stream, self.where = stream, where
        self.kept = bytearray() if keep else None

    def _keeping(self, view: Any) -> int:
        n = int(self.stream.readinto(view) or 0)  # type: ignore[attr-defined]
        if self.kept is not None:
            self.kept += view[:n]
        return n


@dataclass
class LoadReport:
    uploaded: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    published: list[Ref] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.refused


def load(
    opened: Opened,
    client: RegistryClient,
    *,
    namespace: str | None = None,
    verify_key: bytes | None = None,
    on_blob: Callable[[str, str], None] | None = None,
    on_bytes: Callable[[int], Callable[[int], None] | None] | None = None,
) -> LoadReport:
    """Publish an opened bundle into ``client``'s registry, under ``namespace`` (default: the
    bundle's). BundleError, with nothing published, when a check fails. ``on_bytes``, given the
    bundle's blob bytes, returns what to tell of each read (progress)."""
    info = opened.info
    target = namespace or info.namespace

    def home(repository: str) -> str:
        return target + repository[len(info.namespace) :]

    report = LoadReport()
    _prerequisites(info, client, home, report)
    count = on_bytes(sum(info.blobs.values())) if on_bytes is not None else None
    manifests = {m.digest for m in info.manifests}
    kept: dict[str, bytes] = {}
    wanted = {d: [home(r) for r, n in info.needs.items() if d in n] for d in info.blobs}
    for member in opened.blobs():
        digest = "sha256:" + member.name.rsplit("/", 1)[1]
        repos = wanted.get(digest, [])
        keep = digest in manifests or (verify_key is not None and member.size <= KEEP_SMALL)
        lacking = [r for r in repos if not client.blob_exists(r, digest, push=True)]
        verified = _Verified(member.open(), digest, member.size, member.where, keep, count)
        try:
            if digest in manifests or not lacking:
                verified.drain()
                if repos:
                    report.present.append(digest)
            else:
                _upload(client, lacking, digest, member.size, verified, report)
                if on_blob is not None:
                    on_blob(digest, lacking[0])
        finally:
            verified.stream.close()
        if verified.kept is not None:
            kept[digest] = bytes(verified.kept)
    refused = _check_signatures(info, kept, client, home, verify_key) if verify_key else {}
    _publish(info, kept, client, home, refused, report)
    return report


def _prerequisites(
    info: BundleInfo, client: RegistryClient, home: Callable[[str], str], report: LoadReport
) -> None:
    missing: list[str] = []
    for repository, needed in info.needs.items():
        repo = home(repository)
        for digest in needed:
            if digest in info.blobs:
                continue
            if client.blob_exists(repo, digest, push=True):
                report.present.append(digest)
                continue
            holder = info.expects[digest]
            if holder != repo and client.mount_blob(repo, digest, holder):
                report.mounted.append(digest)
                continue
            missing.append(digest)
    if missing:
        raise BundleError(
            f"registry {client.registry} lacks {len(missing)} blob(s) the bundle expects it to "
            f"hold ({missing[0][:19]}…; the inventory it was made from is stale): take a new "
            "inventory and bundle again; nothing was published"
        )


def _upload(
    client: RegistryClient,
    repos: Sequence[str],
    digest: str,
    size: int,
    verified: _Verified,
    report: LoadReport,
) -> None:
    first, rest = repos[0], repos[1:]
    opened: list[bool] = []

    def opener() -> BinaryIO:
        if opened:
            raise BundleError(f"{verified.where}: blobs/sha256/{digest[7:]}: the upload failed "
                              "and cannot be retried from the bundle stream; run load again: "
                              "it resumes with what arrived")  # fmt: skip
        opened.append(True)
        return io.BufferedReader(verified, 1 << 20)

    try:
        client.upload_blob(first, digest, size, opener)
    except BundleError:
        raise
    except Hf2ociError as e:
        raise BundleError(f"uploading blobs/sha256/{digest[7:]} to {first}: {e}") from e
    report.uploaded.append(digest)
    report.uploaded_bytes += size
    for repo in rest:
        if not client.mount_blob(repo, digest, first):
            raise BundleError(f"registry {client.registry}: cannot mount {digest[:19]}… into "
                              f"{repo} from {first}")  # fmt: skip
        report.mounted.append(digest)


def _check_signatures(
    info: BundleInfo,
    kept: dict[str, bytes],
    client: RegistryClient,
    home: Callable[[str], str],
    public_pem: bytes,
) -> dict[str, str]:
    """Each image's signature and provenance, from the bundle's own copies (blobs it does not
    carry from the inside registry): image digest → the reason it is refused."""
    refused: dict[str, str] = {}
    for ref in info.refs:
        if ref.attachment or ref.digest in refused:
            continue
        repository = ref.repository

        def manifest(name: str, repository: str = repository) -> tuple[bytes, str] | None:
            if name.startswith("sha256:"):
                return (kept[name], "") if name in kept else None
            for r in info.refs:
                if r.repository == repository and r.tag == name and r.digest in kept:
                    return kept[r.digest], r.media_type
            return None

        def blob(digest: str, repository: str = repository) -> bytes:
            if digest in kept:
                return kept[digest]
            with client.get_blob(home(repository), digest) as stream:
                return stream.read()

        repo = Repository(manifest, blob)
        data = kept[ref.digest]
        annotations = json.loads(data).get("annotations") or {}
        labels = L.read(annotations, lambda: {})
        text = f"{home(repository)}:{ref.tag}"
        try:
            report = check(text, repo, ref.tag, data, labels, public_pem)
        except (Hf2ociError, ValueError) as e:
            refused[ref.digest] = f"{text}: not verified ({e})"
            continue
        if not report.ok:
            failed = "; ".join(f.line() for f in report.findings if not f.ok)
            refused[ref.digest] = f"{text}: not verified: {failed}"
    return refused


def _publish(
    info: BundleInfo,
    kept: dict[str, bytes],
    client: RegistryClient,
    home: Callable[[str], str],
    refused: dict[str, str],
    report: LoadReport,
) -> None:
    """Manifests by digest (children first), then attachment tags, then image tags: a client
    never sees a tag whose image is not whole. A refused image gets neither."""
    refused_attachments = _attachments_of(info, set(refused))
    for entry in info.manifests:
        if entry.digest in refused or entry.digest in refused_attachments:
            continue
        client.put_manifest(home(entry.repository), entry.digest, kept[entry.digest],
                            entry.media_type)  # fmt: skip
    for ref in info.refs:
        if ref.digest in refused or ref.digest in refused_attachments:
            continue
        client.put_manifest(home(ref.repository), ref.tag, kept[ref.digest], ref.media_type)
        report.published.append(ref)
    report.refused = sorted(set(refused.values()))


def _attachments_of(info: BundleInfo, digests: set[str]) -> set[str]:
    names = {"sha256-" + d[7:] for d in digests}
    return {r.digest for r in info.refs if r.attachment and r.tag.split(".")[0] in names}


def mirrored(
    opened: Opened, report: LoadReport, registry: str, namespace: str | None
) -> list[Mirrored]:
    """The record entries of the repos whose tags this load published: the outside's entries
    where the bundle carries them, with this registry's image name."""
    info = opened.info
    target = namespace or info.namespace
    published = {(r.repository, r.tag) for r in report.published}
    out = []
    for repo in info.repos:
        repository = str(repo.get("repository", ""))
        tags = [t for t in repo.get("tags") or [] if (repository, t) in published]
        if not tags:
            continue
        image = f"{registry}/{target}{repository[len(info.namespace) :]}"
        record = repo.get("record")
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(record, dict):
            try:
                entry = Mirrored.from_json(record, where=f"{BUNDLE_FILE}: {repo.get('repo_id')}")
            except Hf2ociError:
                record = None
            else:
                out.append(
                    dataclasses.replace(
                        entry,
                        image=image,
                        tags=tuple(tags),
                        destination="registry",
                        mirrored_at=now,
                    )
                )
                continue
        out.append(Mirrored(
            repo_id=str(repo["repo_id"]), repo_type=repo["repo_type"],
            revision=str(repo.get("revision", "")), requested_revision="main", image=image,
            tags=tuple(tags), digest=str(repo.get("digest", "")), size=0, file_count=0,
            mirrored_at=now,
        ))  # fmt: skip
    return out
