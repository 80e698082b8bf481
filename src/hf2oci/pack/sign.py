"""The mirror's signing stage: what it publishes beside each image it wrote, as cosign stores
them (the image signature and the provenance), and the OpenSSF model signature of its files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hf2oci.digest import sha256_file
from hf2oci.intake import hub
from hf2oci.intake.scan import ScanReport
from hf2oci.oci.image import Artifact, images_of
from hf2oci.pack.destination import Target
from hf2oci.pack.formats.image import PackFile
from hf2oci.pack.plan import Action
from hf2oci.trust import signing
from hf2oci.trust.signing import SigningKey

Progress = Callable[[str, str], None]


def sign_published(
    action: Action,
    image: Artifact,
    files: Sequence[PackFile],
    target: Target,
    reference: str,
    scanned: ScanReport,
    *,
    key: SigningKey,
    hook: str | None,
    progress: Progress,
) -> None:
    """Write the image signature and the provenance of ``image`` (and of each platform's
    image of an index) beside it, as cosign stores them: the ``sha256-<hex>.sig`` and
    ``.att`` tags of the same repository; and the OpenSSF model signature over ``files`` as a
    referrer of ``image`` (the referrers tag ``sha256-<hex>``)."""
    state = action.state
    assert state is not None
    where = target.signatures()
    if where is None:
        progress(action.spec.label, "not signed: the Docker engine keeps no signatures "
                 "(set a registry to sign)")  # fmt: skip
        return
    digests = [image.digest, *(one.digest for one in images_of(image) if one is not image)]
    kept = set(action.files)
    statement = signing.provenance(
        subjects=[(reference, d) for d in digests],
        hub=hub.endpoint(),
        repo_id=state.repo_id,
        repo_type=state.repo_type,
        commit=state.commit,
        requested=state.requested,
        files=[
            signing.SourceFile(f.path, f.size, f.sha256, f.blob_id)
            for f in state.files
            if f.path in kept
        ],
        selection={
            "include": list(action.spec.include),
            "exclude": list(action.spec.exclude),
            "preset": action.spec.preset,
            "format": action.spec.format or "image",
            "prepare_hook": hook,
        },
        scan={
            "policy": scanned.policy,
            "summary": scanned.summary,
            "files": {v.path: v.to_json() for v in scanned.files},
        },
    )
    attestation = signing.attestation_artifact(key, statement)
    writes = [
        (signing.signature_artifact(key, reference, d), signing.signature_tag(d)) for d in digests
    ]
    writes += [(attestation, signing.attestation_tag(d)) for d in digests]
    with ThreadPoolExecutor(min(4, len(writes)), thread_name_prefix="sign") as pool:
        for done in [pool.submit(where.write, a, [t], on_progress=None) for a, t in writes]:
            done.result()
    digests_of = _file_sha256(files)
    if digests_of is None:
        progress(
            action.spec.label, "no model signature: a streamed file has no sha256 from the hub"
        )
    else:
        bundle = signing.model_signature(key, state.repo_id.rsplit("/", 1)[-1], digests_of)
        found = signing.referrer(bundle, signing.MT_BUNDLE, image.manifest_descriptor)
        index = signing.ReferrersIndex([found], annotations={})
        where.write(index, [signing.referrers_tag(image.digest)], on_progress=None)
    progress(action.spec.label, f"signed {reference}@{image.digest} (key {key.keyid[:12]})")


def _file_sha256(files: Sequence[PackFile]) -> dict[str, str] | None:
    """Each file's sha256: the hub's (checked while streaming), else hashed on disk (small
    files, a hook's output); None when a streamed file has none (not in LFS)."""
    out = {}
    for f in files:
        if f.sha256:
            out[f.path] = f.sha256
        elif isinstance(f.source, Path):
            out[f.path] = sha256_file(f.source).removeprefix("sha256:")
        else:
            return None
    return out
