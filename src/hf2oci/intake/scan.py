"""Pickle scanning on the way in: which kept files import something that runs code on load.

Every file whose name says it may hold a pickle (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``,
``.pickle``, ``.joblib``, ``.npy``, ``.npz``) is read by ``picklescan`` (the scanner the Hugging
Face hub runs) before anything is written. A file that is on disk is read there; a streamed one
by Range reads of the hub: a PyTorch zip checkpoint costs its central directory, its
``data.pkl`` and the heads of its small members (big ones are opened when named as pickles); a
legacy checkpoint its leading pickles; a plain ``.npy`` its header. A raw pickle must be read
whole, so ``whole_read`` tells the pipeline to download it to disk instead of streaming it (one
download, then scanned there).

Each file gets a verdict: ``clean`` (parsed, nothing dangerous), ``dangerous`` (with the
imports), ``unparsed`` (a pickle the scanner could not read to its end: a finding) or
``not-a-pickle`` (raw tensors, fastText, tokenizer data: never refused). The hub's own verdict
(``securityFileStatus``), where it answers one, is kept beside ours; ``unsafe`` is a finding.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import logging
import pickletools
import struct
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Literal

from hf2oci.errors import ScanRefused
from hf2oci.spec import ScanPolicy

if TYPE_CHECKING:
    from picklescan.scanner import ScanResult

log = logging.getLogger(__name__)
# picklescan logs each finding as a warning; the verdicts here say it once, in our words
logging.getLogger("picklescan").setLevel(logging.CRITICAL)

Verdict = Literal["clean", "dangerous", "unparsed", "not-a-pickle"]

#: names that may hold a pickle (``.npz`` is a zip of ``.npy`` files)
SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_NPY = b"\x93NUMPY"
#: what ``torch.save``'s legacy format starts with: PROTO 2, then the magic number as LONG1
_TORCH_LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
#: how many bytes a streamed file is read in while scanning: the heads of a checkpoint's small
#: members (biases, norms, the version files), which lie side by side, come in one read
RANGE_BLOCK = 64 << 10
#: in a file read by Range reads, a zip member bigger than this is opened only when its name
#: says pickle: no loader unpickles a member it does not pick by name (torch: ``data.pkl``,
#: ``constants.pkl``; numpy: ``*.npy``), and each such head would cost a request of its own (a
#: 2 GiB checkpoint of 256 tensors: 13 s of Range reads against 10 s for the whole stream)
RANGED_HEAD_LIMIT = 1 << 20
#: the biggest pickle that is scanned, raw or inside a zip (a checkpoint's data.pkl is KiBs to
#: MiBs; the scanner holds every opcode of a pickle and its arguments in memory, several times
#: the pickle's size): a bigger one is a finding, never a memory blowup
MAX_PICKLE = 256 << 20


def candidate(path: str) -> bool:
    """Whether ``path``'s name says it may hold a pickle."""
    return path.lower().endswith(SUFFIXES)


