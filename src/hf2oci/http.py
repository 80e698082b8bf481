"""HTTP for every client of hf2oci: ``requests`` sessions made one way, and the one resumable
reader of a response body.

The hub client keeps a session per thread (``hub_session``), a registry ``Transport`` one for its
registry (``new_session``); both pool connections and write big blocks. ``ResumableBody`` reads
a resource's bytes straight into the caller's buffer and, when the connection is cut or a read
fails, opens it again at the byte it stopped at (a Range request) under the one retry policy:
hub downloads, registry blob reads and serve's Range reads all read through it.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import requests
import requests.adapters

from hf2oci.errors import Temporary
from hf2oci.retry import (
    DEFAULT_POLICY,
    TRANSPORT_ERRORS,
    RetryPolicy,
    causes,
    is_temporary,
    retrying,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: bigger socket writes than urllib3's 16 KiB default: blobs are large
SEND_BLOCK = 1 << 20


class _BigBlockAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SEND_BLOCK
        super().init_poolmanager(*args, **kwargs)


def new_session(*, pool: int = 16) -> requests.Session:
    """A session that keeps up to ``pool`` connections per host and writes big blocks."""
    session = requests.Session()
    adapter = _BigBlockAdapter(pool_connections=4, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_local = threading.local()


def hub_session() -> requests.Session:
    """This thread's session to the hub (connections kept alive between files and repos)."""
    session: requests.Session | None = getattr(_local, "hub", None)
    if session is None:
        session = _local.hub = new_session(pool=4)
    return session


