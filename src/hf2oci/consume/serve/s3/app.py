"""The S3 face's ASGI app: path-style requests (``/BUCKET/KEY``, in origin or absolute form)
routed to ListBuckets, HeadBucket, GetBucketLocation, ListObjects(V2), HeadObject and GetObject
over the same store, read budget and policies as the Hub API; SigV4 when serve has tokens; S3's
XML errors; an access log line per request with no header, no query and no signature."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hf2oci.consume.serve.files import RepoFile
from hf2oci.consume.serve.ranges import Unsatisfiable, ranged, unsatisfiable
from hf2oci.consume.serve.s3 import documents, listing, sigv4
from hf2oci.consume.serve.s3.documents import S3Error
from hf2oci.consume.serve.s3.request import S3Request, read_request
from hf2oci.consume.serve.store import Snapshot, Store
from hf2oci.consume.serve.streaming import BodyCut, ReadBudget, body_response, close_quietly
from hf2oci.errors import Hf2ociError, ServeError
from hf2oci.spec import RepoType

log = logging.getLogger("hf2oci.serve.s3")
access_log = logging.getLogger("hf2oci.serve.access")

T = TypeVar("T")
#: the buckets: one per repo type
BUCKETS: dict[str, RepoType] = {"models": "model", "datasets": "dataset"}
_NOT_ALLOWED = "The specified method is not allowed against this resource."
_EPOCH = "1970-01-01T00:00:00.000Z"


class S3Metrics:
    """Requests, latency and bytes by S3 operation, in serve's one Prometheus registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hf2oci_serve_s3_requests", "S3 requests answered", ["operation", "status"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "hf2oci_serve_s3_request_seconds", "S3: time to the response's start", ["operation"],
            registry=registry,
        )  # fmt: skip
        self.bytes = Counter("hf2oci_serve_s3_bytes", "S3: file bytes sent", registry=registry)
        self.upstream_errors = Counter(
            "hf2oci_serve_s3_upstream_errors", "S3: registry or layout reads that failed",
            registry=registry,
        )  # fmt: skip


def create_s3_app(
    store: Store,
    *,
    tokens: Sequence[str] = (),
    budget: ReadBudget | None = None,
    registry: CollectorRegistry | None = None,
    max_skew: float = sigv4.MAX_SKEW,
) -> S3App:
    """The S3 face of ``store``. With ``tokens``, every request must be signed (SigV4) with
    one of them as the secret key; ``budget`` and ``registry``: the Hub API's, so both faces
    share one read budget and one ``/metrics``."""
    return S3App(store, tokens=tokens, budget=budget or ReadBudget(),
                 registry=registry or CollectorRegistry(), max_skew=max_skew)  # fmt: skip


