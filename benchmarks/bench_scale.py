"""Benchmark a big dataset (not a test): python benchmarks/bench_scale.py [--small N] [--shards N]

A dataset of SMALL small JSON files (in 20 folders) and SHARDS parquet-sized shards (1.1 MiB
each) on the test hub, mirrored into a loopback registry by `hf2oci mirror` (a fresh process):
the time and peak RSS of the first mirror and of a no-change re-run, the layer count and the
manifest's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import start_registry  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one fresh process. The peak is GNU time's: a child
    forked from this process (which holds the test hub's files) would count their pages."""
    out = cwd / "rss.txt"
    t = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(out), HF2OCI, *args],
                   env=env, cwd=cwd, check=True)  # fmt: skip
    return time.perf_counter() - t, int(out.read_text().split()[-1]) * 1024


def bench(work: Path) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=2000)
    args = ap.parse_args()
    reg = start_registry(work / "reg")
    with HubServer() as hub:
        files = {f"meta/{i % 20:02d}/{i:06d}.json": b'{"i": %d}\n' % i for i in range(args.small)}
        for i in range(args.shards):
            files[f"data/train-{i:05d}-of-{args.shards:05d}.parquet"] = os.urandom(1100 * 1024)
        hub.add_repo("bench/huge-ds", files, repo_type="dataset")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TMPDIR": str(work)}  # fmt: skip
        common = ["mirror", "bench/huge-ds", "--dataset", "--registry", reg.host,
                  "--base-image", "scratch", "--no-record", "-q"]  # fmt: skip
        first_s, first_rss = run(common, env, work)
        again_s, again_rss = run(common, env, work)
        manifest = requests.get(
            f"{reg.url}/v2/hgfkeep/datasets/manifests/bench--huge-ds",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        report = {
            "files": len(files),
            "bytes": sum(len(v) for v in files.values()),
            "first_mirror_s": first_s,
            "first_mirror_peak_rss_mib": first_rss / 2**20,
            "no_change_rerun_s": again_s,
            "no_change_rerun_peak_rss_mib": again_rss / 2**20,
            "layers": len(manifest.json()["layers"]),
            "manifest_bytes": len(manifest.content),
        }
    reg.stop()
    print(json.dumps(report, indent=1))
    (ROOT / "benchmarks" / "last-scale.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    # the registry and the hub cache hold GiBs: the folder goes, whatever happens
    with tempfile.TemporaryDirectory(prefix="hf2oci-bench-scale-") as work:
        bench(Path(work))


if __name__ == "__main__":
    main()
