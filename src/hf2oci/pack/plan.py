"""Specs + hub state + what the destination holds → actions (mirror, skip or fail).

``decide`` is the whole decision, pure; ``plan`` gathers its inputs (hub metadata, the image now at
the moving tag: metadata calls only), so ``--dry-run`` and the workflow's plan job are free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.errors import Hf2ociError, PackError
from hf2oci.intake import hub
from hf2oci.intake.filters import select
from hf2oci.intake.hub import RepoState
from hf2oci.intake.scan import candidate
from hf2oci.pack.formats.grouping import carry, check_layer_count
from hf2oci.pack.formats.modelpack import check_file_count
from hf2oci.spec import RepoSpec, RepoType, ScanPolicy

log = logging.getLogger(__name__)

ActionKind = Literal["mirror", "skip", "fail"]


@dataclass(frozen=True)
class Action:
    spec: RepoSpec
    kind: ActionKind
    reason: str
    state: RepoState | None = None
    #: repo paths that will go under /REPO
    files: tuple[str, ...] = ()
    #: tags in write order: the immutable one first, the moving one last
    tags: tuple[str, ...] = ()
    error: Hf2ociError | None = None

    @property
    def size(self) -> int:
        if self.state is None:
            return 0
        keep = set(self.files)
        return sum(f.size for f in self.state.files if f.path in keep)


def tags_for(repo_id: str, commit: str) -> tuple[str, ...]:
    return (naming.revision_tag(repo_id, commit), naming.repo_tag(repo_id))


def decide(
    spec: RepoSpec,
    state: RepoState,
    current: Mapping[str, str] | None,
    *,
    force: bool = False,
    max_layer_size: int | None = None,
    platforms: Sequence[str] = (),
    scan: ScanPolicy = "off",
) -> Action:
    """What to do for ``spec``, given the hub's ``state`` and the labels of the image now at the
    moving tag (None: there is none). Files that need more layers than an image can have
    (a file bigger than ``max_layer_size`` takes one per part), or one that must go in parts
    with no sha256 to check them by, fail the repo here, before anything is uploaded.
    ``platforms``: those asked for (none: the base's, which planning does not read). ``scan``:
    the policy; an image of pickle-based files made unscanned is made again once scanning is
    on. Pure: no I/O."""
    try:
        selection = select(
            [f.path for f in state.files],
            include=spec.include,
            exclude=spec.exclude,
            preset=spec.preset,
        )
    except Hf2ociError as e:
        return Action(spec, "fail", str(e), state=state, error=e)
    if not selection.kept:
        return Action(spec, "fail", "the filters keep no file", state=state)
    kept = set(selection.kept)
    try:
        sized = [(f.path, f.size) for f in state.files if f.path in kept]
        _, parts = carry(sized, max_layer_size)
        for part in parts:
            if not state.file(part.path).sha256:
                raise PackError(
                    f"{part.path} is over max_layer_size and goes in parts, which are checked "
                    "by its sha256, and the hub gives none (it is not in LFS): raise "
                    "max_layer_size or exclude it"
                )
        if spec.format == "modelpack":  # a layer per file, or per part
            check_file_count(len(kept) + len(parts) - len({p.path for p in parts}))
        else:
            check_layer_count(sized, max_layer_size)
    except PackError as e:
        return Action(spec, "fail", str(e), state=state, error=e)
    tags = tags_for(spec.repo_id, state.commit)
    mirror = Action(spec, "mirror", "", state=state, files=tuple(selection.kept), tags=tags)
    if force:
        return replace(mirror, reason="forced")
    if current is None:
        return replace(mirror, reason="not mirrored yet")
    if current.get(L.REVISION) != state.commit:
        old = (current.get(L.REVISION) or "?")[:12]
        return replace(mirror, reason=f"revision moved {old} → {state.commit[:12]}")
    if current.get(L.FILTER) != spec.filter_key:
        return replace(mirror, reason="file selection changed")
    ref = current.get(L.REF)  # images made before the label existed keep theirs
    if ref is not None and ref != state.requested:
        return replace(mirror, reason=f"revision asked for changed: {ref} → {state.requested}")
    made, wanted = current.get(L.FORMAT, "image"), spec.format or "image"
    if made != wanted:
        return replace(mirror, reason=f"format changed: {made} → {wanted}")
    if (
        spec.format != "modelpack"
        and platforms
        and _platforms_changed(platforms, current.get(L.PLATFORMS))
    ):
        return replace(mirror, reason=f"platforms changed: now {', '.join(platforms)}")
    if (
        scan != "off"
        and (current.get(L.SCAN) or "off").startswith("off")
        and any(candidate(p) for p in selection.kept)
    ):
        return replace(mirror, reason=f"pickle-based files not scanned yet (scan: {scan})")
    return replace(mirror, kind="skip", reason=f"up to date at {state.commit[:12]}")


def _platforms_changed(asked: Sequence[str], label: str | None) -> bool:
    """Whether the image lacks a platform asked for, or has more (an image of one platform
    carries no label: which one it is takes reading its config, so it counts as matching one)."""
    if label is None:
        return len(asked) > 1
    return set(label.split(",")) != set(asked)


#: the labels of the image at ``tag`` in the destination's repository for a repo type
CurrentLabels = Callable[[RepoType, str], Mapping[str, str] | None]


def plan_repo(
    spec: RepoSpec,
    current_labels: CurrentLabels,
    *,
    force: bool = False,
    max_layer_size: int | None = None,
    platforms: Sequence[str] = (),
    scan: ScanPolicy = "off",
) -> Action:
    """Decide for one repo with metadata calls only (hub info, the destination's labels)."""
    try:
        state = hub.fetch_state(spec, complete=False)
        tag = naming.repo_tag(spec.repo_id)
        current = None if force else current_labels(spec.repo_type, tag)
        if state.partial:
            # files from repo info: seeing that nothing changed needs no more (the tree
            # listing takes a request per 1,000 files); anything else decides on every file,
            # with its Xet hash, from the tree
            quick = decide(
                spec, state, current, max_layer_size=None, platforms=platforms, scan=scan
            )
            if quick.kind == "skip":
                return quick
            state = hub.complete_listing(state)
    except Hf2ociError as e:
        return Action(spec, "fail", str(e), error=e)
    return decide(
        spec,
        state,
        current,
        force=force,
        max_layer_size=max_layer_size,
        platforms=platforms,
        scan=scan,
    )


def plan(
    specs: Sequence[RepoSpec],
    current_labels: CurrentLabels,
    *,
    force: bool = False,
    max_layer_size: int | None = None,
    platforms: Sequence[str] = (),
    scan: ScanPolicy = "off",
    on_action: Callable[[Action], None] | None = None,
) -> list[Action]:
    actions = []
    for spec in specs:
        action = plan_repo(
            spec,
            current_labels,
            force=force,
            max_layer_size=max_layer_size,
            platforms=platforms,
            scan=scan,
        )
        log.debug("plan %s: %s (%s)", spec.label, action.kind, action.reason)
        if on_action:
            on_action(action)
        actions.append(action)
    return actions
