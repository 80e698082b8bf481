"""Composes the stages for one run: plan → fetch (+ hook) → pack/publish → record."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from hf2oci import hub
from hf2oci.builders import Builder, BuildRequest, Destination
from hf2oci.errors import Hf2ociError
from hf2oci.pack import RepoFiles, file_hashes, image_labels
from hf2oci.plan import Action, plan
from hf2oci.prepare import run_prepare
from hf2oci.spec import Mirrored, RepoSpec
from hf2oci.units import human_size

log = logging.getLogger(__name__)

Status = Literal["mirrored", "skipped", "failed", "planned"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one repo (or one bad list line, with ``spec`` None)."""

    status: Status
    message: str
    spec: RepoSpec | None = None
    mirrored: Mirrored | None = None
    #: where the failure happened ("get_hf/to_get_models.txt:8"), for list errors
    origin: str = ""


@dataclass(frozen=True)
class RunOptions:
    destination: Destination
    prepare_script: Path | None = None
    hub_workers: int = 8
    #: scratch space for downloads (system temp when None)
    work_dir: Path | None = None
    dry_run: bool = False
    force: bool = False
    #: stream large files hub → destination when the builder can (no prepare hook)
    stream: bool = True
    #: makes a byte counter for a repo: ``meter(label, total_bytes)`` → ``count(n)``
    meter: Callable[[str, int], Callable[[int], None]] | None = None


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def mirrored(self) -> list[Mirrored]:
        return [o.mirrored for o in self.outcomes if o.mirrored is not None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


Progress = Callable[[str, str], None]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mirror_action(
    action: Action, builder: Builder, options: RunOptions, progress: Progress | None = None
) -> Mirrored:
    """Fetch, (prepare), pack and publish one planned repo. Raises Hf2ociError on failure."""
    state = action.state
    assert state is not None and action.kind == "mirror"
    say = progress or (lambda _repo, _msg: None)
    label = action.spec.label
    with tempfile.TemporaryDirectory(prefix="hf2oci-", dir=options.work_dir) as tmp:
        stream = builder.can_stream and options.stream and options.prepare_script is None
        streamed = (
            [
                f
                for f in state.files
                if f.path in action.files and f.size >= builder.small_file_limit
            ]
            if stream
            else []
        )
        streamed_paths = {f.path for f in streamed}
        local = [p for p in action.files if p not in streamed_paths]
        if streamed:
            how = f", streaming {len(streamed)} large files"
        elif builder.can_stream and options.prepare_script is not None:
            how = f", all to disk first ({options.prepare_script.name} needs them there)"
        else:
            how = ""
        say(label, f"fetching {len(action.files)} files ({human_size(action.size)}){how}")
        cache = Path(tmp) / "hub"
        snapshot = (
            hub.download(state, local, cache_dir=cache, max_workers=options.hub_workers)
            if local
            else cache
        )
        files = RepoFiles(root=snapshot, paths=tuple(local))
        hashes: dict[str, str] | None = file_hashes(state.files)
        if options.prepare_script is not None:
            say(label, f"running {options.prepare_script.name}")
            out = Path(tmp) / "out"
            run_prepare(options.prepare_script, state=state, src_dir=snapshot, out_dir=out)
            files = RepoFiles.scan(out)
            hashes = None  # the hook may have changed any file
        say(label, f"building with {builder.name} → {options.destination.image(state.repo_type)}")
        published = builder.publish(
            BuildRequest(
                files=files,
                repo_type=state.repo_type,
                labels=image_labels(state, action.spec, builder.base()),
                created=state.last_modified,
                tags=action.tags,
                hashes=hashes,
                streamed=streamed,
                state=state,
                on_bytes=options.meter(label, action.size) if options.meter else None,
            )
        )
        size = files.total_size + sum(f.size for f in streamed)
        count = len(files.paths) + len(streamed)
    return Mirrored(
        repo_id=state.repo_id,
        repo_type=state.repo_type,
        revision=state.commit,
        requested_revision=state.requested,
        image=published.image,
        tags=tuple(reversed(published.tags)),
        digest=published.digest,
        size=size,
        file_count=count,
        mirrored_at=_now(),
        destination=options.destination.kind,
        builder=builder.name,
        license=state.license,
    )


def run(
    specs: Sequence[RepoSpec],
    builder: Builder,
    options: RunOptions,
    *,
    progress: Progress | None = None,
) -> Report:
    """Plan every spec, then mirror what needs it. One failing repo never stops the others."""
    report = Report()
    say = progress or (lambda _repo, _msg: None)
    for action in plan(specs, builder, force=options.force):
        spec = action.spec
        if action.kind == "fail":
            say(spec.label, f"failed: {action.reason}")
            report.outcomes.append(Outcome("failed", action.reason, spec, origin=spec.origin))
            continue
        if action.kind == "skip":
            say(spec.label, action.reason)
            report.outcomes.append(Outcome("skipped", action.reason, spec))
            continue
        if options.dry_run:
            size = human_size(action.size)
            msg = f"would mirror {len(action.files)} files ({size}): {action.reason}"
            say(spec.label, msg)
            report.outcomes.append(Outcome("planned", msg, spec))
            continue
        try:
            mirrored = mirror_action(action, builder, options, progress)
        except Hf2ociError as e:
            say(spec.label, f"failed: {e}")
            report.outcomes.append(Outcome("failed", str(e), spec, origin=spec.origin))
            continue
        say(spec.label, f"mirrored {mirrored.image}:{mirrored.tags[0]} ({mirrored.digest})")
        report.outcomes.append(Outcome("mirrored", action.reason, spec, mirrored))
    return report
