"""Benchmark serve's web pages (not a test): python benchmarks/bench_pages.py [--repos 1000]

REPOS small repos (a card with front matter, a config, a safetensors file) mirrored by
`hf2oci sync` into a loopback registry, served by one `hf2oci serve` process (fresh, --ttl TTL):
- the first catalog page (every image's labels, file index and card read);
- catalog pages (all, a search, a filter, a later page) for SECONDS, across several TTL
  refreshes: p50 / p95 / max;
- repo pages, each repo's second load (warm): p50 / p95 / max;
- the API beside them: 8 threads of small-file `resolve` + `api/models/ID` calls alone, while a
  browser reads catalog and repo pages, and (the control: the same extra load on 2 cores) while
  a 9th API client runs, both extra clients at RATE requests a second: p50 / p95 per call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))
HTML = {"Accept": "text/html"}
#: requests a second of the extra client (a browser, or the control's 9th API client)
RATE = 25
TASKS = ["text-classification", "text-generation", "feature-extraction", "fill-mask"]
LIBS = ["transformers", "sentence-transformers", "gguf", "diffusers"]
LICENSES = ["apache-2.0", "mit", "cc-by-4.0", "llama3"]


def card(i: int) -> bytes:
    return (
        f"---\nlicense: {LICENSES[i % 4]}\npipeline_tag: {TASKS[i % 3]}\n"
        f"library_name: {LIBS[i % 4]}\nlanguage: [en]\ntags: [bench, group-{i % 10}]\n---\n"
        f"# Model {i}\n\nA benchmark model, number {i}.\n\n| a | b |\n| - | - |\n| 1 | 2 |\n"
    ).encode()


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def timed_get(session: requests.Session, url: str, headers: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = session.get(url, headers=headers, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - t


def api_readers(url: str, repos: list[str], stop: threading.Event) -> list[float]:
    """8 threads of small API calls until ``stop``: their per-call times."""
    times: list[float] = []
    lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        s = requests.Session()
        mine = []
        while not stop.is_set():
            repo = rng.choice(repos)
            if rng.random() < 0.5:
                mine.append(timed_get(s, f"{url}/{repo}/resolve/main/config.json"))
            else:
                mine.append(timed_get(s, f"{url}/api/models/{repo}"))
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repos", type=int, default=1000)
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=45.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-pages-"))
    reg = start_registry(work / "reg")
    report: dict[str, object] = {"repos": args.repos, "ttl": args.ttl}
    weights = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    st = len(weights).to_bytes(8, "little") + weights.encode() + bytes(64)
    repos = [f"bench{i // 100}/model-{i:04d}" for i in range(args.repos)]
    with HubServer() as hub:
        for i, repo in enumerate(repos):
            hub.add_repo(repo, {"README.md": card(i), "config.json": b'{"i": %d}\n' % i,
                                "model.safetensors": st})  # fmt: skip
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF2OCI_CACHE": str(work / "cache")}  # fmt: skip
        project = work / "project"
        (project / "get_hf").mkdir(parents=True)
        (project / "get_hf" / "to_get_models.txt").write_text("\n".join(repos) + "\n")
        t = time.perf_counter()
        subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--base-image", "scratch",
                        "--namespace", "bench"], cwd=project, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        report["sync_s"] = round(time.perf_counter() - t, 1)
        print(f"mirrored {len(repos)} repos in {report['sync_s']} s", flush=True)
    port = free_port()
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [HF2OCI, "serve", "--registry", reg.host, "--namespace", "bench", "--port", str(port),
         "--ttl", str(args.ttl)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        s = requests.Session()
        report["first_catalog_s"] = round(timed_get(s, f"{url}/models", HTML), 2)
        print(f"first catalog page: {report['first_catalog_s']} s", flush=True)
        pages = ["/models", "/models?search=number+42", "/models?pipeline_tag=fill-mask",
                 "/models?p=7", "/models?license=mit&search=bench3"]  # fmt: skip
        catalog: list[float] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            catalog.append(timed_get(s, url + random.choice(pages), HTML))
        report["catalog"] = quantiles(catalog)
        chosen = random.Random(1).sample(repos, min(200, len(repos)))
        for repo in chosen:  # the first load of each repo page
            timed_get(s, f"{url}/{repo}", HTML)
        report["repo_warm"] = quantiles([timed_get(s, f"{url}/{r}", HTML) for r in chosen])
        for r in chosen:
            timed_get(s, f"{url}/{r}/resolve/main/config.json")
        rounds = []
        for _ in range(2):  # alone, beside a browser, beside a 9th API client; side by side
            row: dict[str, object] = {}
            for name, extra in (("alone", None), ("beside_pages", "pages"),
                                ("beside_api", "api")):  # fmt: skip
                stop = threading.Event()
                other: list[float] = []

                def client(kind: str, stop: threading.Event = stop, other: list[float] = other,
                           ) -> None:  # fmt: skip
                    b = requests.Session()
                    rng = random.Random(2)
                    tick = time.monotonic()
                    while not stop.is_set():
                        tick += 1 / RATE  # both extra clients at the same pace
                        time.sleep(max(0.0, tick - time.monotonic()))
                        r = rng.choice(chosen[:20])
                        if kind == "pages":
                            path, headers = rng.choice([*pages, f"/{r}"]), HTML
                        else:
                            path, headers = f"/api/models/{r}", None
                        other.append(timed_get(b, url + path, headers))

                extra_thread = None
                if extra:
                    extra_thread = threading.Thread(target=client, args=(extra,))
                    extra_thread.start()
                threading.Timer(args.seconds / 4, stop.set).start()
                row[f"api_{name}"] = quantiles(api_readers(url, chosen, stop))
                if extra_thread is not None:
                    extra_thread.join()
                    row[f"{extra}_meanwhile"] = quantiles(other)
            rounds.append(row)
        report["api"] = rounds
    finally:
        server.terminate()
        server.wait(10)
        reg.stop()
    print(json.dumps(report, indent=2))
    (ROOT / "benchmarks" / "last-pages.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
