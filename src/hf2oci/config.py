"""``get_hf/config.yaml`` → Config: where images go and how they are built; ``file:line`` errors."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hf2oci.errors import ConfigError, Hf2ociError
from hf2oci.reference import COMPONENT, HOST, parse_platform
from hf2oci.spec import FORMATS, SCAN_POLICIES, XET_MODES, Format, ScanPolicy, XetMode

Builder = Literal["oci", "docker"]
BUILDERS: tuple[Builder, ...] = ("oci", "docker")
MiB = 1024 * 1024

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 10**6,
    "mib": MiB,
    "gb": 10**9,
    "gib": 1024 * MiB,
    "tb": 10**12,
    "tib": 1024 * 1024 * MiB,
}
# key words that mean someone is about to commit a credential
_SECRET_WORDS = ("password", "passwd", "token", "secret", "credential", "api_key", "apikey")
_SECRET_KEYS = ("auth", "username", "user")


class _Invalid(ValueError):
    """Why one value is invalid (the caller adds where it came from)."""

    def __init__(self, reason: str, *, echo: bool = True) -> None:
        super().__init__(reason)
        #: False when the value may hold a credential and must not be repeated
        self.echo = echo


def _what(key: str, value: object, e: _Invalid) -> str:
    return f"invalid {key} {value!r}: {e}" if e.echo else f"invalid {key}: {e}"


@dataclass(frozen=True)
class Config:
    """Settings from config.yaml, then command-line flags. Validated on construction."""

    #: registry host ("ghcr.io", "127.0.0.1:5000"); None writes OCI layouts under output_dir
    registry: str | None = None
    namespace: str = "hgfkeep"
    base_image: str = "docker.io/library/busybox:latest"
    builder: Builder = "oci"
    #: HTTP instead of HTTPS; None: HTTP for localhost and 127.x only
    plain_http: bool | None = None
    #: what each repo becomes unless its list line says (format=…): "image" (busybox + /REPO)
    #: or "modelpack" (a CNCF ModelPack artifact, one raw layer per file)
    format: Format = "image"
    #: the platforms to build for ("linux/amd64", "linux/arm64"); None: every linux platform
    #: the base image offers. More than one makes the tag an image index
    platforms: tuple[str, ...] | None = None
    #: stream large files from the hub straight into the image (either builder; not with a
    #: prepare hook);
    #: false: download every file to disk first
    stream: bool = True
    output_dir: str = "oci-images"
    #: repos mirrored at once by sync (each streams up to 4 files at once)
    max_workers: int = 2
    #: concurrent file downloads from the hub, per repo
    hub_workers: int = 8
    #: files smaller than this many bytes share one layer
    small_file_limit: int = MiB
    #: the biggest layer the registry takes; None: the registry's known limit (GHCR 10 GB…)
    max_layer_size: int | None = None
    #: the ledger of mirrored repos, relative to get_hf/
    record: str = "mirrored.json"
    #: pickle-based files (.bin, .pt, .pkl, …) are scanned for imports that run code on load:
    #: "refuse" fails a repo with one, "warn" publishes it with the finding recorded, "off"
    #: scans nothing
    scan: ScanPolicy = "refuse"
    #: files the hub keeps in Xet: "auto" reads them through the hub's own library (hf_xet),
    #: "off" over plain HTTP (the hub's bridge, which stops at 50 GB a file)
    xet: XetMode = "auto"
    #: a public key (a PEM file, relative to the folder the command runs in): `extract`, `serve`
    #: and `load` use only images it verifies, as their --verify-key does
    verify_key: str | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            try:
                value = _CHECKS[field.name](getattr(self, field.name))
            except _Invalid as e:
                raise ConfigError(_what(field.name, getattr(self, field.name), e)) from e
            # normalized values ("1MiB" → bytes) on a frozen instance, hence object.__setattr__
            object.__setattr__(self, field.name, value)

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given non-None values (command-line flags) replacing these."""
        unknown = sorted(set(overrides) - set(_CHECKS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; valid settings: {_valid_keys()}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: Path, *, display: str | None = None) -> Config:
    """Read config.yaml; a missing file gives the defaults. ConfigError says ``file:line:``."""
    shown = display if display is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: cannot read the file: {e}") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}:{_yaml_line(e)}: invalid YAML: {_yaml_problem(e)}") from e
    if root is None:
        return Config()
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{shown}:{_line(root)}: expected 'key: value' lines, not a {root.tag}")
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    constructor = yaml.SafeLoader("")
    for key_node, value_node in root.value:
        line = _line(key_node)
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise ConfigError(f"{shown}:{line}: expected a setting name")
        key = _ALIASES.get(key, key)
        if _is_secret(key):
            raise ConfigError(
                f"{shown}:{line}: {key!r} looks like a secret: put secrets in env/secrets, "
                "not config.yaml"
            )
        if key not in _CHECKS:
            close = difflib.get_close_matches(key, _CHECKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{shown}:{line}: unknown setting {key!r}{hint}; valid settings: {_valid_keys()}"
            )
        if key in values:
            raise ConfigError(f"{shown}:{line}: {key!r} is set twice (first on line {lines[key]})")
        try:
            value = constructor.construct_object(value_node, deep=True)
            values[key] = _CHECKS[key](value)
        except _Invalid as e:
            raise ConfigError(f"{shown}:{_line(value_node)}: {_what(key, value, e)}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{shown}:{_line(value_node)}: invalid {key}: {e}") from e
        lines[key] = line
    return Config(**values)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _yaml_line(e: yaml.YAMLError) -> int:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return int(mark.line) + 1 if mark is not None else 1


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    if problem and context:
        return f"{problem} ({context})"
    return str(problem or e).splitlines()[0]


