"""Benchmark: `hf2oci extract` vs `docker pull` + `docker create` + `docker cp` (same image).

Run on demand (not a test):  python benchmarks/bench_extract.py [--size-mib 512]

Mirrors a repo with one random weights file to a registry it starts (oci builder), then in one
run times both ways of getting /REPO out, each from a cold start (the image removed from the
engine first, destination folders fresh), and checks both give the same bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import ensure_dockerd, start_registry  # noqa: E402

MiB = 1 << 20


def timed(cmd: list[str], **kw: object) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ensure_dockerd(Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-extract-"))
    reg = start_registry(work / "reg")
    try:
        weights = work / "model.safetensors"
        with open(weights, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        with HubServer() as hub:
            hub.add_repo("bench/extract", {"config.json": b"{}", "model.safetensors": weights})
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "c")}
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hf2oci",
                    "mirror",
                    "bench/extract",
                    "--registry",
                    reg.host,
                    "--base-image",
                    "scratch",
                    "--no-record",
                    "-q",
                ],
                check=True,
                env=env,
                cwd=work,
            )
        ref = f"{reg.host}/hgfkeep/models:bench--extract"
        rows = []
        for i in range(args.rounds):
            subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
            subprocess.run(["sync"], check=True)
            docker_dest = work / f"docker-{i}"
            t_pull = timed(["docker", "pull", "-q", ref])
            t0 = time.perf_counter()
            cid = subprocess.run(
                ["docker", "create", ref, "sh"], check=True, capture_output=True, text=True
            ).stdout.strip()
            subprocess.run(
                ["docker", "cp", f"{cid}:/REPO", str(docker_dest)], check=True, capture_output=True
            )
            t_cp = time.perf_counter() - t0
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
            ours = work / f"extract-{i}"
            subprocess.run(["sync"], check=True)  # each method starts with no dirty pages
            t_ours = timed([sys.executable, "-m", "hf2oci", "extract", ref, str(ours)])
            same = filecmp.cmp(
                docker_dest / "model.safetensors", ours / "model.safetensors", shallow=False
            )
            # the same through the page cache, and into an HF cache (hashing every file too)
            buffered = work / f"buffered-{i}"
            subprocess.run(["sync"], check=True)
            t_buffered = timed(
                [sys.executable, "-m", "hf2oci", "extract", "--no-direct", ref, str(buffered)]
            )
            hf_cache = work / f"hf-cache-{i}"
            subprocess.run(["sync"], check=True)
            t_cache = timed(
                [sys.executable, "-m", "hf2oci", "extract", "--hf-cache", ref, str(hf_cache)]
            )
            docker_total = t_pull + t_cp
            rows.append(
                {
                    "docker_pull_s": t_pull,
                    "docker_create_cp_s": t_cp,
                    "docker_total_s": docker_total,
                    "hf2oci_extract_s": t_ours,
                    "ratio": docker_total / t_ours,
                    "hf2oci_extract_no_direct_s": t_buffered,
                    "ratio_no_direct": docker_total / t_buffered,
                    "hf2oci_extract_hf_cache_s": t_cache,
                    "same_bytes": same,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            for folder in (docker_dest, ours, buffered, hf_cache):
                shutil.rmtree(folder)
        ratios = sorted(r["ratio"] for r in rows)
        out = {"size_mib": args.size_mib, "median_ratio": ratios[len(ratios) // 2], "rounds": rows}
        print(f"median ratio (docker pull+create+cp / hf2oci extract): {out['median_ratio']:.2f}")
        (ROOT / "benchmarks" / "last-extract.json").write_text(json.dumps(out, indent=1) + "\n")
    finally:
        reg.stop()
        subprocess.run(
            ["docker", "rmi", "-f", f"{reg.host}/hgfkeep/models:bench--extract"],
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
