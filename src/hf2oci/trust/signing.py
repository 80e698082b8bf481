"""Signatures beside what is published, in cosign's formats: the image signature (a
simple-signing payload naming the manifest digest, ECDSA P-256 over it, stored as the
``sha256-<hex>.sig`` tag of the same repository) and the provenance attestation (an in-toto
statement with a SLSA provenance predicate in a DSSE envelope, the ``sha256-<hex>.att`` tag).

The key comes from ``HF2OCI_SIGNING_KEY`` (a PEM private key, or the path of one;
``HF2OCI_SIGNING_KEY_PASSWORD`` decrypts it), never from config, and reaches no log, label or
record. Signatures live beside the image, never in it: image digests stay reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf2oci import __version__
from hf2oci.digest import sha256_digest
from hf2oci.errors import UsageError
from hf2oci.naming import hub_path
from hf2oci.oci.blobs import BytesLayer
from hf2oci.oci.image import (
    MT_CONFIG,
    MT_INDEX,
    MT_MANIFEST,
    Descriptor,
    Image,
    ImageIndex,
    canonical_json,
)

KEY_ENV = "HF2OCI_SIGNING_KEY"
PASSWORD_ENV = "HF2OCI_SIGNING_KEY_PASSWORD"

#: cosign's media types and annotations (its signature spec)
MT_SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
MT_DSSE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/hgfkeep/hf2oci/mirror/v1"


class SigningKeyError(UsageError):
    """The signing key cannot be used (unreadable, encrypted without its password, not P-256)."""


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA P-256 private key (cosign's key type) and its public half."""

    _private: Any

    @property
    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def keyid(self) -> str:
        """sha256 of the public key's DER, as hex: names the key in DSSE signatures."""
        from cryptography.hazmat.primitives import serialization

        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()

    def sign(self, data: bytes) -> bytes:
        """The DER-encoded ECDSA signature of sha256(``data``) (what ``openssl dgst -sha256
        -verify`` and cosign check)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return bytes(self._private.sign(data, ec.ECDSA(hashes.SHA256())))

    def __repr__(self) -> str:  # never the key itself
        return f"SigningKey(keyid={self.keyid[:12]})"


def load_signing_key(environ: Mapping[str, str] | None = None) -> SigningKey | None:
    """The key ``HF2OCI_SIGNING_KEY`` names (None when unset). SigningKeyError in one line,
    naming the variable and never the key, when it cannot be used."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "").strip()
    if not value:
        return None
    if "-----BEGIN" in value:
        pem, where = value.encode(), KEY_ENV
    else:
        try:
            pem = Path(value).expanduser().read_bytes()
        except OSError as e:
            raise SigningKeyError(f"{KEY_ENV}: cannot read {value} ({e.strerror})") from e
        where = f"{KEY_ENV} ({value})"
    if b"ENCRYPTED COSIGN PRIVATE KEY" in pem:
        raise SigningKeyError(
            f"{where}: a cosign-encrypted key; export it as PKCS#8 PEM (cosign import-key-pair "
            "reads PEM too, or openssl pkcs8)"
        )
    password = env.get(PASSWORD_ENV)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(
            pem, password=password.encode() if password else None
        )
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        need = "needs" if not password else "takes no"
        raise SigningKeyError(f"{where}: the key {need} {PASSWORD_ENV}") from e
    except ValueError as e:
        raise SigningKeyError(
            f"{where}: not a PEM private key, or {PASSWORD_ENV} does not open it"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        kind = type(key).__name__.replace("_", "")
        raise SigningKeyError(f"{where}: an ECDSA P-256 key is needed (cosign's kind), not {kind}")
    return SigningKey(key)


def signature_tag(digest: str) -> str:
    """``sha256-<hex>.sig``: where cosign finds the signatures of ``digest``."""
    return digest.replace(":", "-") + ".sig"


def attestation_tag(digest: str) -> str:
    """``sha256-<hex>.att``: where cosign finds the attestations of ``digest``."""
    return digest.replace(":", "-") + ".att"


def simple_signing_payload(reference: str, digest: str) -> bytes:
    """The payload cosign signs for an image: its repository and manifest digest."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _artifact(blob: bytes, media_type: str, annotations: Mapping[str, str]) -> Image:
    """A one-layer manifest holding ``blob``, shaped as cosign writes its ``.sig``/``.att``."""
    layer = BytesLayer(blob, media_type)
    config = canonical_json(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG,
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [
                {
                    "mediaType": media_type,
                    "size": len(blob),
                    "digest": layer.digest,
                    "annotations": dict(annotations),
                }
            ],
        }
    )
    return Image([layer], config, manifest, name="signature")


def signature_artifact(key: SigningKey, reference: str, digest: str) -> Image:
    """The ``.sig`` manifest of ``digest``: the payload as its layer, the signature (base64
    DER) in the layer's annotation."""
    payload = simple_signing_payload(reference, digest)
    sig = base64.b64encode(key.sign(payload)).decode()
    return _artifact(payload, MT_SIMPLE_SIGNING, {SIGNATURE_ANNOTATION: sig})


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def dsse_envelope(key: SigningKey, statement: Mapping[str, Any]) -> bytes:
    body = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    sig = key.sign(pae(IN_TOTO_PAYLOAD, body))
    envelope = {
        "payloadType": IN_TOTO_PAYLOAD,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(sig).decode()}],
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def attestation_artifact(key: SigningKey, statement: Mapping[str, Any]) -> Image:
    """The ``.att`` manifest: the DSSE envelope as its layer, named by its predicate type."""
    predicate = str(statement.get("predicateType", ""))
    return _artifact(dsse_envelope(key, statement), MT_DSSE, {PREDICATE_ANNOTATION: predicate})


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    sha256: str | None
    git_sha1: str | None


