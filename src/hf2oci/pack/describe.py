"""What an image says about the repo it holds: its labels (also its manifest's annotations),
from the hub's state of the repo and what the list line asked for (``labels`` is the schema)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hf2oci.intake.hub import RepoState
from hf2oci.labels import (
    BASE_DIGEST,
    BASE_NAME,
    CREATED,
    FILTER,
    FORMAT,
    LICENSES,
    OCI_REVISION,
    PLATFORMS,
    REF,
    REPO_ID,
    REPO_TYPE,
    REVISION,
    SOURCE,
    TITLE,
)
from hf2oci.spec import RepoSpec


def image_labels(
    state: RepoState,
    spec: RepoSpec,
    *,
    base_name: str | None,
    base_digest: str | None,
    platforms: Sequence[str] = (),
    format: str = "image",
    scan: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Config labels (also the manifest's annotations). No secrets, nothing run-dependent."""
    labels = {
        SOURCE: state.url,
        OCI_REVISION: state.commit,
        TITLE: state.repo_id,
        CREATED: state.last_modified,
        REPO_ID: state.repo_id,
        REPO_TYPE: state.repo_type,
        REVISION: state.commit,
        REF: state.requested,
        FILTER: spec.filter_key,
    }
    if base_name:
        labels[BASE_NAME] = base_name
    if base_digest:
        labels[BASE_DIGEST] = base_digest
    if state.license:
        labels[LICENSES] = state.license
    if len(platforms) > 1:
        labels[PLATFORMS] = ",".join(platforms)
    if format != "image":
        labels[FORMAT] = format
    labels.update(scan or {})
    return labels
