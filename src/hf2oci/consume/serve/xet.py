"""serve's Xet face, the pure part: which files are announced and under which hash, a file cut
into xorbs of uncompressed chunks (the arithmetic of reconstructions and xorb bytes), and the
signed values that keep serve stateless (CAS tokens, xorb URLs).

A file is described, never copied: xorb ``k`` of a file holds its bytes ``[k·X, (k+1)·X)``
(X = 64 MiB, the size of the hub's own xorbs) as chunks of 128 KiB, each an 8-byte header (u8
version 0, u24 LE compressed length, u8 scheme 0 "none", u24 LE uncompressed length) followed by
the file's own bytes. hf_xet checks no hash on download (only headers and lengths), so what a
reconstruction names is where bytes are, computed from the file's size alone; the bytes come
from Range reads of the registry, as a plain download's do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hf2oci.config import parse_size
from hf2oci.consume.serve.files import RepoFile
from hf2oci.errors import PackError

#: file bytes per chunk (hf_xet takes chunks of at most 128 KiB)
CHUNK = 128 << 10
#: a chunk's header: u8 version, u24 compressed length, u8 scheme, u24 uncompressed length
HEADER = 8
#: chunks per xorb: 64 MiB of file bytes, as the hub's xorbs are at most
XORB_CHUNKS = 512
#: LFS files of at least this size are announced over Xet by default (``--xet-min-size``); see
#: docs/serve.md for the measurement that chose it
DEFAULT_MIN_SIZE = 128 << 20
#: how long a CAS token (and the xorb URLs of the reconstructions it asks for) stays valid
TOKEN_TTL = 3600.0

#: the paths whose requests carry their own credentials (a CAS token, a signed URL): the token
#: gate leaves them to their handlers (exactly these: a repo named ``v1/reconstructions`` is not)
_OWN_CREDENTIALS = re.compile(r"/(v[12]/reconstructions|-/xet/xorb)/[^/]+")
#: hf_xet's telemetry: open, and dropped
TELEMETRY = "/v1/telemetry"


def own_credentials(path: str) -> bool:
    """Whether a request's path is one that carries its own credentials, or needs none."""
    return path == TELEMETRY or _OWN_CREDENTIALS.fullmatch(path) is not None


def xet_route(path: str) -> str | None:
    """The metrics' route label of a Xet request, None for others."""
    if _OWN_CREDENTIALS.fullmatch(path):
        return "xet-xorb" if path.startswith("/-/") else "xet-reconstruction"
    if path == TELEMETRY:
        return "xet-telemetry"
    if path.startswith("/api/") and "/xet-read-token/" in path:
        return "xet-token"
    return None


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_NUMBER = re.compile(r"[0-9]{1,15}")
_KINDS = ("model", "dataset")
_TOKEN_PREFIX = "hf2oci-xet1"


def is_hex64(text: str) -> bool:
    return _HEX64.fullmatch(text) is not None


def file_hash(f: RepoFile) -> str | None:
    """The Xet hash a file is announced under: the hub's own (recorded at mirror time), else
    one derived from its sha256 (so it differs whenever the content does, as the client's
    cross-repo cache keyed by it needs); None for files that do not take Xet: not in LFS, empty,
    or in an image made before the file index (whose hashes are computed, not recorded)."""
    if f.sha256 is None or f.size == 0 or not f.recorded:
        return None
    if f.xet_hash and is_hex64(f.xet_hash):
        return f.xet_hash
    if not is_hex64(f.sha256):
        return None
    return hashlib.sha256(b"hf2oci-xet-from-sha256\0" + f.sha256.encode()).hexdigest()


def xorb_hash(file: str, k: int) -> str:
    """The name of a file's ``k``-th xorb: as unique to its content as the file hash is."""
    return hashlib.sha256(f"hf2oci-xorb-v1\0{file}\0{k}".encode()).hexdigest()


def chunk_header(n: int) -> bytes:
    """An uncompressed chunk's header for ``n`` bytes."""
    size = n.to_bytes(3, "little")
    return b"\0" + size + b"\0" + size


@dataclass(frozen=True)
class Term:
    """A file's bytes in one xorb: chunks ``[start, end)``, ``unpacked`` bytes of file, and
    the xorb bytes that hold them, ``[first_byte, end_byte)``."""

    xorb: int
    start: int
    end: int
    unpacked: int
    first_byte: int
    end_byte: int


@dataclass(frozen=True)
class Framing:
    """Bytes ``[start, end)`` of one xorb: the file bytes ``[file_start, file_start + length)``
    they carry, and per chunk touched the part of its header sent and its data length."""

    file_start: int
    length: int
    segments: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True)
