"""What an S3 request asks for, read from its ASGI scope: method, bucket, key, query, headers
and the S3 operation (the metrics' label); an absolute-form target (``GET http://HOST/BUCKET/KEY``,
what run:ai's client sends to an http endpoint) is read as its path."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from starlette.types import Scope

from hf2oci.consume.serve.s3 import sigv4

#: sub-resources of S3 that this face does not have (a GET of one is 501, never a listing)
_BUCKET_SUBRESOURCES = frozenset(
    ("accelerate", "acl", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
     "lifecycle", "logging", "metrics", "notification", "object-lock", "ownershipControls",
     "policy", "policyStatus", "publicAccessBlock", "replication", "requestPayment", "tagging",
     "uploads", "versioning", "versions", "website")
)  # fmt: skip
_OBJECT_SUBRESOURCES = frozenset(
    ("acl", "attributes", "legal-hold", "restore", "retention", "select", "tagging", "torrent",
     "uploadId")
)  # fmt: skip


@dataclass(frozen=True)
class S3Request:
    method: str
    #: the path as sent (percent-encoded), an absolute-form target's path part
    raw_path: str
    raw_query: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    bucket: str
    key: str
    #: True when the path names a bucket and no key (``/models`` or ``/models/``)
    bucket_only: bool

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def operation(self) -> str:
        """The S3 operation asked for (the metrics' label), or ``Unsupported``."""
        if self.method not in ("GET", "HEAD"):
            return "Unsupported"
        if not self.bucket:
            return "ListBuckets" if self.method == "GET" else "Unsupported"
        if self.bucket_only:
            if self.method == "HEAD":
                return "HeadBucket"
            if _BUCKET_SUBRESOURCES & self.query.keys():
                return "Unsupported"
            if "location" in self.query:
                return "GetBucketLocation"
            return "ListObjectsV2" if self.query.get("list-type") == "2" else "ListObjects"
        if _OBJECT_SUBRESOURCES & self.query.keys():
            return "Unsupported"
        return "HeadObject" if self.method == "HEAD" else "GetObject"


def read_request(scope: Scope) -> S3Request:
    """The request's parts; an absolute-form target (``GET http://HOST/BUCKET/KEY``, what
    run:ai's client sends) is read as its path (h11 puts the whole URL in the scope)."""
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if raw.startswith(("http://", "https://")):
        raw = urlsplit(raw).path or "/"
    raw_query = scope.get("query_string", b"").decode("latin-1")
    query = {}
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        query[unquote(name)] = unquote(value)
    bucket, _, key = raw.lstrip("/").partition("/")
    # bytes that are not UTF-8 become U+FFFD, which names no bucket and no hub file
    bucket, key = unquote(bucket, errors="replace"), unquote(key, errors="replace")
    return S3Request(
        method=scope["method"], raw_path=raw, raw_query=raw_query, query=query,
        headers=sigv4.header_pairs(scope.get("headers") or []), bucket=bucket, key=key,
        bucket_only=bool(bucket) and not key,
    )  # fmt: skip
