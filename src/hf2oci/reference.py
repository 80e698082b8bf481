"""Image references (``host/ns/name:tag@digest``), parsed and normalised once, like docker does."""

from __future__ import annotations

import platform as platform_module
import re
from dataclasses import dataclass, replace
from typing import Any

from hf2oci.errors import InvalidReference, UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "https://registry-1.docker.io"
#: names docker accepts for Docker Hub, all normalised to ``docker.io``
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# The one grammar for names, tags, digests and hosts (ASCII only, as the distribution spec says);
# naming, layouts and config.yaml import these.
#: a path component of a repository name
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
#: a tag: 1-128 ASCII letters, digits, '_', '.', '-', not starting with '.' or '-'
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
#: ``host[:port]`` (the port is group 1)
HOST = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::([0-9]{{1,5}}))?")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_local_host(host: str) -> bool:
    """Loopback hosts (with or without a port): reached over plain HTTP by default."""
    if host.startswith("["):
        name = host[1 : host.find("]")]
    elif host.count(":") > 1:  # a bare IPv6 address, no port
        name = host
    else:
        name = host.split(":", 1)[0]
    return name.lower() in _LOCAL_HOSTS or name.startswith("127.")


def normalise_registry(host: str) -> str:
    """``index.docker.io`` and friends → ``docker.io``; other hosts unchanged."""
    return DOCKER_HUB if host.lower() in _HUB_ALIASES else host


def api_base(registry: str, *, plain_http: bool | None = None) -> str:
    """Base URL of a registry's API: Docker Hub's real host, http:// for loopback by default."""
    registry = normalise_registry(registry)
    if registry == DOCKER_HUB:
        return DOCKER_HUB_API
    if plain_http is None:
        plain_http = is_local_host(registry)
    return f"{'http' if plain_http else 'https'}://{registry}"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; at least one of ``tag``/``digest`` is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What the manifests endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_base(self) -> str:
        return api_base(self.registry)

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (any digest dropped: it would win over the tag)."""
        _check(TAG, tag, "tag", tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        _check(DIGEST, digest, "digest", digest)
        return replace(self, digest=digest)


def validate_tag(tag: str) -> str:
    """``tag`` itself when docker would accept it as a tag, else InvalidReference."""
    if not TAG.fullmatch(tag):
        raise InvalidReference(f"invalid tag {tag!r}: 1-128 letters, digits, '_', '.', '-'")
    return tag


def parse_reference(text: str) -> Reference:
    """Parse ``[host[:port]/]path[:tag][@digest]`` the way docker does.

    No host → ``docker.io``; a one-component name on Docker Hub → ``library/NAME``; neither tag
    nor digest → tag ``latest``.
    """
    rest = text.strip()
    if not rest or any(c.isspace() for c in rest):
        raise InvalidReference(f"invalid image reference {text!r}: empty or contains spaces")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        _check(DIGEST, digest, "digest", text)
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check(TAG, tag, "tag", text)
    first, _, remainder = rest.partition("/")
    # like docker: the first component is a host when it looks like one (dot, port, localhost)
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if remainder and looks_like_host:
        registry, path = first, remainder
        if not HOST.fullmatch(registry):
            raise InvalidReference(f"invalid image reference {text!r}: bad registry {registry!r}")
        registry = normalise_registry(registry)
    else:
        registry, path = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not COMPONENT.fullmatch(component):
            raise InvalidReference(
                f"invalid image reference {text!r}: repository component {component!r} must be "
                "lowercase letters and digits separated by '.', '_' or '-'"
            )
    if len(path) > 255:
        raise InvalidReference(f"invalid image reference {text!r}: repository name too long")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def _check(pattern: re.Pattern[str], value: str, what: str, text: str) -> None:
    if not pattern.fullmatch(value):
        raise InvalidReference(f"invalid image reference {text!r}: bad {what} {value!r}")


_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``linux/amd64``, ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, doc: dict[str, Any]) -> bool:
        """Whether an index entry's ``platform`` object is this one (any variant when unset)."""
        return (
            doc.get("os") == self.os
            and doc.get("architecture") == self.architecture
            and (self.variant is None or doc.get("variant") in (None, self.variant))
        )


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` → Platform; UsageError for anything else."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(p and p.isascii() and p.isalnum() for p in parts):
        raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
    return Platform(*parts)


def host_platform() -> Platform:
    """This machine's platform in OCI names (``linux/amd64`` on x86-64)."""
    machine = platform_module.machine().lower()
    return Platform("linux", _ARCHES.get(machine, machine))
