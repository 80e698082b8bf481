"""Specs + hub + destination state → actions (mirror, skip or fail), so --dry-run is free."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from hf2oci import hub, naming
from hf2oci.builders import Builder
from hf2oci.errors import Hf2ociError
from hf2oci.filters import select
from hf2oci.hub import RepoState
from hf2oci.pack import LABEL_FILTER, LABEL_REF, LABEL_REVISION
from hf2oci.spec import RepoSpec

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


def plan_repo(spec: RepoSpec, builder: Builder, *, force: bool = False) -> Action:
    """Decide what to do for one repo, with metadata calls only (hub info, destination labels)."""
    try:
        state = hub.fetch_state(spec)
        selection = select(
            [f.path for f in state.files],
            include=spec.include,
            exclude=spec.exclude,
            preset=spec.preset,
        )
        if not selection.kept:
            return Action(spec, "fail", "the filters keep no file", state=state)
        tags = tags_for(spec.repo_id, state.commit)
        current = None if force else builder.current_labels(spec.repo_type, tags[-1])
    except Hf2ociError as e:
        return Action(spec, "fail", str(e), error=e)
    action = Action(spec, "mirror", "", state=state, files=tuple(selection.kept), tags=tags)
    if current is None:
        return _with(action, "not mirrored yet")
    if current.get(LABEL_REVISION) != state.commit:
        old = (current.get(LABEL_REVISION) or "?")[:12]
        return _with(action, f"revision moved {old} → {state.commit[:12]}")
    if current.get(LABEL_FILTER) != spec.filter_key:
        return _with(action, "file selection changed")
    ref = current.get(LABEL_REF)  # images made before the label existed keep theirs
    if ref is not None and ref != state.requested:
        return _with(action, f"revision asked for changed: {ref} → {state.requested}")
    return Action(
        spec,
        "skip",
        f"up to date at {state.commit[:12]}",
        state=state,
        files=action.files,
        tags=tags,
    )


def _with(action: Action, reason: str) -> Action:
    return Action(
        action.spec, action.kind, reason, state=action.state, files=action.files, tags=action.tags
    )


def plan(
    specs: Sequence[RepoSpec],
    builder: Builder,
    *,
    force: bool = False,
    on_action: Callable[[Action], None] | None = None,
) -> list[Action]:
    actions = []
    for spec in specs:
        action = plan_repo(spec, builder, force=force)
        log.debug("plan %s: %s (%s)", spec.label, action.kind, action.reason)
        if on_action:
            on_action(action)
        actions.append(action)
    return actions
