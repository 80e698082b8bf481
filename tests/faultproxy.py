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
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@dataclass
class Fault:
    method: str
    path: str  # regex searched in the request path
    #: a status code ("503"), "429:<retry-after>", "cut" (no answer), or "cut-after:N"
    #: (the real answer's headers and its first N bytes, then the connection dies)
    action: str
    times: int
    hits: int = 0
    #: > 0: only every ``every``-th matching request gets the fault (the others pass)
    every: int = 0
    matched: int = 0

    def take(self) -> str | None:
        """The action for one more matching request, or None to let it pass. Several actions
        between ``|`` take turns ("503|cut-after:1000")."""
        with _LOCK:
            self.matched += 1
            if self.hits >= self.times or (self.every and self.matched % self.every):
                return None
            self.hits += 1
            actions = self.action.split("|")
            return actions[(self.hits - 1) % len(actions)]


_LOCK = threading.Lock()


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
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.seen.append((self.command, self.path))
                if proxy.delay:
                    time.sleep(proxy.delay)
                if self.command == "GET":
                    proxy.ranges.append((self.path, self.headers.get("Range")))
                cut_after = None
                for fault in proxy.faults:
                    if fault.method != self.command or not re.search(fault.path, self.path):
                        continue
                    action = fault.take()
                    if action is None:
                        continue
                    if not action.startswith("cut-after:"):
                        return self.fail(action)
                    cut_after = int(action.partition(":")[2])
                    break
                if proxy.page_tags and "/tags/list" in self.path:
                    return self.tags_page()
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                dropped = {"connection"} | ({"range"} if proxy.ignore_range else set())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                encode = proxy.gzip_bodies and self.command == "GET" and resp.status < 300
                if encode:  # a proxy that compresses what it passes on (Content-Encoding)
                    data = gzip.compress(data)
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                if encode:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut_after is not None:
                    self.wfile.write(data[:cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(data)
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
        self, method: str, path: str, action: str, times: int = 1, *, every: int = 0
    ) -> Fault:
        fault = Fault(method, path, action, times, every=every)
        self.faults.append(fault)
        return fault

    def attempts(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.seen if m == method and re.search(path, p))
