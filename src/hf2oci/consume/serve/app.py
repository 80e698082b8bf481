"""The Hub API over HTTP (Starlette, served by uvicorn): repo info, tree, paths-info and resolve
(HEAD/GET with Range), with the hub's error codes, optional bearer tokens, an access log and
Prometheus metrics. Every file streams out of a Range read of its layer blob; big LFS files are
announced over Xet too, whose endpoints `cas` answers."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlencode

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hf2oci import labels as L
from hf2oci.consume.serve.ranges import Unsatisfiable, parse_range
from hf2oci.consume.serve.store import (
    ReadBudget,
    RepoFile,
    Snapshot,
    Store,
    lfs_pointer,
)
from hf2oci.consume.serve.xet import XetSettings, derive_key, own_credentials, xet_route
from hf2oci.errors import Hf2ociError, ServeError
from hf2oci.spec import REPO_TYPES, RepoType, plural

log = logging.getLogger("hf2oci.serve")
access_log = logging.getLogger("hf2oci.serve.access")

T = TypeVar("T")
#: tree entries per page (the hub pages its trees too; clients follow Link: rel="next")
PAGE = 1000
_KINDS: dict[str, RepoType] = {plural(t): t for t in REPO_TYPES}
_ACTIONS = ("revision", "tree", "paths-info", "xet-read-token", "refs")
_OPEN = ("/health", "/metrics", "/-/hf2oci.css", "/-/login")
#: the cookie a browser keeps its token in, after the login form (same tokens as the API)
TOKEN_COOKIE = "hf2oci_token"
_BAD_CREDENTIALS = "Invalid credentials in Authorization header"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hf2oci_serve_requests", "Requests answered", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.bytes = Counter("hf2oci_serve_bytes", "File bytes sent", registry=self.registry)
        self.upstream_errors = Counter(
            "hf2oci_serve_upstream_errors", "Registry or layout reads that failed",
            registry=self.registry,
        )  # fmt: skip
        self.downloads = Gauge(
            "hf2oci_serve_downloads", "File downloads in flight", registry=self.registry
        )
        self.latency = Histogram(
            "hf2oci_serve_request_seconds", "Time to the response's start", ["route"],
            registry=self.registry,
        )  # fmt: skip


class _StoreCounts:
    """The store's counts as metrics: retries of registry reads, and stale answers."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.store.counts.snapshot()
        yield CounterMetricFamily("hf2oci_serve_upstream_retries",
                                  "Registry reads tried again within a request's budget",
                                  value=counts.get("retries", 0))  # fmt: skip
        faults = CounterMetricFamily("hf2oci_serve_upstream_faults",
                                     "Registry reads that failed and were tried again, by kind",
                                     labels=["kind"])  # fmt: skip
        for key, n in sorted(counts.items()):
            if key.startswith("fault:"):
                faults.add_metric([key.removeprefix("fault:")], n)
        yield faults
        yield CounterMetricFamily("hf2oci_serve_stale_answers",
                                  "Metadata answered from the cache while the registry failed",
                                  value=counts.get("stale", 0))  # fmt: skip


