"""serve's gate: bearer tokens (or the login form's cookie), compared in constant time, for
every path but the open ones and Xet's own (their CAS tokens and signed URLs); one access-log
line and the request metrics for every request."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hf2oci.consume.serve.answers import html
from hf2oci.consume.serve.metrics import OPEN, Metrics, route_of
from hf2oci.consume.serve.pages import login_page
from hf2oci.consume.serve.streaming import BodyCut
from hf2oci.consume.serve.xet import own_credentials

access_log = logging.getLogger("hf2oci.serve.access")

#: the cookie a browser keeps its token in, after the login form (same tokens as the API)
TOKEN_COOKIE = "hf2oci_token"
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


class Gate:
    """Bearer tokens (compared in constant time), the access log and the request metrics."""

    def __init__(self, app: ASGIApp, *, tokens: list[str], metrics: Metrics) -> None:
        self.app, self.tokens, self.metrics = app, [t.encode() for t in tokens], metrics

    def _allowed(self, scope: Scope) -> bool:
        if not self.tokens or scope["path"] in OPEN or own_credentials(scope["path"]):
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
        route = route_of(scope["path"])
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
                with contextlib.suppress(BodyCut):  # the server closes what is left short
                    await self.app(scope, receive, sending)
            else:
                headers = {"X-Error-Code": "Unauthorized", "X-Error-Message": BAD_CREDENTIALS}
                response: Response = JSONResponse({"error": BAD_CREDENTIALS}, 401, headers=headers)
                accept = dict(scope.get("headers") or []).get(b"accept", b"")
                if b"text/html" in accept and not scope["path"].startswith("/api/"):
                    response = html(login_page(), status=401)
                await response(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.seen(dict(scope.get("headers") or []).get(b"user-agent", b""))
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
