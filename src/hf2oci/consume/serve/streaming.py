"""A file's bytes as a response body: read in pieces within serve's one read budget (the first
before the status is sent, so a failing storage answers 503/502), counted in the metrics, cut in
one log line when the storage fails after the status (the client resumes), and with
``--verify-key`` checked whole against the signed hash before its last piece goes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from hf2oci.consume.serve.metrics import Metrics
from hf2oci.consume.serve.store import ReadBudget, RepoFile, Store
from hf2oci.digest import Expected, verified
from hf2oci.errors import DigestMismatch, Hf2ociError, ServeError

log = logging.getLogger("hf2oci.serve")

T = TypeVar("T")


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
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            self.budget.end()
            raise
        body = self._body(f, first, chunks)
        if check is not None:
            body = checked(body, f, check)
        return StreamingResponse(body, status_code=status, headers=headers)

    def _body(self, f: RepoFile, first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``first``, then the rest of ``chunks``, within the read budget taken for them."""
        try:
            self.metrics.bytes.inc(len(first))
            yield first
            del first  # not held for the rest of the body (a read budget's piece each)
            for chunk in chunks:
                self.metrics.bytes.inc(len(chunk))
                yield chunk
        except Hf2ociError as e:  # the status is sent: cut the body, the client resumes
            self.metrics.upstream_errors.inc()
            log.warning("reading %s failed mid-body: %s", f.path, e)
            raise BodyCut from e
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            self.budget.end()


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
