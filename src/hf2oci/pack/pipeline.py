"""Composes the stages for one run: plan → base → fetch (+ hook) → format → write → outcome."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from hf2oci import labels as L
from hf2oci.errors import Hf2ociError, UsageError
from hf2oci.intake.files import Reader
from hf2oci.intake.prepare import run_prepare
from hf2oci.intake.scan import ScanReport, candidate, whole_read
from hf2oci.oci.image import SCRATCH_BASE, Artifact, Base
from hf2oci.oci.source import open_base
from hf2oci.oci.tarstream import ChunkSource
from hf2oci.pack.describe import image_labels
from hf2oci.pack.destination import Destination, Target, Targets
from hf2oci.pack.formats.grouping import DEFAULT_SMALL_FILE_LIMIT
from hf2oci.pack.formats.image import PackFile, Reuse, build_image, files_under
from hf2oci.pack.formats.modelpack import build_modelpack
from hf2oci.pack.plan import Action, plan
from hf2oci.pack.scanning import head_opener, scan_fetched
from hf2oci.pack.scanning import scan_labels as scan_labels_of
from hf2oci.pack.sign import sign_published
from hf2oci.reference import Platform
from hf2oci.spec import Format, Mirrored, RepoSpec, ScanPolicy, XetMode
from hf2oci.trust.signing import SigningKey
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
    base_image: str = "scratch"
    #: the platforms to build for (None: every linux platform the base offers); more than
    #: one gives an image index
    platforms: tuple[Platform, ...] | None = None
    #: what a repo becomes when its spec does not say
    format: Format = "image"
    prepare_script: Path | None = None
    hub_workers: int = 8
    #: repos mirrored at once
    max_workers: int = 1
    small_file_limit: int = DEFAULT_SMALL_FILE_LIMIT
    #: no layer bigger than this (None: no limit)
    max_layer_size: int | None = None
    #: scratch space for downloads (system temp when None)
    work_dir: Path | None = None
    dry_run: bool = False
    force: bool = False
    #: stream large files hub → destination (not with a prepare hook, which needs them on disk)
    stream: bool = True
    #: makes a byte counter for a repo: ``meter(label, total_bytes)`` → ``count(n)``
    meter: Callable[[str, int], Callable[[int], None]] | None = None
    #: pickle-based files: a dangerous import fails the repo (refuse), is recorded (warn), or
    #: nothing is scanned (off)
    scan: ScanPolicy = "refuse"
    #: signs every image written (cosign signature and provenance beside it); None: unsigned
    signing_key: SigningKey | None = None
    #: files the hub keeps in Xet come through hf_xet ("auto") or plain HTTP ("off")
    xet: XetMode = "auto"

    @property
    def builder(self) -> str:
        return "docker" if self.destination.engine else "oci"


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


def _quiet(_repo: str, _msg: str) -> None:
    pass


def streamed_paths(action: Action, options: RunOptions, reader: Reader) -> frozenset[str]:
    """The files that go hub → destination without touching the disk: decided here, once.
    A raw pickle is not streamed when scanning (reading it all is the only way to scan it):
    it is downloaded once and scanned on disk."""
    state = action.state
    if not options.stream or options.prepare_script is not None or state is None:
        return frozenset()
    keep = set(action.files)
    large = [f for f in state.files if f.path in keep and f.size >= options.small_file_limit]
    if options.scan != "off":
        large = [
            f for f in large if not candidate(f.path) or not whole_read(reader.read_range(f, 0, 16))
        ]
    return frozenset(f.path for f in large)


def mirror_action(
    action: Action,
    *,
    base: Base,
    target: Target,
    options: RunOptions,
    progress: Progress = _quiet,
) -> Mirrored:
    """Fetch, (prepare), format and write one planned repo. Raises Hf2ociError on failure."""
    state = action.state
    assert state is not None and action.kind == "mirror"
    label = action.spec.label
    if action.spec.format == "modelpack" and options.destination.engine:
        raise UsageError(
            "format modelpack makes an OCI artifact, not an image the Docker engine can load: "
            "use builder oci"
        )
    with (
        Reader(state, xet=options.xet) as reader,
        tempfile.TemporaryDirectory(prefix="hf2oci-", dir=options.work_dir) as tmp,
    ):
        streamed = streamed_paths(action, options, reader)
        how = _how(streamed, options)
        progress(label, f"fetching {len(action.files)} files ({human_size(action.size)}){how}")
        files, scanned = fetch_files(action, streamed, Path(tmp), options, reader, progress)
        scan_labels = scan_labels_of(scanned)
        if action.spec.format == "modelpack":
            image = _modelpack(action, files, options, scan_labels, reader)
        else:
            reuse = (
                Reuse(target.stored_layer, target.manifest(action.tags[-1])) if streamed else None
            )
            image = build_image(
                files,
                base=base,
                labels=image_labels(
                    state,
                    action.spec,
                    base_name=base.name,
                    base_digest=base.digest,
                    platforms=base.platforms,
                    scan=scan_labels,
                ),
                created=state.last_modified,
                small_limit=options.small_file_limit,
                max_layer_size=options.max_layer_size,
                reuse=reuse,
            )
        where = options.destination.image(state.repo_type)
        progress(label, f"writing {where} ({options.destination.kind})")
        # what the destination is sent or already holds: every layer once (tar and all)
        size = sum(layer.size for layer in image.layers)
        meter = options.meter(label, size) if options.meter else None
        digest = target.write(image, action.tags, on_progress=meter)
        if options.signing_key is not None:
            hook = options.prepare_script.name if options.prepare_script else None
            sign_published(action, image, files, target, where, scanned,
                           key=options.signing_key, hook=hook, progress=progress)  # fmt: skip
    return Mirrored(
        repo_id=state.repo_id,
        repo_type=state.repo_type,
        revision=state.commit,
        requested_revision=state.requested,
        image=where,
        tags=tuple(reversed(action.tags)),
        digest=digest,
        size=sum(f.size for f in files),
        file_count=len(files),
        mirrored_at=_now(),
        destination=options.destination.kind,
        builder=options.builder,
        license=state.license,
        format=action.spec.format or "image",
        scan=scan_labels.get(L.SCAN),
    )


def _modelpack(
    action: Action,
    files: Sequence[PackFile],
    options: RunOptions,
    scan: Mapping[str, str],
    reader: Reader,
) -> Artifact:
    """The ModelPack artifact of a repo: labels as manifest annotations (plan reads them)."""
    state = action.state
    assert state is not None
    labels = image_labels(
        state,
        action.spec,
        base_name=None,
        base_digest=None,
        format="modelpack",
        scan=scan,
    )
    descriptor: dict[str, object] = {
        "name": state.repo_id,
        "title": state.repo_id.rsplit("/", 1)[-1],
        "vendor": state.repo_id.split("/", 1)[0],
        "version": state.requested,
        "revision": state.commit,
        "createdAt": state.last_modified,
        "sourceURL": state.url,
        "docURL": state.url,
    }
    if state.license:
        descriptor["licenses"] = [state.license]
    return build_modelpack(
        files,
        repo_type=state.repo_type,
        descriptor=descriptor,
        labels=labels,
        open_head=head_opener(reader),
        max_layer_size=options.max_layer_size,
    )


def fetch_files(
    action: Action,
    streamed: frozenset[str],
    scratch: Path,
    options: RunOptions,
    reader: Reader,
    progress: Progress = _quiet,
) -> tuple[list[PackFile], ScanReport]:
    """The files to pack: those not streamed downloaded into ``scratch`` (and reshaped by the
    prepare hook, if any), the streamed ones as hub sources read while their layer is written;
    and the scan of the hub's files, made before the hook runs (it may load them) and before
    anything is written."""
    state = action.state
    assert state is not None
    local = [p for p in action.files if p not in streamed]
    snapshot = reader.download(local, cache_dir=scratch / "hub", max_workers=options.hub_workers)
    files = []
    for path in [*local, *sorted(streamed)]:
        f = state.file(path)
        if path in streamed:
            source: Path | ChunkSource = reader.source(f)
            ranges = reader.ranges(f)
        else:
            source, ranges = (snapshot / path).resolve(), None
        files.append(
            PackFile(path, f.size, source, sha256=f.sha256, blob_id=f.blob_id,
                     xet_hash=f.xet_hash, ranges=ranges)
        )  # fmt: skip
    scanned = scan_fetched(action, files, options.scan, reader, progress)
    if options.prepare_script is not None:
        progress(action.spec.label, f"running {options.prepare_script.name}")
        out = scratch / "out"
        run_prepare(options.prepare_script, state=state, src_dir=snapshot, out_dir=out)
        return files_under(out), scanned  # no hub hashes: the hook may have changed any file
    return files, scanned


def _how(streamed: frozenset[str], options: RunOptions) -> str:
    if streamed:
        return f", streaming {len(streamed)} large files"
    if options.prepare_script is not None and options.stream:
        return f", all to disk first ({options.prepare_script.name} needs them there)"
    return ""


def run(specs: Sequence[RepoSpec], options: RunOptions, *, progress: Progress = _quiet) -> Report:
    """Plan every spec, then mirror what needs it. One failing repo never stops the others.

    The base image is read once, after planning and before any download: when it cannot be
    had, nothing is fetched and BaseImageError says why.
    """
    report = Report()
    specs = [s if s.format else replace(s, format=options.format) for s in specs]
    targets = Targets(options.destination, base_name=options.base_image)
    actions = plan(
        specs,
        targets.labels,
        force=options.force,
        max_layer_size=options.max_layer_size,
        platforms=[str(p) for p in options.platforms or ()],
        scan=options.scan,
    )
    if options.signing_key is not None:  # signing turned on: an unsigned image is made again
        for i, action in enumerate(actions):
            if action.kind == "skip" and action.state is not None:
                target = targets.for_type(action.spec.repo_type)
                if not target.is_signed(action.tags[-1]):
                    actions[i] = replace(action, kind="mirror", reason="not signed yet")
    outcomes: dict[int, Outcome] = {}
    todo = []
    for i, action in enumerate(actions):
        spec = action.spec
        if action.kind == "fail":
            progress(spec.label, f"failed: {action.reason}")
            outcomes[i] = Outcome("failed", action.reason, spec, origin=spec.origin)
        elif action.kind == "skip":
            progress(spec.label, action.reason)
            outcomes[i] = Outcome("skipped", action.reason, spec)
        elif options.dry_run:
            size = human_size(action.size)
            msg = f"would mirror {len(action.files)} files ({size}): {action.reason}"
            progress(spec.label, msg)
            outcomes[i] = Outcome("planned", msg, spec)
        else:
            todo.append(i)
    if todo:
        images = any(actions[i].spec.format == "image" for i in todo)
        base = (
            open_base(options.base_image, platforms=options.platforms, client=targets.client)
            if images
            else SCRATCH_BASE  # a ModelPack artifact has no base
        )

        def one(i: int) -> Outcome:
            action = actions[i]
            spec = action.spec
            try:
                target = targets.for_type(spec.repo_type)
                mirrored = mirror_action(
                    action, base=base, target=target, options=options, progress=progress
                )
            except Hf2ociError as e:
                progress(spec.label, f"failed: {e}")
                return Outcome("failed", str(e), spec, origin=spec.origin)
            progress(
                spec.label, f"mirrored {mirrored.image}:{mirrored.tags[0]} ({mirrored.digest})"
            )
            return Outcome("mirrored", action.reason, spec, mirrored)

        with ThreadPoolExecutor(max(1, options.max_workers), thread_name_prefix="repo") as pool:
            for i, outcome in zip(todo, pool.map(one, todo), strict=True):
                outcomes[i] = outcome
    report.outcomes.extend(outcomes[i] for i in range(len(actions)))
    return report


def iter_mirrored(report: Report) -> Iterator[str]:
    """``image:tag@digest`` for each image written, as ``crane push`` prints it."""
    for m in report.mirrored:
        yield f"{m.image}:{m.tags[0]}@{m.digest}"
