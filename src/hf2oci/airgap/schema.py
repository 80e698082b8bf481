"""The two documents that cross the gap: the inventory (inside → outside: what the inside holds)
and ``bundle.json`` (outside → inside: what a bundle carries and what it expects the inside to
hold already). Both are checked against a JSON schema when read: they come from another network."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from hf2oci.errors import BundleError, Hf2ociError, UsageError

INVENTORY_KIND = "hf2oci-inventory"
BUNDLE_KIND = "hf2oci-bundle"
BUNDLE_FILE = "bundle.json"
CHECKSUMS_FILE = "checksums.sha256"
#: bigger than this is no document hf2oci wrote
MAX_DOCUMENT = 64 << 20

_DIGEST = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# the distribution spec's repository name and tag grammars
_REPOSITORY = {
    "type": "string",
    "maxLength": 255,
    "pattern": "^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$",
}
_TAG = {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"}
_SIZE = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string", "maxLength": 1024}
_VOLUME = {"type": "string", "maxLength": 255, "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"}

INVENTORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "version", "registry", "namespace", "repositories"],
    "properties": {
        "kind": {"const": INVENTORY_KIND},
        "version": {"const": 1},
        "registry": _TEXT,
        "namespace": _REPOSITORY,
        "created": _TEXT,
        "repositories": {
            "type": "object",
            "propertyNames": _REPOSITORY,
            "additionalProperties": {
                "type": "object",
                "required": ["tags", "blobs"],
                "properties": {
                    "tags": {
                        "type": "object",
                        "propertyNames": _TAG,
                        "additionalProperties": {
                            "type": "object",
                            "required": ["digest"],
                            "properties": {"digest": _DIGEST, "revision": _TEXT},
                        },
                    },
                    "blobs": {"type": "array", "items": _HEX},
                },
            },
        },
    },
}

_REF = {
    "type": "object",
    "required": ["repository", "tag", "digest", "mediaType", "size"],
    "properties": {
        "repository": _REPOSITORY,
        "tag": _TAG,
        "digest": _DIGEST,
        "mediaType": _TEXT,
        "size": _SIZE,
    },
}
BUNDLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "version", "namespace", "refs", "manifests", "needs", "blobs", "expects"],
    "properties": {
        "kind": {"const": BUNDLE_KIND},
        "version": {"const": 1},
        "namespace": _REPOSITORY,
        "source": _TEXT,
        "created": _TEXT,
        "repos": {"type": "array"},
        "refs": {"type": "array", "items": _REF},
        "manifests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["repository", "digest", "mediaType"],
                "properties": {"repository": _REPOSITORY, "digest": _DIGEST, "mediaType": _TEXT},
            },
        },
        "needs": {
            "type": "object",
            "propertyNames": _REPOSITORY,
            "additionalProperties": {"type": "array", "items": _DIGEST},
        },
        "blobs": {
            "type": "object",
            "propertyNames": _DIGEST,
            "additionalProperties": _SIZE,
        },
        "expects": {
            "type": "object",
            "propertyNames": _DIGEST,
            "additionalProperties": {
                "type": "object",
                "required": ["repository"],
                "properties": {"repository": _REPOSITORY, "size": _SIZE},
            },
        },
        "volumes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "size"],
                "properties": {"name": _VOLUME, "size": _SIZE},
            },
        },
    },
}


def _checked(
    data: bytes, schema: dict[str, Any], where: str, error: type[Hf2ociError] = UsageError
) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT:
        raise error(f"{where}: over {MAX_DOCUMENT >> 20} MiB, not a document hf2oci wrote")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{where}: not JSON ({e})") from e
    found = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(doc)
    )
    if found is not None:
        at = "/".join(str(p) for p in found.absolute_path) or "the top"
        raise error(f"{where}: at {at}: {found.message[:200]}")
    assert isinstance(doc, dict)
    return doc


def dump(doc: Mapping[str, Any]) -> bytes:
    """Compact, sorted JSON: the same document gives the same bytes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Held:
    """A tag the inside holds."""

    digest: str
    revision: str = ""


