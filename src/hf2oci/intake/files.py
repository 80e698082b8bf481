"""A repo's file bytes from the hub: to disk, streamed in order, or by range.

``Reader`` is how one repo revision's files are read: a file the hub keeps in Xet through
``hf_xet`` (``xet.XetReader``), unless ``xet: off``; any other over plain HTTP from its
``resolve`` URL (small files one GET each; a large file as Range requests, several at once,
each resumed where a cut stops it), all under the hub's retry policy. Every byte is checked
against what the hub says the file hashes to (``digest.verified``: the last piece waits for
the hash), except header reads by range, which no hash covers.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from hf2oci import naming
from hf2oci.digest import Expected, verified
from hf2oci.errors import HubError, HubUnreachable, Temporary
from hf2oci.http import ResumableBody, read_exactly
from hf2oci.intake import hub
from hf2oci.intake.hub import HubFile, RepoState, what_of
from hf2oci.intake.xet import INSTALL, XetReader, available
from hf2oci.retry import RetryPolicy
from hf2oci.spec import XetMode

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: the hub's plain-HTTP face of a Xet file (the CAS bridge) answers 400 above this size
#: (xet-core #592): such a file can only come through Xet
BRIDGE_LIMIT = 50 * 10**9

#: files from this size on are fetched over several connections at once, in parts of
#: ``PART_SIZE`` (a hub or CDN may cap each connection's speed)
PARALLEL_MIN_SIZE = 64 << 20
PART_SIZE = 4 << 20
#: the part buffers of all files streamed at once: a file takes up to ``connections + 1`` of
#: them while they last, and 2 when they do not (never waiting), so memory stays bounded
PART_BUDGET = 24 << 20
#: a part is given out in copies of this size (its buffer is used again for the next part)
PIECE = 1 << 20
_budget = {"left": PART_BUDGET}
_budget_lock = threading.Lock()
DEFAULT_CONNECTIONS = 6

RangeSource = Callable[[int, int], Iterator[bytes]]


def connections() -> int:
    """Connections per large file: ``HF2OCI_HUB_CONNECTIONS``, else 6."""
    try:
        return max(1, int(os.environ.get("HF2OCI_HUB_CONNECTIONS", DEFAULT_CONNECTIONS)))
    except ValueError:
        return DEFAULT_CONNECTIONS


class Reader:
    """How one repo revision's files are read (``xet``: whether Xet files go through hf_xet).
    Close it (or use it as a context manager) to let its Xet download group go."""

    def __init__(self, state: RepoState, *, xet: XetMode = "auto") -> None:
        self.state = state
        self.mode = xet
        self._xet: XetReader | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._xet is not None:
            self._xet.close()

    def via_xet(self, file: HubFile) -> bool:
        """Whether ``file`` comes through hf_xet. A Xet file too big for the hub's HTTP bridge
        can come no other way: without hf_xet, or with ``xet: off``, it fails here, in one
        line saying what to do."""
        if not file.xet_hash:
            return False
        if self.mode == "auto" and available():
            return True
        if file.size > BRIDGE_LIMIT:
            raise _xet_only(self.state, file, self.mode, "its plain-HTTP bridge stops at 50 GB")
        return False

    def ranges(self, file: HubFile) -> RangeSource:
        """Reads ``file``'s bytes ``[start, end)``, unchecked (the caller checks them: the
        parts of a file carried in parts are checked together)."""
        if self.via_xet(file):
            reader = self._xet_reader()
            return lambda start, end: reader.read(file, start, end)
        return lambda start, end: _http_range(self.state, file, self.mode, start, end)

    def stream(self, file: HubFile) -> Iterator[bytes]:
        """``file``'s bytes in order, without touching the disk, checked: the last piece is
        given out once the hash matches the hub's (LFS sha256 or git blob sha1), so a
        consumer never completes a blob with wrong content."""
        return verified(
            self.ranges(file)(0, file.size),
            _expected(file),
            what=f"{what_of(self.state)}: {file.path}",
            background=file.size >= PARALLEL_MIN_SIZE,
        )

    def source(self, file: HubFile) -> Callable[[], Iterator[bytes]]:
        """A chunk source for a tar entry: each call streams the file anew."""
        return lambda: self.stream(file)

    def read_range(self, file: HubFile, start: int, length: int) -> bytes:
        """``length`` bytes of ``file`` from ``start`` (fewer at its end), for reading a header
        without downloading the file. Unchecked: no hash covers a part."""
        length = max(0, min(length, file.size - start))
        if length == 0:
            return b""
        if self.via_xet(file):
            return b"".join(self._xet_reader().read(file, start, start + length))
        return _http_read_range(self.state, file, self.mode, start, length)

    def ranged(self, file: HubFile) -> RangedFile:
        return RangedFile(self, file)

    def download(self, paths: Sequence[str], *, cache_dir: Path, max_workers: int = 8) -> Path:
        """Download ``paths`` into ``cache_dir``/files (plain files at their repo paths),
        several at once; each checked against the hub's hash and retried on its own by the
        retry policy, written aside and renamed in. Returns that folder.

        One GET per file on a kept-alive connection, not huggingface_hub's per-file HEAD,
        locks and cache links: thousands of small files cost seconds, not minutes.
        """
        root = cache_dir / "files"
        root.mkdir(parents=True, exist_ok=True)
        if not paths:
            return root
        with ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="hub") as pool:
            futures = [pool.submit(self._save, self.state.file(p), root) for p in paths]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return root

    def _save(self, file: HubFile, root: Path) -> None:
        target = root.joinpath(*hub.safe_parts(file.path, what_of(self.state)))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            with open(tmp, "wb") as out:
                for piece in self.stream(file):
                    out.write(piece)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)

    def _xet_reader(self) -> XetReader:
        with self._lock:
            if self._xet is None:
                self._xet = XetReader(self.state)
            return self._xet


@dataclass(frozen=True)
class RangedFile:
    """A hub file read in parts, for ``RangeReader`` (a file's header without the file)."""

    reader: Reader
    file: HubFile

    @property
    def size(self) -> int:
        return self.file.size

    def read_range(self, start: int, length: int) -> bytes:
        return self.reader.read_range(self.file, start, length)


def _expected(file: HubFile) -> Expected:
    if not (file.sha256 or file.blob_id):
        raise HubError(f"the hub gave no hash for {file.path!r}: cannot verify it")
    return Expected(file.size, sha256=file.sha256, blob_id=file.blob_id)


def _xet_only(state: RepoState, file: HubFile, mode: XetMode, why: str) -> HubError:
    """The one line for a Xet file that plain HTTP cannot bring."""
    fix = (
        "set xet: auto in get_hf/config.yaml (or drop --no-xet)"
        if mode == "off"
        else f"install hf_xet ({INSTALL})"
    )
    return HubError(
        f"{what_of(state)}: {file.path} comes only through the hub's Xet storage ({why}): {fix}"
    )


# -- plain HTTP ------------------------------------------------------------------------------


def _http_range(
    state: RepoState, file: HubFile, mode: XetMode, start: int, end: int
) -> Iterator[bytes]:
    n = connections()
    if n > 1 and end - start >= PARALLEL_MIN_SIZE:
        return _parts(state, file, n, mode, first=start, stop=end)
    return _serial(_body(state, file, mode, start=start, end=end), 1 << 20)


def _http_read_range(
    state: RepoState, file: HubFile, mode: XetMode, start: int, length: int
) -> bytes:
    def read(resp: Any) -> bytes:
        skip = start if resp.status_code == 200 else 0  # Range ignored: the whole file
        data = bytearray()
        for chunk in resp.iter_content(1 << 20):
            data += chunk
            if len(data) >= skip + length:
                break
        got = bytes(data[skip : skip + length])
        if len(got) < length:
            raise Temporary(f"range read ended at {len(got)} of {length} bytes")
        return got

    rng = {"range": f"bytes={start}-{start + length - 1}"}
    url = _resolve_url(state, file)

    def answer(resp: Any) -> bytes:
        if resp.status_code >= 400:
            raise _file_error(resp, state, file, mode)
        return read(resp)

    sent = {"accept-encoding": "identity", **rng}
    what = f"{what_of(state)}: {file.path}"
    return hub.hub_get(url, what, answer, headers=sent, failed="range read failed")


def _file_headers() -> dict[str, str]:
    """What a file request sends: the file's bytes as stored, not compressed on the way."""
    return hub.request_headers({"accept-encoding": "identity"})


def _resolve_url(state: RepoState, file: HubFile) -> str:
    repo = naming.hub_path(state.repo_id, state.repo_type)
    return f"{hub.endpoint()}/{repo}/resolve/{state.commit}/{quote(file.path, safe='/')}"


def _file_error(resp: Any, state: RepoState, file: HubFile, mode: XetMode) -> HubError:
    """A file answer's refusal as ours (``hub.refusal``); a Xet file's 400 is its bridge
    refusing it: it comes only through Xet."""
    if resp.status_code == 400 and file.xet_hash:
        return _xet_only(state, file, mode, "its plain-HTTP bridge refused it")
    return hub.refusal(resp, what_of(state), state.commit, path=file.path)


def _serial(body: ResumableBody, chunk_size: int) -> Iterator[bytes]:
    """The body's bytes in chunks of ``chunk_size`` (the last one shorter)."""
    with body:
        while True:
            chunk = bytearray(chunk_size)
            n = read_exactly(body, chunk)
            if not n:
                return
            yield chunk if n == chunk_size else chunk[:n]  # type: ignore[misc]


def _parts(
    state: RepoState,
    file: HubFile,
    n: int,
    mode: XetMode,
    *,
    first: int = 0,
    stop: int | None = None,
) -> Iterator[bytes]:
    """The file's bytes ``[first, stop)`` in order, as parts fetched by ``n`` connections at
    once (n + 1 parts ahead while ``PART_BUDGET`` lasts: the next ones to give out are fetched
    while the consumer is slower or a part lags).

    The part buffers are made once and handed on: each part read is copied out to its
    consumer and its buffer goes to the next part's fetch, so memory stays at those buffers
    (fresh buffers per part, freed in other threads, grew glibc's arenas by ~25 MiB a file)."""
    what = f"{what_of(state)}: {file.path}"
    last = file.size if stop is None else stop
    starts = iter(range(first, last, PART_SIZE))
    stopped = threading.Event()
    headers = _file_headers()  # read once: the token may come from a file

    def fetch(start: int, buffer: bytearray) -> tuple[bytearray, int]:
        end = min(start + PART_SIZE, last)
        view = memoryview(buffer)[: end - start]
        with _body(state, file, mode, start=start, end=end, headers=headers) as body:
            got = 0
            while got < len(view):
                if stopped.is_set():
                    raise HubError(f"{what}: download stopped")
                got += body.readinto(view[got : got + (256 << 10)])
        return buffer, len(view)

    with _budget_lock:  # the window: n + 1 parts ahead while the budget lasts, else 2
        window = max(2, min(n + 1, _budget["left"] // PART_SIZE))
        _budget["left"] -= window * PART_SIZE
    try:
        with ThreadPoolExecutor(min(n, window), thread_name_prefix="hub-part") as pool:
            ahead: collections.deque[Future[tuple[bytearray, int]]] = collections.deque(
                pool.submit(fetch, start, bytearray(PART_SIZE))
                for start in itertools.islice(starts, window)
            )
            try:
                while ahead:
                    buffer, length = ahead.popleft().result()
                    view = memoryview(buffer)
                    for at in range(0, length, PIECE):  # each piece copied out in turn; once
                        piece = bytes(view[at : min(at + PIECE, length)])
                        if at + PIECE >= length:  # the last one is, the buffer goes on
                            nxt = next(starts, None)
                            if nxt is not None:
                                ahead.append(pool.submit(fetch, nxt, buffer))
                        yield piece
            finally:
                stopped.set()
                for future in ahead:
                    future.cancel()
    finally:  # once the pool has finished with the buffers
        with _budget_lock:
            _budget["left"] += window * PART_SIZE


def _body(
    state: RepoState,
    file: HubFile,
    mode: XetMode,
    *,
    start: int = 0,
    end: int | None = None,
    policy: RetryPolicy | None = None,
    headers: Mapping[str, str] | None = None,
) -> ResumableBody:
    """A file's bytes ``[start, end)`` from its ``resolve`` URL, resumed where a cut stops it
    (``headers``: ``_file_headers()``, when the caller has them already)."""
    what = f"{what_of(state)}: {file.path}"
    stop = file.size if end is None else end
    url, headers = _resolve_url(state, file), headers or _file_headers()

    def open_at(offset: int) -> Any:
        sent = dict(headers)
        if offset or stop < file.size:
            sent["range"] = f"bytes={offset}-{stop - 1}"
        resp = hub.request(url, what, sent)
        if resp.status_code >= 400:
            error = _file_error(resp, state, file, mode)
            resp.close()
            raise error
        return resp

    def gave_up(e: BaseException, offset: int) -> HubUnreachable:
        return HubUnreachable(f"{what}: download failed: {e}")

    return ResumableBody(open_at, what=what, start=start, end=stop,
                         policy=policy or hub.HUB_POLICY, gave_up=gave_up)  # fmt: skip
