"""AWS Signature Version 4 on the S3 face: ``Authorization: AWS4-HMAC-SHA256 …`` checked with
the serve tokens as secret keys. The expected signature is computed by botocore's own S3 signer
(what boto3 signs with; run:ai's AWS CRT client was checked to sign the same canonical request),
over the headers the client says it signed: any access key id, the region its credential scope
names, ``UNSIGNED-PAYLOAD`` or the empty body's hash, a bounded clock skew."""

from __future__ import annotations

import calendar
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPMessage
from urllib.parse import quote, unquote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

#: S3's own limit: a request dated further from the server's clock is RequestTimeTooSkewed
MAX_SKEW = 15 * 60
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: the hash of an empty body: what boto3 signs for a GET over plain HTTP
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_ALGORITHM = "AWS4-HMAC-SHA256"
_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)\s*=\s*([^,\s]*)\s*")
_AMZ_DATE = re.compile(r"(\d{8})T(\d{6})Z")
_MALFORMED = "the authorization header is malformed"
_SKEWED = "The difference between the request time and the current time is too large."
_PAYLOAD = "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or the empty body's hash"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)


class Refused(Exception):
    """A request the signature check refuses: ``status`` and S3's error ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Authorization:
    """What an ``Authorization`` header says (never logged: it carries the signature)."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str = ""

    def __repr__(self) -> str:  # the signature stays out of any log or traceback
        return f"Authorization(access_key={self.access_key!r}, region={self.region!r})"


def parse_authorization(value: str) -> Authorization:
    """The parts of a SigV4 ``Authorization`` header; 400 AuthorizationHeaderMalformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _ALGORITHM:
        raise Refused(400, "InvalidArgument", f"unsupported authorization type {algorithm[:40]!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _FIELD.fullmatch(part)
        if match is None:
            raise Refused(400, "AuthorizationHeaderMalformed", _MALFORMED)
        fields[match.group(1)] = match.group(2)
    scope = fields.get("Credential", "").split("/")
    signed = tuple(fields.get("SignedHeaders", "").split(";"))
    signature = fields.get("Signature", "")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(signed) or not signature:
        raise Refused(400, "AuthorizationHeaderMalformed", _MALFORMED)
    access_key, date, region, service, _ = scope
    if service != "s3":
        raise Refused(400, "AuthorizationHeaderMalformed", f"the scope names {service[:40]!r}")
    return Authorization(access_key, date, region, service, signed, signature)


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    secrets: Sequence[str],
    now: float | None = None,
    max_skew: float = MAX_SKEW,
) -> str:
    """Check a request's SigV4 signature against ``secrets``; the access key id it names, or
    Refused (403 AccessDenied, SignatureDoesNotMatch, RequestTimeTooSkewed; 400 for a malformed
    header or a payload hash that an empty body cannot have). ``headers`` are lower-cased names
    with their values as received; ``raw_path`` and ``raw_query`` as on the request line."""
    given = _all(headers)
    if "authorization" not in given:
        raise Refused(403, "AccessDenied", "Access Denied: this S3 endpoint needs a signed request")
    auth = parse_authorization(given["authorization"][0])
    stamp = (given.get("x-amz-date") or [""])[0]
    when = _AMZ_DATE.fullmatch(stamp)
    try:
        at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        when = None  # 13th months and the like
    if when is None:
        raise Refused(403, "AccessDenied", "the request has no valid X-Amz-Date")
    if when.group(1) != auth.date:
        raise Refused(403, "SignatureDoesNotMatch", "the scope's date is not X-Amz-Date's")
    if abs((time.time() if now is None else now) - at) > max_skew:
        raise Refused(403, "RequestTimeTooSkewed", _SKEWED)
    payload = (given.get("x-amz-content-sha256") or [""])[0]
    if payload not in (UNSIGNED_PAYLOAD, EMPTY_SHA256):
        raise Refused(400, "XAmzContentSHA256Mismatch", _PAYLOAD)
    for name in ("host", "x-amz-date", "x-amz-content-sha256"):
        if name not in auth.signed_headers:
            raise Refused(403, "AccessDenied", f"the signature must cover the {name} header")
    if any(name not in given for name in auth.signed_headers):
        raise Refused(403, "SignatureDoesNotMatch", "a signed header is missing")
    signed = [(name, value) for name in auth.signed_headers for value in given[name]]
    ok = False
    for path in _paths(raw_path):
        url = f"http://host{path}?{_canonical_query(raw_query)}"
        request = AWSRequest(method=method, url=url, headers={"X-Amz-Content-SHA256": payload})
        request.context["timestamp"] = stamp
        for secret in secrets:  # every one computed: the time says nothing of which matched
            expected = _Signer(secret, auth, signed).sign(request)
            ok |= hmac.compare_digest(expected, auth.signature)
    if not ok:
        raise Refused(403, "SignatureDoesNotMatch", _MISMATCH)
    return auth.access_key


def _all(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name, []).append(value)
    return out


def _paths(raw_path: str) -> list[str]:
    """The canonical URI: the path as sent (S3 does not normalise it), and, when the client
    encoded it otherwise, the path encoded as SigV4 says (every byte but ``A-Za-z0-9-._~/``)."""
    canonical = quote(unquote(raw_path), safe="/~")
    return [raw_path] if canonical == raw_path else [raw_path, canonical]


def _canonical_query(raw_query: str) -> str:
    """Each name and value decoded, then encoded as SigV4 says (botocore sorts the pairs)."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append(f"{quote(unquote(name), safe='-_.~')}={quote(unquote(value), safe='-_.~')}")
    return "&".join(pairs)


class _Signer(S3SigV4Auth):
    """botocore's S3 signer over the headers the client named, in the region it named."""

    def __init__(self, secret: str, auth: Authorization, signed: Sequence[tuple[str, str]]) -> None:
        super().__init__(Credentials(auth.access_key, secret), "s3", auth.region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPMessage:
        headers = HTTPHeaders()
        for name, value in self._signed:
            headers[name] = value  # a repeated header adds a value (joined with ',')
        return headers

    def sign(self, request: AWSRequest) -> str:
        canonical = self.canonical_request(request)
        return self.signature(self.string_to_sign(request, canonical), request)


def header_pairs(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """An ASGI scope's headers as ``(lower-case name, value)`` text."""
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