@dataclass
class Inventory:
    """What a registry holds for hf2oci under a namespace: every image tag and every blob."""

    registry: str
    namespace: str
    created: str = ""
    tags: dict[str, dict[str, Held]] = field(default_factory=dict)
    blobs: dict[str, set[str]] = field(default_factory=dict)

    def holder(self, digest: str) -> str | None:
        """A repository that holds the blob ``digest``, None when none does."""
        for repository, held in self.blobs.items():
            if digest in held:
                return repository
        return None

    def to_json(self) -> bytes:
        repos: dict[str, Any] = {}
        for repository in sorted(set(self.tags) | set(self.blobs)):
            tags = {
                t: {"digest": h.digest, **({"revision": h.revision} if h.revision else {})}
                for t, h in sorted(self.tags.get(repository, {}).items())
            }
            blobs = sorted(d.partition(":")[2] for d in self.blobs.get(repository, ()))
            repos[repository] = {"tags": tags, "blobs": blobs}
        return dump({
            "kind": INVENTORY_KIND, "version": 1, "registry": self.registry,
            "namespace": self.namespace, "created": self.created, "repositories": repos,
        })  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Inventory:
        doc = _checked(data, INVENTORY_SCHEMA, where)
        inventory = cls(str(doc["registry"]), str(doc["namespace"]), str(doc.get("created", "")))
        for repository, held in doc["repositories"].items():
            inventory.tags[repository] = {
                t: Held(v["digest"], v.get("revision", "")) for t, v in held["tags"].items()
            }
            inventory.blobs[repository] = {"sha256:" + h for h in held["blobs"]}
        return inventory

    @classmethod
    def read(cls, path: Path) -> Inventory:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"{path}: cannot read the inventory ({e.strerror})") from e
        return cls.from_json(data, str(path))


@dataclass(frozen=True)
class Ref:
    """A tag the bundle writes: an image's, or an attachment's (signature, attestation)."""

    repository: str
    tag: str
    digest: str
    media_type: str
    size: int

    @property
    def attachment(self) -> bool:
        return self.tag.startswith("sha256-")

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tag": self.tag, "digest": self.digest,
                "mediaType": self.media_type, "size": self.size}  # fmt: skip


@dataclass(frozen=True)
class ManifestEntry:
    repository: str
    digest: str
    media_type: str


@dataclass
class BundleInfo:
    """What ``bundle.json`` says: the tags to write (``refs``, attachments first), the manifests
    (children first), the config and layer blobs each repository needs, the blobs carried (with
    sizes), the blobs expected inside already (and a repository there holding each), volumes."""

    namespace: str
    refs: list[Ref]
    manifests: list[ManifestEntry]
    needs: dict[str, list[str]]
    blobs: dict[str, int]
    expects: dict[str, str]
    repos: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[tuple[str, int]] = field(default_factory=list)
    source: str = ""
    created: str = ""

    def to_json(self) -> bytes:
        return dump({
            "kind": BUNDLE_KIND, "version": 1, "namespace": self.namespace,
            "source": self.source, "created": self.created, "repos": self.repos,
            "refs": [r.to_json() for r in self.refs],
            "manifests": [{"repository": m.repository, "digest": m.digest,
                           "mediaType": m.media_type} for m in self.manifests],
            "needs": self.needs, "blobs": self.blobs,
            "expects": {d: {"repository": r} for d, r in sorted(self.expects.items())},
            **({"volumes": [{"name": n, "size": s} for n, s in self.volumes]}
               if self.volumes else {}),
        })  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes, where: str) -> BundleInfo:
        doc = _checked(data, BUNDLE_SCHEMA, where, BundleError)
        info = cls(
            namespace=doc["namespace"],
            refs=[Ref(r["repository"], r["tag"], r["digest"], r["mediaType"], r["size"])
                  for r in doc["refs"]],
            manifests=[ManifestEntry(m["repository"], m["digest"], m["mediaType"])
                       for m in doc["manifests"]],
            needs={k: list(v) for k, v in doc["needs"].items()},
            blobs=dict(doc["blobs"]),
            expects={d: e["repository"] for d, e in doc["expects"].items()},
            repos=list(doc.get("repos") or []),
            volumes=[(v["name"], v["size"]) for v in doc.get("volumes") or []],
            source=str(doc.get("source", "")),
            created=str(doc.get("created", "")),
        )  # fmt: skip
        for repository in [r.repository for r in info.refs] + list(info.needs):
            if not repository.startswith(info.namespace + "/"):
                raise BundleError(
                    f"{where}: {repository} is outside the namespace {info.namespace}"
                )
        manifests = {m.digest for m in info.manifests}
        for ref in info.refs:
            if ref.digest not in manifests or ref.digest not in info.blobs:
                raise BundleError(f"{where}: {ref.repository}:{ref.tag} names a manifest it lacks")
        for needed in info.needs.values():
            for digest in needed:
                if digest not in info.blobs and digest not in info.expects:
                    raise BundleError(f"{where}: {digest} is neither carried nor expected")
        return info
