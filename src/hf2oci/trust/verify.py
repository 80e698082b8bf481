"""``verify``: is the image at a tag the one hf2oci signed, made from the hub commit its labels
name? Reads manifests, the config and the signature artifacts, never the layer bytes.

Each check gives one ``Finding``: the image signature (a ``sha256-<hex>.sig`` payload naming
this digest, verified with the public key), the provenance (a ``.att`` DSSE envelope verified
with the key, whose subject is this digest and whose hub commit and repo id are the labels'),
and the tag itself (it names the repo the labels say the image holds).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.digest import sha256_digest
from hf2oci.errors import Hf2ociError, UsageError
from hf2oci.oci.image import INDEX_TYPES
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.source import layout_ref, open_image
from hf2oci.oci.stores import LayoutStore, RegistryStore, Repository
from hf2oci.reference import parse_reference
from hf2oci.trust.signing import (
    MT_BUNDLE,
    MT_DSSE,
    MT_SIMPLE_SIGNING,
    SIGNATURE_ANNOTATION,
    attestation_tag,
    pae,
    referrers_tag,
    signature_tag,
)


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL'} {self.check}: {self.message}"


@dataclass(frozen=True)
class Report:
    image: str
    digest: str
    findings: tuple[Finding, ...]
    #: the platform images of an index (their manifest digests)
    platforms: tuple[str, ...] = ()
    #: the files the verified provenance lists: path → {"sha256": …} or {"gitBlob": …}
    #: (empty for an image a prepare hook made: its files are not the hub's)
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": self.digest,
            "ok": self.ok,
            "findings": [f.__dict__ for f in self.findings],
        }


def _repo(text: str, plain_http: bool | None) -> tuple[Repository, str]:
    """The repository ``text`` names (as ``open_image`` reads it) and its tag or digest."""
    found = layout_ref(text)
    if found is not None:
        repository, _, tag = found[1].rpartition(":")  # a bundle's repository:tag
        return Repository.of(LayoutStore(found[0], single=True), repository), tag
    ref = parse_reference(text)
    client = RegistryClient(ref.registry, plain_http=plain_http)
    return Repository.of(RegistryStore(client), ref.repository), ref.identifier


def public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise UsageError("the key is not a PEM public key") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError("the key is not an ECDSA public key (cosign's kind)")
    return key


def _verifies(key: Any, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def verify(text: str, public_pem: bytes, *, plain_http: bool | None = None) -> Report:
    """Check the image ``text`` names against the public key; every finding, failed or not."""
    repo, tag = _repo(text, plain_http)
    top = repo.manifest(tag)
    if top is None:
        raise UsageError(f"{text}: no such image")
    labels = L.of_image(open_image(text, plain_http=plain_http))
    return check(text, repo, tag, top[0], labels, public_pem)


def check(
    text: str,
    repo: Repository,
    tag: str,
    manifest: bytes,
    labels: dict[str, str],
    public_pem: bytes,
) -> Report:
    """The checks of the image whose ``manifest`` is at ``tag`` (or digest) of ``repo``."""
    key = public_key(public_pem)
    digest = tag if tag.startswith("sha256:") else sha256_digest(manifest)
    platforms: tuple[str, ...] = ()
    doc = json.loads(manifest)
    if isinstance(doc, dict) and doc.get("mediaType") in INDEX_TYPES:
        platforms = tuple(str(m.get("digest")) for m in doc.get("manifests") or [])
    files: dict[str, dict[str, str]] = {}
    findings = [
        _check_signature(repo, key, digest),
        _check_provenance(repo, key, digest, labels, files),
    ]
    if not tag.startswith("sha256:") and not naming.is_shortened(tag):
        findings.append(_check_tag(tag, labels))
    return Report(text, digest, tuple(findings), platforms, files)


def _artifact(repo: Repository, ref: str) -> dict[str, Any] | None:
    found = repo.manifest(ref)
    if found is None:
        return None
    doc = json.loads(found[0])
    if not isinstance(doc, dict) or found[1] in INDEX_TYPES:
        raise ValueError(f"{ref} is not an image manifest")
    return doc


def _check_signature(repo: Repository, key: Any, digest: str) -> Finding:
    name = "signature"
    tag = signature_tag(digest)
    try:
        doc = _artifact(repo, tag)
        if doc is None:
            return Finding(name, False, f"none ({tag} is absent)")
        others = []
        for layer in doc.get("layers") or []:
            if layer.get("mediaType") != MT_SIMPLE_SIGNING:
                continue
            payload = repo.blob(str(layer["digest"]))
            signature = base64.b64decode(layer["annotations"][SIGNATURE_ANNOTATION], validate=True)
            named = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
            if named != digest:
                others.append(f"a payload names {named}")
            elif _verifies(key, signature, payload):
                return Finding(name, True, f"{digest} signed by the key")
            else:
                others.append("a signature the key does not verify")
        return Finding(name, False, "; ".join(others) or f"{tag} holds no simple-signing payload")
    except Hf2ociError as e:
        if getattr(e, "temporary", False):
            raise  # the registry failing is not a finding about the image
        return Finding(name, False, f"{tag} is malformed ({e})")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        return Finding(name, False, f"{tag} is malformed ({e})")


def _check_provenance(
    repo: Repository,
    key: Any,
    digest: str,
    labels: dict[str, str],
    files: dict[str, dict[str, str]],
) -> Finding:
    """``files`` gets the verified provenance's file list."""
    name = "provenance"
    tag = attestation_tag(digest)
    try:
        doc = _artifact(repo, tag)
        if doc is None:
            return Finding(name, False, f"none ({tag} is absent)")
        problems = []
        for layer in doc.get("layers") or []:
            if layer.get("mediaType") != MT_DSSE:
                continue
            envelope = json.loads(repo.blob(str(layer["digest"])))
            body = base64.b64decode(envelope["payload"], validate=True)
            signed = any(
                _verifies(key, base64.b64decode(s["sig"]), pae(envelope["payloadType"], body))
                for s in envelope["signatures"]
            )
            if not signed:
                problems.append("an attestation the key does not verify")
                continue
            statement = json.loads(body)
            subjects = {f"sha256:{s['digest']['sha256']}" for s in statement["subject"]}
            build = statement["predicate"]["buildDefinition"]
            commit = build["resolvedDependencies"][0]["digest"].get("gitCommit")
            repo_id = build["externalParameters"]["repo_id"]
            if digest not in subjects:
                problems.append("a provenance for another image")
            elif commit != labels.get(L.REVISION):
                problems.append(f"a provenance of commit {commit}, the image says "
                                f"{labels.get(L.REVISION)}")  # fmt: skip
            elif repo_id != labels.get(L.REPO_ID):
                problems.append(
                    f"a provenance of {repo_id}, the image says {labels.get(L.REPO_ID)}"
                )
            else:
                # the hub's files, as packed unless a prepare hook reshaped them
                if not build["externalParameters"].get("prepare_hook"):
                    for dep in build["resolvedDependencies"][1:]:
                        digest_of = dep["digest"].items()
                        files[str(dep["name"])] = {str(k): str(v) for k, v in digest_of}
                return Finding(name, True, f"{repo_id}@{commit} by the key")
        return Finding(name, False, "; ".join(problems) or f"{tag} holds no DSSE envelope")
    except Hf2ociError as e:
        if getattr(e, "temporary", False):
            raise
        return Finding(name, False, f"{tag} is malformed ({e})")
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as e:
        return Finding(name, False, f"{tag} is malformed ({e})")


