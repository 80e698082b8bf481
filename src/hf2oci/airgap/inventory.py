"""``inventory``: what the inside registry holds for hf2oci — every image tag (digest, revision)
and every config and layer blob, per repository. Attachments (signatures) are left out: a bundle
carries them whole with each image it carries."""

from __future__ import annotations

import datetime as dt

from hf2oci.airgap.content import Graph, image_tags, repositories, walk
from hf2oci.airgap.schema import Held, Inventory
from hf2oci.oci.stores import ImageStore


def take_inventory(source: ImageStore, registry: str, namespace: str) -> Inventory:
    """Read every image tag under ``namespace`` (one manifest GET each, and one per image of an
    index); no blob is read."""
    inventory = Inventory(registry, namespace, dt.datetime.now(dt.timezone.utc).isoformat())
    for repository in repositories(namespace):
        graph = Graph()
        tags: dict[str, Held] = {}
        for tagged in image_tags(source, repository):
            walk(source, repository, tagged.data, tagged.media_type, graph)
            tags[tagged.tag] = Held(tagged.digest, tagged.revision)
        if tags:
            inventory.tags[repository] = tags
            inventory.blobs[repository] = set(graph.blobs)
    return inventory