def _is_proto(head: bytes) -> bool:
    """Starts like a pickle of protocol 2 or later (PROTO opcode and its version)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def whole_read(head: bytes) -> bool:
    """Whether scanning a file that starts with ``head`` (16 bytes) reads all of it: a raw
    pickle (not a zip, not a legacy PyTorch file, whose pickles come first)."""
    return _is_proto(head) and not head.startswith(_TORCH_LEGACY)


@dataclass(frozen=True)
class FileVerdict:
    path: str
    verdict: Verdict
    #: ``module.name`` of each dangerous import, sorted
    imports: tuple[str, ...] = ()
    #: why a pickle could not be read (``unparsed``)
    detail: str = ""
    #: the hub's ``securityFileStatus.status`` ("safe", "unsafe", …), None when it gave none
    hub: str | None = None

    @property
    def finding(self) -> str | None:
        """The one-line finding (``pytorch_model.bin imports posix.system``), None when none."""
        if self.verdict == "dangerous":
            return f"{self.path} imports {', '.join(self.imports)}"
        if self.verdict == "unparsed":
            return f"{self.path} is a pickle the scanner cannot read ({self.detail})"
        if self.hub == "unsafe":
            return f"{self.path}: the hub's own scan says unsafe"
        return None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"verdict": self.verdict}
        if self.imports:
            doc["imports"] = list(self.imports)
        if self.detail:
            doc["detail"] = self.detail
        if self.hub is not None:
            doc["hub"] = self.hub
        return doc


@dataclass(frozen=True)
class ScanReport:
    """The verdicts of a repo's pickle-based files under a policy."""

    policy: ScanPolicy
    files: tuple[FileVerdict, ...] = ()
    #: bytes read to scan (beyond any download): Range reads of streamed files, disk reads
    bytes_read: int = 0
    #: pickle-based files left unscanned (policy off)
    unscanned: tuple[str, ...] = field(default=())

    @property
    def findings(self) -> list[str]:
        return [f for f in (v.finding for v in self.files) if f]

    @property
    def summary(self) -> str:
        """One line for labels, the ledger and the pages: ``clean (2 pickle files)``,
        ``warn: a.bin imports posix.system``, ``off (1 pickle file not scanned)``."""
        if self.policy == "off":
            return f"off ({_count(len(self.unscanned), 'pickle file')} not scanned)"
        findings = self.findings
        if findings:
            return f"{self.policy}: {'; '.join(findings)}"
        pickles = sum(1 for v in self.files if v.verdict != "not-a-pickle")
        others = len(self.files) - pickles
        parts = [_count(pickles, "pickle file")] + ([f"{others} not a pickle"] if others else [])
        return f"clean ({', '.join(parts)})"

    def details(self) -> str:
        """Every file's verdict as compact JSON (an image label)."""
        doc = {v.path: v.to_json() for v in self.files}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def check(self, repo: str) -> None:
        """Raise ScanRefused for the first finding when the policy refuses."""
        findings = self.findings
        if self.policy != "refuse" or not findings:
            return
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise ScanRefused(
            f"{repo}: {findings[0]}: refused (scan: refuse){more}; preset=safetensors on the "
            "list line mirrors only the safetensors weights, scan: warn publishes with the "
            "finding recorded"
        )


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


#: opens a kept file for reading (seekable): from disk, or by Range reads of the hub
Opener = Callable[[str], AbstractContextManager[BinaryIO]]


def scan_files(
    paths: Sequence[str],
    open_file: Opener,
    policy: ScanPolicy,
    *,
    hub_verdicts: Mapping[str, str] | None = None,
    ranged: frozenset[str] = frozenset(),
) -> ScanReport:
    """Scan the pickle-based ``paths`` (others are ignored) under ``policy``; those in
    ``ranged`` are read by Range reads (``RANGED_HEAD_LIMIT``)."""
    todo = sorted(p for p in paths if candidate(p))
    if policy == "off":
        return ScanReport(policy, unscanned=tuple(todo))
    verdicts = []
    read = 0
    for path in todo:
        with open_file(path) as raw:
            counted = _Counting(raw)
            verdict = scan_one(path, io.BufferedReader(counted, RANGE_BLOCK), ranged=path in ranged)
            read += counted.count
        hub = (hub_verdicts or {}).get(path)
        verdicts.append(dataclasses.replace(verdict, hub=hub))
        log.debug("scan %s: %s (%d bytes read)", path, verdict.verdict, counted.count)
    return ScanReport(policy, tuple(verdicts), bytes_read=read)


def scan_one(path: str, data: BinaryIO, *, ranged: bool = False) -> FileVerdict:
    """The verdict on one file (``data``: seekable, at its start; ``ranged``: read by Range
    reads, so big zip members not named as pickles are left unopened)."""
    from picklescan import scanner as ps

    head = data.read(16)
    data.seek(0)
    try:
        if head.startswith(_ZIP):
            result = _scan_zip(path, data, head_limit=RANGED_HEAD_LIMIT if ranged else None)
        elif head.startswith(_NPY):
            return _scan_npy(path, data)
        elif head.startswith(_TORCH_LEGACY):
            result = ps.scan_pytorch(data, path)
        else:
            size = data.seek(0, io.SEEK_END)
            data.seek(0)
            if _is_proto(head) and size > MAX_PICKLE:
                return FileVerdict(path, "unparsed", detail=(
                    f"a pickle of {size} bytes, over the {MAX_PICKLE >> 20} MiB the scanner "
                    "reads (it holds a pickle in memory)"))  # fmt: skip
            result = ps.scan_pickle_bytes(data, path)
    except Exception as e:  # picklescan raises what the bytes make it raise
        return FileVerdict(path, "unparsed", detail=_reason(e))
    dangerous = _dangerous(result)
    if dangerous:
        return FileVerdict(path, "dangerous", dangerous)
    if result.scan_err:
        return FileVerdict(path, "unparsed", detail="it stops in the middle of a pickle")
    if not result.globals and not head.startswith((*_ZIP, _TORCH_LEGACY)):
        # picklescan calls a stream it cannot parse at all "not a pickle": one that starts
        # like a pickle and breaks is one it cannot read (a finding); the rest is not a pickle
        data.seek(0)
        error = _first_pickle_error(data)
        if error is not None:
            if _is_proto(head):
                return FileVerdict(path, "unparsed", detail=error)
            return FileVerdict(path, "not-a-pickle")
    return FileVerdict(path, "clean")


