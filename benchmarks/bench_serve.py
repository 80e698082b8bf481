"""Benchmark `hf2oci serve` (not a test): python benchmarks/bench_serve.py [--size-mib 512]

One run, side by side, on this machine (loopback registry on local disk):
- `snapshot_download` of a SIZE MiB model through `serve` (registry-backed) vs `hf2oci extract`
  of the same image (both fresh processes, into fresh folders), and vs `extract --no-direct`
  (through the page cache, as the hub client writes);
- 8 concurrent downloads of 128 MiB files through `serve` vs reading the same blobs straight
  from the registry (8 concurrent GETs);
- peak RSS of the `serve` process under 32 concurrent downloads;
- 200 `hf_hub_download` calls of small files by commit, in a row (time per call).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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


def drain(url: str) -> int:
    """GET ``url`` and throw the body away; returns its length."""
    got = 0
    with requests.get(url, stream=True) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            got += len(chunk)
    return got


GET_DIRECT = (
    "import sys; from huggingface_hub.file_download import http_get\n"
    "with open(sys.argv[2], 'wb') as f: http_get(sys.argv[1], f)"
)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-serve-"))
    report: dict[str, object] = {}
    reg = start_registry(work / "reg")
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF2OCI_CACHE": str(work / "l-cache"), "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
        big = work / "big.safetensors"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        shards = {}
        for i in range(8):
            p = work / f"shard-{i}.safetensors"
            with open(p, "wb") as f:
                for _ in range(128):
                    f.write(os.urandom(MiB))
            shards[f"model-{i:05d}-of-00008.safetensors"] = p
        small = {f"small/{i:03d}.json": b'{"i": %d}\n' % i for i in range(200)}
        hub.add_repo("bench/big", {"config.json": b"{}\n", "model.safetensors": big})
        hub.add_repo("bench/shards", {"config.json": b"{}\n", **shards})
        hub.add_repo("bench/small", small)
        project = work / "project"
        (project / "get_hf").mkdir(parents=True)
        (project / "get_hf" / "to_get_models.txt").write_text(
            "bench/big\nbench/shards\nbench/small\n"
        )
        subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--base-image", "scratch",
                        "--namespace", "bench"], cwd=project, env=env, check=True)  # fmt: skip
        port = free_port()
        log = open(work / "serve.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [HF2OCI, "serve", "--registry", reg.host, "--namespace", "bench", "--port", str(port)],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        client_env = {**env, "HF_ENDPOINT": url, "HF_HOME": str(work / "hf-home")}
        big_manifest = requests.get(
            f"{reg.url}/v2/bench/models/manifests/bench--big",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).json()
        big_blob = max(big_manifest["layers"], key=lambda d: d["size"])["digest"]
        try:
            rounds = []
            for r in range(args.rounds):
                dest = work / f"snap-{r}"
                code = ("import sys; from huggingface_hub import snapshot_download as s; "
                        "s('bench/big', local_dir=sys.argv[1])")  # fmt: skip
                via_serve = timed(
                    lambda: subprocess.run(
                        [sys.executable, "-c", code, str(dest)], env=client_env, check=True
                    )
                )
                ext = work / f"ext-{r}"
                via_extract = timed(
                    lambda: subprocess.run(
                        [HF2OCI, "extract", f"{reg.host}/bench/models:bench--big", str(ext), "-q"],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                )
                # the same through the page cache, as the hub client writes (extract's default
                # writes big files with O_DIRECT, which is faster on this disk)
                ext_pc = work / f"ext-pc-{r}"
                via_extract_pc = timed(
                    lambda: subprocess.run(
                        [
                            HF2OCI,
                            "extract",
                            f"{reg.host}/bench/models:bench--big",
                            str(ext_pc),
                            "-q",
                            "--no-direct",
                        ],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                )
                shutil.rmtree(ext_pc)
                # the hub client's own download loop (http_get) reading the layer blob straight
                # from the registry: what the client costs with no server in between
                blob_url = f"{reg.url}/v2/bench/models/blobs/{big_blob}"
                direct = timed(
                    lambda: subprocess.run(
                        [sys.executable, "-c", GET_DIRECT, blob_url, str(work / "direct.bin")],
                        env=env,
                        check=True,
                    )
                )
                (work / "direct.bin").unlink()
                same = (dest / "model.safetensors").read_bytes() == big.read_bytes()

                raw = timed(lambda: drain(f"{url}/bench/big/resolve/main/model.safetensors"))
                rounds.append({"snapshot_download_via_serve_s": via_serve,
                               "extract_s": via_extract, "ratio": via_serve / via_extract,
                               "extract_page_cache_s": via_extract_pc,
                               "hub_client_from_registry_s": direct,
                               "ratio_page_cache": via_serve / via_extract_pc,
                               "plain_get_via_serve_s": raw,
                               "same_bytes": same})  # fmt: skip
                shutil.rmtree(dest)
                shutil.rmtree(ext)
                print(json.dumps(rounds[-1]), flush=True)
            report["snapshot_vs_extract"] = rounds

            def through_serve(name: str) -> int:
                return drain(f"{url}/bench/shards/resolve/main/{name}")

            manifest = requests.get(
                f"{reg.url}/v2/bench/models/manifests/bench--shards",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            ).json()
            blobs = [d["digest"] for d in manifest["layers"] if d["size"] > 100 * MiB]

            def from_registry(digest: str) -> int:
                return drain(f"{reg.url}/v2/bench/models/blobs/{digest}")

            conc = []
            for _ in range(args.rounds):
                with ThreadPoolExecutor(8) as pool:
                    t_serve = timed(lambda: list(pool.map(through_serve, shards)))
                with ThreadPoolExecutor(8) as pool:
                    t_reg = timed(lambda: list(pool.map(from_registry, blobs)))
                conc.append({"serve_s": t_serve, "registry_s": t_reg, "ratio": t_serve / t_reg})
                print(json.dumps(conc[-1]), flush=True)
            report["concurrent_8x128MiB"] = conc

            peak = PeakRss(server.pid)
            with ThreadPoolExecutor(32) as pool:
                names = [list(shards)[i % 8] for i in range(32)]
                t32 = timed(lambda: list(pool.map(through_serve, names)))
            report["32_downloads"] = {"seconds": t32, "serve_peak_rss_mib": peak.stop() / MiB}
            print(json.dumps(report["32_downloads"]), flush=True)

            sha = requests.get(f"{url}/api/models/bench/small").json()["sha"]
            code = (
                "import sys, time, json; from huggingface_hub import hf_hub_download as d\n"
                "t = time.perf_counter()\n"
                "for i in range(200):\n"
                "    d('bench/small', f'small/{i:03d}.json', revision=sys.argv[1],"
                " cache_dir=sys.argv[2])\n"
                "print(json.dumps({'per_call_ms': (time.perf_counter() - t) / 200 * 1000}))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, sha, str(work / "c200")],
                env=client_env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            report["small_files_by_commit"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(report["small_files_by_commit"]), flush=True)
        finally:
            server.terminate()
            server.wait(30)
            reg.stop()
    out = ROOT / "benchmarks" / "last-serve.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
