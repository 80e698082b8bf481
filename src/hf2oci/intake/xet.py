"""Files the hub keeps in Xet, read through the hub's own library, ``hf_xet``.

A file whose tree entry carries a ``xetHash`` is read as huggingface_hub reads it: a download
group per repo revision, whose CAS token comes from the hub's ``xet-read-token`` route (with the
HF token, for gated and private repos) and is renewed by hf_xet itself from that route before it
expires (a 400 GB mirror outlives many tokens). ``download_stream`` reconstructs a byte range:
xorb ranges fetched and decompressed in parallel. It is asked for windows of ``WINDOW`` bytes,
several in flight, given out in order: hf_xet gives a term (up to 64 MiB) as one piece, and
windows bound what a file holds in memory and are where a failure resumes.

hf_xet checks no hash (the caller does: ``digest.verified``), may end a failed stream early
without an error (every window is counted), and fails every stream of a group once one failed
(a failure makes the group anew, with a fresh token, before the window is tried again).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hf2oci.errors import HubError, HubUnreachable, Temporary
from hf2oci.intake import hub
from hf2oci.intake.hub import HubFile, RepoState
from hf2oci.retry import retrying
from hf2oci.spec import plural

log = logging.getLogger(__name__)

#: how to get hf_xet where it is missing (a platform with no wheel: build it from source)
INSTALL = "pip install hf_xet"
#: the bytes one Xet read asks for, and how many are in flight for one file at most
WINDOW = 4 << 20
AHEAD = 4
#: the windows in flight for all the files read at once share this budget: a file takes up to
#: ``AHEAD`` while it lasts, and one when it does not (never waiting), so memory stays bounded
#: whatever the number of files a push streams at once
BUDGET = 16 << 20
_budget = {"left": BUDGET}
_budget_lock = threading.Lock()
#: hf_xet's own buffers, sized to that budget (its defaults prefetch 1.5 GB)
_BUFFERS = {
    "reconstruction.download_buffer_size": str(BUDGET),
    "reconstruction.download_buffer_perfile_size": str(2 * WINDOW),
    "reconstruction.min_prefetch_buffer": str(WINDOW),
    "reconstruction.min_reconstruction_fetch_size": str(WINDOW),
}


_loaded: list[Any] = []  # hf_xet, once imported; None when it cannot be
_loading = threading.Lock()


def _hf_xet() -> Any:
    """The hf_xet module, None where it cannot be imported: tried once, under a lock (a thread
    importing it while another's import fails can be handed the failed module)."""
    with _loading:
        if not _loaded:
            # hf_xet logs to files under HF_HOME, at INFO a line or more per request (16 MiB
            # for a 12 GiB file): warnings only, unless RUST_LOG says otherwise
            os.environ.setdefault("RUST_LOG", "warn")
            try:
                import hf_xet  # lazily: CLI start-up time
            except ImportError as e:
                log.debug("hf_xet cannot be imported: %s", e)
                _loaded.append(None)
            else:
                _loaded.append(hf_xet)
        return _loaded[0]


def available() -> bool:
    """Whether hf_xet can be imported here."""
    return _hf_xet() is not None


@dataclass(frozen=True)
class CasToken:
    """What the hub's token route answers: the CAS to read and a token for it (a secret)."""

    cas_url: str
    access_token: str
    expires: int

    def __repr__(self) -> str:
        return f"CasToken({self.cas_url!r}, expires={self.expires})"


def token_url(state: RepoState) -> str:
    kind = plural(state.repo_type)
    return f"{hub.endpoint()}/api/{kind}/{state.repo_id}/xet-read-token/{state.commit}"


def read_token(state: RepoState) -> CasToken:
    """A CAS token for the repo revision, from the hub (its refusals typed as for any file:
    a gated repo without access is ``GatedRepo``), under the hub's retry policy."""
    what = hub.what_of(state)

    def read(resp: Any) -> CasToken:
        if resp.status_code >= 400:
            raise hub.refusal(resp, what, state.commit)
        found = (
            resp.headers.get("X-Xet-Cas-Url"),
            resp.headers.get("X-Xet-Access-Token"),
            resp.headers.get("X-Xet-Token-Expiration"),
        )
        if not all(found):
            try:
                doc = resp.json()
                found = (doc.get("casUrl"), doc.get("accessToken"), doc.get("exp"))
            except (ValueError, AttributeError):
                found = (None, None, None)
        url, secret, expires = found
        try:
            if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise ValueError("no CAS address")
            return CasToken(url.rstrip("/"), str(secret), int(str(expires)))
        except (TypeError, ValueError) as e:
            raise HubError(f"{what}: the hub's Xet token answer is malformed ({e})") from e

    return hub.hub_get(token_url(state), what, read, failed="no Xet token from the hub")


def _session() -> Any:
    """A new hf_xet session: its settings from ``HF_XET_*`` (hf_xet reads them), its buffers
    sized to the windows, no telemetry when ``HF_HUB_DISABLE_TELEMETRY`` says so."""
    hf_xet = _hf_xet()
    settings: dict[str, object] = dict(_BUFFERS)
    if os.environ.get("HF_HUB_DISABLE_TELEMETRY", "").upper() in ("1", "ON", "YES", "TRUE"):
        settings["telemetry.enabled"] = False
    return hf_xet.XetSession(config=hf_xet.XetConfig().with_config(settings))


class XetReader:
    """A repo revision's Xet files, read by byte range through one hf_xet download group."""

    def __init__(self, state: RepoState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._group: Any = None
        self._generation = 0

    def _current(self) -> tuple[int, Any]:
        with self._lock:
            if self._group is None:
                token = read_token(self.state)
                self._group = _session().new_download_stream_group(
                    endpoint=token.cas_url,
                    token=token.access_token,
                    token_expiry_unix_secs=token.expires,
                    token_refresh_url=token_url(self.state),
                    token_refresh_headers=hub.request_headers(),
                )
            return self._generation, self._group

    def _failed(self, generation: int) -> None:
        """The group of ``generation`` failed a stream: the next read makes a new one."""
        with self._lock:
            if generation == self._generation and self._group is not None:
                old, self._group = self._group, None
                self._generation += 1
                _abort(old)

    def window(self, file: HubFile, start: int, end: int) -> list[bytes]:
        """Bytes ``[start, end)`` of ``file`` in one try: Temporary when hf_xet fails or ends
        short (the caller tries again, with a group made anew)."""
        what = f"{hub.what_of(self.state)}: {file.path}"
        generation, group = self._current()
        info = _hf_xet().XetFileInfo(file.xet_hash, file.size)
        got, pieces = 0, []
        try:
            for piece in group.download_stream(info, start=start, end=end):
                got += len(piece)
                pieces.append(piece)
        except Exception as e:  # hf_xet's own (ConnectionError, RuntimeError, its Xet*Error)
            self._failed(generation)
            text = str(e)
            if "404" in text or type(e).__name__ == "XetObjectNotFoundError":
                raise HubError(f"{what}: the hub's Xet storage has no file {file.xet_hash}") from e
            raise Temporary(f"Xet read failed: {text}") from e
        if got != end - start:
            self._failed(generation)
            raise Temporary(f"the Xet stream gave {got} of {end - start} bytes")
        return pieces

    def read(self, file: HubFile, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``file`` in order, unchecked: up to ``AHEAD`` windows in
        flight (``BUDGET``), each tried again alone under the hub's retry policy."""
        what = f"{hub.what_of(self.state)}: {file.path}"
        starts = iter(range(start, end, WINDOW))

        def fetch(at: int) -> list[bytes]:
            stop = min(at + WINDOW, end)
            return retrying(
                lambda: self.window(file, at, stop),
                is_temporary=lambda e: isinstance(e, Temporary),
                what=what,
                policy=hub.HUB_POLICY,
            )

        with _budget_lock:
            window = max(1, min(AHEAD, _budget["left"] // WINDOW))
            _budget["left"] -= window * WINDOW
        try:
            with ThreadPoolExecutor(window, thread_name_prefix="xet") as pool:
                ahead: collections.deque[Future[list[bytes]]] = collections.deque(
                    pool.submit(fetch, at) for at in itertools.islice(starts, window)
                )
                try:
                    while ahead:
                        try:
                            pieces = ahead.popleft().result()
                        except Temporary as e:
                            raise HubUnreachable(f"{what}: Xet download failed: {e}") from e
                        nxt = next(starts, None)
                        if nxt is not None:
                            ahead.append(pool.submit(fetch, nxt))
                        yield from pieces
                finally:
                    for future in ahead:
                        future.cancel()
        finally:  # once the pool is done with its windows
            with _budget_lock:
                _budget["left"] += window * WINDOW

    def close(self) -> None:
        with self._lock:
            group, self._group = self._group, None
        if group is not None:
            try:
                group.finish()
            except Exception:  # a group that failed may refuse to finish: let it go
                _abort(group)


def _abort(group: Any) -> None:
    try:
        group.abort()
    except Exception as e:  # a group already failed may refuse to abort: nothing to free
        log.debug("aborting a Xet download group: %s", e)
