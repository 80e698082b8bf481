"""The label schema: what an image says about the repo it holds (config labels and manifest
annotations). Plan, extract and serve read these; the formats write them (``build/describe``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol


class Labelled(Protocol):
    """An image at hand (``oci.image.Image``): its manifest's annotations, its config's labels."""

    @property
    def annotations(self) -> Mapping[str, str]: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


PREFIX = "io.huggingface"
REPO_ID = f"{PREFIX}.repo_id"
REPO_TYPE = f"{PREFIX}.repo_type"
#: the hub commit the image holds
REVISION = f"{PREFIX}.revision"
#: the revision asked for (a branch, a tag or a commit sha), as the hub cache's refs/ names it
REF = f"{PREFIX}.ref"
#: a short hash of the file selection (include/exclude/preset)
FILTER = f"{PREFIX}.filter"
DEFAULT_REF = "main"

SOURCE = "org.opencontainers.image.source"
OCI_REVISION = "org.opencontainers.image.revision"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
LICENSES = "org.opencontainers.image.licenses"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"

#: what was made, when not the default image ("modelpack"): a change re-mirrors
FORMAT = "io.hf2oci.format"
#: the platforms of a multi-platform image (its index), between commas: a change re-mirrors
PLATFORMS = "io.hf2oci.platforms"

#: what the pickle scan found (``clean (2 pickle files)``, ``warn: a.bin imports posix.system``,
#: ``off (…)``): only on images with pickle-based files
SCAN = "io.hf2oci.scan"
#: each scanned file's verdict, compact JSON: {"path": {"verdict": …, "imports": […], "hub": …}}
SCAN_FILES = "io.hf2oci.scan.files"

#: layer annotation: what the layer holds (paths and hub hashes), so a later run can reuse the
#: layer without downloading the files again (the tar is a pure function of them)
CONTENT_KEY = "io.hf2oci.content"
#: layer annotation: this layer holds the file index (its version)
FILE_INDEX = "io.hf2oci.file-index"
#: the files carried in parts (over the layer size limit), compact JSON:
#: {"path": {"sha256": …, "parts": ["path.part-001-of-003", …]}}; only on images that have any
PARTS = "io.hf2oci.parts"


def read(annotations: Mapping[str, str], config: Callable[[], Mapping[str, str]]) -> dict[str, str]:
    """What hf2oci wrote about an image: its manifest's annotations when they hold its labels
    (hf2oci writes them there too; a ModelPack artifact has nowhere else), else its config's
    labels (``config()``: an image the Docker engine pushed, whose manifest has none)."""
    return dict(annotations) if REVISION in annotations else dict(config())


def of_image(image: Labelled) -> dict[str, str]:
    """``read`` for an image at hand."""
    return read(image.annotations, lambda: image.labels)