def _is_secret(key: str) -> bool:
    lower = key.lower()
    return lower in _SECRET_KEYS or any(word in lower for word in _SECRET_WORDS)


def _valid_keys() -> str:
    return ", ".join(_CHECKS)


def _optional_string(value: object) -> str | None:
    return None if value is None else _string(value)


def _registry(value: object) -> str | None:
    if value is None:
        return None
    text = _string(value)
    if "@" in text:
        raise _Invalid("credentials don't go here: put secrets in env/secrets", echo=False)
    if "://" in text:
        raise _Invalid("write the host (e.g. 'ghcr.io'), not a URL")
    if "/" in text:
        raise _Invalid("write only the host; put the path in namespace")
    match = HOST.fullmatch(text)
    if not match:
        raise _Invalid("not a host[:port]")
    port = match.group(1)
    if port is not None and not 0 < int(port) < 65536:
        raise _Invalid(f"port {port} is out of range")
    return text


def _namespace(value: object) -> str:
    text = _string(value)
    if not all(COMPONENT.fullmatch(part) for part in text.split("/")):
        hint = "it must be lower case; " if text.lower() != text else ""
        raise _Invalid(
            f"{hint}use lower-case letters, digits and '.', '_', '-' between them, "
            "with '/' between parts"
        )
    return text


def _builder(value: object) -> Builder:
    if value not in BUILDERS:
        raise _Invalid(f"choose one of {', '.join(BUILDERS)}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _optional_bool(value: object) -> bool | None:
    return None if value is None else _bool(value)


def _format(value: object) -> Format:
    if value not in FORMATS:
        raise _Invalid(f"choose one of {', '.join(FORMATS)}")
    return value


def _scan(value: object) -> ScanPolicy:
    if value is False:  # YAML reads a bare off as false
        return "off"
    if value not in SCAN_POLICIES:
        raise _Invalid(f"choose one of {', '.join(SCAN_POLICIES)}")
    return value


def _xet(value: object) -> XetMode:
    if value is True or value == "on":  # YAML reads a bare on as true
        return "auto"
    if value is False:  # and a bare off as false
        return "off"
    if value not in XET_MODES:
        raise _Invalid(f"choose one of {', '.join(XET_MODES)}")
    return value


def _platforms(value: object) -> tuple[str, ...] | None:
    """A list of platforms, or one string of them between commas; duplicates dropped."""
    if value is None:
        return None

    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise _Invalid("expected platforms like linux/amd64,linux/arm64")
    try:
        found = [str(parse_platform(_string(item))) for item in items]
    except Hf2ociError as e:
        raise _Invalid(str(e).split(": ", 1)[-1]) from e
    return tuple(dict.fromkeys(found))


def _string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("expected a non-empty string")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("expected a whole number ≥ 1")
    return value


def _optional_size(value: object) -> int | None:
    return None if value is None else _size(value)


def parse_size(text: str, what: str) -> int:
    """Bytes from a command-line size ("4GiB", "500MB", "1048576"); ConfigError otherwise."""
    try:
        return _size(text)
    except _Invalid as e:
        raise ConfigError(f"{what} {text!r}: {e}") from e


def _size(value: object) -> int:
    """Bytes, as a number or a string with a unit ("512KiB", "1 MiB")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise _Invalid("expected bytes, e.g. 1048576 or '1MiB'")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


#: older names still read
_ALIASES = {"platform": "platforms"}

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "registry": _registry,
    "namespace": _namespace,
    "base_image": _string,
    "builder": _builder,
    "plain_http": _optional_bool,
    "format": _format,
    "platforms": _platforms,
    "stream": _bool,
    "output_dir": _string,
    "max_workers": _count,
    "hub_workers": _count,
    "small_file_limit": _size,
    "max_layer_size": _optional_size,
    "record": _string,
    "scan": _scan,
    "xet": _xet,
    "verify_key": _optional_string,
}