def provenance(
    *,
    subjects: Sequence[tuple[str, str]],
    hub: str,
    repo_id: str,
    repo_type: str,
    commit: str,
    requested: str,
    files: Sequence[SourceFile],
    selection: Mapping[str, Any],
    scan: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An in-toto statement with a SLSA v1 provenance predicate: the images (``subjects``:
    name and digest) were made from the hub commit's ``files`` with this selection. On GitHub
    Actions the run is named (repository, workflow, run id); no secret is read."""
    env = os.environ if environ is None else environ
    dependencies: list[dict[str, Any]] = [
        {
            "uri": f"{hub.rstrip('/')}/{_hub_path(repo_id, repo_type)}",
            "digest": {"gitCommit": commit},
        }
    ]
    for f in files:
        digest = {"sha256": f.sha256} if f.sha256 else {"gitBlob": f.git_sha1 or ""}
        dependencies.append({"name": f.path, "digest": digest, "annotations": {"size": f.size}})
    builder = "https://github.com/hgfkeep/hf2oci"
    metadata: dict[str, Any] = {}
    if env.get("GITHUB_ACTIONS") == "true":
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repo, run = env.get("GITHUB_REPOSITORY", ""), env.get("GITHUB_RUN_ID", "")
        builder = f"{server}/{env.get('GITHUB_WORKFLOW_REF', repo)}"
        metadata["invocationId"] = f"{server}/{repo}/actions/runs/{run}"
        metadata["github"] = {
            "repository": repo,
            "workflow": env.get("GITHUB_WORKFLOW", ""),
            "run_id": run,
            "run_attempt": env.get("GITHUB_RUN_ATTEMPT", ""),
            "sha": env.get("GITHUB_SHA", ""),
        }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d.split(":", 1)[1]}} for n, d in subjects],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "hub": hub,
                    "repo_id": repo_id,
                    "repo_type": repo_type,
                    "revision": requested,
                    **selection,
                },
                "internalParameters": {"hf2oci_version": __version__, "scan": scan},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": builder}, "metadata": metadata},
        },
    }


def _hub_path(repo_id: str, repo_type: str) -> str:
    return hub_path(repo_id, "dataset" if repo_type == "dataset" else "model")


# -- the OpenSSF model signature, attached as an OCI referrer ---------------------------------

MT_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
MODEL_SIGNING_PREDICATE = "https://model_signing/signature/v1.0"
#: what model_signing leaves out of a model folder by default (its ``ignore_paths``)
MODEL_SIGNING_IGNORED = (".gitignore", ".gitattributes", ".github", ".git")


def _ignored(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MODEL_SIGNING_IGNORED)


def model_signature(key: SigningKey, name: str, files: Mapping[str, str]) -> bytes:
    """A Sigstore bundle in ``model_signing``'s key mode over ``files`` (path → sha256 hex, the
    digests computed while streaming: no second read), as ``model_signing sign key`` writes it,
    so that ``model_signing verify key`` checks a folder holding those files."""
    resources = [
        {"name": path, "algorithm": "sha256", "digest": digest}
        for path, digest in sorted(files.items())
        if not _ignored(path)
    ]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": MODEL_SIGNING_PREDICATE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(MODEL_SIGNING_IGNORED),
            },
            "resources": resources,
        },
    }
    body = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    sig = key.sign(pae(IN_TOTO_PAYLOAD, body))
    bundle = {
        "mediaType": MT_BUNDLE,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(key.public_pem).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(body).decode(),
            "payloadType": IN_TOTO_PAYLOAD,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2, sort_keys=True).encode()


def referrer(blob: bytes, media_type: str, subject: Descriptor) -> Image:
    """An OCI 1.1 artifact manifest (``artifactType``, the empty config, ``subject``) holding
    ``blob``: it refers to the image ``subject`` describes."""
    empty = b"{}"
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": media_type,
            "config": {"mediaType": MT_EMPTY, "digest": sha256_digest(empty), "size": len(empty)},
            "layers": [{"mediaType": media_type, "digest": sha256_digest(blob), "size": len(blob)}],
            "subject": subject.to_json(),
        }
    )
    return Image([BytesLayer(blob, media_type)], empty, manifest, name="referrer")


def referrers_tag(digest: str) -> str:
    """``sha256-<hex>``: the referrers tag schema's tag (OCI distribution 1.1) for registries
    without the referrers API, such as distribution 2.8."""
    return digest.replace(":", "-")


class ReferrersIndex(ImageIndex):
    """The index the referrers tag schema keeps at ``sha256-<hex>``: each referrer's descriptor
    with its ``artifactType``."""

    @property
    def manifest(self) -> bytes:
        if self._manifest is None:
            entries = []
            for image in self.images:
                doc = image.manifest_doc
                entry = image.manifest_descriptor.to_json()
                entry["artifactType"] = doc.get("artifactType", "")
                entries.append(entry)
            self._manifest = canonical_json(
                {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}
            )
        return self._manifest