def _reason(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200] or type(e).__name__


def _first_pickle_error(data: BinaryIO) -> str | None:
    """Why the first pickle in ``data`` does not parse, None when it does."""
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:
        return _reason(e)
    return None


def _scan_zip(path: str, data: BinaryIO, *, head_limit: int | None = None) -> ScanResult:
    """picklescan's zip scan (PyTorch checkpoints, ``.npz``), with ``.npy`` members read here
    (no numpy needed); members over ``head_limit`` bytes are opened only when named as
    pickles or arrays."""
    from picklescan import scanner as ps
    from picklescan.relaxed_zipfile import RelaxedZipFile

    result = ps.ScanResult([])
    with RelaxedZipFile(data, "r") as archive:
        for info in archive.infolist():
            name = info.filename
            suffix = PurePosixPath(name).suffix.lower()
            named = suffix in ps._pickle_file_extensions or suffix == ".npy"
            if name.endswith("/") or (
                head_limit is not None and info.file_size > head_limit and not named
            ):
                continue
            with archive.open(name, "r") as member:
                magic = member.read(8)
            is_pickle = suffix in ps._pickle_file_extensions or _is_proto(magic)
            if is_pickle and info.file_size > MAX_PICKLE:
                raise ValueError(f"{name} inside is a pickle of {info.file_size} bytes")
            if is_pickle:
                with archive.open(name, "r") as member:
                    result.merge(ps.scan_pickle_bytes(member, f"{path}:{name}"))
            elif suffix == ".npy" or magic.startswith(_NPY):
                with archive.open(name, "r") as member:
                    verdict = _scan_npy(f"{path}:{name}", member)
                if verdict.verdict == "dangerous":
                    globals_ = [
                        ps.Global(*i.rsplit(".", 1), ps.SafetyLevel.Dangerous)
                        for i in verdict.imports
                    ]
                    result.merge(ps.ScanResult(globals_, 1, len(globals_), 1))
                elif verdict.verdict == "unparsed":
                    result.merge(ps.ScanResult([], 1, 0, 0, scan_err=True))
    return result


def _scan_npy(path: str, data: BinaryIO) -> FileVerdict:
    """A ``.npy`` array: its header says whether it holds objects (then a pickle follows)."""
    from picklescan import scanner as ps

    try:
        header = _npy_header(data)
        descr = ast.literal_eval(header)["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError, struct.error) as e:
        return FileVerdict(path, "unparsed", detail=f"a .npy header that does not parse: {e}")
    if "O" not in repr(descr):
        return FileVerdict(path, "not-a-pickle")
    start = data.tell()
    result = ps.scan_pickle_bytes(data, path)
    dangerous = _dangerous(result)
    if dangerous:
        return FileVerdict(path, "dangerous", dangerous)
    data.seek(start)
    error = "it stops in the middle of a pickle" if result.scan_err else _first_pickle_error(data)
    if error is not None:
        return FileVerdict(path, "unparsed", detail=f"an object array whose pickle breaks: {error}")
    return FileVerdict(path, "clean")


def _dangerous(result: ScanResult) -> tuple[str, ...]:
    """``module.name`` of each dangerous import picklescan found, sorted, once each."""
    from picklescan import scanner as ps

    names = (f"{g.module}.{g.name}" for g in result.globals if g.safety == ps.SafetyLevel.Dangerous)
    return tuple(sorted(set(names)))


def _npy_header(data: BinaryIO) -> str:
    """The header dict's text of a ``.npy`` stream, leaving ``data`` just after it."""
    magic = data.read(8)
    if not magic.startswith(_NPY) or len(magic) < 8:
        raise ValueError("no .npy magic")
    major = magic[6]
    if major == 1:
        (size,) = struct.unpack("<H", data.read(2))
    elif major in (2, 3):
        (size,) = struct.unpack("<I", data.read(4))
    else:
        raise ValueError(f"version {major}")
    if size > 1 << 20:
        raise ValueError(f"a header of {size} bytes")
    text = data.read(size)
    return text.decode("utf-8" if major == 3 else "latin-1")


class _Counting(io.RawIOBase):
    """A seekable reader that counts the bytes read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)
