"""Secrets kept out of text that leaves the process (terminal, logs, result files, records,
commit messages): one place that knows what a secret looks like."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: environment variables whose values must never be shown
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF2OCI_REGISTRY_PASSWORD")
#: query parameters that are safe to show; others (upload ``_state``, tokens) are redacted
PUBLIC_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "scope", "service"})
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """``text`` with the values of secret variables and URL credentials
    (``https://user:token@host`` → ``https://***@host``) hidden."""
    for var in SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """The URL with query values other than digests and names replaced (upload state, tokens)."""
    parts = urlsplit(url)
    if not parts.query:
        return redact(url)
    query = [
        (k, v if k in PUBLIC_QUERY_KEYS else "REDACTED")
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return redact(urlunsplit(parts._replace(query=urlencode(query, safe=":/,"))))
