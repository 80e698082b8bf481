"""The ``docker`` builder: renders Dockerfile.j2, builds and pushes with the docker SDK."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from hf2oci.builders import BuildRequest, Destination, Published
from hf2oci.builders.oci import load_base, registry_labels
from hf2oci.errors import BuilderError
from hf2oci.oci.image import BaseImage
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.transport import load_credentials
from hf2oci.pack import DEFAULT_SMALL_FILE_LIMIT, LABEL_REPO_ID, REPO_DIR
from hf2oci.render import render
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)


class DockerBuilder:
    name = "docker"
    can_stream = False
    small_file_limit = DEFAULT_SMALL_FILE_LIMIT

    def __init__(self, *, destination: Destination, base_image: str) -> None:
        self.destination = destination
        self.base_image = base_image or "scratch"
        try:
            self._docker = docker.from_env()
            self._docker.ping()
        except docker.errors.DockerException as e:
            raise BuilderError(f"--builder docker needs a running Docker engine: {e}") from e
        self._client = (
            RegistryClient(destination.registry, plain_http=destination.plain_http)
            if destination.registry
            else None
        )
        self._base: BaseImage | None = None

    def base(self) -> BaseImage:
        """Resolved like the oci builder's, so both builders write the same labels."""
        if self._base is None:
            self._base = load_base(
                self.base_image, destination=self.destination, client=self._client
            )
        return self._base

    def current_labels(self, repo_type: RepoType, tag: str) -> Mapping[str, str] | None:
        repo = self.destination.repository(repo_type)
        if self._client is not None:
            return registry_labels(self._client, repo, tag)
        try:
            image = self._docker.images.get(f"{repo}:{tag}")
        except docker.errors.ImageNotFound:
            return None
        return dict(image.labels or {})

    def publish(self, request: BuildRequest) -> Published:
        repo = self.destination.repository(request.repo_type)
        name = f"{self.destination.registry}/{repo}" if self.destination.registry else repo
        with tempfile.TemporaryDirectory(prefix="hf2oci-docker-") as tmp:
            context = Path(tmp)
            _stage(request, context / REPO_DIR)
            (context / "Dockerfile").write_text(
                render(
                    "Dockerfile.j2",
                    repo_id=request.labels.get(LABEL_REPO_ID, ""),
                    repo_type=request.repo_type,
                    base_image=self.base_image,
                    labels=request.labels,
                )
            )
            image_id = self._build(context)
        image = self._docker.images.get(image_id)
        for tag in request.tags:
            image.tag(name, tag=tag)
        digest = image_id
        if self.destination.registry:
            for tag in request.tags:  # the moving tag comes last
                digest = self._push(name, tag)
        return Published(digest=digest, image=name, tags=tuple(request.tags))

    def _build(self, context: Path) -> str:
        image_id = None
        try:
            stream = self._docker.api.build(
                path=str(context), rm=True, forcerm=True, network_mode="none", decode=True
            )
            for chunk in stream:
                if "error" in chunk:
                    raise BuilderError(f"docker build failed: {_one_line(chunk['error'])}")
                aux = chunk.get("aux") or {}
                image_id = aux.get("ID", image_id)
                if chunk.get("stream"):
                    log.debug("docker build: %s", chunk["stream"].rstrip())
        except docker.errors.APIError as e:
            raise BuilderError(f"docker build failed: {_one_line(str(e.explanation or e))}") from e
        if not image_id:
            raise BuilderError("docker build finished without an image id")
        return str(image_id)

    def _push(self, name: str, tag: str) -> str:
        creds = load_credentials(self.destination.registry or "")
        auth = {"username": creds.username, "password": creds.password} if creds else None
        digest = ""
        try:
            for chunk in self._docker.api.push(
                name, tag=tag, auth_config=auth, stream=True, decode=True
            ):
                if "error" in chunk:
                    raise BuilderError(
                        f"docker push {name}:{tag} failed: {_one_line(chunk['error'])}"
                    )
                digest = (chunk.get("aux") or {}).get("Digest", digest)
        except docker.errors.APIError as e:
            raise BuilderError(f"docker push {name}:{tag} failed: {_one_line(str(e))}") from e
        return digest


def _stage(request: BuildRequest, dest: Path) -> None:
    """Lay the files out as the build context: hard links where possible, copies otherwise."""
    for path in request.files.paths:
        src = request.files.source(path)
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)


def _one_line(text: Any) -> str:
    lines: Iterable[str] = str(text).strip().splitlines() or [""]
    return next(iter(lines))