def _segments(request: Request, skip: int) -> list[str]:
    """The path's segments after the first ``skip``, each percent-decoded on its own (so a
    revision ``refs%2Fpr%2F1`` stays one segment); 400 for anything that could climb."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")[1:]
    out = []
    for part in parts[skip:]:
        seg = unquote(part, errors="strict") if "%" in part else part
        if seg in (".", "..") or "\0" in seg or "\\" in seg or (seg and seg[0] == "/"):
            raise ServeError(400, "BadRequest", "invalid path")
        if any(p in (".", "..") for p in seg.split("/")):
            raise ServeError(400, "BadRequest", "invalid path")
        out.append(seg)
    return out


def _split_repo(parts: list[str], actions: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """``org/name[/ACTION/…]`` (or a one-part legacy id) → (repo id, action, the rest)."""
    if len(parts) >= 2 and parts[1] in actions:
        return parts[0], parts[1], parts[2:]
    if len(parts) >= 2 and (len(parts) == 2 or parts[2] in actions):
        return f"{parts[0]}/{parts[1]}", parts[2] if len(parts) > 2 else None, parts[3:]
    if len(parts) == 1:
        return parts[0], None, []
    raise ServeError(404, "RepoNotFound", "Repository not found")


def _wants_html(request: Request) -> bool:
    """A browser asking for a page (API clients send JSON or ``*/*``)."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


#: what every page carries: no script runs, nothing loads from elsewhere, no framing
_PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _html(text: str, status: int = 200) -> Response:
    from hf2oci.consume.serve.pages import CSP

    headers = {"Content-Security-Policy": CSP, **_PAGE_HEADERS}
    return Response(text, status_code=status, media_type="text/html; charset=utf-8",
                    headers=headers)  # fmt: skip


def _error(e: ServeError, head: bool = False) -> Response:
    headers = {"X-Error-Code": e.code, "X-Error-Message": str(e)}
    if e.commit:
        headers["X-Repo-Commit"] = e.commit
    if e.retry_after is not None:
        headers["Retry-After"] = str(e.retry_after)
    if head:
        return Response(status_code=e.status, headers=headers)
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)


def create_app(
    store: Store, *, tokens: Sequence[str] = (), xet: XetSettings | None = None
) -> Starlette:
    """The ASGI app serving ``store``; with ``tokens``, every request but /health and /metrics
    needs ``Authorization: Bearer <one of them>`` (Xet's reconstructions and xorbs carry
    credentials of their own, which only holders of one get). ``xet``: which files are announced
    over Xet, and the key that signs its tokens and URLs (by default one derived from the tokens,
    else from the namespace, so replicas agree)."""
    if xet is None:
        xet = XetSettings(key=derive_key(tokens, store.namespace))
    hub = _Hub(store, xet)
    routes = [
        *hub.cas.routes(),
        *hub.clients.routes(),
        Route("/health", hub.health, methods=["GET"]),
        Route("/metrics", hub.metrics_page, methods=["GET"]),
        Route("/api/agent-harnesses", hub.harnesses, methods=["GET"]),
        Route("/api/{rest:path}", hub.api, methods=["GET", "POST"]),
        Route("/-/hf2oci.css", hub.stylesheet, methods=["GET"]),
        Route("/-/login", hub.login, methods=["POST"]),
        Route("/{rest:path}", hub.resolve, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_Gate, tokens=list(tokens), metrics=hub.metrics, seen=hub.clients.seen)
    return app


class _Hub:
    """The Hub API's endpoints over one store: storage work runs in threads, a storage failure
    is a 502 with the hub's error shape, and files stream within a shared read budget."""

    def __init__(self, store: Store, xet: XetSettings) -> None:
        self.store = store
        self.metrics = Metrics()
        self.budget = ReadBudget()
        self.metrics.downloads.set_function(lambda: self.budget.active)
        self.metrics.registry.register(_StoreCounts(store))
        from hf2oci.consume.serve.cas import Cas
        from hf2oci.consume.serve.clients import Clients
        from hf2oci.consume.serve.pages import Catalog

        self.catalog = Catalog(store)
        self.xet = xet
        self.cas = Cas(self, xet)
        self.clients = Clients(self)

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

    async def health(self, request: Request) -> Response:
        ok = await run_in_threadpool(self.store.healthy)
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    async def metrics_page(self, request: Request) -> Response:
        return Response(
            generate_latest(self.metrics.registry), media_type="text/plain; version=0.0.4"
        )

    async def harnesses(self, request: Request) -> Response:
        return JSONResponse({"standardEnvVars": [], "harnesses": {}})

    async def api(self, request: Request) -> Response:
        store = self.store
        try:
            parts = _segments(request, 1)
            if not parts or parts[0] not in _KINDS:
                raise ServeError(404, "NotFound", "no such API")
            repo_type = _KINDS[parts[0]]
            if len(parts) == 1:
                search = request.query_params.get("search")
                return await self.call(_listing, store, repo_type, search)
            repo_id, action, rest = _split_repo(parts[1:], _ACTIONS)
            if action == "xet-read-token":
                return await self.cas.token(request, repo_type, repo_id, rest)
            if action == "refs":
                return await self.clients.refs(request, repo_type, repo_id)
            if action is None or action == "revision":
                revision = rest[0] if rest else "main"
                snap = await self.call(store.snapshot, repo_type, repo_id, revision)
                blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
                return JSONResponse(await self.call(_info, snap, blobs))
            if not rest:
                raise ServeError(404, "RevisionNotFound", "no revision given")
            snap = await self.call(store.snapshot, repo_type, repo_id, rest[0])
            if action == "tree":
                return await self.call(_tree_page, snap, "/".join(rest[1:]), request, self.xet)
            if request.method != "POST":
                raise ServeError(405, "MethodNotAllowed", "paths-info takes a POST")
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            wanted = [p.strip("/") for p in form.get("paths", [])]
            return JSONResponse(await self.call(_paths_info, snap, wanted, self.xet))
        except ServeError as e:
            return _error(e)

    async def stylesheet(self, request: Request) -> Response:
        from hf2oci.consume.serve.pages import stylesheet

        return Response(stylesheet(), media_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    async def login(self, request: Request) -> Response:
        """The login form's POST: the token goes into an HttpOnly, SameSite=Strict cookie."""
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")  # fmt: skip
        return response

    async def page(self, request: Request, parts: list[str]) -> Response:
        """A web page at the hub's path, for a browser (``Accept: text/html``)."""
        from hf2oci.consume.serve import pages

        store, query = self.store, dict(request.query_params)
        base = str(request.base_url).rstrip("/")
        try:
            if parts in ([], [""], ["models"], ["datasets"]):
                kind: RepoType = "dataset" if parts == ["datasets"] else "model"
                html = await self.call(pages.catalog_page, self.catalog, kind, query, base)
                return _html(html)
            kind = "model"
            if parts[0] == "datasets":
                kind, parts = "dataset", parts[1:]
            if len(parts) < 2:
                raise ServeError(404, "NotFound", "no such page")
            repo_id, rest = "/".join(parts[:2]), parts[2:]
            if not rest:
                snap = await self.call(store.snapshot, kind, repo_id, "main")
                html = await self.call(pages.repo_page, store, self.catalog, snap, base)
                return _html(html)
            if rest[0] not in ("tree", "blob") or len(rest) < 2:
                raise ServeError(404, "NotFound", "no such page")
            snap = await self.call(store.snapshot, kind, repo_id, rest[1])
            render = pages.tree_page if rest[0] == "tree" else pages.blob_page
            found = await self.call(render, snap, rest[1], "/".join(rest[2:]), self.xet)
            if found is None:
                raise ServeError(404, "EntryNotFound", f"{'/'.join(rest[2:])} not found")
            return _html(found)
        except ServeError as e:
            return _html(pages.render("error.html.j2", status=e.status, message=str(e)),
                         status=e.status)  # fmt: skip

    async def resolve(self, request: Request) -> Response:
        head = request.method == "HEAD"
        try:
            parts = _segments(request, 0)
            files = ("resolve", "raw")
            if _wants_html(request) and not set(files) & set(parts[1:4]):
                return await self.page(request, parts)
            repo_type: RepoType = "model"
            if parts and parts[0] in _KINDS and len(parts) > 1 and set(files) & set(parts[2:4]):
                repo_type = _KINDS[parts[0]]
                parts = parts[1:]
            repo_id, action, rest = _split_repo(parts, files)
            if action not in files or len(rest) < 2:
                raise ServeError(404, "NotFound", "no such page")
            snap = await self.call(self.store.snapshot, repo_type, repo_id, rest[0])
            if action == "raw":  # huggingface.js's fileExists, an LFS file's pointer
                return await self.clients.raw(request, snap, "/".join(rest[1:]), head)
            return await self._file(snap, "/".join(rest[1:]), request, head)
        except ServeError as e:
            return _error(e, head)

    async def _file(self, snap: Snapshot, path: str, request: Request, head: bool) -> Response:
        f = snap.files.get(path)
        if f is None:
            raise ServeError(404, "EntryNotFound", f"{path} not found", commit=snap.commit)
        if snap.signed is not None and path not in snap.signed:
            raise ServeError(403, "UnverifiedImage", f"{path} is not in the signed file list")
        etag = await self.call(lambda: f.etag)
        headers = {
            "X-Repo-Commit": snap.commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(f.size)
            headers |= self.cas.headers(snap, f, request)
        try:
            span = parse_range(request.headers.get("range"), f.size)
        except Unsatisfiable:
            headers["Content-Range"] = f"bytes */{f.size}"
            return Response(status_code=416, headers=headers)
        start, end = span if span is not None else (0, f.size - 1)
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        if head or length == 0:
            return Response(status_code=status, headers=headers)
        check = None
        if snap.signed is not None and span is None:  # a whole file: check it as it goes
            check = snap.signed[f.path]
        return await self.stream(f, lambda: f.chunks(start, length, self.budget.piece), status,
                                 headers, check)  # fmt: skip

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
            body = _checked(body, f, check)
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
            raise _BodyCut from e
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            self.budget.end()


def _checked(body: Iterator[bytes], f: RepoFile, want: dict[str, str]) -> Iterator[bytes]:
    """``body`` hashed as it is sent, its last piece held back until the hash is the signed
    one: a file whose bytes are not the signed ones is cut before it is complete (the client
    sees a short body, never a whole wrong file). Each piece is hashed on a hash thread while it
    is sent and the next one is read (hashlib lets go of the GIL), so the hash runs beside the
    download, not between its reads and sends; its CPU time is wall time only where the cores
    are already full."""
    from hf2oci.digest import git_blob_hash

    h = hashlib.sha256() if "sha256" in want else git_blob_hash(f.size)
    expected = want.get("sha256") or want.get("gitBlob")
    hashing: Future[None] | None = None
    seen = 0
    for chunk in body:  # reading the next piece while the last one is hashed
        if hashing is not None:
            hashing.result()
        hashing = _HASHERS.submit(h.update, chunk)
        seen += len(chunk)
        if seen < f.size:
            yield chunk
            continue
        hashing.result()
        if h.hexdigest() != expected:
            break
        yield chunk
        return
    why = "its bytes are not the signed ones" if seen >= f.size else "its layer ended short"
    log.warning("%s: %s; the download is cut", f.path, why)
    raise _BodyCut


#: the threads that hash whole downloads beside their sends (``serve --verify-key``)
_HASHERS = ThreadPoolExecutor(max(4, os.cpu_count() or 1), thread_name_prefix="hf2oci-hash")


class _BodyCut(Exception):
    """A body whose status was sent cannot go on: the reason is logged in one line, and the
    connection is closed short of the length sent (never a traceback in the log)."""


class _Gate:
    """Bearer tokens (compared in constant time), the access log and the request metrics."""

    def __init__(
        self, app: ASGIApp, *, tokens: list[str], metrics: Metrics, seen: Callable[[Scope], None]
    ) -> None:
        self.app, self.tokens, self.metrics = app, [t.encode() for t in tokens], metrics
        self.seen = seen  # counts the request by its client

    def _allowed(self, scope: Scope) -> bool:
        if not self.tokens or scope["path"] in _OPEN or own_credentials(scope["path"]):
            return True
        given = b""
        for name, value in scope.get("headers") or []:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"cookie" and not given:
                given = _cookie(value, TOKEN_COOKIE)
        ok = False
        for token in self.tokens:  # every one compared: the time says nothing
            ok |= hmac.compare_digest(given, token)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        route = _route(scope["path"])
        status, sent = 500, 0

        async def sending(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(route).observe(time.monotonic() - started)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if self._allowed(scope):
                with contextlib.suppress(_BodyCut):  # the server closes what is left short
                    await self.app(scope, receive, sending)
            else:
                headers = {"X-Error-Code": "Unauthorized", "X-Error-Message": _BAD_CREDENTIALS}
                response: Response = JSONResponse({"error": _BAD_CREDENTIALS}, 401, headers=headers)
                accept = dict(scope.get("headers") or []).get(b"accept", b"")
                if b"text/html" in accept and not scope["path"].startswith("/api/"):
                    from hf2oci.consume.serve.pages import login_page

                    response = _html(login_page(), status=401)
                await response(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.seen(scope)
            access_log.info(
                "%s %s %d %d %.1fms", scope["method"], scope["path"][:300], status, sent,
                (time.monotonic() - started) * 1000,
            )  # fmt: skip


def _cookie(header: bytes, name: str) -> bytes:
    """One cookie's value from a Cookie header."""
    for part in header.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name.encode():
            return value.strip().strip(b'"')
    return b""


def _route(path: str) -> str:
    if path in _OPEN or path == "/api/agent-harnesses":
        return path
    xet = xet_route(path)
    if xet is not None:
        return xet
    if path.startswith("/api/"):
        return "refs" if path.endswith("/refs") else "api"
    if "/resolve/" in path:
        return "resolve"
    if "/raw/" in path:
        return "raw"
    if path.startswith("/v2/") and "/manifests/" in path:
        return "gguf-manifest"
    return "page"


# -- documents (run in worker threads: they may read the storage) ------------------------------


def _listing(store: Store, repo_type: RepoType, search: str | None) -> Response:
    out = []
    for repo_id, image in store.listed(repo_type):
        if search and search.lower() not in repo_id.lower():
            continue
        labels = L.of_image(image)
        doc: dict[str, Any] = {"_id": repo_id, "id": repo_id, "sha": labels.get(L.REVISION),
               "lastModified": labels.get(L.CREATED), "private": False, "tags": []}  # fmt: skip
        if repo_type == "model":
            doc["modelId"] = repo_id
        out.append(doc)
    return JSONResponse(out)


def _card(snap: Snapshot) -> dict[str, Any]:
    """The model card's front matter (README.md), when the image has it."""
    readme = snap.files.get("README.md")
    if readme is None or readme.size > 1 << 20:
        return {}
    text = b"".join(readme.chunks()).decode("utf-8", "replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        doc = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _file_doc(f: RepoFile, *, key: str) -> dict[str, Any]:
    f.ensure_hashes()
    doc: dict[str, Any] = {key: f.path, "size": f.size, "blobId": f.blob_id}
    if f.sha256:
        pointer = len(lfs_pointer(f.sha256, f.size))
        doc["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": pointer}
    return doc


def _info(snap: Snapshot, blobs: bool) -> dict[str, Any]:
    card = _card(snap)
    siblings = [
        _file_doc(snap.files[p], key="rfilename") if blobs else {"rfilename": p}
        for p in sorted(snap.files)
    ]
    tags = card.get("tags") if isinstance(card.get("tags"), list) else []
    doc: dict[str, Any] = {
        "_id": snap.repo_id,
        "id": snap.repo_id,
        "sha": snap.commit,
        "lastModified": snap.last_modified,
        "createdAt": snap.last_modified,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
    }
    if card:
        doc["cardData"] = card
    if snap.repo_type == "model":
        doc["modelId"] = snap.repo_id
        for key in ("library_name", "pipeline_tag"):
            if isinstance(card.get(key), str):
                doc[key] = card[key]
    return doc


def _tree_entry(snap: Snapshot, path: str, dirs: set[str], xet: XetSettings) -> dict[str, Any]:
    if path in dirs:
        oid = hashlib.sha1(f"{snap.commit}:{path}".encode(), usedforsecurity=False).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    f = snap.files[path]
    doc = _file_doc(f, key="path")
    entry: dict[str, Any] = {"type": "file", "oid": doc["blobId"], "size": f.size, "path": path}
    if "lfs" in doc:
        lfs = doc["lfs"]
        entry["lfs"] = {
            "oid": lfs["sha256"],
            "size": lfs["size"],
            "pointerSize": lfs["pointerSize"],
        }
        announced = xet.announced(f)
        if announced is not None:  # a client with hf_xet then skips the HEAD
            entry["xetHash"] = announced
    return entry


def _dirs(snap: Snapshot) -> set[str]:
    out: set[str] = set()
    for p in snap.files:
        parts = p.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out


def _tree_page(snap: Snapshot, path: str, request: Request, xet: XetSettings) -> Response:
    path = path.strip("/")
    dirs = _dirs(snap)
    if path and path not in dirs:
        if path in snap.files:
            return JSONResponse([_tree_entry(snap, path, dirs, xet)])
        raise ServeError(404, "EntryNotFound", f"{path} not found", commit=snap.commit)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = f"{path}/" if path else ""
    names = sorted(
        n
        for n in (*snap.files, *dirs)
        if n.startswith(prefix) and (recursive or "/" not in n[len(prefix) :])
    )
    try:
        cursor = max(0, int(request.query_params.get("cursor", "0")))
    except ValueError:
        cursor = 0
    page = names[cursor : cursor + PAGE]
    headers = {}
    if cursor + PAGE < len(names):
        query = {**dict(request.query_params), "cursor": str(cursor + PAGE)}
        headers["Link"] = f'<{request.url.replace(query=urlencode(query))}>; rel="next"'
    return JSONResponse([_tree_entry(snap, n, dirs, xet) for n in page], headers=headers)


def _paths_info(snap: Snapshot, paths: list[str], xet: XetSettings) -> list[dict[str, Any]]:
    dirs = _dirs(snap)
    return [_tree_entry(snap, p, dirs, xet) for p in paths if p in snap.files or p in dirs]
