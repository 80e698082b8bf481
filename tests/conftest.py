"""Shared fixtures: real registry, real Docker engine, test hub (see hubserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import Registry, ensure_dockerd, start_registry


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
