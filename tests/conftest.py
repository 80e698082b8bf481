"""Shared fixtures: real registry, real Docker engine, test hub (see hubserver.py)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hubserver import HubServer
from servers import Registry, ensure_dockerd, start_registry

pytest_plugins = ["images"]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One real CNCF distribution registry for the whole session."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A running Docker engine (started here when none is)."""
    ensure_dockerd(tmp_path_factory.mktemp("dockerd"))


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """One test hub for the whole session; repos accumulate (use unique names)."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(
    hub_server: HubServer, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> HubServer:
    """The session hub, with HF_* pointing at it and at a fresh cache; empty log, no tokens."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.reset_log()
    hub_server.clear_faults()
    hub_server.tokens.clear()
    return hub_server


RandomRepo = Callable[..., tuple[str, str, dict[str, bytes]]]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder of its own, the working directory, with its own layer cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF2OCI_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def random_repo(hub: HubServer) -> RandomRepo:
    """Factory: a fresh repo `testorg/rand-<hex>` of random files -> (repo_id, sha, files).

    Always holds config.json, an LFS `model.safetensors` of `size` bytes, a file in a
    subfolder, a name with a space and a non-ASCII name, plus `n_files` small random files;
    `extra` adds or replaces files, `card_data` also adds a README.md with that front matter.
    """

    def make(
        *,
        repo_type: str = "model",
        n_files: int = 5,
        size: int = 64 * 1024,
        gated: bool = False,
        extra: dict[str, bytes] | None = None,
        card_data: dict[str, Any] | None = None,
    ) -> tuple[str, str, dict[str, bytes]]:
        name = f"rand-{uuid.uuid4().hex[:12]}"
        rng = random.Random(name)  # reproducible from the name alone
        files = {
            "config.json": json.dumps({"name": name, "hidden_size": 8}).encode() + b"\n",
            "model.safetensors": rng.randbytes(size),
            "données/é t.txt": rng.randbytes(300),
            "with space.txt": rng.randbytes(200),
        }
        for i in range(n_files):
            files[f"sub/dir/part-{i}.txt"] = rng.randbytes(rng.randint(1, 4096))
        if card_data is not None:
            front = "".join(f"{k}: {json.dumps(v)}\n" for k, v in card_data.items())
            files["README.md"] = f"---\n{front}---\n# {name}\n".encode()
        files.update(extra or {})
        repo_id = f"testorg/{name}"
        sha = hub.add_repo(repo_id, files, repo_type=repo_type, gated=gated, card_data=card_data)
        return repo_id, sha, files

    return make
