"""`hf2oci serve` through registry faults (not a test).

    python benchmarks/bench_serve_faults.py [--clients 256] [--seconds 60] [--every 20]

A repo of 64 small files and 2 shards of 32 MiB, mirrored into a registry on 127.0.0.1; a fault
proxy in front of it fails every EVERY-th blob read (a 503, then a body cut after 4 bytes, in
turn). The proxy, `hf2oci serve --registry PROXY` and the clients each run as processes of their
own (CLIENTS threads spread over PROCESSES client processes, as many programs would be, so that
no one GIL holds them all); the clients resolve files for SECONDS (9 in 10 a small file, 1 in 10
a whole shard), checking every byte. Then the same without faults, and last the registry
stopped: how long an API request and /health take to answer. Reported: client errors, p50/p99
of a small-file resolve, serve's peak RSS (VmHWM), the faults injected and the retries serve
counted.
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

from faultproxy import CONTROL  # noqa: E402
from hubserver import HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def repo_files() -> dict[str, bytes]:
    rng = random.Random("soak")
    files = {f"small/{i:02d}.json": rng.randbytes(rng.randint(100, 20000)) for i in range(64)}
    return files | {f"model-{i:05d}-of-00002.safetensors": rng.randbytes(32 << 20) for i in (1, 2)}


def clients(url: str, threads: int, seconds: float, seed: int) -> dict[str, object]:
    """One client process: THREADS threads resolving files until SECONDS have passed."""
    files = repo_files()
    small = [n for n in files if n.startswith("small/")]
    big = [n for n in files if n not in small]
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < stop:
            name = rng.choice(big) if rng.random() < 0.1 else rng.choice(small)
            t = time.perf_counter()
            try:
                r = session.get(f"{url}/bench/faults/resolve/main/{name}", timeout=60)
                ok = r.status_code == 200 and r.content == files[name]
                why = f"{name}: HTTP {r.status_code}" if not ok else ""
            except requests.RequestException as e:
                ok, why = False, f"{name}: {type(e).__name__}"
            with lock:
                if not ok:
                    errors.append(why)
                elif name in small:
                    latencies.append(time.perf_counter() - t)

    pool = [threading.Thread(target=client, args=(seed * 1000 + i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"latencies": latencies, "errors": errors}


def soak(url: str, n: int, processes: int, seconds: float) -> dict[str, object]:
    """N clients in PROCESSES processes at once; their latencies and errors together."""
    runs = [
        subprocess.Popen(
            [sys.executable, __file__, "--clients-of", url, "--seed", str(i),
             "--clients", str(n // processes + (i < n % processes)), "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
        )
        for i in range(processes)
    ]  # fmt: skip
    latencies: list[float] = []
    errors: list[str] = []
    for run in runs:
        out, _ = run.communicate()
        got = json.loads(out)
        latencies += got["latencies"]
        errors += got["errors"]
    latencies.sort()
    return {
        "small resolves": len(latencies),
        "errors": len(errors),
        "first errors": errors[:3],
        "p50 ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99 ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--processes", type=int, default=8, help="client processes")
    ap.add_argument("--serve-log", default=None, help="serve's stderr to this file")
    ap.add_argument("--clients-of", default=None, help=argparse.SUPPRESS)  # one client process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clients_of:
        print(json.dumps(clients(args.clients_of, args.clients, args.seconds, args.seed)))
        return
    work = Path(tempfile.mkdtemp(prefix="hf2oci-serve-faults-"))
    files = repo_files()
    with HubServer() as hub:
        hub.add_repo("bench/faults", files)
        reg = start_registry(work / "reg")
        (work / "get_hf").mkdir()
        (work / "get_hf" / "to_get_models.txt").write_text("bench/faults\n")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache")}
        subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--namespace", "b",
                        "--base-image", "scratch"], env=env, cwd=work, check=True)  # fmt: skip
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faultproxy.py"), reg.host, "GET", "/blobs/sha256:",
         "503|cut-after:4", "--every", str(args.every)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proxy.stdout is not None
    proxy_host = proxy.stdout.readline().strip()
    control = f"http://{proxy_host}{CONTROL}"
    port = free_port()
    serve = subprocess.Popen(
        [HF2OCI, "serve", "--registry", proxy_host, "--namespace", "b", "--port", str(port)],
        cwd=work, env=env, stdout=subprocess.DEVNULL,
        stderr=open(args.serve_log, "wb") if args.serve_log else subprocess.DEVNULL,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    report: dict[str, object] = {}
    try:
        report["with faults"] = soak(url, args.clients, args.processes, args.seconds)
        report["faults injected"] = requests.get(control, timeout=5).json()[0]["hits"]
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        report["retries counted"] = next(
            (line.split()[-1] for line in metrics.splitlines()
             if line.startswith("hf2oci_serve_upstream_retries_total ")), None)  # fmt: skip
        requests.delete(control, timeout=5)  # no more faults
        report["without faults"] = soak(url, args.clients, args.processes, args.seconds / 2)
        report["serve peak RSS MiB"] = round(peak_rss(serve.pid) / (1 << 20))
        reg.stop()
        for what in ("/api/models/bench/never-read", "/health"):
            t = time.perf_counter()
            status = requests.get(url + what, timeout=60).status_code
            report[f"registry gone: {what}"] = f"{status} in {time.perf_counter() - t:.2f} s"
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        proxy.terminate()
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
