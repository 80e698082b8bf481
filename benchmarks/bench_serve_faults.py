"""`hf2oci serve` through registry faults (not a test).

    python benchmarks/bench_serve_faults.py [--clients 256] [--seconds 60] [--every 20]

A repo of 64 small files and 2 shards of 32 MiB, mirrored into a registry on 127.0.0.1; a fault
proxy in front of it fails every EVERY-th blob read (a 503, then a body cut after 4 bytes, in
turn). `hf2oci serve --registry PROXY` runs as a process of its own; CLIENTS threads resolve
files for SECONDS (9 in 10 a small file, 1 in 10 a whole shard), checking every byte. Then the
same without faults, and last the registry stopped: how long an API request and /health take to
answer. Reported: client errors, p50/p99 of a small-file resolve, serve's peak RSS (VmHWM), the
faults injected and the retries serve counted.
"""

from __future__ import annotations

import argparse
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

from faultproxy import FaultProxy  # noqa: E402
from hubserver import HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def soak(url: str, files: dict[str, bytes], clients: int, seconds: float) -> dict[str, object]:
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

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
    ap.add_argument("--serve-log", default=None, help="serve's stderr to this file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-serve-faults-"))
    rng = random.Random("soak")
    files = {f"small/{i:02d}.json": rng.randbytes(rng.randint(100, 20000)) for i in range(64)}
    files |= {f"model-{i:05d}-of-00002.safetensors": rng.randbytes(32 << 20) for i in (1, 2)}
    with HubServer() as hub:
        hub.add_repo("bench/faults", files)
        reg = start_registry(work / "reg")
        (work / "get_hf").mkdir()
        (work / "get_hf" / "to_get_models.txt").write_text("bench/faults\n")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache")}
        subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--namespace", "b",
                        "--base-image", "scratch"], env=env, cwd=work, check=True)  # fmt: skip
    proxy = FaultProxy(reg.host)
    fault = proxy.fault("GET", "/blobs/sha256:", "503|cut-after:4", times=10**9, every=args.every)
    port = free_port()
    serve = subprocess.Popen(
        [HF2OCI, "serve", "--registry", proxy.host, "--namespace", "b", "--port", str(port)],
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
        report["with faults"] = soak(url, files, args.clients, args.seconds)
        report["faults injected"] = fault.hits
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        report["retries counted"] = next(
            (line.split()[-1] for line in metrics.splitlines()
             if line.startswith("hf2oci_serve_upstream_retries_total ")), None)  # fmt: skip
        fault.times = 0  # no more faults
        report["without faults"] = soak(url, files, args.clients, args.seconds / 2)
        report["serve peak RSS MiB"] = round(peak_rss(serve.pid) / (1 << 20))
        reg.stop()
        for what in ("/api/models/bench/never-read", "/health"):
            t = time.perf_counter()
            status = requests.get(url + what, timeout=60).status_code
            report[f"registry gone: {what}"] = f"{status} in {time.perf_counter() - t:.2f} s"
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        proxy.server.shutdown()
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
