"""Image fixtures: a busybox base built from Debian's busybox-static, pushed to the registry."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from servers import Registry

BUSYBOX = Path("/bin/busybox")


def busybox_rootfs(root: Path) -> Path:
    """A minimal root filesystem: /bin/busybox and a symlink per applet."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", bindir / applet)
    for d in ("tmp", "etc", "root"):
        (root / d).mkdir()
    return root


def push_busybox(registry_host: str, rootfs: Path) -> str:
    """Import ``rootfs`` with the engine and push it as ``HOST/library/busybox:latest``."""
    ref = f"{registry_host}/library/busybox:latest"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "--change", 'CMD ["sh"]', "-", ref],
        stdin=tar.stdout,
        check=True,
        capture_output=True,
    )
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {rootfs} failed")
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    return ref


@pytest.fixture(scope="session")
def busybox_base(
    registry: Registry, docker_engine: None, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``127.0.0.1:PORT/library/busybox:latest``, imported from busybox-static and pushed."""
    return push_busybox(
        registry.host, busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
    )
