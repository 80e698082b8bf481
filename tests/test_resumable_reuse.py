"""``http.ResumableBody`` gives a connection back to its pool once a body is read to its end
(serve's ranged reads, one registry request each, then reuse one connection), and drops one left
in the middle (never read on from there)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hf2oci.http import ResumableBody, new_session

DATA = bytes(range(256)) * 4096  # 1 MiB


class _Ranges(http.server.ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def get_request(self) -> Any:
        self.connections += 1
        return super().get_request()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) if last else len(DATA) - 1
        body = DATA[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(DATA)}")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Ranges]:
    srv = _Ranges(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield srv
    srv.shutdown()


def _body(server: _Ranges, session: Any, start: int, end: int) -> ResumableBody:
    url = f"http://127.0.0.1:{server.server_address[1]}/blob"

    def open_at(offset: int) -> Any:
        return session.get(url, headers={"Range": f"bytes={offset}-{end - 1}"}, stream=True)

    return ResumableBody(open_at, what="test", start=start, end=end)


def test_bodies_read_to_their_end_share_one_connection(server: _Ranges) -> None:
    session = new_session(pool=4)
    for i in range(8):
        start, end = i * 100_000, i * 100_000 + 65_536
        with _body(server, session, start, end) as body:
            got = bytearray()
            buf = bytearray(20_000)
            while n := body.readinto(buf):
                got += buf[:n]
        assert bytes(got) == DATA[start:end]
    assert server.connections == 1


def test_a_body_left_in_the_middle_drops_its_connection(server: _Ranges) -> None:
    session = new_session(pool=4)
    with _body(server, session, 0, 500_000) as body:
        assert body.readinto(bytearray(1000)) == 1000  # and left there
    with _body(server, session, 0, 10) as body:
        assert body.readinto(bytearray(10)) == 10
    assert server.connections == 2
