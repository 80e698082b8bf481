"""A Xet CAS for tests: `hf_xet` itself uploads into it, so its xorbs are the real thing.

`XetCas` is an in-process HTTP server on 127.0.0.1 (random port) that speaks the protocol of
hf_xet 1.8 (the client under huggingface_hub 2.x), with xorbs stored on disk:

upload (a token issued with ``write=True``)
  ``GET /v1/chunks/{prefix}/{h}`` → 404 (no global dedup); ``POST /v1/xorb-grants/…`` → 404 (hf_xet
  then posts the xorb itself); ``POST /v1/xorbs/{prefix}/{h}`` (the raw xorb: chunks, then the
  ``XETBLOB`` footer) → ``{"was_inserted": bool}``; ``POST /v2/shards`` → 404, so hf_xet posts
  ``/v1/shards``: the shard's file section tells `file hash → terms` → ``{"result": 1}``.
download (any token the CAS issued, unexpired)
  ``GET /v2/reconstructions/{file}`` (``v2 = False``: 404, and hf_xet falls back to v1 for the
  rest of its session) and ``GET /v1/reconstructions/{file}``, both honouring
  ``Range: bytes=s-e`` (inclusive; a start past the end → 416). Terms are cut to the chunks
  that hold the range; ``offset_into_first_range`` says where the range starts in the first.
  Each xorb gets presigned URLs, ``/presigned/{xorb}?r=…&exp=…&who=…&sig=…`` (an HMAC over the
  xorb, its byte ranges, the expiry and who asked), that expire with the token that asked for
  the reconstruction (or after ``url_ttl`` seconds, if shorter). v1 gives one URL per merged
  chunk range (``fetch_info``), v2 one URL per xorb with all its ranges (``xorbs``).
  ``GET /presigned/…`` needs no ``Authorization``; a forged signature or an expired URL → 403
  (hf_xet then asks for the reconstruction again), a range outside the signed ones → 403, a
  start past the xorb's end → 416; several ranges at once → ``multipart/byteranges``.
``POST /v1/telemetry``
  accepted (200) and dropped, without a token.

Any other route, or no valid ``Authorization: Bearer`` token → 401 (expired tokens included:
a client must renew).

What was found in hf_xet 1.8 / xet-core, and matters here:

- hf_xet checks no hash on download: only chunk-header sanity (version 0, scheme 0/1/2, lengths
  ≤ 128 KiB), decompressed lengths against each term's ``unpacked_length`` and the total size.
  `tamper` relies on that: it serves a copy of one xorb where one chunk of the file is replaced
  by an uncompressed chunk of other bytes of the same length, under a made-up xorb hash.
- hf_xet refreshes its token *before* a request whenever the expiry is less than 30 s away
  (``REFRESH_BUFFER_SEC``), so with a TTL under 30 s it asks the refresh URL before nearly every
  request; a 401 from the CAS is fatal (never retried). A token seeded with no refresh URL and
  an expiry within 30 s fails before any request ("Token refresh not expected"), so a download
  group given a short-lived token must also get ``token_refresh_url``.
- Retries (5xx, 429, cut bodies, 403 on presigned URLs) wait ``client.retry_base_delay``
  (default 3 s) with exponential backoff: tests set it low with ``HF_XET_CLIENT_RETRY_BASE_DELAY``
  or ``XetConfig().with_config({"client.retry_base_delay": "50ms"})``.
- Xorbs are cut at 64 MiB (or 8192 chunks) of chunk data, and these limits are fixed in release
  builds; chunks target 64 KiB (8 KiB to 128 KiB). A small file still spans xorbs when it
  reuses chunks of an earlier upload: its new chunks go to a new xorb. Files uploaded in the
  same commit are chunked side by side and do not dedup against each other; a later commit
  dedups against earlier ones through hf_xet's local shard cache (the CAS's chunk query
  answers 404).
- hf_xet keeps a shard cache per CAS URL (under ``HF_XET_CACHE`` or ``HF_HOME``) and dedups
  uploads against it: a new CAS on a reused port would get shards naming xorbs it never
  received. `XetCas.session` points that cache into the CAS's own folder.
- With ``client.enable_multirange_fetching`` off (the default) hf_xet fetches each range of a
  v2 URL with its own single-range request.
- When a download fails before its first byte (a 401 or 404 on the reconstruction, or the
  token refresh error above), ``download_stream`` raises about three times in four; otherwise
  it ends with *no bytes and no error* (its channel closes before the error is recorded, and
  ``group.finish()`` does not raise either). A caller must check the length it got.
- Measured on 2 busy cores: uploading 1 GiB of non-repeating content through `upload` takes
  ~4 s (17 xorbs of 64 MiB), reading it back with hf_xet ~2 s, through the bridge ~3 s,
  ``hf_hub_download`` over Xet ~5 s with the interpreter's start.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_RANGES_RE = re.compile(r"bytes=(\d+-\d*(?:,\s*\d+-\d*)*)")
_CHUNK_HEADER = 8
_MAX_CHUNK = 128 * 1024
_FOOTER_IDENT = b"XETBLOB"
_PIECE = 1024 * 1024

Ranges = list[tuple[int, int]]  # [start, end) pairs


def hash_hex(raw: bytes) -> str:
    """A Merkle hash's string form: its 32 bytes as four little-endian u64 words, each as 16 hex
    digits (so each 8-byte group reads reversed)."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


