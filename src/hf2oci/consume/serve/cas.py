"""serve as its own Xet CAS, over HTTP: the token endpoint (``/api/{type}s/{repo}/xet-read-token/
{rev}``), reconstructions (``/v1`` and ``/v2/reconstructions/{hash}``), xorbs (``/-/xet/xorb/
{name}``, signed URLs that expire) and ``/v1/telemetry`` (accepted, dropped). Nothing is kept
between requests: a CAS token names the repo revision it reads, a xorb URL the file and xorb it
serves, both signed (`xet.Signer`); each is checked before anything is read from the storage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlencode

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hf2oci.consume.serve.answers import error
from hf2oci.consume.serve.files import RepoFile
from hf2oci.consume.serve.ranges import Unsatisfiable, parse_range, ranged, unsatisfiable
from hf2oci.consume.serve.store import Snapshot
from hf2oci.consume.serve.streaming import Downloads
from hf2oci.consume.serve.xet import (
    TELEMETRY,
    Grant,
    Layout,
    Signer,
    XetSettings,
    XorbRef,
    file_hash,
    frame,
    is_hex64,
    reconstruction,
    xorb_hash,
)
from hf2oci.errors import ServeError
from hf2oci.spec import RepoType, plural


class Cas:
    """The Xet endpoints over one store's ``Downloads`` (its read budget, metrics and
    streaming)."""

    def __init__(self, hub: Downloads, settings: XetSettings) -> None:
        self.hub, self.settings = hub, settings
        self.signer = Signer(settings.key)
        registry = hub.metrics.registry
        self.tokens = Counter("hf2oci_serve_xet_tokens", "Xet read tokens issued",
                              registry=registry)  # fmt: skip
        self.reconstructions = Counter(
            "hf2oci_serve_xet_reconstructions", "Xet reconstructions answered", ["version"],
            registry=registry,
        )  # fmt: skip
        self.xorb_bytes = Counter("hf2oci_serve_xet_bytes", "Xorb bytes sent (chunk headers and "
                                  "file bytes)", registry=registry)  # fmt: skip
        self.refused = Counter(
            "hf2oci_serve_xet_refused", "Xet requests refused: no or a bad CAS token (token), a "
            "forged or changed xorb URL (signature), an expired one (expired)", ["reason"],
            registry=registry,
        )  # fmt: skip

    def routes(self) -> list[Route]:
        return [
            Route("/v1/reconstructions/{hash}", self.reconstruction, methods=["GET"]),
            Route("/v2/reconstructions/{hash}", self.reconstruction, methods=["GET"]),
            Route("/-/xet/xorb/{name}", self.xorb, methods=["GET"]),
            Route(TELEMETRY, self.telemetry, methods=["POST"]),
        ]

    # -- what the Hub API says of Xet -------------------------------------------------------

    def headers(self, snap: Snapshot, f: RepoFile, request: Request) -> dict[str, str]:
        """The headers that send a client with hf_xet to Xet for ``f`` (none: plain HTTP)."""
        announced = self.settings.announced(f)
        if announced is None:
            return {}
        base = str(request.base_url).rstrip("/")
        route = f"{base}/api/{plural(snap.repo_type)}/{snap.repo_id}/xet-read-token/{snap.commit}"
        return {"X-Xet-Hash": announced, "Link": f'<{route}>; rel="xet-auth"'}

    async def token(self, request: Request, repo_type: RepoType, repo_id: str,
                    rest: list[str]) -> Response:  # fmt: skip
        """A CAS read token for a repo revision, in both forms clients read: headers
        (huggingface_hub) and JSON (hf_xet's refresh); the CAS is serve itself."""
        if not self.settings.on:
            raise ServeError(404, "NotFound", "Xet is off on this server")
        if not rest:
            raise ServeError(404, "RevisionNotFound", "no revision given")
        snap = await self.hub.call(self.hub.store.snapshot, repo_type, repo_id, rest[0])
        expires = int(time.time() + self.settings.token_ttl)
        token = self.signer.token(Grant(repo_type, repo_id, snap.commit, expires))
        cas = str(request.base_url).rstrip("/")
        self.tokens.inc()
        headers = {
            "X-Xet-Cas-Url": cas,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
            "X-Repo-Commit": snap.commit,
        }
        return JSONResponse({"casUrl": cas, "accessToken": token, "exp": expires}, headers=headers)

    # -- the CAS -----------------------------------------------------------------------------

    async def reconstruction(self, request: Request) -> Response:
        """``GET /v{1,2}/reconstructions/{hash}`` with the CAS token and ``Range``: the file's
        bytes as terms over its xorbs, each with a signed URL that expires with the token."""
        try:
            wanted = str(request.path_params["hash"]).lower()
            if not self.settings.on:
                raise ServeError(404, "NotFound", "Xet is off on this server")
            if not is_hex64(wanted):
                raise ServeError(400, "BadRequest", "a Xet hash is 64 hex digits")
            grant = self._grant(request)
            snap = await self.hub.call(self.hub.store.snapshot, grant.repo_type, grant.repo_id,
                                       grant.commit)  # fmt: skip
            f = _find(snap, wanted)
            _check_signed(snap, f)
            try:
                span = parse_range(request.headers.get("range"), f.size)
            except Unsatisfiable:
                return Response(status_code=416, headers=unsatisfiable(f.size))
            lo, hi = (span[0], span[1] + 1) if span is not None else (0, f.size)
            version = 1 if request.url.path.startswith("/v1/") else 2
            base = str(request.base_url).rstrip("/")

            def url(k: int) -> str:
                ref = XorbRef(grant.repo_type, grant.repo_id, grant.commit, f.path, wanted, k,
                              grant.expires)  # fmt: skip
                name = xorb_hash(wanted, k)
                return f"{base}/-/xet/xorb/{name}?{urlencode(self.signer.xorb_query(ref))}"

            doc = reconstruction(Layout(f.size), wanted, lo, hi, url, version=version)
            self.reconstructions.labels(str(version)).inc()
            return JSONResponse(doc)
        except ServeError as e:
            return error(e)

    async def xorb(self, request: Request) -> Response:
        """``GET`` a xorb URL (no Authorization: the URL is signed) with ``Range``: chunk
        headers and the file's bytes, read from the storage as a Range download is."""
        try:
            if not self.settings.on:
                raise ServeError(404, "NotFound", "Xet is off on this server")
            query = {k: v for k, v in request.query_params.multi_items()[:16]}
            ref, why = self.signer.xorb_ref(str(request.path_params["name"]), query)
            if ref is None:
                self.refused.labels(why).inc()
                message = "this URL has expired" if why == "expired" else "bad signature"
                raise ServeError(403, "Forbidden", message)
            snap = await self.hub.call(self.hub.store.snapshot, ref.repo_type, ref.repo_id,
                                       ref.commit)  # fmt: skip
            f = snap.files.get(ref.path)
            if f is None or file_hash(f) != ref.file:
                raise ServeError(404, "EntryNotFound", "no such xorb", commit=snap.commit)
            _check_signed(snap, f)
            layout = Layout(f.size)
            if ref.xorb >= layout.xorbs:
                raise ServeError(404, "EntryNotFound", "no such xorb", commit=snap.commit)
            size = layout.packed_size(ref.xorb)
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            try:
                r = ranged(request.headers.get("range"), size)
            except Unsatisfiable:
                return Response(status_code=416, headers=headers | unsatisfiable(size))
            headers |= r.headers()
            framing = layout.framing(ref.xorb, r.start, r.start + r.length)
            budget = self.hub.budget

            def half() -> int:
                """A xorb holds a piece read and the piece framed from it at once: half the
                download's share each, so Xet takes no more memory than a plain download."""
                return max(budget.low, budget.piece() // 2)

            def read() -> Iterator[bytes]:
                pieces = f.chunks(framing.file_start, framing.length, half)
                return self._counted(frame(framing, pieces), pieces)

            return await self.hub.stream(f, read, r.status, headers)
        except ServeError as e:
            return error(e)

    def _counted(self, body: Iterator[bytes], pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for piece in body:
                self.xorb_bytes.inc(len(piece))
                yield piece
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:  # the storage read ends with the body (a client gone early)
                close()

    async def telemetry(self, request: Request) -> Response:
        """hf_xet's telemetry: read and dropped."""
        async for _ in request.stream():
            pass
        return JSONResponse({})

    def _grant(self, request: Request) -> Grant:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        grant = self.signer.grant(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            self.refused.labels("token").inc()
            raise ServeError(401, "Unauthorized", "missing, unknown or expired Xet token")
        return grant


def _find(snap: Snapshot, wanted: str) -> RepoFile:
    """The file of ``snap`` announced under ``wanted`` (whatever --xet-min-size: a client may
    ask for a file by its hash, as hf_xet's own API does)."""
    for f in snap.files.values():
        if file_hash(f) == wanted:
            return f
    raise ServeError(404, "EntryNotFound", "no file of this revision has this Xet hash",
                     commit=snap.commit)  # fmt: skip


def _check_signed(snap: Snapshot, f: RepoFile) -> None:
    """With --verify-key, only the files the verified provenance lists (as for resolve)."""
    if snap.signed is not None and f.path not in snap.signed:
        raise ServeError(403, "UnverifiedImage", f"{f.path} is not in the signed file list")
