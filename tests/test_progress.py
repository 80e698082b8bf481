"""The one progress renderer: done / total, rate and ETA, never past 100%; a rewritten line on a
terminal, a plain line every 10 s in a log; and every long command renders through it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from helpers import cli, make_project
from hf2oci.cli._progress import Meter

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _meter(total: int, *, tty: bool) -> tuple[Meter, Clock, list[tuple[str, bool]]]:
    clock, lines = Clock(), []
    meter = Meter(
        "org/m", total, tty=tty, clock=clock, write=lambda s, last: lines.append((s, last))
    )
    return meter, clock, lines


def test_a_log_gets_a_line_every_ten_seconds_with_rate_and_eta_then_the_finished_line() -> None:
    meter, clock, lines = _meter(600 * MiB, tty=False)
    for _ in range(30):  # 20 MiB a second for 30 s
        clock.now += 1
        meter(20 * MiB)
    assert [s for s, _ in lines] == [
        "org/m: 200.0 MiB / 600.0 MiB (33%), 20.0 MiB/s, 20 s left",
        "org/m: 400.0 MiB / 600.0 MiB (66%), 20.0 MiB/s, 10 s left",
        "org/m: 600.0 MiB / 600.0 MiB (100%), 20.0 MiB/s, 30 s",
    ]
    assert [last for _, last in lines] == [False, False, True]
    meter(MiB)  # the tar around the files, a config: never past 100%, nothing more said
    assert len(lines) == 3 and meter.line(clock.now).startswith("org/m: 600.0 MiB / 600.0 MiB")


def test_a_terminal_line_is_rewritten_twice_a_second_and_a_retry_takes_bytes_back() -> None:
    meter, clock, lines = _meter(10 * MiB, tty=True)
    for _ in range(4):
        clock.now += 0.25
        meter(MiB)
    assert len(lines) == 2  # at 0.5 s and 1 s
    meter(-3 * MiB)  # an upload that starts over
    clock.now += 0.5
    meter(0)
    assert lines[-1][0].startswith("org/m: 1.0 MiB / 10.0 MiB (10%)")
    meter.finish()
    assert lines[-1] == (meter.line(clock.now), True)
    assert "(100%)" in lines[-1][0]


def test_long_hours_read_as_hours() -> None:
    meter, clock, _ = _meter(400 * 1024 * MiB, tty=False)
    clock.now += 3600
    meter(100 * 1024 * MiB)
    assert meter.line(clock.now).endswith("3 h 00 min left")


def test_mirroring_into_a_layout_reports_its_bytes(hub: Any, project: Path) -> None:
    """The layout path reports like the registry path (it said nothing between "fetching" and
    "mirrored"); the total is the layers' bytes, so the line ends at 100%, not past it."""
    hub.add_repo("progress/m", {"model.safetensors": random.Random(1).randbytes(3 * MiB),
                                "config.json": b"{}"})  # fmt: skip
    make_project(project, models=["progress/m"], config={"base_image": "scratch"})
    result = cli("sync")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("progress/m: ")]
    done = [ln for ln in lines if "(100%)" in ln]
    assert len(done) == 1, lines
    assert not [ln for ln in lines if "(10" in ln and "(100%)" not in ln]
    quiet = cli("sync", "-q", "--force")
    assert quiet.exit_code == 0 and "(100%)" not in quiet.stderr


def test_bundle_and_load_render_their_bytes(hub: Any, random_repo: Any, project: Path) -> None:
    """bundle and load say nothing between their start and their summary without it."""
    from servers import start_registry

    model, _, _ = random_repo(size=3 * MiB)
    outside, inside = start_registry(project / "out"), start_registry(project / "in")
    try:
        make_project(project, models=[model], config={"base_image": "scratch",
                                                      "registry": outside.host})  # fmt: skip
        assert cli("sync", "-q").exit_code == 0
        made = cli("bundle", "--registry", outside.host, "-o", str(project / "b.tar"))
        assert made.exit_code == 0, made.output
        assert [ln for ln in made.stderr.splitlines() if ln.startswith(f"{project / 'b.tar'}: ")
                and "(100%)" in ln]  # fmt: skip
        loaded = cli("load", str(project / "b.tar"), "--registry", inside.host)
        assert loaded.exit_code == 0, loaded.output
        assert [ln for ln in loaded.stderr.splitlines() if "(100%)" in ln]
    finally:
        outside.stop()
        inside.stop()
