"""config.yaml: defaults, every setting, errors with file:line, no secrets, CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf2oci.config import Config, load_config
from hf2oci.errors import ConfigError, UsageError

SHOWN = "get_hf/config.yaml"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, display=SHOWN)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    config = Config()
    assert config.registry is None
    assert config.namespace == "hgfkeep"
    assert config.base_image == "docker.io/library/busybox:latest"
    assert config.builder == "oci"
    assert config.plain_http is None and config.platforms is None  # HTTP only for loopback
    assert config.output_dir == "oci-images"
    assert (config.max_workers, config.hub_workers) == (2, 8)
    assert config.small_file_limit == 1024 * 1024
    assert config.record == "mirrored.json"


def test_missing_and_empty_files_give_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.yaml") == Config()
    assert load(tmp_path, "") == Config()
    assert load(tmp_path, "# only comments\n") == Config()


def test_every_setting(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
registry: 127.0.0.1:5000
namespace: team/hgf-keep
base_image: ghcr.io/org/base:1
builder: docker
plain_http: true
output_dir: out
max_workers: 2
hub_workers: 16
small_file_limit: 512KiB
record: records/ledger.json
""",
    )
    assert config == Config(
        registry="127.0.0.1:5000",
        namespace="team/hgf-keep",
        base_image="ghcr.io/org/base:1",
        builder="docker",
        plain_http=True,
        output_dir="out",
        max_workers=2,
        hub_workers=16,
        small_file_limit=512 * 1024,
        record="records/ledger.json",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("4096", 4096), ("'2MB'", 2_000_000), ("1 MiB", 1024 * 1024), ("1gib", 2**30)],
)
def test_small_file_limit_units(tmp_path: Path, value: str, expected: int) -> None:
    assert load(tmp_path, f"small_file_limit: {value}\n").small_file_limit == expected


@pytest.mark.parametrize(
    "text",
    [
        "platforms: linux/arm64, linux/amd64,linux/arm64\n",
        "platforms: [linux/arm64, linux/amd64]\n",
        "platform: linux/arm64,linux/amd64\n",  # the older name
    ],
)
def test_platforms_as_a_list_or_between_commas(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text).platforms == ("linux/arm64", "linux/amd64")


def test_registry_null_means_layouts(tmp_path: Path) -> None:
    assert load(tmp_path, "registry: null\nnamespace: x\n").registry is None


@pytest.mark.parametrize(
    "host", ["docker.io", "ghcr.io", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "REG.io"]
)
def test_valid_registries(host: str) -> None:
    assert Config(registry=host).registry == host


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    got = error(tmp_path, "namespace: x\nregistry: [unclosed\nbuilder: oci\n")
    assert got.startswith(f"{SHOWN}:")
    line = int(got.split(":")[1])
    assert line in (2, 3, 4)
    assert "invalid YAML" in got
    got = error(tmp_path, "namespace: x\n  bad: indent\n")
    assert got.startswith(f"{SHOWN}:2: invalid YAML")


def test_unknown_key_names_it_its_line_and_the_valid_ones(tmp_path: Path) -> None:
    got = error(tmp_path, "namespace: x\nregistri: oops\n")
    assert got.startswith(f"{SHOWN}:2: unknown setting 'registri' (did you mean 'registry'?)")
    assert "registry, namespace, base_image, builder" in got


@pytest.mark.parametrize("key", ["password", "registry_password", "token", "HF_TOKEN", "auth"])
def test_secrets_are_refused(tmp_path: Path, key: str) -> None:
    got = error(tmp_path, f"namespace: x\n\n{key}: hunter2\n")
    assert got.startswith(f"{SHOWN}:3: ")
    assert "put secrets in env/secrets, not config.yaml" in got
    assert "hunter2" not in got


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("namespace: Upper\n", 1, "lower case"),
        ("namespace: a//b\n", 1, "invalid namespace"),
        ("namespace: -x\n", 1, "invalid namespace"),
        ("\nnamespace: 12\n", 2, "expected a non-empty string"),
        ("registry: https://ghcr.io\n", 1, "not a URL"),
        ("registry: ghcr.io/org\n", 1, "put the path in namespace"),
        ("registry: reg host\n", 1, "not a host[:port]"),
        ("registry: host:99999\n", 1, "out of range"),
        ("registry: ''\n", 1, "non-empty"),
        ("builder: podman\n", 1, "choose one of oci, docker"),
        ("plain_http: 'yes please'\n", 1, "expected true or false"),
        ("max_workers: 0\n", 1, "≥ 1"),
        ("hub_workers: true\n", 1, "≥ 1"),
        ("max_workers: 2.5\n", 1, "≥ 1"),
        ("small_file_limit: -1\n", 1, "expected bytes"),
        ("small_file_limit: 1 parsec\n", 1, "expected bytes"),
        ("base_image:\n", 1, "non-empty"),
        ("namespace:\n  nested: x\n", 2, "non-empty string"),
        ("namespace: a\nnamespace: b\n", 2, "set twice (first on line 1)"),
        ("- a\n- b\n", 1, "expected 'key: value' lines"),
        ("format: kitops\n", 1, "choose one of image, modelpack"),
        ("platforms: arm64\n", 1, "invalid platforms 'arm64': expected os/arch"),
        ("platforms: []\n", 1, "expected platforms like linux/amd64,linux/arm64"),
        ("platforms:\n  - linux/amd64\n  - 5\n", 2, "expected a non-empty string"),
    ],
)
def test_invalid_values_name_their_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    got = error(tmp_path, text)
    assert got.startswith(f"{SHOWN}:{line}: "), got
    assert reason in got


def test_credentials_in_the_registry_are_refused_and_not_repeated(tmp_path: Path) -> None:
    got = error(tmp_path, "registry: user:hunter2@ghcr.io\n")
    assert got.startswith(f"{SHOWN}:1: invalid registry: ") and "env/secrets" in got
    assert "hunter2" not in got
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(registry="u:hunter2@ghcr.io")
    assert "hunter2" not in str(info.value)


def test_overrides_win_and_are_validated() -> None:
    base = Config(registry="ghcr.io", namespace="a")
    got = base.with_overrides(namespace="b", builder="docker", plain_http=True)
    assert (got.registry, got.namespace, got.builder, got.plain_http) == (
        "ghcr.io",
        "b",
        "docker",
        True,
    )
    assert base.namespace == "a"  # frozen: the original is unchanged
    assert base.with_overrides(registry=None, namespace=None) == base
    with pytest.raises(ConfigError, match="invalid namespace 'NOPE'"):
        base.with_overrides(namespace="NOPE")
    with pytest.raises(ConfigError, match="invalid builder"):
        base.with_overrides(builder="buildah")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        base.with_overrides(colour="red")
    assert base.with_overrides(small_file_limit="4KiB").small_file_limit == 4096


def test_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="invalid registry"):
        Config(registry="http://x")


def test_display_defaults_to_the_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1: ")


def test_the_shipped_config_loads() -> None:
    shipped = Path(__file__).parent.parent / "get_hf" / "config.yaml"
    if not shipped.exists():
        pytest.skip("no get_hf/config.yaml in this checkout")
    assert load_config(shipped).namespace == "hgfkeep"


def test_every_setting_has_a_row_in_the_docs() -> None:
    """The config table of docs/configuration.md names each key Config reads (small_file_limit
    and record were missing from it)."""
    import dataclasses

    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    rows = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `")}
    assert [f.name for f in dataclasses.fields(Config) if f.name not in rows] == []
