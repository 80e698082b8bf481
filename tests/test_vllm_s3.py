"""Real vLLM (PyPI's CPU build, with run:ai's streamer: scripts/test.sh) loading the mirrored
all-MiniLM-L6-v2 from ``hf2oci serve --s3-port`` with ``--load-format runai_streamer``: config
and tokenizer through boto3, the weights streamed in ranges straight out of the layer blob, no
hub and no copy of the weights; the embeddings match transformers' own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import cli
from s3servers import MINILM, TOKEN, Endpoint, Mirror, shared_mirror
from servers import free_port
from test_serve_clients import start_serve
from test_vllm import (
    ENGINE_ARGS,
    ENTRYPOINT,
    REFERENCE,
    SENTENCES,
    SOURCE,
    VLLM_VENV,
    _assert_same_embeddings,
    _serve_and_embed,
)


@pytest.fixture(scope="session")
def s3_mirror(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    return shared_mirror(hub_server, tmp_path_factory)


@pytest.fixture(scope="module")
def embedded() -> np.ndarray:
    """The sentences embedded by transformers from the source files (mean pooled, normalised)."""
    out = subprocess.run([sys.executable, "-c", REFERENCE, str(SOURCE), json.dumps(SENTENCES)],
                         capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    return np.array(json.loads(out.stdout))


@pytest.fixture
def s3_serve(s3_mirror: Mirror, tmp_path: Path) -> Iterator[tuple[Endpoint, Path]]:
    """``hf2oci serve --s3-port`` with a token file, in a process of its own; its log."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    s3_port, log = free_port(), tmp_path / "serve.log"
    args = ["--layout", str(s3_mirror.layouts), "--s3-port", str(s3_port),
            "--token-file", str(tokens)]  # fmt: skip
    proc, _ = start_serve(args, tmp_path, log)
    try:
        yield Endpoint("serve", f"http://127.0.0.1:{s3_port}", {}), log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("how", ["vllm serve", "deploy k8s"])
def test_vllm_streams_minilm_with_runai_through_the_s3_face(
    how: str, s3_serve: tuple[Endpoint, Path], embedded: np.ndarray, tmp_path: Path
) -> None:
    """``vllm serve s3://…`` as the issue writes it, and the runtime image's entrypoint with the
    environment ``hf2oci deploy k8s --s3-endpoint`` gives it (the Secret's keys filled in)."""
    assert (VLLM_VENV / ".complete").is_file(), f"no vLLM at {VLLM_VENV}: run scripts/test.sh"
    endpoint, log = s3_serve
    port = free_port()
    env = endpoint.env()
    env.update(PATH=f"{VLLM_VENV / 'bin'}:{env['PATH']}", VLLM_CPU_KVCACHE_SPACE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"),
               VLLM_ASSETS_CACHE=str(tmp_path / "assets"))  # fmt: skip
    env.pop("HF_ENDPOINT", None)  # no hub: everything comes from the S3 face
    if how == "vllm serve":
        cmd = [
            str(VLLM_VENV / "bin" / "vllm"), "serve", f"s3://models/{MINILM}/",
            "--load-format", "runai_streamer", "--convert", "embed",
            "--served-model-name", MINILM, "--host", "127.0.0.1", "--port", str(port),
            *ENGINE_ARGS,
        ]  # fmt: skip
    else:
        image = f"registry.example.com/hgfkeep/models:{MINILM.replace('/', '--')}"
        r = cli("deploy", "k8s", image, "--runtime", "vllm", "--s3-endpoint", endpoint.url,
                "--s3-secret", "hub-s3")  # fmt: skip
        assert r.exit_code == 0, r.output
        pod = next(yaml.safe_load_all(r.stdout))["spec"]["template"]["spec"]
        secret = {"AWS_ACCESS_KEY_ID": "vllm", "AWS_SECRET_ACCESS_KEY": TOKEN}
        for var in pod["containers"][0]["env"]:
            env[var["name"]] = var.get("value") or secret[var["valueFrom"]["secretKeyRef"]["key"]]
        env.update(HOST="127.0.0.1", PORT=str(port))
        cmd = [sys.executable, str(ENTRYPOINT), "vllm", "--convert", "embed", *ENGINE_ARGS]
    got = _serve_and_embed(cmd, env, port, tmp_path / "vllm.log")
    _assert_same_embeddings(got, embedded)
    served = log.read_text()
    assert f"S3 GET /models/{MINILM}/model.safetensors GetObject 206" in served  # streamed
    assert "GetObject 200" in served and TOKEN not in served  # config, tokenizer: boto3
    copies = list((tmp_path / "assets").rglob("*.safetensors"))
    assert copies == [], copies  # the weights were never copied to disk
