"""The one retry policy: jittered exponential backoff, bounded in attempts and in time, honouring a
server's Retry-After. The registry transport, the hub (metadata, small files), every resumed body
(``http.ResumableBody``: hub downloads, registry blob reads) and the git push of the records all
retry through ``retrying``; nothing else loops on failures.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import requests
import tenacity
import urllib3

from hf2oci.errors import Temporary

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "DEFAULT_POLICY", "REQUEST_POLICY", "RetryPolicy", "Temporary", "backoff", "is_temporary",
    "retrying",
]  # fmt: skip


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to try again."""

    attempts: int = 6
    #: first backoff window in seconds (doubles each attempt, random within the window)
    initial: float = 0.5
    max_wait: float = 30.0
    #: no new attempt starts after this many seconds
    total: float = 300.0
    #: a server's Retry-After is honoured up to this many seconds
    max_retry_after: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    #: a body already begun (its reader holds bytes): the seconds each stall may take, when
    #: other than ``total`` (a client holding its status waits on the body, not on a new answer)
    stall_total: float | None = None
    #: told of each failure about to be tried again (metrics)
    on_retry: Callable[[BaseException], None] | None = field(default=None, compare=False)
    #: told of every failure the policy tries again or would (the last, which it gives up on,
    #: included): what failed, as opposed to what was tried again
    on_failure: Callable[[BaseException], None] | None = field(default=None, compare=False)


#: the mirror's: minutes-long jobs ride out minutes of trouble
DEFAULT_POLICY = RetryPolicy()
#: a request's (serve answering a client): quick tries within 4 s, so that a blip never reaches
#: the client and a registry that is gone fails fast, before the client's own timeout (10 s);
#: a stall in a body already sent from gets tries that start within 5 s (the last one ends by
#: 9 s, its read timeout included: still inside the client's), since giving up then cuts a
#: download the client has begun
REQUEST_POLICY = RetryPolicy(
    attempts=4, initial=0.1, max_wait=1.0, total=4.0, max_retry_after=1.0,
    connect_timeout=2.0, read_timeout=4.0, stall_total=5.0,
)  # fmt: skip
#: HTTP statuses worth another try: request timeout, rate limit, server-side trouble
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, urllib3's ``reason``, args)."""
    seen: dict[int, BaseException] = {}
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen[id(e)] = e
        nested = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))
    return list(seen.values())


def name_not_resolved(exc: BaseException) -> bool:
    """Whether a host name did not resolve: no retry makes it resolve."""
    return any(
        isinstance(e, socket.gaierror)
        or "NameResolutionError" in type(e).__name__
        or "Name or service not known" in str(e)
        for e in causes(exc)
    )


def tls_failed(exc: BaseException) -> bool:
    """Whether TLS failed (a certificate, a protocol): no retry makes it valid."""
    return any(isinstance(e, (ssl.SSLError, requests.exceptions.SSLError)) for e in causes(exc))


#: what a connection, a request or a read can raise on the way: a cut, a reset, a timeout
TRANSPORT_ERRORS = (
    OSError,
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    requests.RequestException,
)


def is_temporary(exc: BaseException) -> bool:
    """The one rule of whether trying again may help, for the hub, the registry and every
    resumed body: ``Temporary`` (a 408/429/5xx answer, a body cut short) or an error that says
    so itself (``RegistryError.temporary``), and any failure on the way (a cut, a reset, a
    timeout); never a name that does not resolve or TLS that failed."""
    if isinstance(exc, Temporary):
        return True
    said = getattr(exc, "temporary", None)
    if isinstance(said, bool):
        return said
    if name_not_resolved(exc) or tls_failed(exc) or isinstance(exc, ValueError):
        return False  # (requests' ValueErrors: a request that cannot be made, as InvalidURL)
    return isinstance(exc, TRANSPORT_ERRORS)


def retry_after_of(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None for a missing value or an HTTP date."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before try ``attempt + 1``: the server's Retry-After when it gave one
    (bounded), else a random time in a window that doubles with each try (full jitter)."""
    if retry_after is not None:
        return min(retry_after, policy.max_retry_after)
    window = min(policy.max_wait, policy.initial * 2 ** (attempt - 1))
    return random.uniform(0, window)


class _since_failure(tenacity.stop.stop_base):
    """Stop once ``seconds`` have passed since the first try failed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.failed_at: float | None = None

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.failed_at is None:
            self.failed_at = retry_state.outcome_timestamp or time.monotonic()
        return time.monotonic() - self.failed_at >= self.seconds


def retrying(
    fn: Callable[[], T],
    *,
    is_temporary: Callable[[BaseException], bool],
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    from_failure: bool = False,
) -> T:
    """Run ``fn``; when it raises an error ``is_temporary`` accepts, wait and run it again.

    The last error is re-raised as it is once the policy gives up. ``policy.total`` counts from
    the first try's start, or with ``from_failure`` from its failure: a read that was slow but
    made progress, then broke, still gets its tries (a stall's budget is the stall's own).
    """

    def wait(state: tenacity.RetryCallState) -> float:
        after = retry_after_of(state.outcome.exception() if state.outcome else None)
        return backoff(policy, state.attempt_number, after)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if policy.on_retry is not None and exc is not None:
            policy.on_retry(exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.info(
            "%s failed (attempt %d/%d), trying again: %s",
            what,
            state.attempt_number,
            policy.attempts,
            first,
        )

    def after(state: tenacity.RetryCallState) -> None:  # each temporary failure, the last too
        exc = state.outcome.exception() if state.outcome else None
        if policy.on_failure is not None and exc is not None:
            policy.on_failure(exc)

    budget = (
        _since_failure(policy.total) if from_failure else tenacity.stop_after_delay(policy.total)
    )
    retryer = tenacity.Retrying(
        stop=tenacity.stop_any(tenacity.stop_after_attempt(policy.attempts), budget),
        wait=wait,
        retry=tenacity.retry_if_exception(is_temporary),
        before_sleep=before_sleep,
        after=after,
        sleep=sleep,
        reraise=True,
    )
    return retryer(fn)
