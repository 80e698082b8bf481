"""A proxy in front of a real registry that injects faults (5xx, 429, cut connections)."""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # the stdlib's 5 makes a busy proxy refuse connects, not a registry
    daemon_threads = True


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@dataclass
class Fault:
    method: str
    path: str  # regex searched in the request path
    #: a status code ("503"), "429:<retry-after>", "cut" (no answer), or "cut-after:N"
    #: (the real answer's headers and its first N bytes, then the connection dies), or
    #: "stall-after:N:S" (the same, with S seconds of silence before it dies), or
    #: "slow-cut:N:S[:W]" (the first N bytes spread over S seconds, then W seconds of silence,
    #: then it dies)
    action: str
    times: int
    hits: int = 0
    #: > 0: only every ``every``-th matching request gets the fault (the others pass)
    every: int = 0
    matched: int = 0
    #: hits that changed the answer (a cut of a body no longer than its cut point is none)
    felt: int = 0
    #: a read is faulted once at most: its retries and resumes (the same path, the same end of
    #: its range) pass (a blip, never the 4 faults in a row a client's read gives up on)
    once_per_read: bool = False
    _faulted: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def take(self, read: tuple[str, str] = ("", "")) -> str | None:
        """The action for one more matching request (``read``: its path and the end of its
        range), or None to let it pass. Several actions between ``|`` take turns
        ("503|cut-after:1000")."""
        with _LOCK:
            if self.once_per_read and read in self._faulted:
                return None
            self.matched += 1
            if self.hits >= self.times or (self.every and self.matched % self.every):
                return None
            self.hits += 1
            if self.once_per_read:
                self._faulted.add(read)
            actions = self.action.split("|")
            return actions[(self.hits - 1) % len(actions)]

    def was_felt(self) -> None:
        with _LOCK:
            self.felt += 1


_LOCK = threading.Lock()
#: the path that steers a proxy (never a registry path: those start /v2/)
CONTROL = "/-/faults"


class FaultProxy:
    """A proxy to a registry that answers with faults for the first N matching requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header) of each GET
        self.page_tags = 0  # > 0: serve tags/list in pages of this size, with Link headers
        self.ignore_range = False  # True: Range headers are not passed on (a full 200 answer)
        self.gzip_bodies = False  # True: GET answers are sent gzip-encoded
        self.delay = 0.0  # seconds every request waits before it is passed on (a slow registry)
        #: what each request's path (with its query) is changed into before it is passed on
        self.rewrite: Callable[[str], str] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == CONTROL:
                    return self.control()
                if proxy.rewrite is not None:
                    self.path = proxy.rewrite(self.path)
                proxy.seen.append((self.command, self.path))
                if proxy.delay:
                    time.sleep(proxy.delay)
                if self.command == "GET":
                    proxy.ranges.append((self.path, self.headers.get("Range")))
                cut_after, stall, pace, cutting = None, 0.0, 0.0, None
                for fault in proxy.faults:
                    if fault.method != self.command or not re.search(fault.path, self.path):
                        continue
                    end = (self.headers.get("Range") or "").rpartition("-")[2]
                    action = fault.take((self.path, end))
                    if action is None:
                        continue
                    if not action.startswith(("cut-after:", "stall-after:", "slow-cut:")):
                        fault.was_felt()
                        return self.fail(action)
                    cutting = fault
                    kind, cut, seconds, silence = (action + ":0:0").split(":")[:4]
                    cut_after = int(cut)
                    if kind == "slow-cut":
                        pace = float(seconds) / max(1, cut_after)  # seconds a byte
                        stall = float(silence)
                    else:
                        stall = float(seconds)
                    break
                if proxy.page_tags and "/tags/list" in self.path:
                    return self.tags_page()
                dropped = {"connection"} | ({"range"} if proxy.ignore_range else set())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                encode = proxy.gzip_bodies and self.command == "GET" and resp.status < 300
                length = resp.getheader("Content-Length")
                whole = encode or length is None  # else the body streams through
                data = resp.read() if whole else b""
                if encode:  # a proxy that compresses what it passes on (Content-Encoding)
                    data = gzip.compress(data)
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                if encode:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)) if whole else str(length))
                self.end_headers()
                left = 0 if self.command == "HEAD" else len(data) if whole else int(length or 0)
                if cut_after is not None:
                    if cutting is not None and left > cut_after:
                        cutting.was_felt()
                    left = min(left, cut_after)
                if whole:
                    self.wfile.write(data[:left])
                else:  # 1 MiB at a time: the proxy never holds a whole blob
                    step = 64 << 10 if pace else 1 << 20
                    while left > 0 and (piece := resp.read(min(left, step))):
                        self.wfile.write(piece)
                        left -= len(piece)
                        if pace:
                            self.wfile.flush()
                            time.sleep(len(piece) * pace)
                if cut_after is not None:
                    self.wfile.flush()
                    time.sleep(stall)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                conn.close()

            def fail(self, action: str) -> None:
                if action == "cut":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                action, _, code = action.partition("!")  # "400!DIGEST_INVALID": that code
                status, _, retry_after = action.partition(":")
                body = json.dumps(
                    {
                        "errors": [
                            {
                                "code": code or ("DENIED" if status == "403" else "UNAVAILABLE"),
                                "message": f"injected {status}",
                            }
                        ]
                    }
                ).encode()
                self.send_response(int(status))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def control(self) -> None:
                """GET: each fault's hits and matches; DELETE: no more faults (a proxy run as a
                process of its own, ``python faultproxy.py``, is steered so)."""
                if self.command == "DELETE":
                    for fault in proxy.faults:
                        fault.times = 0
                counts = [{"hits": f.hits, "matched": f.matched} for f in proxy.faults]
                data = json.dumps(counts).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def tags_page(self) -> None:
                parts = urlsplit(self.path)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request("GET", parts.path)
                tags = sorted(json.loads(conn.getresponse().read())["tags"])
                conn.close()
                last = parse_qs(parts.query).get("last", [""])[0]
                rest = [t for t in tags if t > last]
                page, more = rest[: proxy.page_tags], rest[proxy.page_tags :]
                body = json.dumps({"name": "x", "tags": page}).encode()
                self.send_response(200)
                if more:
                    query = urlencode({"n": proxy.page_tags, "last": page[-1]})
                    self.send_header("Link", f'<{parts.path}?{query}>; rel="next"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.server = serve(Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def fault(
        self, method: str, path: str, action: str, times: int = 1, *, every: int = 0,
        once_per_read: bool = False,
    ) -> Fault:  # fmt: skip
        fault = Fault(method, path, action, times, every=every, once_per_read=once_per_read)
        self.faults.append(fault)
        return fault

    def attempts(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.seen if m == method and re.search(path, p))


def main() -> None:
    """``python faultproxy.py UPSTREAM METHOD PATH ACTION [--every N]``: a proxy as a process of
    its own (no GIL shared with the clients it is measured with); prints its host, then serves
    until killed. ``GET``/``DELETE`` on ``/-/faults`` read the counts and stop the faults."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("upstream")
    ap.add_argument("method")
    ap.add_argument("path")
    ap.add_argument("action")
    ap.add_argument("--every", type=int, default=0)
    args = ap.parse_args()
    proxy = FaultProxy(args.upstream)
    proxy.fault(args.method, args.path, args.action, times=10**9, every=args.every)
    proxy.seen = _Forgetful()  # a long run keeps no list of every request
    proxy.ranges = _Forgetful()
    print(proxy.host, flush=True)
    threading.Event().wait()


class _Forgetful(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


if __name__ == "__main__":
    main()
