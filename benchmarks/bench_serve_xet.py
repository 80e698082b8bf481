"""Benchmark `hf2oci serve` over Xet (not a test):

    python benchmarks/bench_serve_xet.py [--size-mib 384 --clients 8 --rounds 3
                                          --sizes 1,8,64,384 --single-rounds 3]

One run, on this machine (a loopback registry on local disk, serve and the clients on the same
cores), side by side:

- ``--clients`` concurrent `hf_hub_download`s (each a process of its own, into a fresh cache)
  of as many files of ``--size-mib`` MiB through `serve`: over Xet (serve's own CAS: a token,
  reconstructions, xorbs framed from registry Range reads) vs over plain HTTP
  (``HF_HUB_DISABLE_XET=1``, the same server) vs the same client's download loop (`http_get`)
  reading the layer blobs straight from the registry; wall time, serve's peak RSS and its CPU
  seconds (user + system) per GiB sent, each way (a fresh serve for each, its metadata read
  before the clock starts). The three alternate, ``--rounds`` each.
- One `hf_hub_download` of a file of each of ``--sizes`` MiB, over Xet vs over HTTP, fresh
  processes, ``--single-rounds`` each (medians): where Xet starts to pay, which chose
  ``serve --xet-min-size``'s default.

The files are made of non-repeating bytes (nothing dedups). Raw numbers go to
``benchmarks/last-serve-xet.json`` (not committed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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

from hubserver import Generated, HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))
TICKS = os.sysconf("SC_CLK_TCK")

DOWNLOAD = (
    "import sys; from huggingface_hub import hf_hub_download\n"
    "hf_hub_download(sys.argv[1], 'model.safetensors', cache_dir=sys.argv[2])"
)
DIRECT = (
    "import sys; from huggingface_hub.file_download import http_get\n"
    "with open(sys.argv[1], 'wb') as f: http_get(sys.argv[2], f)"
)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_of(pid: int) -> float:
    """User + system seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_of(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def run_all(commands: list[list[str]], envs: list[dict[str, str]]) -> float:
    """The commands at once, each a process; seconds until the last one ends."""
    t = time.perf_counter()
    procs = [subprocess.Popen(c, env=e) for c, e in zip(commands, envs, strict=True)]
    codes = [p.wait() for p in procs]
    took = time.perf_counter() - t
    if any(codes):
        raise SystemExit(f"a client failed: {codes}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=384)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,8,64,384")
    ap.add_argument("--single-rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-serve-xet-"))
    report: dict[str, object] = {"size_mib": args.size_mib, "clients": args.clients}
    reg = start_registry(work / "reg")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubServer() as hub:
        env = {**base_env, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF2OCI_CACHE": str(work / "l-cache"), "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
        names = [f"bench/xet-{i}" for i in range(args.clients)]
        want: dict[str, str] = {}
        for i, name in enumerate(names):
            content = Generated(args.size_mib * MiB, seed=f"xet-{i}", unique=True)
            hub.add_repo(name, {"config.json": b"{}\n", "model.safetensors": content})
        for n in sizes:
            content = Generated(n * MiB, seed=f"single-{n}", unique=True)
            hub.add_repo(f"bench/single-{n}", {"model.safetensors": content})
        project = work / "project"
        (project / "get_hf").mkdir(parents=True)
        listed = [*names, *(f"bench/single-{n}" for n in sizes)]
        (project / "get_hf" / "to_get_models.txt").write_text("\n".join(listed) + "\n")
        subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--base-image", "scratch",
                        "--namespace", "bench"], cwd=project, env=env, check=True)  # fmt: skip
        for name in names:
            tree = requests.get(f"{hub.url}/api/models/{name}/tree/main", timeout=10).json()
            want[name] = next(e["lfs"]["oid"] for e in tree if e["path"] == "model.safetensors")
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start_serve() -> subprocess.Popen[bytes]:
        """A fresh serve (its peak RSS is then its own way's), metadata read once."""
        log = open(work / "serve.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [HF2OCI, "serve", "--registry", reg.host, "--namespace", "bench", "--port",
             str(port), "--xet-min-size", "0"],
            cwd=work, env=base_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        for name in names:  # the manifests and file indexes read before the clock starts
            requests.head(f"{url}/{name}/resolve/main/model.safetensors", timeout=30)
        return proc

    server = start_serve()
    blobs = {}
    for name in names:
        tag = name.replace("/", "--")
        manifest = requests.get(
            f"{reg.url}/v2/bench/models/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
        ).json()  # fmt: skip
        blobs[name] = max(manifest["layers"], key=lambda d: d["size"])["digest"]
    client = {**base_env, "HF_ENDPOINT": url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    sent_gib = args.clients * args.size_mib * MiB / GiB
    try:
        rows: list[dict[str, object]] = []
        for r in range(args.rounds):
            order = ["xet", "http", "direct"]
            order = order[r % 3 :] + order[: r % 3]  # each way goes first once in three
            for way in order:
                dest = work / f"{way}-{r}"
                dest.mkdir()
                envs, commands = [], []
                for i, name in enumerate(names):
                    home = dest / f"home-{i}"
                    e = {**client, "HF_HOME": str(home)}
                    if way == "http":
                        e["HF_HUB_DISABLE_XET"] = "1"
                    if way == "direct":
                        blob = f"{reg.url}/v2/bench/models/blobs/{blobs[name]}"
                        commands.append([sys.executable, "-c", DIRECT, str(dest / f"{i}"), blob])
                    else:
                        commands.append([sys.executable, "-c", DOWNLOAD, name, str(home / "c")])
                    envs.append(e)
                server.terminate()
                server.wait(30)
                server = start_serve()
                xet_before = metric(url, "hf2oci_serve_xet_bytes_total")
                cpu = cpu_of(server.pid)
                peak = PeakRss(server.pid)
                seconds = run_all(commands, envs)
                rss = peak.stop()
                cpu = cpu_of(server.pid) - cpu
                xet_sent = metric(url, "hf2oci_serve_xet_bytes_total") - xet_before
                row: dict[str, object] = {
                    "round": r, "way": way, "seconds": round(seconds, 2),
                    "load": round(os.getloadavg()[0], 1),
                    "serve_peak_rss_mib": round(rss / MiB, 1) if way != "direct" else None,
                    "serve_cpu_s_per_gib": round(cpu / sent_gib, 3) if way != "direct" else None,
                    "xet_gib_sent": round(xet_sent / GiB, 3),
                }  # fmt: skip
                if r == 0:  # every byte checked once per way
                    if way == "direct":  # the layer blobs (a tar around the file): by digest
                        files = [dest / str(i) for i in range(len(names))]
                        expected = sorted(b.removeprefix("sha256:") for b in blobs.values())
                    else:
                        files = list(dest.glob("home-*/c/models--*/snapshots/*/model.safetensors"))
                        expected = sorted(want.values())
                    row["exact"] = sorted(sha256_file(p) for p in files) == expected
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(dest)
        report["concurrent"] = rows
        summary = {}
        for way in ("xet", "http", "direct"):
            mine = [x for x in rows if x["way"] == way]
            summary[way] = {
                "seconds_median": statistics.median(float(str(x["seconds"])) for x in mine),
            }
            if way != "direct":
                summary[way]["serve_peak_rss_mib_max"] = max(
                    float(str(x["serve_peak_rss_mib"])) for x in mine
                )
                summary[way]["serve_cpu_s_per_gib_median"] = statistics.median(
                    float(str(x["serve_cpu_s_per_gib"])) for x in mine
                )
        report["concurrent_summary"] = summary
        print(json.dumps(summary), flush=True)

        singles = []
        for n in sizes:
            times: dict[str, list[float]] = {"xet": [], "http": []}
            for r in range(args.single_rounds):
                for way in ("xet", "http") if r % 2 == 0 else ("http", "xet"):
                    home = work / f"single-{n}-{way}-{r}"
                    e = {**client, "HF_HOME": str(home)}
                    if way == "http":
                        e["HF_HUB_DISABLE_XET"] = "1"
                    cmd = [sys.executable, "-c", DOWNLOAD, f"bench/single-{n}", str(home / "c")]
                    times[way].append(run_all([cmd], [e]))
                    shutil.rmtree(home)
            single: dict[str, float] = {"size_mib": n}
            for w, t in times.items():
                single[f"{w}_s"] = round(statistics.median(t), 3)
                single[f"{w}_min_s"] = round(min(t), 3)
            singles.append(single)
            print(json.dumps(singles[-1]), flush=True)
        report["single"] = singles
    finally:
        server.terminate()
        server.wait(30)
        reg.stop()
    out = ROOT / "benchmarks" / "last-serve-xet.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
