"""HTTP to registries: one session (``http.new_session``), auth (Basic, or a Bearer token for a
challenge), the one retry policy; where credentials come from is ``credentials.py``, what the
registry's answers mean ``answers.py``.

``Transport.request`` retries single requests, ``Transport.retrying`` runs a multi-request
operation (a blob upload session) under the same policy, and blob reads resume through
``http.ResumableBody`` with it (``RegistryClient.blob_body``).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, BinaryIO, TypeVar
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions

from hf2oci.errors import AuthError, DigestMismatch, RegistryError
from hf2oci.http import new_session, unreachable_reason
from hf2oci.oci.answers import Challenge, error_from_response, parse_challenge
from hf2oci.oci.credentials import LOGIN_HINT, Credentials
from hf2oci.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    is_temporary,
    retrying,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Body = bytes | Callable[[], BinaryIO] | None


class _SizedReader:
    """A stream of exactly ``size`` bytes with a ``len()``, so requests sends Content-Length."""

    def __init__(self, stream: IO[bytes], size: int, on_read: Callable[[int], None] | None):
        self._stream = stream
        self._left = size
        self._size = size
        self._on_read = on_read
        self._block = bytearray()

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes | memoryview:
        """Up to ``n`` bytes. A block read (``n`` set) comes in one buffer used again for the
        next block: the HTTP client sends each block before it asks for another."""
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data: bytes | memoryview
        readinto = getattr(self._stream, "readinto", None)
        if n is not None and n >= 0 and readinto is not None:
            if len(self._block) < want:
                self._block = bytearray(want)
            data = memoryview(self._block)[: readinto(memoryview(self._block)[:want]) or 0]
        else:
            data = self._stream.read(want)
        if not data:
            raise DigestMismatch(
                f"blob stream ended {self._left} bytes short of its stated size {self._size}"
            )
        self._left -= len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data


def _keep_headers(r: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth hook that does nothing: stops requests from overriding ours with ~/.netrc."""
    return r


