"""What a registry's answers mean: its errors (named by its own code and message, temporary or
not, with its Retry-After) and its auth challenges (``WWW-Authenticate``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from hf2oci.errors import RegistryError
from hf2oci.redact import redact_url
from hf2oci.retry import RETRY_STATUSES, parse_retry_after


class _TemporaryStatus(RegistryError):
    """A 408/429/5xx answer; carries the server's Retry-After, if any, for the backoff."""

    def __init__(self, message: str, *, status: int, url: str, retry_after: float | None) -> None:
        super().__init__(message, status=status, url=url, temporary=True)
        self.retry_after = retry_after


def error_from_response(resp: requests.Response, *, registry: str) -> RegistryError:
    """A RegistryError naming the request, the status and the registry's own error code/message."""
    url = redact_url(resp.url or "")
    path = urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")
    detail = _registry_error_detail(resp)
    message = f"registry {registry}: {resp.request.method} {path} failed ({resp.status_code}"
    message += f" {detail})" if detail else f" {resp.reason or ''}".rstrip() + ")"
    temporary = resp.status_code in RETRY_STATUSES
    if temporary:
        after = parse_retry_after(resp.headers.get("Retry-After"))
        return _TemporaryStatus(message, status=resp.status_code, url=url, retry_after=after)
    return RegistryError(message, status=resp.status_code, url=url, temporary=False)


def error_code(resp: requests.Response) -> str | None:
    """``errors[0].code`` of a registry error body, if it has one."""
    try:
        errors = resp.json().get("errors") or []
        return str(errors[0]["code"]) if errors else None
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        return None


def _registry_error_detail(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        return ""
    return " ".join(text.split())[:300]


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: Mapping[str, str]


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="…",service="…",scope="…"`` → scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)