@dataclass(frozen=True)
class Term:
    """Part of a file: chunks ``[start, end)`` of a xorb, ``size`` bytes once unpacked."""

    xorb: str
    start: int
    end: int
    size: int


@dataclass(frozen=True)
class Chunk:
    """A chunk in a xorb: where its header starts, header + data length, unpacked size."""

    offset: int
    length: int
    size: int
    scheme: int


@dataclass
class CasRequest:
    """One request the CAS answered: ``route`` is "chunks", "xorb-grant", "xorb-upload",
    "shard", "reconstruction", "xorb" (a presigned GET), "telemetry" or "other"; ``who`` is the
    label of the token (or of the presigned URL's token), ``range`` the ``Range`` header asked,
    ``sent`` the body bytes written. It is
    logged as the answer's status line goes out (so a client that got its answer finds it in the
    log) and ``sent`` grows before each write."""

    method: str
    path: str
    route: str
    status: int
    who: str | None
    range: str | None
    sent: int


@dataclass(frozen=True)
class _Token:
    expires: float
    who: str
    write: bool


def parse_shard(data: bytes) -> dict[str, tuple[list[Term], str | None]]:
    """A shard's file section (xet-core ``shard_format.rs``): file hash → (terms, sha256 when the
    file entry has the metadata extension). Header: 32-byte tag, u64 version, u64 footer size;
    then per file a 48-byte header ``{hash, u32 flags, u32 n, u64 0}``, n 48-byte terms ``{xorb
    hash, u32 flags, u32 unpacked bytes, u32 chunk start, u32 chunk end}``, n 48-byte
    verification entries if flag bit 31, one 48-byte ``{sha256, 0…}`` if bit 30; ended by a header
    whose hash is all 0xFF."""
    if len(data) < 48 or not data.startswith(b"HFRepoMetaData"):
        raise ValueError("not a shard")
    files: dict[str, tuple[list[Term], str | None]] = {}
    pos = 48
    while True:
        raw_hash = data[pos : pos + 32]
        if len(raw_hash) < 32:
            raise ValueError("shard ends inside its file section")
        if raw_hash == b"\xff" * 32:
            return files
        flags, n = struct.unpack_from("<II", data, pos + 32)
        pos += 48
        terms = []
        for _ in range(n):
            xorb = hash_hex(data[pos : pos + 32])
            _xflags, size, start, end = struct.unpack_from("<IIII", data, pos + 32)
            terms.append(Term(xorb, start, end, size))
            pos += 48
        if flags & (1 << 31):
            pos += 48 * n
        sha256 = None
        if flags & (1 << 30):
            sha256 = data[pos : pos + 32].hex()
            pos += 48
        files[hash_hex(raw_hash)] = (terms, sha256)


