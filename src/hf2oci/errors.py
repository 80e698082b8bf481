"""The exception tree. ``str(exc)`` is always a one-line message fit for users."""

from __future__ import annotations


class Hf2ociError(Exception):
    """Base of every error hf2oci raises on purpose; the CLI prints ``str(exc)``."""

    #: exit status the CLI uses when this error stops the whole command
    exit_code = 1


class Temporary(Hf2ociError):
    """A failure worth another try (a cut connection, 429, 5xx), with the server's Retry-After
    in seconds when it gave one. The retry policy tries again; what escapes it is wrapped into
    the error of its stage."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UsageError(Hf2ociError):
    """Bad configuration or arguments: nothing can run."""

    exit_code = 2


class ConfigError(UsageError):
    """``get_hf/config.yaml`` or a command-line option is invalid."""


class InvalidRepoId(Hf2ociError):
    """A repo id that the hub would refuse."""


class InvalidReference(Hf2ociError):
    """An image reference that cannot be parsed."""


class ListError(Hf2ociError):
    """A bad line in a list file; the message starts with ``path:line:``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.reason = message


class HubError(Hf2ociError):
    """The hub refused or failed a request."""


class RepoNotFound(HubError):
    pass


class RevisionNotFound(HubError):
    pass


class GatedRepo(HubError):
    pass


class HubUnreachable(HubError):
    pass


class PresetError(Hf2ociError):
    """An unknown preset, or a preset that selects no file of a repo."""


class PrepareError(Hf2ociError):
    """``get_hf/prepare.sh`` failed for a repo."""


class ScanRefused(Hf2ociError):
    """A pickle-based file imports something that runs code on load (scan: refuse)."""


class PackError(Hf2ociError):
    """The files could not be turned into an image."""


class DigestMismatch(PackError):
    """Bytes did not hash to what the hub or registry promised."""


class RegistryError(Hf2ociError):
    """The registry refused or failed a request.

    ``temporary`` tells the retry policy whether trying again may help.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str | None = None,
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.temporary = temporary


class AuthError(RegistryError):
    """Credentials are missing or refused."""


class BaseImageError(Hf2ociError):
    """The base image cannot be had: nothing can be built this run."""


class ExtractError(Hf2ociError):
    """An image cannot be extracted safely (hostile or broken content), or DEST not written."""


class BuilderError(Hf2ociError):
    """The docker builder (engine) failed."""


class RecordError(Hf2ociError):
    """The records could not be read, written or committed."""


class BundleError(Hf2ociError):
    """A bundle that is damaged, incomplete or hostile, or that the registry cannot take: nothing
    of it is published."""


class ServeError(Hf2ociError):
    """A request ``serve`` answers as the hub would refuse it: ``status`` and ``code`` (its
    ``X-Error-Code``), with the commit for a miss the client may cache."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        commit: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.commit = status, code, commit
        self.retry_after = retry_after