class S3App:
    def __init__(
        self,
        store: Store,
        *,
        tokens: Sequence[str],
        budget: ReadBudget,
        registry: CollectorRegistry,
        max_skew: float,
    ) -> None:
        self.store, self.tokens, self.budget, self.max_skew = store, list(tokens), budget, max_skew
        self.metrics = S3Metrics(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        request = read_request(scope)
        operation, status, sent = request.operation, 500, 0

        async def sending(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(operation).observe(time.monotonic() - started)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            response = await self._answer(request, operation)
            with contextlib.suppress(BodyCut):  # the server closes what is left short
                await response(scope, receive, sending)
        finally:
            self.metrics.requests.labels(operation, str(status)).inc()
            # the path as sent (percent-encoded: a key cannot write a line of its own)
            access_log.info(
                "S3 %s %s %s %d %d %.1fms", request.method, request.raw_path[:300], operation,
                status, sent, (time.monotonic() - started) * 1000,
            )  # fmt: skip

    async def _answer(self, request: S3Request, operation: str) -> Response:
        head = request.method == "HEAD"
        request_id = secrets.token_hex(8).upper()
        try:
            if operation == "Unsupported":
                if request.method in ("GET", "HEAD"):
                    raise S3Error(501, "NotImplemented", "this S3 endpoint does not have that")
                raise S3Error(405, "MethodNotAllowed", _NOT_ALLOWED)
            if self.tokens:
                self._authenticate(request)
            if operation == "ListBuckets":
                names = sorted(BUCKETS)
                return _xml(documents.buckets(names, _EPOCH), request_id)
            repo_type = BUCKETS.get(request.bucket)
            if repo_type is None:
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                              BucketName=request.bucket[:255])  # fmt: skip
            if operation == "HeadBucket":
                return Response(headers=_ids(request_id) | {"x-amz-bucket-region": "us-east-1"})
            if operation == "GetBucketLocation":
                return _xml(documents.location(), request_id)
            if operation.startswith("ListObjects"):
                return await self._list(request, repo_type, operation, request_id)
            return await self._object(request, repo_type, head, request_id)
        except ServeError as e:  # the store's refusals: the repo, revision or file is not there
            return _error(_from_serve(e, request.key), request_id, head)
        except S3Error as e:
            return _error(e, request_id, head)

    def _authenticate(self, request: S3Request) -> None:
        try:
            sigv4.verify(method=request.method, raw_path=request.raw_path,
                         raw_query=request.raw_query, headers=request.headers,
                         secrets=self.tokens, max_skew=self.max_skew)  # fmt: skip
        except sigv4.Refused as e:
            raise S3Error(e.status, e.code, str(e)) from None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` in a worker thread; the store's refusals and failures as S3 errors."""
        try:
            return await run_in_threadpool(fn, *args)
        except (S3Error, ServeError):
            raise
        except Hf2ociError as e:
            self.metrics.upstream_errors.inc()
            log.warning("storage: %s", e)
            if getattr(e, "temporary", False):  # unreachable, or failing past the budget
                raise S3Error(503, "ServiceUnavailable", "the image storage is unavailable",
                              retry_after=5) from e  # fmt: skip
            raise S3Error(500, "InternalError", "the image storage failed") from e

    # -- listings -------------------------------------------------------------------------

    async def _list(
        self, request: S3Request, repo_type: RepoType, operation: str, request_id: str
    ) -> Response:
        q = request.query
        version = 2 if operation == "ListObjectsV2" else 1
        try:
            max_keys = min(listing.MAX_KEYS, int(q.get("max-keys", listing.MAX_KEYS)))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "max-keys is not a number") from None
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
        after: listing.Marker | None = None
        token = q.get("continuation-token") if version == 2 else None
        start = q.get("start-after") if version == 2 else q.get("marker")
        if token is not None:
            try:
                after = listing.Marker.from_token(token)
            except ValueError:
                raise S3Error(400, "InvalidArgument",
                              "The continuation token provided is incorrect") from None  # fmt: skip
        elif start:
            after = listing.Marker(start)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        page = await self._call(self._page, repo_type, prefix, delimiter, max(0, max_keys), after)
        body = documents.listing(
            page, version=version, bucket=request.bucket, prefix=prefix, delimiter=delimiter,
            max_keys=max_keys, url_encoded=encoding == "url", continuation=token,
            start_after=start if version == 2 else None, marker=start if version == 1 else None,
        )  # fmt: skip
        return _xml(body, request_id)

    def _page(
        self, repo_type: RepoType, prefix: str, delimiter: str, max_keys: int,
        after: listing.Marker | None,
    ) -> listing.Page:  # fmt: skip
        store = self.store

        def repos() -> list[str]:
            return [repo_id for repo_id, _ in store.listed(repo_type, workers=8)]

        def open_repo(repo_id: str, revision: str) -> Snapshot | None:
            try:
                return store.snapshot(repo_type, repo_id, revision)
            except ServeError as e:
                if e.status in (403, 404):  # not there, or not verified: not listed
                    return None
                raise

        return listing.page(prefix=prefix, delimiter=delimiter, max_keys=max_keys, after=after,
                            repos=repos, open_repo=open_repo,
                            roll_unopened=store.verify_key is None)  # fmt: skip

    # -- objects --------------------------------------------------------------------------

    async def _object(
        self, request: S3Request, repo_type: RepoType, head: bool, request_id: str
    ) -> Response:
        org, _, rest = request.key.partition("/")
        name, _, path = rest.partition("/")
        repo, at, revision = name.partition("@")
        if not (org and repo and path) or (at and not revision):
            raise _no_such_key(request.key)
        snap = await self._call(self.store.snapshot, repo_type, f"{org}/{repo}",
                                revision if at else "main")  # fmt: skip
        f = snap.files.get(path)
        if f is None:
            raise _no_such_key(request.key)
        if snap.signed is not None and path not in snap.signed:
            raise S3Error(403, "AccessDenied", f"{path} is not in the signed file list")
        # an image made before the file index: its hashes computed once, in a worker thread
        etag = f.etag if f.blob_id is not None else await self._call(lambda: f.etag)
        headers = _ids(request_id) | {
            "ETag": f'"{etag}"',
            "Last-Modified": documents.http_time(snap.last_modified),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        asked = request.header("range")
        try:
            r = ranged(asked, f.size)
        except Unsatisfiable:
            error = S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                            RangeRequested=(asked or "")[:100],
                            ActualObjectSize=str(f.size))  # fmt: skip
            return _error(error, request_id, head, headers | unsatisfiable(f.size))
        headers |= r.headers()
        if head or r.length == 0:
            return Response(status_code=r.status, headers=headers)
        return await self._stream(f, snap, r.start, r.length, whole=not r.partial,
                                  status=r.status, headers=headers)  # fmt: skip

    async def _stream(
        self, f: RepoFile, snap: Snapshot, start: int, length: int, *, whole: bool, status: int,
        headers: dict[str, str],
    ) -> Response:  # fmt: skip
        """The bytes, within the shared read budget; the first piece read before the status,
        so a storage that fails answers 503 here, not a body cut short."""
        self.budget.start()
        chunks = f.chunks(start, length, self.budget.piece)
        try:
            first = await self._call(next, chunks, b"")
        except BaseException:
            close_quietly(chunks)
            self.budget.end()
            raise
        check = snap.signed[f.path] if snap.signed is not None and whole else None
        return body_response(f, first, chunks, self.budget, self.metrics.bytes,
                             self.metrics.upstream_errors, status=status, headers=headers,
                             check=check)  # fmt: skip


def _no_such_key(key: str) -> S3Error:
    return S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key[:1024])


def _from_serve(e: ServeError, key: str) -> S3Error:
    """The store's refusal as S3 says it: a repo, revision or file that is not there is a key
    that is not; an image that does not verify is AccessDenied."""
    if e.status == 404:
        return _no_such_key(key)
    if e.status == 403:
        return S3Error(403, "AccessDenied", str(e))
    return S3Error(500, "InternalError", str(e))


def _ids(request_id: str) -> dict[str, str]:
    return {"x-amz-request-id": request_id, "Server": "hf2oci"}


def _xml(body: bytes, request_id: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/xml",
                    headers=_ids(request_id))  # fmt: skip


def _error(
    e: S3Error, request_id: str, head: bool, headers: dict[str, str] | None = None
) -> Response:
    """S3's error document; a HEAD gets the status alone (S3 sends no body to a HEAD)."""
    out = {**(headers or {}), **_ids(request_id)}
    out.pop("Content-Length", None)
    if e.retry_after is not None:
        out["Retry-After"] = str(e.retry_after)
    if head:
        return Response(status_code=e.status, headers=out)
    body = documents.error(e, request_id)
    return Response(body, status_code=e.status, media_type="application/xml", headers=out)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
