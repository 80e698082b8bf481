"""Golden digests: the same repo, base and settings give these exact image digests, forever.

A refactor of the build path must not change a single byte of what is published. The hub runs on
a fixed loopback address (its URL is in the labels) and its commit has a fixed date.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import cli, make_project
from hf2oci.oci.image import MT_LAYER_TAR, SCRATCH, assemble, sha256_digest
from hf2oci.oci.push import push
from hf2oci.oci.registry import RegistryClient
from hubserver import HubServer
from servers import Registry, start_registry

REPO = "golden/tiny-model"
HUB_ADDRESS = ("127.77.0.1", 8917)
#: the base image's name is a label too: a registry on a fixed address
REGISTRY_HOST = "127.77.0.1:8918"
DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)

#: the digests this repo gives. They held from 313942f through the one-build-path refactor
#: (716c88eb… / 9321e220…) and changed on purpose when images gained the file index
#: layer (.hf2oci/files.json) that `hf2oci serve` reads (e4c288dd… / 9fe1b741…), and again
#: when that layer gained /models → REPO for KServe's modelcar.
REGISTRY_DIGEST = "sha256:544ab1d05eff02318f9a86767a0016df0acc042ff676dded1a6cc62ba8abb1ef"
LAYOUT_DIGEST = "sha256:e03f9b328c2f9f7f10d3c708353c9300567d83eb6c5211c97050cec930e3c023"
GOLDEN = {
    ("registry", "stream"): REGISTRY_DIGEST,
    ("registry", "staged"): REGISTRY_DIGEST,
    ("layout", "stream"): LAYOUT_DIGEST,
    ("layout", "staged"): LAYOUT_DIGEST,
}


def _files() -> dict[str, bytes]:
    rng = random.Random("golden")
    return {
        "config.json": b'{"model_type": "golden"}\n',
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "README.md": b"---\nlicense: apache-2.0\n---\n# golden\n",
        "model-00001-of-00002.safetensors": rng.randbytes(1536 * 1024),
        "model-00002-of-00002.safetensors": rng.randbytes(1100 * 1024),
    }


class _Bytes:
    """A fixed tar layer held in memory (the golden base's only layer)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = self.diff_id = sha256_digest(data)
        self.size = len(data)
        self.media_type = MT_LAYER_TAR

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


def _base_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/motd", b"golden base\n"), ("bin/hello", b"#!/bin/sh\necho hi\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def golden_hub() -> Iterator[HubServer]:
    try:
        server = HubServer(HUB_ADDRESS).start()
    except OSError as e:  # pragma: no cover - the address is reserved for this test
        pytest.fail(f"cannot listen on {HUB_ADDRESS}: {e}")
    server.add_repo(REPO, _files(), card_data={"license": "apache-2.0"}, date=DATE)
    yield server
    server.stop()


@pytest.fixture
def golden_env(golden_hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", golden_hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF2OCI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return golden_hub


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("golden-registry"), host=REGISTRY_HOST)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def golden_base(registry: Registry) -> str:
    """A base image with fixed bytes, pushed once: ``HOST/golden/base:v1``."""
    image = assemble(
        SCRATCH, [_Bytes(_base_tar())], labels={}, annotations={}, created="2020-01-01T00:00:00Z"
    )
    push(RegistryClient(registry.host), image, "golden/base", tags=["v1"])
    return f"{registry.host}/golden/base:v1"


def _mirror(*args: str) -> str:
    result = cli("mirror", REPO, "--no-record", "--json", "-q", *args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{") :])
    return str(doc["results"][0]["digest"])


@pytest.mark.parametrize("mode", ["stream", "staged"])
def test_golden_digest_in_a_registry(
    golden_env: HubServer, registry: Registry, golden_base: str, tmp_path: Path, mode: str
) -> None:
    make_project(tmp_path)
    digest = _mirror(
        "--registry", registry.host, "--namespace", f"golden-{mode}", "--base-image", golden_base,
        f"--{mode}", "--force",
    )  # fmt: skip
    assert digest == GOLDEN[("registry", mode)]


@pytest.mark.parametrize("mode", ["stream", "staged"])
def test_golden_digest_in_a_layout(golden_env: HubServer, tmp_path: Path, mode: str) -> None:
    make_project(tmp_path)
    digest = _mirror("--base-image", "scratch", f"--{mode}", "--output-dir", "out")
    assert digest == GOLDEN[("layout", mode)]
    index = json.loads((tmp_path / "out/hgfkeep/models/index.json").read_text())
    assert {m["digest"] for m in index["manifests"]} == {digest}
