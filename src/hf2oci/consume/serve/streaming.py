"""A file's bytes as a response body: read in pieces within serve's one read budget (the first
before the status is sent, so a failing storage answers 503/502), counted in the metrics, cut in
one log line when the storage fails after the status (the client resumes), and with
``--verify-key`` checked whole against the signed hash before its last piece goes."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from hf2oci.consume.serve.files import CHUNK, RepoFile
from hf2oci.consume.serve.metrics import Metrics
from hf2oci.consume.serve.store import Store
from hf2oci.digest import Expected, verified
from hf2oci.errors import DigestMismatch, Hf2ociError, ServeError

log = logging.getLogger("hf2oci.serve")

T = TypeVar("T")


class ReadBudget:
    """The downloads in flight share one memory budget: each read is ``budget / n`` bytes
    (within ``low``..``high``), n counted at the time of the read. Fewer, bigger reads cost
    less CPU (8 downloads in 1 MiB reads took 1.4x the time of 4 MiB ones here), and the bytes
    in flight stay near ``budget`` whatever the number of clients."""

    def __init__(self, budget: int = 32 << 20, low: int = 64 << 10, high: int = CHUNK) -> None:
        self.budget, self.low, self.high = budget, low, high
        self.active = 0
        self._lock = threading.Lock()

    def piece(self) -> int:
        """The size of the next read."""
        return max(self.low, min(self.high, self.budget // max(1, self.active)))

    def start(self) -> None:
        with self._lock:
            self.active += 1

    def end(self) -> None:
        with self._lock:
            self.active -= 1


class BodyCut(Exception):
    """A body whose status was sent cannot go on: the reason is logged in one line, and the
    connection is closed short of the length sent (never a traceback in the log)."""


class Downloads:
    """Storage work in threads (a storage failure: the hub's 502/503 error) and file bodies
    within the shared read budget, over one store."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store, self.metrics = store, metrics
        self.budget = ReadBudget()
        self.metrics.downloads.set_function(lambda: self.budget.active)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await run_in_threadpool(fn, *args)
        except ServeError:
            raise
        except Hf2ociError as e:
            self.metrics.upstream_errors.inc()
            log.warning("storage: %s", e)
            if getattr(e, "temporary", False):  # unreachable, or failing past the budget
                raise ServeError(503, "UpstreamUnavailable", "the image storage is unavailable",
                                 retry_after=5) from e  # fmt: skip
            raise ServeError(502, "UpstreamError", "the image storage failed") from e

    async def stream(
        self,
        f: RepoFile,
        read: Callable[[], Iterator[bytes]],
        status: int,
        headers: dict[str, str],
        check: dict[str, str] | None = None,
    ) -> Response:
        """The pieces ``read()`` gives (of ``f``, read within a share of the read budget) as a
        body; the first one is read before the status is sent, so a storage that fails answers
        503/502. ``check``: the signed hashes the whole file is checked against as it goes."""
        self.budget.start()
        chunks = read()
        try:
            first = await self.call(next, chunks, b"")
        except BaseException:
            close_quietly(chunks)
            self.budget.end()
            raise
        return body_response(f, first, chunks, self.budget, self.metrics.bytes,
                             self.metrics.upstream_errors, status=status, headers=headers,
                             check=check)  # fmt: skip


def body_response(
    f: RepoFile,
    first: bytes,
    chunks: Iterator[bytes],
    budget: ReadBudget,
    sent: Counter,
    failed: Counter,
    *,
    status: int,
    headers: dict[str, str],
    check: dict[str, str] | None = None,
) -> Response:
    """``first``, then the rest of ``chunks``, as a response holding a place in ``budget``
    (taken by the caller) until the body ends; bytes counted in ``sent``, a storage failure
    after the status in ``failed`` (the body is cut, the client resumes)."""
    bodies = [_pieces(f, first, chunks, budget, sent, failed)]
    if check is not None:
        bodies.append(checked(bodies[0], f, check))
    return ClosingStream(bodies, status_code=status, headers=headers)


def _pieces(
    f: RepoFile, first: bytes, chunks: Iterator[bytes], budget: ReadBudget, sent: Counter,
    failed: Counter,
) -> Iterator[bytes]:  # fmt: skip
    try:
        sent.inc(len(first))
        yield first
        del first  # not held for the rest of the body (a read budget's piece each)
        for chunk in chunks:
            sent.inc(len(chunk))
            yield chunk
    except Hf2ociError as e:  # the status is sent: cut the body, the client resumes
        failed.inc()
        log.warning("reading %s failed mid-body: %s", f.path, e)
        raise BodyCut from e
    finally:
        close_quietly(chunks)
        budget.end()


class ClosingStream(StreamingResponse):
    """A streamed body whose generators are closed as soon as the response ends, the client
    gone mid-body included: their ``finally`` gives back the read budget and the registry
    connection then. Left to the cyclic garbage collector, the connection's socket could be
    finalized before the generator that gives it back to the pool: the next read from the pool
    then failed (a client that closes after a 1-byte probe, as the Rust hf-hub does)."""

    def __init__(self, bodies: list[Iterator[bytes]], **options: Any) -> None:
        super().__init__(bodies[-1], **options)
        self.bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for body in reversed(self.bodies):  # the outer one first, then what it read
                close_quietly(body)


def close_quietly(chunks: Iterator[bytes]) -> None:
    """Close a generator of pieces (its ``finally`` runs now)."""
    close = getattr(chunks, "close", None)
    if close is not None:
        # ValueError: still running in a worker thread, which ends it (and its finally) itself
        with contextlib.suppress(ValueError):
            close()


def checked(body: Iterator[bytes], f: RepoFile, want: dict[str, str]) -> Iterator[bytes]:
    """``body`` checked against the signed hash (``digest.verified``: each piece hashed on a
    thread of its own while it is sent and the next one read, the last held back until the hash
    matches): a file whose bytes are not the signed ones is cut before it is complete (the
    client sees a short body, never a whole wrong file)."""
    expected = Expected(f.size, sha256=want.get("sha256"), blob_id=want.get("gitBlob"))
    try:
        yield from verified(body, expected, what=f.path, background=True)
    except DigestMismatch as e:
        log.warning("%s: %s; the download is cut", f.path, e)
        raise BodyCut from e
