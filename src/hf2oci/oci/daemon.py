"""The Docker engine as a sink: load one Image (``docker load`` of a docker-archive, streamed:
nothing is written to disk on the way), or pull what was pushed to a registry."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from hf2oci.errors import BuilderError, DigestMismatch
from hf2oci.oci.blobs import StreamLayer
from hf2oci.oci.image import Image

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def docker_client() -> Any:
    """A connected docker SDK client, or a one-line BuilderError."""
    import docker  # the docker SDK is needed only here
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise BuilderError(f"--builder docker needs a running Docker engine: {_one_line(e)}") from e
    return client


def load(client: Any, image: Image, names: Sequence[str]) -> None:
    """Load ``image`` into the engine tagged ``names`` (``repo:tag`` each)."""
    import docker.errors

    try:
        for chunk in client.api.load_image(_archive(image, names), quiet=True):
            if "error" in chunk:
                raise BuilderError(f"docker load failed: {_one_line(chunk['error'])}")
            log.debug("docker load: %s", chunk)
    except docker.errors.APIError as e:
        raise BuilderError(f"docker load failed: {_one_line(e.explanation or e)}") from e
    log.info("loaded %s into the engine as %s", image.digest, ", ".join(names))


def pull(client: Any, name: str, tags: Sequence[str], *, auth: dict[str, str] | None) -> None:
    """``docker pull name:tag`` for each tag: the engine takes its own platform of an index."""
    import docker.errors

    for tag in tags:
        try:
            for chunk in client.api.pull(name, tag=tag, auth_config=auth, stream=True, decode=True):
                if "error" in chunk:
                    raise BuilderError(
                        f"docker pull {name}:{tag} failed: {_one_line(chunk['error'])}"
                    )
                log.debug("docker pull: %s", chunk)
        except docker.errors.APIError as e:
            raise BuilderError(f"docker pull {name}:{tag} failed: {_one_line(e)}") from e


def labels(client: Any, name: str) -> dict[str, str] | None:
    """The labels of the engine's image ``name`` (``repo:tag``); None when it has none such."""
    import docker.errors

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise BuilderError(f"docker image inspect {name} failed: {_one_line(e)}") from e
    return dict(image.labels or {})


def _archive(image: Image, names: Sequence[str]) -> Iterator[bytes]:
    """A docker-archive tar of ``image``, made in a thread while the engine reads it."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
                files = []
                for i, layer in enumerate(image.layers):
                    name = f"layer-{i}.tar"
                    with layer.open() as stream:
                        _add(tar, name, layer.size, stream)
                    if isinstance(layer, StreamLayer) and not layer.consumed:
                        raise DigestMismatch(f"{layer!r} was not read to its end")
                    files.append(name)
                # the config names every layer's digest: made once all were read
                _add(tar, "config.json", len(image.config), io.BytesIO(image.config))
                manifest = [{"Config": "config.json", "RepoTags": list(names), "Layers": files}]
                data = json.dumps(manifest).encode()
                _add(tar, "manifest.json", len(data), io.BytesIO(data))
        except BaseException as e:  # the engine sees a cut archive; the error is ours to raise
            failure.append(e)

    thread = threading.Thread(target=write, name="hf2oci-docker-archive", daemon=True)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb") as source:
            while chunk := source.read(_CHUNK):
                yield chunk
    finally:
        thread.join()
    if failure:
        raise failure[0]


def _add(tar: tarfile.TarFile, name: str, size: int, stream: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    tar.addfile(info, stream)


def _one_line(text: Any) -> str:
    lines = str(text).strip().splitlines() or [""]
    return lines[0]