class Transport:
    """Requests to one registry, authenticated on demand and retried by the one policy."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.policy = retry or RetryPolicy()
        self.session = session or new_session()
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._basic = False  # the registry asked for Basic auth
        self._bearer: Challenge | None = None  # the registry's Bearer challenge, once seen
        self._tokens: dict[str, tuple[str, float]] = {}  # scopes → (token, expiry)

    # -- the retry policy -------------------------------------------------------------------

    def retrying(self, fn: Callable[[], T], *, what: str = "request") -> T:
        """Run ``fn`` under the retry policy (it raises; temporary errors are tried again)."""
        try:
            return retrying(
                fn, is_temporary=is_temporary, what=f"registry {self.registry}: {what}",
                policy=self.policy,
            )  # fmt: skip
        except RegistryError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise RegistryError(
                f"registry {self.registry}: {what} failed: {unreachable_reason(e)}",
                temporary=True,
            ) from e

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        size: int | None = None,
        scope: str | Sequence[str] | None = None,
        stream: bool = False,
        allow_statuses: Iterable[int] = (),
        retry: bool = True,
        on_sent: Callable[[int], None] | None = None,
    ) -> requests.Response:
        """One API request: authenticated, retried (unless ``retry=False``), errors raised.

        A callable ``body`` is opened again for every attempt; ``size`` makes it go with a
        Content-Length. Statuses in ``allow_statuses`` come back instead of raising.
        """
        scopes = _scopes(scope)
        allowed = frozenset(allow_statuses)

        def once() -> requests.Response:
            return self._authenticated(method, url, headers, body, size, scopes, stream, on_sent)

        if not retry:
            return self._check(once(), allowed)
        what = f"{method} {urlsplit(url).path}"
        return self.retrying(lambda: self._check(once(), allowed), what=what)

    def _check(self, resp: requests.Response, allowed: frozenset[int]) -> requests.Response:
        if resp.status_code < 400 or resp.status_code in allowed:
            return resp
        with contextlib.suppress(requests.RequestException):
            resp.content  # noqa: B018 - read the (small) error body before closing
        resp.close()
        raise error_from_response(resp, registry=self.registry)

    def _authenticated(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Body,
        size: int | None,
        scopes: tuple[str, ...],
        stream: bool,
        on_sent: Callable[[int], None] | None,
    ) -> requests.Response:
        auth = self._auth_header(scopes, fetch=True)
        resp = self._send(method, url, headers, body, size, stream, auth, on_sent)
        if resp.status_code != 401:
            return resp
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        resp.close()
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise self._auth_error(scopes, 401, refused=False)
        key = " ".join(scopes)  # cache the token under what callers ask for
        with self._lock:
            if challenge.scheme == "basic":
                self._basic = True
            else:
                self._bearer = challenge
                cached = self._tokens.get(key)
                if cached is not None and f"Bearer {cached[0]}" == auth:
                    del self._tokens[key]  # expired or too narrow; another thread's is kept
        if challenge.scheme == "bearer" and challenge.params.get("scope"):
            scopes = _merge_scopes(scopes, challenge.params["scope"].split())
        retry_auth = self._auth_header(scopes, fetch=True, key=key)
        if retry_auth is None or retry_auth == auth:
            raise self._auth_error(scopes, 401, refused=self.credentials is not None)
        resp = self._send(method, url, headers, body, size, stream, retry_auth, on_sent)
        if resp.status_code == 401:
            resp.close()
            raise self._auth_error(scopes, 401, refused=self.credentials is not None)
        return resp

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Body,
        size: int | None,
        stream: bool,
        auth: str | None,
        on_sent: Callable[[int], None] | None,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if auth is not None:
            all_headers["Authorization"] = auth
        opened: IO[bytes] | None = None
        data: Any = body
        if callable(body):
            opened = body()
            data = _SizedReader(opened, size, on_sent) if size is not None else opened
        elif isinstance(body, bytes) and on_sent is not None:
            on_sent(len(body))
        try:
            return self.session.request(
                method,
                url,
                headers=all_headers,
                data=data,
                stream=stream,
                auth=_keep_headers,
                allow_redirects=method in ("GET", "HEAD"),
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
            )
        finally:
            if opened is not None:
                opened.close()

    # -- auth -------------------------------------------------------------------------------

    def _auth_header(
        self, scopes: tuple[str, ...], *, fetch: bool, key: str | None = None
    ) -> str | None:
        key = " ".join(scopes) if key is None else key
        with self._lock:
            basic, bearer = self._basic, self._bearer
            cached = self._tokens.get(key)
        if basic:
            return self._basic_header()
        if bearer is None:
            return None
        if cached is not None and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        if not fetch:
            return None
        with self._fetch_lock:  # one token request per scope, not one per worker thread
            with self._lock:
                cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, expires_in = self._fetch_token(bearer, scopes)
            with self._lock:
                # renew a little early so a long upload does not start with a dying token
                self._tokens[key] = (token, time.monotonic() + max(expires_in - 10, 1))
        return f"Bearer {token}"

    def _basic_header(self) -> str | None:
        if self.credentials is None:
            return None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"registry {self.registry} sent a Bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query += [("scope", s) for s in scopes]
        headers = {}
        basic = self._basic_header()
        if basic is not None:
            headers["Authorization"] = basic
        sep = "&" if urlsplit(realm).query else "?"
        url = realm + (sep + urlencode(query) if query else "")

        def get() -> requests.Response:
            resp = self.session.get(
                url,
                headers=headers,
                auth=_keep_headers,
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
            )
            if resp.status_code in RETRY_STATUSES:
                raise error_from_response(resp, registry=self.registry)
            return resp

        resp = self.retrying(get, what="token request")
        if resp.status_code in (401, 403):
            resp.close()
            raise self._auth_error(scopes, resp.status_code, refused=basic is not None)
        if resp.status_code >= 400:
            raise error_from_response(resp, registry=self.registry)
        try:
            doc = resp.json()
            token = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError) as e:
            raise AuthError(f"registry {self.registry}: token service answered no JSON") from e
        if not isinstance(token, str) or not token:
            raise AuthError(f"registry {self.registry}: token service answered no token")
        return token, expires_in

    def _auth_error(self, scopes: tuple[str, ...], status: int, *, refused: bool) -> AuthError:
        action = _describe_scopes(scopes)
        if refused:
            msg = f"registry {self.registry} refused the credentials for {action} ({status})"
        else:
            msg = f"registry {self.registry} needs credentials for {action} ({status})"
        return AuthError(f"{msg}: {LOGIN_HINT}", status=status)


def _scopes(scope: str | Sequence[str] | None) -> tuple[str, ...]:
    if scope is None:
        return ()
    items = scope.split() if isinstance(scope, str) else [s for x in scope for s in x.split()]
    return tuple(sorted(set(items)))


def _merge_scopes(ours: tuple[str, ...], theirs: Iterable[str]) -> tuple[str, ...]:
    """Our scopes plus those a challenge asks for that ours do not already cover."""
    merged = list(ours)
    for scope in theirs:
        resource, _, actions = scope.rpartition(":")
        covered = any(
            mine.rpartition(":")[0] == resource
            and set(actions.split(",")) <= set(mine.rpartition(":")[2].split(","))
            for mine in ours
        )
        if not covered:
            merged.append(scope)
    return tuple(sorted(set(merged)))


def _describe_scopes(scopes: tuple[str, ...]) -> str:
    """``repository:ns/m:pull,push`` → ``push to ns/m`` (a push scope names the action)."""
    pulls = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) >= 3 and parts[0] == "repository":
            name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
            if "push" in actions:
                return f"push to {name}"
            pulls.append(f"pull from {name}")
    return pulls[0] if pulls else "access"


def registry_scope(repository: str, *, push: bool = False) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"