class ResumableBody(io.RawIOBase):
    """The bytes ``[start, end)`` of a resource, read straight into the caller's buffer.

    ``open_at(offset)`` sends one request for the bytes from ``offset`` (a Range request past
    ``start`` or short of the end) and returns the streamed response, or raises: ``Temporary``
    (or an error ``is_temporary`` accepts) when another try may help. A read that fails, or a
    body that ends before ``end``, is resumed at the byte reached, under ``policy``: each place
    where no byte comes gets the policy's tries, so a body cut many times still arrives whole
    while it makes progress (past the first byte, each place gets ``policy.stall_total``
    seconds). A server that ignores Range is read past what was already had.
    ``end`` None: the first response's length says where the resource ends (no length: read
    to the end of the body, with no resume past a cut).
    """

    def __init__(
        self,
        open_at: Callable[[int], requests.Response],
        *,
        what: str,
        start: int = 0,
        end: int | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        is_temporary: Callable[[BaseException], bool] = lambda e: isinstance(e, Temporary),
        gave_up: Callable[[BaseException, int], Exception] | None = None,
    ) -> None:
        super().__init__()
        self._open_at, self.what = open_at, what
        self.offset, self.end = start, end
        self._policy, self._temporary, self._gave_up = policy, is_temporary, gave_up
        self._start_at = start
        stall = policy.stall_total
        self._stall_policy = policy if stall is None else dataclasses.replace(policy, total=stall)
        self._resp: requests.Response | None = None
        self._readinto: Callable[[Any], int] = self._decoded
        self._tried(self._open)  # the first request fails here, before any byte is read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.end is not None:
            view = view[: max(0, self.end - self.offset)]
        if not len(view):
            return 0
        if self.offset > self._start_at:  # a stall's tries count from the stall
            return self._tried(lambda: self._read(view), self._stall_policy, from_failure=True)
        return self._tried(lambda: self._read(view))

    def _tried(
        self, fn: Callable[[], _T], policy: RetryPolicy | None = None, *, from_failure: bool = False
    ) -> _T:
        """``fn`` under the policy; what it raises when the policy gives up, as ``gave_up``
        words it (given the error and the byte reached)."""
        policy = policy or self._policy
        try:
            return retrying(fn, is_temporary=self._retry, what=self.what, policy=policy,
                            from_failure=from_failure)  # fmt: skip
        except Exception as e:
            if self._gave_up is None or not self._retry(e):
                raise
            raise self._gave_up(e, self.offset) from e

    def _retry(self, exc: BaseException) -> bool:
        return self._temporary(exc) or is_temporary(exc)

    def _read(self, view: memoryview) -> int:
        if self._resp is None:
            self._open()
        try:
            n = self._readinto(view)
        except TRANSPORT_ERRORS:
            self.close_response()
            raise
        if not n and (self.end is None or self.offset < self.end):
            self.close_response()
            if self.end is None:
                return 0  # the body's end is the resource's end
            raise Temporary(f"connection closed at byte {self.offset} of {self.end}")
        self.offset += n
        return n

    def _open(self) -> None:
        self._resp = self._open_at(self.offset)
        try:
            self._start(self._resp)
        except BaseException:
            self.close_response()  # never read on from the middle of a failed start
            raise
        log.debug("%s: reading from byte %d", self.what, self.offset)

    def _start(self, resp: requests.Response) -> None:
        """Pick the reader for ``resp``, learn the end, and skip what was had when the server
        sent the resource from its start (Range ignored)."""
        ranged = resp.status_code == 206
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        length = resp.headers.get("Content-Length", "")
        if self.end is None and encoding in ("", "identity") and length.isdigit():
            # (an encoded body's length is not the bytes')
            self.end = (self.offset if ranged else 0) + int(length)
        # urllib3 reads into a new bytes object and copies it; http.client's response (what
        # urllib3 wraps) reads into the caller's buffer: used when nothing needs decoding
        inner = getattr(resp.raw, "_fp", None)
        if isinstance(inner, http.client.HTTPResponse) and encoding in ("", "identity"):
            self._readinto = inner.readinto
        else:
            self._readinto = self._decoded
        if self.offset and not ranged:  # Range ignored: skip what was had
            skip, scratch = self.offset, memoryview(bytearray(min(self.offset, 1 << 20)))
            while skip:
                n = self._readinto(scratch[: min(skip, len(scratch))])
                if not n:
                    raise Temporary(f"connection closed while skipping to byte {self.offset}")
                skip -= n

    def _decoded(self, buffer: Any) -> int:
        assert self._resp is not None
        data = self._resp.raw.read(len(buffer), decode_content=True)
        buffer[: len(data)] = data
        return len(data)

    def close_response(self) -> None:
        if self._resp is not None:
            resp, self._resp = self._resp, None
            inner = getattr(resp.raw, "_fp", None)
            whole = self.end is not None and self.offset >= self.end
            if (whole and isinstance(inner, http.client.HTTPResponse) and inner.isclosed()
                    and _open_socket(resp.raw)):  # fmt: skip
                # read to its end straight from http.client, which urllib3 does not see: the
                # connection goes back to the pool (closing it cost a new connection for every
                # Range request: serve's S3 face reads a blob in 8 MiB ranges)
                resp.raw.release_conn()
                return
            resp.close()

    def close(self) -> None:
        self.close_response()
        super().close()


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


def read_exactly(body: Readable, buffer: bytearray | memoryview) -> int:
    """Fill ``buffer`` from ``body`` (fewer bytes only at its end); returns how many came."""
    view = memoryview(buffer).cast("B")
    got = 0
    while got < len(view):
        n = body.readinto(view[got:]) or 0
        if not n:
            break
        got += n
    return got


def _open_socket(raw: Any) -> bool:
    """Whether the connection under a urllib3 response still has its socket open (a body
    closed by the garbage collector can find it finalized first: the pool must not get it)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    return sock is not None and sock.fileno() >= 0


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300]


def unreachable_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (not urllib3's 400-character text)."""
    for e in causes(exc):
        if isinstance(e, socket.gaierror) or "NameResolutionError" in type(e).__name__:
            return "its name does not resolve (no DNS or no route to it from here)"
        if isinstance(e, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(e, (ssl.SSLError, requests.exceptions.SSLError)):
            return f"TLS failed ({_one_line(getattr(e, 'reason', None) or e)[:120]})"
        if isinstance(e, (TimeoutError, socket.timeout, requests.Timeout)):
            return "it did not answer in time"
        if isinstance(e, ConnectionResetError):
            return "the connection was reset"
    return _one_line(exc)
