"""Benchmark serve's S3 face (not a test): python benchmarks/bench_s3.py [--size-mib 512]

One run, side by side, on this machine (loopback registry on local disk, every process on the
same cores): a SIZE MiB safetensors file (64 tensors) mirrored into the registry, then
- 8 concurrent readers of 8 MiB ranges over it through ``hf2oci serve --s3-port`` (SigV4 with a
  serve token, each range signed by botocore) vs the same ranges straight from the registry blob
  (the same HTTP client, in turns, ``--rounds`` times), with serve's CPU time, and the same
  ranges through serve's Hub API (``resolve`` with Range) for a reference;
- run:ai's ``SafetensorsStreamer`` streaming every tensor of the file from serve, and of a
  ``--streamer-mib`` file (default 64) from serve vs from moto's S3 server (a process of its own)
  holding it: moto reads a whole object for each Range request, so under run:ai's 8+ ranges in
  flight it cannot serve a 512 MiB file before the client's throughput check closes the
  connection (measured: every try failed);
- serve's peak RSS with 64 ranges of 8 MiB in flight (64 readers at once, ``--rounds`` times).
Raw numbers go to benchmarks/last-s3.json (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bench_serve import PeakRss  # noqa: E402

from hubserver import HubServer  # noqa: E402
from s3servers import tensors_file  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

MiB = 1 << 20
PIECE = 8 * MiB
TOKEN = "bench-token"
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))
REPO = "bench/s3"

STREAM = r"""
import json, sys, time
from runai_model_streamer import SafetensorsStreamer
t, n, size = time.perf_counter(), 0, 0
with SafetensorsStreamer() as streamer:
    streamer.stream_file(sys.argv[1])
    for _, tensor in streamer.get_tensors():
        n += 1
        size += tensor.numel() * tensor.element_size()
