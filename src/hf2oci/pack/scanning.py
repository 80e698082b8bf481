"""The mirror's scanning stage: the pickle-based files among those fetched, read on disk or by
range from the hub, judged with the hub's own verdicts beside ours (``intake/scan.py``)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, cast

from hf2oci import labels as L
from hf2oci.errors import HubError
from hf2oci.intake import hub
from hf2oci.intake.files import Reader
from hf2oci.intake.scan import RANGE_BLOCK, ScanReport, candidate, scan_files
from hf2oci.oci.source import RangeReader
from hf2oci.pack.formats.image import PackFile
from hf2oci.pack.plan import Action
from hf2oci.spec import ScanPolicy
from hf2oci.units import human_size

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]


def _quiet(_repo: str, _msg: str) -> None:
    pass


def scan_labels(report: ScanReport) -> dict[str, str]:
    """The scan's labels: none for a repo without pickle-based files."""
    if not report.files and not report.unscanned:
        return {}
    return {L.SCAN: report.summary, L.SCAN_FILES: report.details()}


def head_opener(
    reader: Reader, *, block: int = 256 << 10
) -> Callable[[PackFile], AbstractContextManager[BinaryIO]]:
    """Opens a file for reading parts of it: from disk when downloaded, else by ``block``-sized
    range reads of the hub."""

    def open_head(f: PackFile) -> AbstractContextManager[BinaryIO]:
        if isinstance(f.source, Path):
            return cast(AbstractContextManager[BinaryIO], open(f.source, "rb"))
        ranged = RangeReader(reader.ranged(reader.state.file(f.path)), block=block)
        return cast(AbstractContextManager[BinaryIO], io.BufferedReader(ranged, block))

    return open_head


def scan_fetched(
    action: Action,
    files: Sequence[PackFile],
    policy: ScanPolicy,
    reader: Reader,
    progress: Progress = _quiet,
) -> ScanReport:
    """Scan the pickle-based files among ``files`` (on disk, or streamed: Range reads), with
    the hub's own verdicts beside ours; ScanRefused when the policy refuses a finding."""
    state = action.state
    assert state is not None
    by_path = {f.path: f for f in files}
    candidates = [p for p in by_path if candidate(p)]
    hub_verdicts: dict[str, str] = {}
    if policy != "off" and candidates:
        try:
            hub_verdicts = hub.security_verdicts(state, candidates)
        except HubError as e:  # the hub's verdict is a second opinion: ours still decides
            log.warning("%s: the hub's scan verdicts not read: %s", action.spec.label, e)
    opener = head_opener(reader, block=RANGE_BLOCK)
    ranged = frozenset(p for p in candidates if not isinstance(by_path[p].source, Path))
    report = scan_files(
        candidates, lambda p: opener(by_path[p]), policy, hub_verdicts=hub_verdicts, ranged=ranged
    )
    if report.files:
        progress(
            action.spec.label, f"scan: {report.summary} ({human_size(report.bytes_read)} read)"
        )
    report.check(state.repo_id)
    return report
