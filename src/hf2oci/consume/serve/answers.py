"""A request's path read as the hub reads it, and answers in the hub's shape: errors with
``X-Error-Code`` (on HEAD too), and web pages with their security headers."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hf2oci.consume.serve.pages import CSP
from hf2oci.errors import ServeError
from hf2oci.spec import REPO_TYPES, RepoType, plural

#: "models" → model, "datasets" → dataset
KINDS: dict[str, RepoType] = {plural(t): t for t in REPO_TYPES}


def segments(request: Request, skip: int) -> list[str]:
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


def split_repo(parts: list[str], actions: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """``org/name[/ACTION/…]`` (or a one-part legacy id) → (repo id, action, the rest)."""
    if len(parts) >= 2 and parts[1] in actions:
        return parts[0], parts[1], parts[2:]
    if len(parts) >= 2 and (len(parts) == 2 or parts[2] in actions):
        return f"{parts[0]}/{parts[1]}", parts[2] if len(parts) > 2 else None, parts[3:]
    if len(parts) == 1:
        return parts[0], None, []
    raise ServeError(404, "RepoNotFound", "Repository not found")


def wants_html(request: Request) -> bool:
    """A browser asking for a page (API clients send JSON or ``*/*``)."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


#: what every page carries: no script runs, nothing loads from elsewhere, no framing
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def html(text: str, status: int = 200) -> Response:
    headers = {"Content-Security-Policy": CSP, **PAGE_HEADERS}
    return Response(text, status_code=status, media_type="text/html; charset=utf-8",
                    headers=headers)  # fmt: skip


def error(e: ServeError, head: bool = False) -> Response:
    headers = {"X-Error-Code": e.code, "X-Error-Message": str(e)}
    if e.commit:
        headers["X-Repo-Commit"] = e.commit
    if e.retry_after is not None:
        headers["Retry-After"] = str(e.retry_after)
    if head:
        return Response(status_code=e.status, headers=headers)
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)
