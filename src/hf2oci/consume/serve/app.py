"""The Hub API over HTTP (Starlette, served by uvicorn): repo info, tree, paths-info and resolve
(HEAD/GET with Range), with the hub's error codes, optional bearer tokens, an access log and
Prometheus metrics. Every file streams out of a Range read of its layer blob; big LFS files are
announced over Xet too, whose endpoints `cas` answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import parse_qs

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hf2oci.consume.serve import documents, pages
from hf2oci.consume.serve.answers import KINDS, error, html, segments, split_repo, wants_html
from hf2oci.consume.serve.cas import Cas
from hf2oci.consume.serve.clients import Clients
from hf2oci.consume.serve.gate import TOKEN_COOKIE, Gate
from hf2oci.consume.serve.metrics import Metrics, StoreCounts
from hf2oci.consume.serve.pages import Catalog
from hf2oci.consume.serve.ranges import Unsatisfiable, ranged, unsatisfiable
from hf2oci.consume.serve.store import Snapshot, Store
from hf2oci.consume.serve.streaming import Downloads
from hf2oci.consume.serve.xet import XetSettings, derive_key
from hf2oci.errors import ServeError
from hf2oci.spec import RepoType

log = logging.getLogger("hf2oci.serve")

_ACTIONS = ("revision", "tree", "paths-info", "xet-read-token", "refs")


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
    app.add_middleware(Gate, tokens=list(tokens), metrics=hub.metrics)
    # what another face of the same store shares (the S3 face): one read budget, one /metrics
    app.state.budget, app.state.metrics = hub.downloads.budget, hub.metrics
    return app


class _Hub:
    """The Hub API's endpoints over one store: storage work and file bodies go through
    ``Downloads`` (threads, the read budget, the hub's 502/503), Xet's through ``Cas``."""

    def __init__(self, store: Store, xet: XetSettings) -> None:
        self.store = store
        self.metrics = Metrics()
        self.metrics.registry.register(StoreCounts(store))
        self.downloads = Downloads(store, self.metrics)
        self.call = self.downloads.call
        self.catalog = Catalog(store)
        self.xet = xet
        self.cas = Cas(self.downloads, xet)
        self.clients = Clients(self.downloads)

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
            parts = segments(request, 1)
            if not parts or parts[0] not in KINDS:
                raise ServeError(404, "NotFound", "no such API")
            repo_type = KINDS[parts[0]]
            if len(parts) == 1:
                search = request.query_params.get("search")
                return await self.call(documents.listing, store, repo_type, search)
            repo_id, action, rest = split_repo(parts[1:], _ACTIONS)
            if action == "xet-read-token":
                return await self.cas.token(request, repo_type, repo_id, rest)
            if action == "refs":
                return await self.clients.refs(request, repo_type, repo_id)
            if action is None or action == "revision":
                revision = rest[0] if rest else "main"
                snap = await self.call(store.snapshot, repo_type, repo_id, revision)
                blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
                return JSONResponse(await self.call(documents.info, snap, blobs))
            if not rest:
                raise ServeError(404, "RevisionNotFound", "no revision given")
            snap = await self.call(store.snapshot, repo_type, repo_id, rest[0])
            if action == "tree":
                return await self.call(
                    documents.tree_page, snap, "/".join(rest[1:]), request, self.xet
                )
            if request.method != "POST":
                raise ServeError(405, "MethodNotAllowed", "paths-info takes a POST")
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            wanted = [p.strip("/") for p in form.get("paths", [])]
            return JSONResponse(await self.call(documents.paths_info, snap, wanted, self.xet))
        except ServeError as e:
            return error(e)

    async def stylesheet(self, request: Request) -> Response:
        return Response(pages.stylesheet(), media_type="text/css",
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
        store, query = self.store, dict(request.query_params)
        base = str(request.base_url).rstrip("/")
        try:
            if parts in ([], [""], ["models"], ["datasets"]):
                kind: RepoType = "dataset" if parts == ["datasets"] else "model"
                text = await self.call(pages.catalog_page, self.catalog, kind, query, base)
                return html(text)
            kind = "model"
            if parts[0] == "datasets":
                kind, parts = "dataset", parts[1:]
            if len(parts) < 2:
                raise ServeError(404, "NotFound", "no such page")
            repo_id, rest = "/".join(parts[:2]), parts[2:]
            if not rest:
                snap = await self.call(store.snapshot, kind, repo_id, "main")
                text = await self.call(pages.repo_page, store, self.catalog, snap, base)
                return html(text)
            if rest[0] not in ("tree", "blob") or len(rest) < 2:
                raise ServeError(404, "NotFound", "no such page")
            snap = await self.call(store.snapshot, kind, repo_id, rest[1])
            render = pages.tree_page if rest[0] == "tree" else pages.blob_page
            found = await self.call(render, snap, rest[1], "/".join(rest[2:]), self.xet)
            if found is None:
                raise ServeError(404, "EntryNotFound", f"{'/'.join(rest[2:])} not found")
            return html(found)
        except ServeError as e:
            return html(pages.render("error.html.j2", status=e.status, message=str(e)),
                         status=e.status)  # fmt: skip

    async def resolve(self, request: Request) -> Response:
        """A file's bytes (``resolve``), or its text (``raw``: an LFS file's pointer)."""
        head = request.method == "HEAD"
        files = ("resolve", "raw")
        try:
            parts = segments(request, 0)
            if wants_html(request) and not set(files) & set(parts[1:4]):
                return await self.page(request, parts)
            repo_type: RepoType = "model"
            if parts and parts[0] in KINDS and len(parts) > 1 and set(files) & set(parts[2:4]):
                repo_type = KINDS[parts[0]]
                parts = parts[1:]
            repo_id, action, rest = split_repo(parts, files)
            if action not in files or len(rest) < 2:
                raise ServeError(404, "NotFound", "no such page")
            snap = await self.call(self.store.snapshot, repo_type, repo_id, rest[0])
            path = "/".join(rest[1:])
            if action == "raw":  # huggingface.js's fileExists, RamaLama's sha256
                pointer = await self.clients.pointer(snap, path, head)
                if pointer is not None:
                    return pointer
                response = await self._file(snap, path, request, head)
                if response.status_code < 300:
                    response.headers["Content-Type"] = "text/plain; charset=utf-8"
                return response
            return await self._file(snap, path, request, head)
        except ServeError as e:
            return error(e, head)

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
            r = ranged(request.headers.get("range"), f.size)
        except Unsatisfiable:
            return Response(status_code=416, headers=headers | unsatisfiable(f.size))
        headers |= r.headers()
        if head or r.length == 0:
            return Response(status_code=r.status, headers=headers)
        check = None
        if snap.signed is not None and not r.partial:  # a whole file: check it as it goes
            check = snap.signed[f.path]
        piece = self.downloads.budget.piece
        return await self.downloads.stream(f, lambda: f.chunks(r.start, r.length, piece),
                                           r.status, headers, check)  # fmt: skip
