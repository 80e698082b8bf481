"""Where a registry's credentials come from: ``HF2OCI_REGISTRY_USERNAME``/``_PASSWORD``, else
docker's ``config.json`` (``docker login``). The password is never shown (``repr``)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hf2oci.errors import AuthError
from hf2oci.reference import normalise_registry

log = logging.getLogger(__name__)

ENV_USERNAME = "HF2OCI_REGISTRY_USERNAME"
ENV_PASSWORD = "HF2OCI_REGISTRY_PASSWORD"
LOGIN_HINT = f"set {ENV_USERNAME}/PASSWORD or docker login"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def load_credentials(
    registry: str,
    *,
    env: Mapping[str, str] = os.environ,
    docker_config: Path | None = None,
) -> Credentials | None:
    """Credentials for ``registry``: the HF2OCI_REGISTRY_* variables, else docker's config.json."""
    username, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if username and password:
        return Credentials(username, password)
    if docker_config is None:
        config_dir = env.get("DOCKER_CONFIG")
        docker_config = (
            Path(config_dir) if config_dir else Path.home() / ".docker"
        ) / "config.json"
    if not docker_config.is_file():
        return None
    try:
        doc = json.loads(docker_config.read_text())
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read docker config {docker_config}: {e}") from e
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = normalise_registry(registry)
    for key, entry in auths.items():
        if _auth_key_host(key) != wanted or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError) as e:
                raise AuthError(f"docker config {docker_config}: bad 'auth' for {key}") from e
            if sep:
                return Credentials(user, secret)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
    log.debug("no credentials for %s in %s", registry, docker_config)
    return None


def _auth_key_host(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``https://host/`` → ``host``."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return normalise_registry(host)
