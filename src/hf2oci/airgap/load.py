"""``load``: a bundle into the inside registry, checked before anything is published.

Before a byte is uploaded: ``bundle.json`` against its schema, the checksum list against the small
files, every file (or volume) present, regular and of its size, and every blob the bundle expects
the inside to hold there (HEAD, else a cross-repository mount). Then each blob goes up as push does
(HEAD, mount, upload), its bytes hashed on the way and the upload cut before its last byte when
they do not match its name, so a damaged blob never lands. With a key, each image's signature and
provenance are checked against the bundle's own copies. Manifests go next, tags last. Running
``load`` again after a kill uploads only what had not arrived.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from hf2oci.airgap.schema import BUNDLE_FILE, CHECKSUMS_FILE, BundleInfo, Ref
from hf2oci.digest import Check, CheckedReader, Expected
from hf2oci.errors import BundleError, Hf2ociError
from hf2oci.oci import layout
from hf2oci.oci.registry import RegistryClient

log = logging.getLogger(__name__)

_SMALL = (layout.LAYOUT_FILE, BUNDLE_FILE, CHECKSUMS_FILE, layout.INDEX_FILE)
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")
#: what a small file of a bundle may weigh (bundle.json of thousands of repos included)
MAX_SMALL = 64 << 20
#: blobs up to this size are kept in memory while loading: the signature and provenance checks
#: read them (configs, signature payloads, attestations)
KEEP_SMALL = 4 << 20


@dataclass
class Member:
    """A file of the bundle as it is read: its path in the layout, and where it came from."""

    name: str
    size: int
    where: str
    open: Callable[[], IO[bytes]]


@dataclass
class Opened:
    """A bundle whose small files are read and checked; ``blobs()`` gives the rest, once."""

    info: BundleInfo
    where: str
    blobs: Callable[[], Iterator[Member]]
    sums: dict[str, str]


def _parse_checksums(data: bytes, where: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        found = _CHECKSUM_LINE.fullmatch(line)
        name = found.group(2) if found else ""
        if not found or not (name in _SMALL or _BLOB.fullmatch(name)) or name in sums:
            raise BundleError(f"{where}:{n}: not a checksum line of a bundle file: {line[:80]!r}")
        if name == CHECKSUMS_FILE:
            raise BundleError(f"{where}:{n}: the checksum list cannot cover itself")
        sums[name] = found.group(1)
    return sums


def _check_small(files: dict[str, bytes], sums: dict[str, str], where: str) -> BundleInfo:
    for name in (layout.LAYOUT_FILE, BUNDLE_FILE, layout.INDEX_FILE):
        if hashlib.sha256(files[name]).hexdigest() != sums.get(name):
            raise BundleError(f"{where}: {name} does not match {CHECKSUMS_FILE}")
    info = BundleInfo.from_json(files[BUNDLE_FILE], f"{where}: {BUNDLE_FILE}")
    for digest in info.blobs:
        name = "blobs/sha256/" + digest.partition(":")[2]
        if sums.get(name) != digest.partition(":")[2]:
            raise BundleError(f"{where}: {name} is not covered by {CHECKSUMS_FILE}")
    _check_index(files[layout.INDEX_FILE], info, where)
    return info


def _check_index(data: bytes, info: BundleInfo, where: str) -> None:
    """index.json (what other readers of the layout see) names what bundle.json says."""
    try:
        docs = json.loads(data).get("manifests") or []
        named = {(d["annotations"]["org.opencontainers.image.ref.name"], d["digest"]) for d in docs}
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise BundleError(f"{where}: {layout.INDEX_FILE} is not a bundle's index") from e
    if named != {(f"{r.repository}:{r.tag}", r.digest) for r in info.refs}:
        raise BundleError(f"{where}: {layout.INDEX_FILE} and {BUNDLE_FILE} name other images")


# -- a folder --------------------------------------------------------------------------------


def _regular(root: Path, name: str, size: int | None = None) -> Path:
    """``root/name`` when it is a regular file inside the bundle (no symlink on the way)."""
    path = root
    for part in name.split("/"):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError as e:
            raise BundleError(f"{root}: {name} is missing") from e
        except OSError as e:
            raise BundleError(f"{root}: {name}: {e.strerror}") from e
        last = path.name == name.rsplit("/", 1)[-1] and str(path).endswith(name)
        if stat.S_ISLNK(mode):
            raise BundleError(f"{root}: {name} is a symlink; a bundle holds only plain files")
        if not last and not stat.S_ISDIR(mode):
            raise BundleError(f"{root}: {name}: {path.name} is not a folder")
        if last and not stat.S_ISREG(mode):
            raise BundleError(f"{root}: {name} is not a plain file")
    if size is not None:
        got = path.lstat().st_size
        if got != size:
            raise BundleError(f"{root}: {name} is {got} bytes, {BUNDLE_FILE} says {size}")
    return path


def _file_opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def open_folder(root: Path) -> Opened:
    where = str(root)
    files: dict[str, bytes] = {}
    for name in _SMALL:
        path = _regular(root, name)
        if path.lstat().st_size > MAX_SMALL:
            raise BundleError(f"{root}: {name} is over {MAX_SMALL >> 20} MiB")
        files[name] = path.read_bytes()
    sums = _parse_checksums(files[CHECKSUMS_FILE], f"{root}/{CHECKSUMS_FILE}")
    info = _check_small(files, sums, where)
    paths = {d: _regular(root, "blobs/sha256/" + d[7:], s) for d, s in info.blobs.items()}
    manifests = {m.digest for m in info.manifests}

    def blobs() -> Iterator[Member]:
        for digest in sorted(paths, key=lambda d: (d not in manifests, info.blobs[d])):
            path = paths[digest]
            name = "blobs/sha256/" + digest[7:]
            yield Member(name, info.blobs[digest], where, _file_opener(path))

    return Opened(info, where, blobs, sums)


# -- a tar, in volumes -----------------------------------------------------------------------


def _first_volume(path: Path) -> Path:
    if path.is_file():
        return path
    split = path.with_name(path.name + ".001")
    if split.is_file():
        return split
    raise BundleError(f"{path}: no such bundle (neither {path.name} nor {split.name})")


class _Volumes(io.RawIOBase):
    """The volumes of a tar bundle read as one stream; each volume's sha256 checked against
    ``NAME.tar.sha256`` as its end passes (when that file came along)."""

    def __init__(self, first: Path) -> None:
        super().__init__()
        self.folder, self.names = first.parent, [first.name]
        self.index = 0
        self.current: BinaryIO | None = open(first, "rb")  # noqa: SIM115
        self.expected: dict[str, str] = {}
        self.check = Check(Expected(None))  # this volume's hash, matched at its end

    def readable(self) -> bool:
        return True

    @property
    def name_now(self) -> str:
        return self.names[min(self.index, len(self.names) - 1)]

    def plan(self, volumes: Sequence[tuple[str, int]]) -> None:
        """The volumes ``bundle.json`` lists: all present and whole, or one line naming one."""
        if not volumes:
            return
        if volumes[0][0] != self.names[0]:
            raise BundleError(f"{self.folder / self.names[0]}: {BUNDLE_FILE} names its first "
                              f"volume {volumes[0][0]}")  # fmt: skip
        for name, size in volumes:
            path = self.folder / name
            try:
                mode = path.lstat()
            except FileNotFoundError as e:
                raise BundleError(f"{path}: volume {name} is missing") from e
            if not stat.S_ISREG(mode.st_mode):
                raise BundleError(f"{path}: volume {name} is not a plain file")
            if mode.st_size != size:
                raise BundleError(f"{path}: volume {name} is {mode.st_size} bytes, "
                                  f"{BUNDLE_FILE} says {size} (truncated?)")  # fmt: skip
        self.names = [n for n, _ in volumes]
        base = self.names[0].removesuffix(".001")
        sums = self.folder / f"{base}.sha256"
        if sums.is_file() and not sums.is_symlink():
            for line in sums.read_text(errors="replace").splitlines():
                found = _CHECKSUM_LINE.fullmatch(line)
                if found:
                    self.expected[found.group(2)] = found.group(1)

    def readinto(self, buffer: Any) -> int:
        while self.current is not None:
            n = self.current.readinto(buffer)  # type: ignore[attr-defined]
            if n:
                self.check.update(memoryview(buffer)[:n])
                return int(n)
            self._end_of_volume()
        return 0

    def _end_of_volume(self) -> None:
        assert self.current is not None
        self.current.close()
        name = self.names[self.index]
        if name in self.expected and self.check.hexdigest() != self.expected[name]:
            raise BundleError(f"{self.folder / name}: volume {name} does not match its sha256")
        self.index += 1
        self.current = None
        if self.index < len(self.names):
            self.current = open(self.folder / self.names[self.index], "rb")  # noqa: SIM115
            self.check = Check(Expected(None))

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        super().close()


def open_tar(path: Path) -> tuple[Opened, _Volumes]:
    first = _first_volume(path)
    volumes = _Volumes(first)
    reader = io.BufferedReader(volumes, 1 << 20)
    tar = tarfile.open(fileobj=reader, mode="r|")  # noqa: SIM115
    where = str(first)
    files: dict[str, bytes] = {}
    members = iter(tar)
    for name in _SMALL:
        member = _next_member(members, volumes)
        if member is None or member.name != name:
            raise BundleError(f"{where}: expected {name} next, found "
                              f"{member.name if member else 'the end'!r}")  # fmt: skip
        if member.size > MAX_SMALL:
            raise BundleError(f"{where}: {name} is over {MAX_SMALL >> 20} MiB")
        stream = tar.extractfile(member)
        assert stream is not None
        files[name] = stream.read()
        if name == BUNDLE_FILE:
            # the volumes are known: check them all before reading on
            info = BundleInfo.from_json(files[name], f"{where}: {BUNDLE_FILE}")
            volumes.plan(info.volumes)
    sums = _parse_checksums(files[CHECKSUMS_FILE], f"{where}: {CHECKSUMS_FILE}")
    info = _check_small(files, sums, where)

    def blobs() -> Iterator[Member]:
        seen: set[str] = set()
        while (member := _next_member(members, volumes)) is not None:
            found = _BLOB.fullmatch(member.name)
            digest = "sha256:" + found.group(1) if found else ""
            if not found or digest not in info.blobs or digest in seen:
                raise BundleError(f"{volumes.folder / volumes.name_now}: {member.name!r} is not "
                                  f"a blob {BUNDLE_FILE} lists (or comes twice)")  # fmt: skip
            if member.size != info.blobs[digest]:
                raise BundleError(
                    f"{volumes.folder / volumes.name_now}: {member.name} is "
                    f"{member.size} bytes, {BUNDLE_FILE} says {info.blobs[digest]}"
                )
            seen.add(digest)
            stream = tar.extractfile(member)
            assert stream is not None
            yield Member(member.name, member.size, str(volumes.folder / volumes.name_now),
                         _once(stream, member.name))  # fmt: skip
        missing = sorted(set(info.blobs) - seen)
        if missing:
            raise BundleError(f"{where}: blobs/sha256/{missing[0][7:]} is missing from the "
                              f"tar ({len(missing)} blobs in all)")  # fmt: skip

    return Opened(info, where, blobs, sums), volumes


def _next_member(members: Iterator[tarfile.TarInfo], volumes: _Volumes) -> tarfile.TarInfo | None:
    try:
        member = next(members, None)
    except tarfile.TarError as e:
        raise BundleError(f"{volumes.folder / volumes.name_now}: not a readable tar ({e})") from e
    if member is not None and not member.isreg():
        kind = "a symlink" if member.issym() or member.islnk() else "not a plain file"
        raise BundleError(f"{volumes.folder / volumes.name_now}: {member.name!r} is {kind}; a "
                          "bundle holds only plain files")  # fmt: skip
    return member


def _once(stream: IO[bytes], name: str) -> Callable[[], IO[bytes]]:
    """A tar member can be read once: a second attempt (a retried upload) says so."""
    used: list[bool] = []

    def opener() -> IO[bytes]:
        if used:
            raise BundleError(f"{name}: the upload failed and a tar cannot be read back; run "
                              "load again: it resumes with what arrived")  # fmt: skip
        used.append(True)
        return stream

    return opener


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
    from hf2oci import labels as L
    from hf2oci.trust.verify import _Repo, check

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

        repo = _Repo(manifest, blob)
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


def open_bundle(path: Path) -> tuple[Opened, Callable[[], None]]:
    """A folder or a tar bundle, opened and checked; with its closer."""
    if path.is_dir():
        return open_folder(path), lambda: None
    opened, volumes = open_tar(path)
    return opened, volumes.close


def mirrored(opened: Opened, report: LoadReport, registry: str, namespace: str | None) -> list[Any]:
    """The record entries (``Mirrored``) of the repos whose tags this load published: the
    outside's entries where the bundle carries them, with this registry's image name."""
    import dataclasses
    import datetime as dt

    from hf2oci.spec import Mirrored

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