class Layout:
    """A file of ``size`` bytes as xorbs of ``per_xorb`` chunks of ``chunk`` bytes."""

    size: int
    chunk: int = CHUNK
    per_xorb: int = XORB_CHUNKS

    @property
    def span(self) -> int:
        """File bytes per (full) xorb."""
        return self.chunk * self.per_xorb

    @property
    def xorbs(self) -> int:
        return -(-self.size // self.span)

    def xorb_len(self, k: int) -> int:
        """File bytes in xorb ``k``."""
        return max(0, min(self.span, self.size - k * self.span))

    def chunk_len(self, k: int, j: int) -> int:
        return max(0, min(self.chunk, self.xorb_len(k) - j * self.chunk))

    def packed_size(self, k: int) -> int:
        """Bytes of xorb ``k``: its file bytes and a header per chunk."""
        n = self.xorb_len(k)
        return n + HEADER * -(-n // self.chunk)

    def terms(self, lo: int, hi: int) -> list[Term]:
        """The terms that hold file bytes ``[lo, hi)`` (0 <= lo < hi <= size), whole chunks."""
        out = []
        stride = self.chunk + HEADER
        for k in range(lo // self.span, (hi - 1) // self.span + 1):
            base, n = k * self.span, self.xorb_len(k)
            a, b = max(lo, base) - base, min(hi, base + n) - base
            cs, ce = a // self.chunk, -(-b // self.chunk)
            unpacked = min(ce * self.chunk, n) - cs * self.chunk
            end_byte = (ce - 1) * stride + HEADER + self.chunk_len(k, ce - 1)
            out.append(Term(k, cs, ce, unpacked, cs * stride, end_byte))
        return out

    def offset_into_first(self, lo: int) -> int:
        """Where file byte ``lo`` is in the unpacked bytes of the first term holding it."""
        return lo % self.chunk

    def framing(self, k: int, start: int, end: int) -> Framing:
        """Bytes ``[start, end)`` of xorb ``k`` (within its packed size)."""
        stride = self.chunk + HEADER
        segments = []
        file_start, length = k * self.span, 0
        j = start // stride
        while j * stride < end:
            n = self.chunk_len(k, j)
            if n == 0:
                break
            p = j * stride
            h0, h1 = max(0, start - p), min(HEADER, end - p)
            head = chunk_header(n)[h0:h1] if h0 < h1 else b""
            d0, d1 = max(0, start - p - HEADER), min(n, end - p - HEADER)
            data = max(0, d1 - d0)
            if data and not length:
                file_start = k * self.span + j * self.chunk + d0
            segments.append((head, data))
            length += data
            j += 1
        return Framing(file_start, length, tuple(segments))


def frame(framing: Framing, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The xorb bytes of ``framing``: its headers put between the file bytes ``pieces`` give
    (exactly ``framing.length`` of them, in order, in pieces of any size). One output piece per
    input piece (each byte copied once); PackError when the pieces end short."""
    source = iter(pieces)
    buf = memoryview(b"")
    out: list[bytes | memoryview] = []
    carried = 0  # file bytes in ``out``
    for head, n in framing.segments:
        if head:
            out.append(head)
        while n:
            if not buf:
                if carried:  # the piece read is framed: let go of it before the next read
                    data = b"".join(out)
                    out, carried, buf = [], 0, memoryview(b"")
                    yield data
                    del data
                piece = next(source, None)
                if piece is None:
                    raise PackError("the file ended before its xorb did")
                buf = memoryview(piece)
                del piece
            size = min(n, len(buf))
            out.append(buf[:size])
            buf, n, carried = buf[size:], n - size, carried + size
    if out:
        yield b"".join(out)


def reconstruction(
    layout: Layout, file: str, lo: int, hi: int, url: Callable[[int], str], *, version: int
) -> dict[str, Any]:
    """The v1 or v2 reconstruction of file bytes ``[lo, hi)``: its terms, and for each xorb the
    URL (``url(k)``) and byte range that hold the term's chunks."""
    terms = layout.terms(lo, hi)
    listed = [
        {"hash": xorb_hash(file, t.xorb), "unpacked_length": t.unpacked,
         "range": {"start": t.start, "end": t.end}}
        for t in terms
    ]  # fmt: skip
    fetch: dict[str, Any] = {}
    for t in terms:
        chunks = {"start": t.start, "end": t.end}
        span = {"start": t.first_byte, "end": t.end_byte - 1}  # inclusive, as HTTP's
        where = url(t.xorb)
        entry: dict[str, Any]
        if version == 1:
            entry = {"range": chunks, "url": where, "url_range": span}
        else:
            entry = {"url": where, "ranges": [{"chunks": chunks, "bytes": span}]}
        fetch[xorb_hash(file, t.xorb)] = [entry]
    key = "fetch_info" if version == 1 else "xorbs"
    return {"offset_into_first_range": layout.offset_into_first(lo), "terms": listed, key: fetch}


# -- signed values: what lets any replica answer, with no table ----------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Grant:
    """What a CAS token says: the repo revision it reads, and until when."""

    repo_type: str
    repo_id: str
    commit: str
    expires: int


@dataclass(frozen=True)
class XorbRef:
    """What a xorb URL says: one xorb of one file of a repo revision, until when."""

    repo_type: str
    repo_id: str
    commit: str
    path: str
    file: str
    xorb: int
    expires: int


class Signer:
    """HMAC-SHA256 over CAS tokens and xorb URLs: any serve holding the same key accepts what
    another issued; a changed byte or a past expiry is refused."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, kind: str, fields: Sequence[str]) -> str:
        msg = "\0".join([kind, *fields]).encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    def token(self, grant: Grant) -> str:
        fields = (grant.repo_type, grant.repo_id, grant.commit, str(grant.expires))
        body = _b64("\0".join(fields).encode())
        return f"{_TOKEN_PREFIX}.{body}.{self._mac('token', fields)}"

    def grant(self, token: str, now: float | None = None) -> Grant | None:
        """The grant a token holds; None for one not signed here, malformed or expired."""
        prefix, _, rest = token.partition(".")
        body, _, mac = rest.partition(".")
        if prefix != _TOKEN_PREFIX or not body or not mac or len(token) > 2048:
            return None
        try:
            fields = _unb64(body).decode().split("\0")
        except (ValueError, UnicodeDecodeError):
            return None
        if len(fields) != 4 or not hmac.compare_digest(self._mac("token", fields), mac):
            return None
        repo_type, repo_id, commit, expires = fields
        if (
            repo_type not in _KINDS
            or not _HEX40.fullmatch(commit)
            or not _NUMBER.fullmatch(expires)
        ):
            return None
        if int(expires) <= (time.time() if now is None else now):
            return None
        return Grant(repo_type, repo_id, commit, int(expires))

    def xorb_query(self, ref: XorbRef) -> dict[str, str]:
        """A xorb URL's query: the reference and its signature."""
        fields = _xorb_fields(ref)
        return {"t": ref.repo_type, "r": ref.repo_id, "c": ref.commit, "p": ref.path,
                "f": ref.file, "x": str(ref.xorb), "e": str(ref.expires),
                "s": self._mac("xorb", fields)}  # fmt: skip

    def xorb_ref(self, name: str, query: dict[str, str]) -> tuple[XorbRef | None, str]:
        """The reference a xorb URL (xorb ``name``, ``query``) holds, or None and why not
        ("signature": forged or changed; "expired")."""
        keys = ("t", "r", "c", "p", "f", "x", "e", "s")
        if any(not isinstance(query.get(k), str) for k in keys):
            return None, "signature"
        t, r, c, p, f, x, e, s = (query[k] for k in keys)
        if not hmac.compare_digest(self._mac("xorb", (t, r, c, p, f, x, e)), s):
            return None, "signature"
        valid = t in _KINDS and _HEX40.fullmatch(c) and is_hex64(f) and _NUMBER.fullmatch(x)
        if not valid or not _NUMBER.fullmatch(e) or name != xorb_hash(f, int(x)):
            return None, "signature"  # signed here, so never: kept out of the registry all the same
        if int(e) <= time.time():
            return None, "expired"
        return XorbRef(t, r, c, p, f, int(x), int(e)), ""


def _xorb_fields(ref: XorbRef) -> tuple[str, ...]:
    return (ref.repo_type, ref.repo_id, ref.commit, ref.path, ref.file, str(ref.xorb),
            str(ref.expires))  # fmt: skip


def derive_key(tokens: Sequence[str], namespace: str) -> bytes:
    """The signing key. With tokens (``--token-file``) a secret derived from them, so replicas
    given the same file accept each other's tokens and URLs and nobody without the file can make
    one. Without tokens nothing is secret (every request is allowed): the key comes from the
    namespace served, so replicas agree with no setting; a xorb URL is checked against the
    served image all the same, so a made-up one can give no byte a plain GET would not."""
    if tokens:
        material = "\0".join(sorted(tokens))
        return hashlib.sha256(f"hf2oci-xet-key\0{material}".encode()).digest()
    return hashlib.sha256(f"hf2oci-xet-key-open\0{namespace}".encode()).digest()


@dataclass(frozen=True)
class XetSettings:
    """How serve speaks Xet: LFS files of at least ``min_size`` bytes are announced (None:
    none, Xet is off); tokens last ``token_ttl`` seconds; ``key`` signs tokens and URLs."""

    min_size: int | None = DEFAULT_MIN_SIZE
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    token_ttl: float = TOKEN_TTL

    @property
    def on(self) -> bool:
        return self.min_size is not None

    def announced(self, f: RepoFile) -> str | None:
        """The Xet hash ``f`` is announced under, None when it takes plain HTTP."""
        if self.min_size is None or f.size < self.min_size:
            return None
        return file_hash(f)

    def transfer(self, f: RepoFile) -> str:
        """Which transfer a file takes, as pages say it."""
        return "Xet" if self.announced(f) else "HTTP"


def parse_min_size(text: str) -> int | None:
    """``--xet-min-size``: a size (bytes or with a unit), ``0`` for every LFS file, ``off``."""
    if text.strip().lower() in ("off", "none", "no"):
        return None
    return parse_size(text, "--xet-min-size")
