"""Real servers for the tests: the CNCF distribution registry and the Docker engine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Registry:
    """A running ``docker-registry`` on 127.0.0.1."""

    host: str  # "127.0.0.1:PORT"
    root: Path  # storage directory
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_registry(workdir: Path, *, extra_config: str = "", host: str | None = None) -> Registry:
    """Start Debian's ``docker-registry`` with filesystem storage under ``workdir``, on ``host``
    (``127.x.y.z:PORT``) or a free port of 127.0.0.1."""
    exe = shutil.which("docker-registry")
    if exe is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    host = host or f"127.0.0.1:{free_port()}"
    root = workdir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}\n" + extra_config
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    reg = Registry(host=host, root=root, proc=proc)
    try:
        wait_http(f"{reg.url}/v2/")
    except Exception as e:
        reg.stop()
        log_text = (workdir / "registry.log").read_text()
        raise RuntimeError(f"registry did not start: {log_text}") from e
    return reg


def docker_available() -> bool:
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=20)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def ensure_dockerd(logdir: Path) -> None:
    """Use the running engine, or start ``dockerd`` the way FACTS.md says works here."""
    if docker_available():
        return
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
    log = open(logdir / "dockerd.log", "wb")  # noqa: SIM115
    subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ},
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not docker_available():
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not start: {(logdir / 'dockerd.log').read_text()}")
        time.sleep(0.5)


def start_model_server(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a model server (logging to a file, not a pipe: servers log a lot)."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)


def wait_openai_server(
    server: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> list[str]:
    """Wait until ``url``/v1/models answers; returns the served model ids. A server that exits
    or never answers fails the test with the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = requests.get(f"{url}/v1/models", timeout=2)
            if resp.ok:
                return [m["id"] for m in resp.json()["data"]]
        except requests.RequestException:
            pass
        assert server.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def docker_build(folder: Path, tag: str) -> None:
    """``docker build`` with no network (nothing outside is reachable here): fails the test with
    the end of the build's output."""
    build = subprocess.run(
        ["docker", "build", "--network", "none", "-t", tag, str(folder)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