def xorb_chunks(path: Path) -> list[Chunk]:
    """The chunks of a stored xorb, found by walking their 8-byte headers (u8 version 0, u24 LE
    compressed length, u8 scheme, u24 LE unpacked length) up to the ``XETBLOB`` footer."""
    chunks = []
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset + _CHUNK_HEADER <= size:
            f.seek(offset)
            header = f.read(_CHUNK_HEADER)
            if header.startswith(_FOOTER_IDENT[:_CHUNK_HEADER]) or header[0] != 0:
                break
            compressed = int.from_bytes(header[1:4], "little")
            unpacked = int.from_bytes(header[5:8], "little")
            chunks.append(Chunk(offset, _CHUNK_HEADER + compressed, unpacked, header[4]))
            offset += _CHUNK_HEADER + compressed
    return chunks


def _merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Overlapping or touching [start, end) ranges merged, in order."""
    merged: Ranges = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class XetCas:
    """An in-process Xet CAS on ``host`` (random port), xorbs on disk under ``root``.

    ``root`` (default: a temporary folder removed by `stop`) holds ``xorbs/``, ``files/`` (each
    file's terms as JSON, reloaded when a CAS starts on the same root, so benchmarks can keep
    GiBs of uploads between runs) and hf_xet's own shard cache for the uploads made through
    `upload`. Use as a context manager or `start`/`stop`.
    """

    def __init__(self, root: Path | None = None, *, host: str = "127.0.0.1") -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="xetcas-")) if root is None else Path(root)
        for sub in ("xorbs", "files", "client"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.host = host
        #: answer ``/v2/reconstructions`` (False: 404, so hf_xet falls back to v1)
        self.v2 = True
        #: presigned URLs live at most this long (None: as long as the token that asked)
        self.url_ttl: float | None = None
        #: bytes per second for xorb bodies (None: as fast as possible)
        self.throttle: float | None = None
        self.log: list[CasRequest] = []
        self.flaky_hits = 0
        self._secret = secrets.token_bytes(32)
        self._tokens: dict[str, _Token] = {}
        self._files: dict[str, list[Term]] = {}
        self._by_sha256: dict[str, str] = {}
        self._tampered: dict[str, list[Term]] = {}
        self._chunks: dict[str, list[Chunk]] = {}
        self._flaky: tuple[int, tuple[str, ...]] = (0, ())
        self._flaky_seen = 0
        self._flaky_once = False
        self._flaky_reads: set[tuple[str, str]] = set()
        self._lock = threading.RLock()
        self._httpd: _CasServer | None = None
        self._session: Any = None
        for entry in (self.root / "files").glob("*.json"):
            record = json.loads(entry.read_text())
            self._files[entry.stem] = [Term(*t) for t in record["terms"]]
            if record.get("sha256"):
                self._by_sha256[record["sha256"]] = entry.stem

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("XetCas is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> XetCas:
        if self._httpd is None:
            self._httpd = _CasServer((self.host, 0), _CasHandler)
            self._httpd.cas = self
            threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._session = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> XetCas:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- tokens ------------------------------------------------------------------------------

    def issue_token(
        self, ttl: float = 3600.0, *, who: str = "client", write: bool = False
    ) -> tuple[str, float]:
        """A new access token valid for ``ttl`` seconds: (token, unix expiry). ``who`` labels
        what it fetches in `log`; ``write`` lets it upload."""
        token = "xet_" + secrets.token_hex(20)
        expires = time.time() + ttl
        with self._lock:
            self._tokens[token] = _Token(expires, who, write)
        return token, expires

    def _token(self, authorization: str | None) -> _Token | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            info = self._tokens.get(token.strip())
        if info is None or time.time() >= info.expires:
            return None
        return info

    # -- uploads through hf_xet --------------------------------------------------------------

    def session(self, **config: Any) -> Any:
        """An ``hf_xet.XetSession`` for this CAS: telemetry off, 50 ms retry delay, its shard
        cache in this CAS's folder; ``config`` adds ``XetConfig`` settings."""
        import hf_xet

        client = self.root / "client"
        settings = {
            "telemetry.enabled": False,
            "client.retry_base_delay": "50ms",
            "shard.cache_subdir": str(client / "shard-cache"),
            "data.staging_subdir": str(client / "staging"),
            **config,
        }
        return hf_xet.XetSession(config=hf_xet.XetConfig().with_config(settings))

    def upload(
        self,
        contents: Iterable[bytes | Path | Iterable[bytes]],
        *,
        sha256s: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Upload files through hf_xet's own upload API: each is bytes, a file on disk or an
        iterable of pieces (streamed, never held whole). Returns their Xet hashes, in order.

        Each file is its own commit, one after another: hf_xet dedups a file's chunks against
        what its shard cache knows from earlier commits (files in one commit are chunked side
        by side and do not dedup against each other), so a file that shares data with an earlier
        one reuses its chunks and may span several xorbs. With ``sha256s`` (the files' sha256,
        known beforehand), a file this CAS already holds under that sha256 is not uploaded
        again."""
        import hf_xet

        items = list(contents)
        known = list(sha256s) if sha256s is not None else [None] * len(items)
        hashes: list[str | None] = [None] * len(items)
        with self._lock:
            for i, sha in enumerate(known):
                if sha and self._by_sha256.get(sha) in self._files:
                    hashes[i] = self._by_sha256[sha]
        if any(h is None for h in hashes) and self._session is None:
            self._session = self.session()
        for i, item in enumerate(items):
            if hashes[i] is not None:
                continue
            sha = known[i] or hf_xet.SKIP_SHA256
            token, expires = self.issue_token(24 * 3600, who="upload", write=True)
            commit = self._session.new_upload_commit(
                endpoint=self.url, token=token, token_expiry_unix_secs=int(expires)
            )
            if isinstance(item, bytes | bytearray | memoryview):
                handle = commit.start_upload_bytes(bytes(item), sha256=sha, name=f"f{i}")
            elif isinstance(item, Path):
                handle = commit.start_upload_file(str(item), sha256=sha)
            else:
                handle = commit.start_upload_stream(name=f"f{i}", sha256=sha)
                for piece in item:
                    handle.write(piece)
                hashes[i] = handle.finish().xet_info.hash
            commit.wait_to_finish()
            if hashes[i] is None:
                hashes[i] = handle.result().xet_info.hash
            if known[i]:
                with self._lock:
                    self._remember_sha256(str(hashes[i]), str(known[i]))
        return [str(h) for h in hashes]

    def _remember_sha256(self, file_hash: str, sha256: str) -> None:
        record = self.root / "files" / f"{file_hash}.json"
        if not record.exists():
            return
        self._by_sha256[sha256] = file_hash
        data = json.loads(record.read_text())
        if data.get("sha256") != sha256:
            data["sha256"] = sha256
            record.write_text(json.dumps(data))

    # -- what the CAS holds ------------------------------------------------------------------

    def has_file(self, file_hash: str) -> bool:
        with self._lock:
            return file_hash in self._files

    def file_size(self, file_hash: str) -> int:
        with self._lock:
            return sum(t.size for t in self._files[file_hash])

    def terms(self, file_hash: str) -> list[Term]:
        """The terms a file reconstructs from (as its shard said; not tampered)."""
        with self._lock:
            return list(self._files[file_hash])

    def xorbs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "xorbs").iterdir() if _HEX64.fullmatch(p.name))

    def chunks(self, xorb: str) -> list[Chunk]:
        with self._lock:
            found = self._chunks.get(xorb)
        if found is None:
            found = xorb_chunks(self.root / "xorbs" / xorb)
            with self._lock:
                self._chunks[xorb] = found
        return found

    # -- instrumentation and faults ----------------------------------------------------------

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def count(self, route: str, *, who: str | None = None, status: int | None = None) -> int:
        """Logged requests of a route (see `CasRequest`), optionally of one token label and
        answer status."""
        with self._lock:
            return sum(
                1
                for r in self.log
                if r.route == route
                and (who is None or r.who == who)
                and (status is None or r.status == status)
            )

    @property
    def reconstructions(self) -> int:
        """Reconstruction answers given (200), to anyone."""
        return self.count("reconstruction", status=200)

    @property
    def xorb_gets(self) -> int:
        """Presigned xorb GETs received, whatever their answer."""
        return self.count("xorb")

    @property
    def bytes_served(self) -> int:
        """Xorb body bytes sent by presigned GETs."""
        with self._lock:
            return sum(r.sent for r in self.log if r.route == "xorb")

    def flaky(
        self, every: int, kinds: tuple[str, ...] = ("503", "cut"), *, once_per_read: bool = False
    ) -> None:
        """Fail every ``every``-th presigned xorb GET, with each of ``kinds`` in turn: "503",
        "cut" (the body stops half-way and the connection closes) or "403" (as an expired URL:
        hf_xet asks for the reconstruction again); ``every=0`` stops it. ``flaky_hits`` counts
        the failures given. ``once_per_read``: a read (its xorb and range) fails once at most,
        its retries pass (hf_xet gives up on a read that fails again right after a refresh)."""
        with self._lock:
            self._flaky = (every, kinds)
            self._flaky_seen = 0
            self.flaky_hits = 0
            self._flaky_once = once_per_read
            self._flaky_reads = set()

    def _flaky_fault(self, read: tuple[str, str] = ("", "")) -> str | None:
        with self._lock:
            every, kinds = self._flaky
            if not every or (self._flaky_once and read in self._flaky_reads):
                return None
            self._flaky_seen += 1
            if self._flaky_seen % every:
                return None
            self.flaky_hits += 1
            self._flaky_reads.add(read)
            return kinds[(self._flaky_seen // every - 1) % len(kinds)]

    def tamper(self, file_hash: str, offset: int = 0) -> None:
        """Make ``file_hash`` reconstruct to other bytes, in a way hf_xet cannot notice: the
        chunk holding byte ``offset`` is served from a copy of its xorb (under a made-up xorb
        hash) where it is replaced by an uncompressed chunk of other bytes of the same length
        (its own bytes inverted when it was stored uncompressed, else random bytes). Other files
        are untouched; `clear_faults` undoes it."""
        with self._lock:
            terms = list(self._files[file_hash])
        starts = [0, *itertools.accumulate(t.size for t in terms)]
        if not 0 <= offset < starts[-1]:
            raise ValueError(f"offset {offset} is outside {file_hash}")
        index = max(i for i in range(len(terms)) if starts[i] <= offset)
        term, pos = terms[index], starts[index]
        chunks = self.chunks(term.xorb)
        target = term.start
        for i in range(term.start, term.end):
            if pos + chunks[i].size > offset:
                target = i
                break
            pos += chunks[i].size
        chunk = chunks[target]
        src = self.root / "xorbs" / term.xorb
        with src.open("rb") as f:
            data = f.read()
        if chunk.scheme == 0:
            body = data[chunk.offset + _CHUNK_HEADER : chunk.offset + chunk.length]
            altered = bytes(b ^ 0xFF for b in body)
        else:
            altered = secrets.token_bytes(chunk.size)
        n = chunk.size.to_bytes(3, "little")
        replaced = bytes([0]) + n + bytes([0]) + n + altered
        fake = hashlib.sha256(f"tampered:{term.xorb}:{target}".encode()).hexdigest()
        copy = data[: chunk.offset] + replaced + data[chunk.offset + chunk.length :]
        (self.root / "xorbs" / fake).write_bytes(copy)
        with self._lock:
            self._chunks.pop(fake, None)
            terms[index] = Term(fake, term.start, term.end, term.size)
            self._tampered[file_hash] = terms

    def clear_faults(self) -> None:
        """No flaky answers, no tampering, v2 on, no URL TTL, no throttle."""
        with self._lock:
            self._flaky = (0, ())
            self.flaky_hits = 0
            self._tampered.clear()
            self.v2, self.url_ttl, self.throttle = True, None, None

    # -- presigned URLs ----------------------------------------------------------------------

    def _signature(self, xorb: str, ranges: str, exp: str, who: str) -> str:
        msg = f"{xorb}|{ranges}|{exp}|{who}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def presign(self, xorb: str, ranges: Ranges, expires: float, who: str) -> str:
        """A URL for GETs of byte ranges ``[start, end)`` of a xorb, until ``expires``."""
        spec = ",".join(f"{s}-{e - 1}" for s, e in ranges)
        exp = f"{expires:.3f}"
        query = {"r": spec, "exp": exp, "who": who, "sig": self._signature(xorb, spec, exp, who)}
        return f"{self.url}/presigned/{xorb}?{urlencode(query)}"

    # -- reconstruction ----------------------------------------------------------------------

    def reconstruction(
        self,
        file_hash: str,
        start: int | None,
        end: int | None,
        *,
        version: int,
        expires: float,
        who: str,
    ) -> dict[str, Any] | None:
        """The reconstruction of bytes ``[start, end]`` (inclusive; None: the whole file) as
        the v1 or v2 JSON; None when ``start`` is past the end (416)."""
        with self._lock:
            terms = self._tampered.get(file_hash) or self._files[file_hash]
        size = sum(t.size for t in terms)
        lo = start or 0
        hi = size if end is None else min(end + 1, size)
        if lo >= size and (start is not None or size):
            return None
        chosen: list[Term] = []
        first_offset = 0
        pos = 0
        for term in terms:
            term_end = pos + term.size
            if term_end <= lo or pos >= hi:
                pos = term_end
                continue
            chunks = self.chunks(term.xorb)
            first = last = None
            cpos = pos
            for i in range(term.start, term.end):
                c_end = cpos + chunks[i].size
                if c_end > lo and cpos < hi:
                    if first is None:
                        first = i
                        if not chosen:
                            first_offset = lo - cpos
                    last = i + 1
                cpos = c_end
            assert first is not None and last is not None
            unpacked = sum(c.size for c in chunks[first:last])
            chosen.append(Term(term.xorb, first, last, unpacked))
            pos = term_end
        by_xorb: dict[str, Ranges] = {}
        for term in chosen:
            by_xorb.setdefault(term.xorb, []).append((term.start, term.end))
        if self.url_ttl is not None:
            expires = min(expires, time.time() + self.url_ttl)
        fetch: dict[str, Any] = {}
        for xorb, chunk_ranges in by_xorb.items():
            chunks = self.chunks(xorb)
            entries = []
            for cs, ce in _merge(chunk_ranges):
                bs, be = chunks[cs].offset, chunks[ce - 1].offset + chunks[ce - 1].length
                entries.append(((cs, ce), (bs, be)))
            if version == 1:
                fetch[xorb] = [
                    {
                        "range": {"start": cs, "end": ce},
                        "url": self.presign(xorb, [(bs, be)], expires, who),
                        "url_range": {"start": bs, "end": be - 1},
                    }
                    for (cs, ce), (bs, be) in entries
                ]
            else:
                url = self.presign(xorb, [b for _, b in entries], expires, who)
                ranges = [
                    {"chunks": {"start": cs, "end": ce}, "bytes": {"start": bs, "end": be - 1}}
                    for (cs, ce), (bs, be) in entries
                ]
                fetch[xorb] = [{"url": url, "ranges": ranges}]
        listed = [
            {"hash": t.xorb, "unpacked_length": t.size, "range": {"start": t.start, "end": t.end}}
            for t in chosen
        ]
        key = "fetch_info" if version == 1 else "xorbs"
        return {"offset_into_first_range": first_offset, "terms": listed, key: fetch}

    # -- called by the handler ---------------------------------------------------------------

    def _store_xorb(self, xorb: str, data: bytes) -> bool:
        path = self.root / "xorbs" / xorb
        if path.exists():
            return False
        tmp = path.with_name(f".{xorb}.{secrets.token_hex(4)}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True

    def _store_shard(self, data: bytes) -> None:
        for file_hash, (terms, sha256) in parse_shard(data).items():
            record = {"terms": [[t.xorb, t.start, t.end, t.size] for t in terms]}
            if sha256 and sha256 != "00" * 32:
                record["sha256"] = sha256
            (self.root / "files" / f"{file_hash}.json").write_text(json.dumps(record))
            with self._lock:
                self._files[file_hash] = terms
                if "sha256" in record:
                    self._by_sha256[record["sha256"]] = file_hash


class _CasServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    cas: XetCas

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("test CAS: error serving %s", client_address, exc_info=True)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class _CasHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hf2oci-test-cas/1.0"
    timeout = 120
    server: _CasServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("test CAS: " + format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        cas = self.server.cas
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        self._route, self._who = "other", None
        self._entry: CasRequest | None = None
        try:
            self._dispatch(cas, parts, parse_qs(query))
        except _Refused as e:
            self._json(e.status, {"error": e.message}, e.headers)
        finally:
            if self._entry is None:  # it broke before answering
                self._begin(500)

    def _begin(self, status: int) -> None:
        """Log the request with its answer's status, then send the status line."""
        cas = self.server.cas
        self._entry = CasRequest(
            self.command, self.path, self._route, status, self._who, self.headers.get("Range"), 0
        )
        with cas._lock:
            cas.log.append(self._entry)
        self.send_response(status)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self, cas: XetCas, *, write: bool = False) -> _Token:
        token = cas._token(self.headers.get("Authorization"))
        if token is None:
            raise _Refused(401, "missing, unknown or expired token")
        self._who = token.who
        if write and not token.write:
            raise _Refused(403, "this token may not write")
        return token

    def _dispatch(self, cas: XetCas, parts: list[str], query: dict[str, list[str]]) -> None:
        method = self.command
        body = self._body() if method == "POST" else b""
        if method == "POST" and parts == ["v1", "telemetry"]:
            self._route = "telemetry"
            self._json(200, {})
            return
        if method == "GET" and len(parts) == 2 and parts[0] == "presigned":
            self._route = "xorb"
            self._presigned(cas, parts[1], query)
            return
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "chunks"]:
            self._route = "chunks"
            self._authorised(cas)
            raise _Refused(404, "no global dedup here")
        if method == "POST" and len(parts) >= 2 and parts[:2] == ["v1", "xorb-grants"]:
            self._route = "xorb-grant"
            self._authorised(cas, write=True)
            raise _Refused(404, "no xorb grants here: post the xorb")
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "xorbs"]:
            self._route = "xorb-upload"
            self._authorised(cas, write=True)
            if not _HEX64.fullmatch(parts[3]):
                raise _Refused(400, "bad xorb hash")
            self._json(200, {"was_inserted": cas._store_xorb(parts[3], body)})
            return
        if method == "POST" and parts in (["v1", "shards"], ["v2", "shards"]):
            self._route = "shard"
            self._authorised(cas, write=True)
            if parts[0] == "v2":
                raise _Refused(404, "shards go to /v1/shards here")
            try:
                cas._store_shard(body)
            except (ValueError, struct.error) as e:
                raise _Refused(400, f"bad shard: {e}") from None
            self._json(200, {"result": 1})
            return
        if method == "GET" and len(parts) == 3 and parts[1] == "reconstructions":
            self._route = "reconstruction"
            token = self._authorised(cas)
            if parts[0] not in ("v1", "v2") or (parts[0] == "v2" and not cas.v2):
                raise _Refused(404, f"no {parts[0]} reconstructions here")
            if not cas.has_file(parts[2]):
                raise _Refused(404, "file not found")
            start = end = None
            rng = self.headers.get("Range")
            if rng:
                match = re.fullmatch(r"bytes=(\d+)-(\d+)", rng.strip())
                if match is None or int(match[1]) > int(match[2]):
                    raise _Refused(416, f"bad range {rng}")
                start, end = int(match[1]), int(match[2])
            answer = cas.reconstruction(
                parts[2],
                start,
                end,
                version=1 if parts[0] == "v1" else 2,
                expires=token.expires,
                who=token.who,
            )
            if answer is None:
                size = cas.file_size(parts[2])
                raise _Refused(416, "range past the end", {"Content-Range": f"bytes */{size}"})
            self._json(200, answer)
            return
        self._authorised(cas)
        raise _Refused(404, "no such route")

    def _presigned(self, cas: XetCas, xorb: str, query: dict[str, list[str]]) -> None:
        spec, exp, who, sig = (query.get(k, [""])[0] for k in ("r", "exp", "who", "sig"))
        self._who = who or None
        good = _HEX64.fullmatch(xorb) is not None and hmac.compare_digest(
            cas._signature(xorb, spec, exp, who), sig
        )
        if not good:
            raise _Refused(403, "bad signature")
        if time.time() >= float(exp):
            raise _Refused(403, "this URL has expired")
        path = cas.root / "xorbs" / xorb
        size = path.stat().st_size
        signed = [(int(s), int(e) + 1) for s, e in (r.split("-") for r in spec.split(","))]
        header = self.headers.get("Range", "").strip()
        match = _RANGES_RE.fullmatch(header)
        if header and match is None:
            raise _Refused(416, f"bad range {header}", {"Content-Range": f"bytes */{size}"})
        wanted: Ranges = []
        for part in match[1].split(",") if match else []:
            s, _, e = part.strip().partition("-")
            wanted.append((int(s), min(int(e) + 1, size) if e else size))
        if not wanted:
            wanted = [(0, size)]
        if any(s >= size for s, _ in wanted):
            raise _Refused(416, "range past the end", {"Content-Range": f"bytes */{size}"})
        if not all(any(ss <= s and e <= se for ss, se in signed) for s, e in wanted):
            raise _Refused(403, "range not covered by the signature")
        fault = cas._flaky_fault((xorb, header))
        if fault == "503":
            raise _Refused(503, "injected flaky failure")
        if fault == "403":
            raise _Refused(403, "injected: this URL has expired")
        if len(wanted) == 1:
            s, e = wanted[0]
            status = 206 if match else 200
            headers = {"Content-Type": "application/octet-stream"}
            if match:
                headers["Content-Range"] = f"bytes {s}-{e - 1}/{size}"
            self._stream(cas, status, headers, path, [(s, e, b"")], e - s, fault == "cut")
            return
        boundary = secrets.token_hex(12)
        pieces = []
        for s, e in wanted:
            head = (
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {s}-{e - 1}/{size}\r\n\r\n"
            ).encode()
            pieces.append((s, e, head))
        tail = f"\r\n--{boundary}--\r\n".encode()
        total = sum(e - s + len(h) for s, e, h in pieces) + 2 * (len(pieces) - 1) + len(tail)
        headers = {"Content-Type": f"multipart/byteranges; boundary={boundary}"}
        self._stream(cas, 206, headers, path, pieces, total, fault == "cut", tail)

    def _stream(
        self,
        cas: XetCas,
        status: int,
        headers: Mapping[str, str],
        path: Path,
        pieces: list[tuple[int, int, bytes]],
        length: int,
        cut: bool,
        tail: bytes = b"",
    ) -> None:
        self._begin(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        budget = length // 2 if cut else length

        def blocks() -> Iterator[bytes]:
            with path.open("rb") as f:
                for n, (s, e, head) in enumerate(pieces):
                    yield (b"\r\n" if n else b"") + head
                    yield from _read(f, s, e)
            yield tail

        try:
            for block in blocks():
                if budget <= 0:
                    break
                block = block[:budget]
                assert self._entry is not None
                with cas._lock:
                    self._entry.sent += len(block)
                self.wfile.write(block)
                budget -= len(block)
                if cas.throttle:
                    time.sleep(len(block) / cas.throttle)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._begin(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _read(f: Any, start: int, end: int) -> Iterator[bytes]:
    f.seek(start)
    left = end - start
    while left > 0:
        piece = f.read(min(_PIECE, left))
        if not piece:
            raise OSError("xorb shrank while being served")
        left -= len(piece)
        yield piece
