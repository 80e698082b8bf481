"""``prune``: pinned revision tags beyond the newest N per repo (or older than some days) leave the
registry, with their signatures and attestations. Never a moving tag, never the revision a moving
tag holds, never a revision a list line pins (``@REVISION``), never an image another kept tag
shows. The registry's own garbage collection frees the layers afterwards."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hf2oci import labels as L
from hf2oci.airgap.content import Tagged, attachment_tags, image_tags, repositories
from hf2oci.errors import RegistryError, UsageError
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.stores import RegistryStore
from hf2oci.spec import RepoSpec

_SHA = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class Removal:
    """A pinned tag to delete, and the attachments (tag → digest) that go with it."""

    tagged: Tagged
    attachments: tuple[tuple[str, str], ...]

    def line(self, *, dry_run: bool) -> str:
        t = self.tagged
        verb = "would remove" if dry_run else "removed"
        extra = f" and {len(self.attachments)} attachment(s)" if self.attachments else ""
        return (
            f"{verb} {t.repository}:{t.tag} ({t.repo_id} at {t.revision[:12] or '?'}, "
            f"{t.created or 'no date'}){extra}"
        )


def _protected(tagged: Tagged, specs: Sequence[RepoSpec]) -> bool:
    """Whether a list line pins this image's revision (a commit sha prefix, or a branch/tag
    name the image was made from)."""
    for spec in specs:
        if spec.repo_id != tagged.repo_id or not spec.revision:
            continue
        rev = spec.revision.lower()
        if _SHA.fullmatch(rev) and tagged.revision.startswith(rev):
            return True
        if tagged.labels.get(L.REF) == spec.revision:
            return True
    return False


def _older(tagged: Tagged, cutoff: dt.datetime | None) -> bool:
    if cutoff is None:
        return True
    try:
        created = dt.datetime.fromisoformat(tagged.created.replace("Z", "+00:00"))
    except ValueError:
        return False  # no date: never old enough
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    return created < cutoff


def plan_prune(
    client: RegistryClient,
    namespace: str,
    *,
    keep: int | None,
    older_than: float | None,
    pinned_by_lists: Sequence[RepoSpec] = (),
    now: dt.datetime | None = None,
) -> tuple[list[Removal], list[str]]:
    """What to delete, and a line for each old tag kept for a reason (shared image, pinned)."""
    if keep is None and older_than is None:
        raise UsageError("say what to prune: --keep N, --older-than DAYS, or both")
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1 (the moving tag's revision stays anyway)")
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = now - dt.timedelta(days=older_than) if older_than is not None else None
    source = RegistryStore(client)
    removals: list[Removal] = []
    notes: list[str] = []
    for repository in repositories(namespace):
        all_tags = set(source.tags(repository))
        tagged = list(image_tags(source, repository))
        moving = {t.repo_id: t for t in tagged if t.moving}
        pinned: dict[str, list[Tagged]] = {}
        for t in tagged:
            if not t.moving and t.repo_id:
                pinned.setdefault(t.repo_id, []).append(t)
        doomed: list[Tagged] = []
        for repo_id, tags in pinned.items():
            tags.sort(key=lambda t: (t.created, t.tag), reverse=True)
            current = moving.get(repo_id)
            for rank, t in enumerate(tags):
                if keep is not None and rank < keep:
                    continue
                if current is not None and t.revision == current.revision:
                    continue
                if not _older(t, cutoff):
                    continue
                if _protected(t, pinned_by_lists):
                    notes.append(f"kept {repository}:{t.tag}: a list line pins its revision")
                    continue
                doomed.append(t)
        gone = {t.tag for t in doomed}
        kept_digests = {t.digest: t.tag for t in tagged if t.tag not in gone}
        for t in doomed:
            if t.digest in kept_digests:
                notes.append(f"kept {repository}:{t.tag}: {kept_digests[t.digest]} shows the "
                             "same image")  # fmt: skip
                continue
            attached = []
            for tag in attachment_tags(t.digest):
                if tag in all_tags:
                    found = client.get_manifest(repository, tag)
                    if found is not None:
                        attached.append((tag, found[2]))
                        attached += _referrers(found[0], tag)
            removals.append(Removal(t, tuple(attached)))
    return removals, notes


def _referrers(data: bytes, tag: str) -> list[tuple[str, str]]:
    """The referrer manifests a referrers index (tag ``sha256-<hex>``) lists."""
    if tag.endswith((".sig", ".att")):
        return []
    try:
        docs = json.loads(data).get("manifests") or []
    except (ValueError, AttributeError):
        return []
    return [(tag, str(d["digest"])) for d in docs if isinstance(d, dict) and "digest" in d]


def prune(
    client: RegistryClient,
    removals: Sequence[Removal],
    on_removed: Callable[[Removal], None] | None = None,
) -> None:
    """Delete each image (then its attachments); RegistryError in one line when the registry
    refuses deletes."""
    for removal in removals:
        t = removal.tagged
        try:
            client.delete_manifest(t.repository, t.digest)
        except RegistryError as e:
            if "405" in str(e) or "UNSUPPORTED" in str(e):
                raise RegistryError(
                    f"registry {client.registry} refuses deletes ({t.repository}@"
                    f"{t.digest[:19]}…): enable them (distribution: storage.delete.enabled: "
                    "true) and run prune again"
                ) from e
            raise
        for _, digest in removal.attachments:
            client.delete_manifest(t.repository, digest)
        if on_removed is not None:
            on_removed(removal)