print(json.dumps({"seconds": time.perf_counter() - t, "tensors": n, "bytes": size}))
"""


def signed_headers(url: str, start: int, end: int) -> dict[str, str]:
    """A Range GET of ``url`` signed as boto3 signs (SigV4, the serve token as secret)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=url, headers={"Range": f"bytes={start}-{end}"})
    S3SigV4Auth(Credentials("bench", TOKEN), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def read(url: str, headers: dict[str, str], want: int) -> None:
    got = 0
    with requests.get(url, headers=headers, stream=True, timeout=60) as r:
        assert r.status_code == 206, (r.status_code, r.text[:200])
        for chunk in r.iter_content(1 << 20):
            got += len(chunk)
    assert got == want, (got, want)


def ranges(size: int) -> list[tuple[int, int]]:
    return [(s, min(size, s + PIECE) - 1) for s in range(0, size, PIECE)]


def timed_readers(jobs: list[tuple[str, dict[str, str], int]], readers: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        list(pool.map(lambda job: read(*job), jobs))
    return time.perf_counter() - t


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(url: str, path: str = "/") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(url + path, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def stream(endpoint: str, url: str, *, secret: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNAI_"))}
    env.update(AWS_ENDPOINT_URL=endpoint, RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
               AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY=secret, RUNAI_STREAMER_LOG_LEVEL="WARNING")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", STREAM, url], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    if out.returncode:
        return {"failed": out.stderr.strip().splitlines()[-1], "seconds": float("nan"),
                "MiB_per_s": 0.0}  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["MiB_per_s"] = result["bytes"] / MiB / result["seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streamer-mib", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-s3-"))
    report: dict[str, Any] = {"size_mib": args.size_mib}
    reg = start_registry(work / "reg")
    source = tensors_file(work / "model.safetensors", size=args.size_mib * MiB, count=64)
    small = tensors_file(work / "small.safetensors", size=args.streamer_mib * MiB, count=40)
    size = source.stat().st_size
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with HubServer() as hub:
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                   "HF2OCI_CACHE": str(work / "l-cache"), "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
            hub.add_repo(REPO, {"config.json": b"{}\n", "model.safetensors": source,
                                "small.safetensors": small})  # fmt: skip
            project = work / "project"
            (project / "get_hf").mkdir(parents=True)
            (project / "get_hf" / "to_get_models.txt").write_text(f"{REPO}\n")
            subprocess.run([HF2OCI, "sync", "-q", "--registry", reg.host, "--base-image",
                            "scratch", "--namespace", "bench"], cwd=project, env=env,
                           check=True)  # fmt: skip
        (work / "tokens").write_text(f"{TOKEN}\n")
        port, s3_port = free_port(), free_port()
        serve = subprocess.Popen(
            [HF2OCI, "serve", "--registry", reg.host, "--namespace", "bench", "--port", str(port),
             "--s3-port", str(s3_port), "--token-file", str(work / "tokens")],
            cwd=work, stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        procs.append(serve)
        wait_up(f"http://127.0.0.1:{port}", "/health")
        s3 = f"http://127.0.0.1:{s3_port}"

        from hf2oci.consume.serve.store import registry_store

        f = registry_store(reg.host, "bench").snapshot("model", REPO, "main").files
        layer, offset, _ = f["model.safetensors"].spans[0]
        blob = f"{reg.url}/v2/bench/models/blobs/{layer.digest}"
        key_url = f"{s3}/models/{REPO}/model.safetensors"
        pieces = ranges(size)

        def serve_jobs() -> list[tuple[str, dict[str, str], int]]:
            return [(key_url, signed_headers(key_url, a, b), b - a + 1) for a, b in pieces]

        registry_jobs = [(blob, {"Range": f"bytes={offset + a}-{offset + b}"}, b - a + 1)
                         for a, b in pieces]  # fmt: skip
        resolve = f"http://127.0.0.1:{port}/{REPO}/resolve/main/model.safetensors"
        hub_jobs = [(resolve, {"Range": f"bytes={a}-{b}", "Authorization": f"Bearer {TOKEN}"},
                     b - a + 1) for a, b in pieces]  # fmt: skip
        eight = []
        for _ in range(args.rounds):
            cpu = cpu_seconds(serve.pid)
            through = timed_readers(serve_jobs(), 8)
            cpu = cpu_seconds(serve.pid) - cpu
            straight = timed_readers(registry_jobs, 8)
            hub_api = timed_readers(hub_jobs, 8)
            eight.append({"serve_s": through, "registry_s": straight, "ratio": through / straight,
                          "serve_cpu_s": cpu, "hub_api_same_ranges_s": hub_api})  # fmt: skip
            print(json.dumps(eight[-1]), flush=True)
        report["8_readers_8MiB_ranges"] = eight

        rss = []
        for _ in range(args.rounds):
            peak = PeakRss(serve.pid)
            jobs = serve_jobs()
            jobs = (jobs * (64 // len(jobs) + 1))[:64]
            seconds = timed_readers(jobs, 64)
            rss.append({"seconds": seconds, "serve_peak_rss_mib": peak.stop() / MiB})
            print(json.dumps(rss[-1]), flush=True)
        report["64_ranges_in_flight"] = rss

        moto_port = free_port()
        moto = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
             str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(moto)
        moto_url = f"http://127.0.0.1:{moto_port}"
        wait_up(moto_url)
        import boto3

        client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key=TOKEN)  # fmt: skip
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key=f"{REPO}/small.safetensors",
                          Body=small.read_bytes())  # fmt: skip
        streamed = []
        url = f"s3://models/{REPO}/small.safetensors"
        for _ in range(args.rounds):
            from_serve = stream(s3, url, secret=TOKEN)
            from_moto = stream(moto_url, url, secret=TOKEN)
            whole = stream(s3, f"s3://models/{REPO}/model.safetensors", secret=TOKEN)
            streamed.append({"serve": from_serve, "moto": from_moto, "serve_whole": whole,
                             "ratio": from_serve["seconds"] / from_moto["seconds"]})  # fmt: skip
            print(json.dumps(streamed[-1]), flush=True)
        report["runai_streamer"] = streamed
        report["medians"] = {
            "8_readers_ratio": statistics.median(r["ratio"] for r in eight),
            "peak_rss_mib_64_ranges": max(r["serve_peak_rss_mib"] for r in rss),
            "streamer_serve_MiB_s": statistics.median(r["serve"]["MiB_per_s"] for r in streamed),
            "streamer_moto_MiB_s": statistics.median(r["moto"]["MiB_per_s"] for r in streamed),
            "streamer_serve_whole_MiB_s": statistics.median(
                r["serve_whole"]["MiB_per_s"] for r in streamed
            ),
        }
        print(json.dumps(report["medians"]), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        reg.stop()
    out = ROOT / "benchmarks" / "last-s3.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