def _check_tag(tag: str, labels: dict[str, str]) -> Finding:
    """The tag names a repo (``org--name``, or with ``--<commit>``): the image must hold it."""
    held = labels.get(L.REPO_ID, "")
    try:
        named = naming.repo_id_from_tag(tag)
    except Hf2ociError:
        return Finding("tag", True, f"{tag} names no repo; the image holds {held}")
    commit = labels.get(L.REVISION, "")
    if named != held:
        return Finding("tag", False, f"{tag} names {named}, the image holds {held}")
    pinned = tag[len(naming.repo_tag(held)) + 2 :] if tag != naming.repo_tag(held) else ""
    if pinned and not commit.startswith(pinned):
        return Finding("tag", False, f"{tag} pins commit {pinned}, the image holds {commit}")
    return Finding("tag", True, f"{tag} holds {held}@{commit[:12]}")


def model_signature(text: str, *, plain_http: bool | None = None) -> bytes | None:
    """The OpenSSF model signature (a Sigstore bundle) that refers to the image ``text`` names,
    from the referrers tag ``sha256-<hex>``; None when there is none."""
    repo, tag = _repo(text, plain_http)
    top = repo.manifest(tag)
    if top is None:
        raise UsageError(f"{text}: no such image")
    digest = tag if tag.startswith("sha256:") else sha256_digest(top[0])
    index = _artifact_index(repo, referrers_tag(digest))
    for entry in index:
        if entry.get("artifactType") != MT_BUNDLE:
            continue
        found = repo.manifest(str(entry["digest"]))
        if found is None:
            continue
        doc = json.loads(found[0])
        if (doc.get("subject") or {}).get("digest") != digest:
            continue
        for layer in doc.get("layers") or []:
            if layer.get("mediaType") == MT_BUNDLE:
                return repo.blob(str(layer["digest"]))
    return None


def _artifact_index(repo: Repository, tag: str) -> list[dict[str, Any]]:
    found = repo.manifest(tag)
    if found is None:
        return []
    doc = json.loads(found[0])
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    return [e for e in entries or [] if isinstance(e, dict)]
