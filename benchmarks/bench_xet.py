"""Benchmark mirroring from a hub that keeps its files in Xet (not a test).

    python benchmarks/bench_xet.py paths [--files 4 --gib 1 --rounds 3]
    python benchmarks/bench_xet.py big [--gib 12 --layer-gib 4]

The test hub's CAS holds the files as real xorbs (hf_xet uploads them, once: ``--xet-root`` is
kept between runs), each file of non-repeating bytes (nothing dedups).

``paths``: the same repo mirrored into a loopback registry through Xet (hf_xet, the default)
and over plain HTTP (``--no-xet``: the hub's 302 to its bridge, which reconstructs the file from
the CAS), the two alternated, ``--rounds`` each; wall time and hf2oci's peak RSS.

``big``: one file of ``--gib`` GiB through Xet with ``max_layer_size`` ``--layer-gib`` GiB (so in
parts): wall time, hf2oci's peak RSS (GNU time) and the scratch disk it used (the peak of what
its work folder holds besides the registry's storage: its TMPDIR, HF_HOME, layer cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import Generated, HubServer  # noqa: E402
from servers import start_registry  # noqa: E402

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))
GiB = 1 << 30


def stored(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def mirror(repo: str, work: Path, env: dict[str, str], *args: str) -> tuple[float, int]:
    """One ``hf2oci mirror`` in a process of its own: (seconds, peak RSS in bytes)."""
    rss = work / f"rss-{uuid.uuid4().hex[:6]}.txt"
    t = time.perf_counter()
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss), HF2OCI, "mirror", repo, "--base-image",
         "scratch", "--no-record", "-q", *args], env=env, cwd=work, check=True,
    )  # fmt: skip
    took = time.perf_counter() - t
    return took, int(rss.read_text().split()[-1]) * 1024


def paths(hub: HubServer, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    files = {
        f"model-{i + 1:05d}-of-{args.files:05d}.safetensors": Generated(
            args.gib * GiB, seed=f"xet-bench-{i}", unique=True
        )
        for i in range(args.files)
    }
    t = time.perf_counter()
    hub.add_repo("bench/xet-paths", {"config.json": b"{}\n", **files}, xet=True)
    print(f"repo in the CAS in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    hub.bridge_limit = 10**15  # both paths may read every file
    reg = start_registry(work / "reg")
    times: dict[str, list[float]] = {"xet": [], "http": []}
    rss: dict[str, list[int]] = {"xet": [], "http": []}
    try:
        for r in range(args.rounds):
            for way in ("xet", "http") if r % 2 == 0 else ("http", "xet"):
                ns = f"{way}{r}{uuid.uuid4().hex[:4]}"
                extra = ["--no-xet"] if way == "http" else []
                took, peak = mirror("bench/xet-paths", work, env, "--registry", reg.host,
                                    "--namespace", ns, *extra)  # fmt: skip
                times[way].append(took)
                rss[way].append(peak)
                print(f"round {r} {way}: {took:.2f} s, {peak / 2**20:.0f} MiB", file=sys.stderr)
    finally:
        reg.stop()
    total = args.files * args.gib * GiB
    return {
        "case": f"{args.files} x {args.gib} GiB, Xet vs HTTP (bridge), loopback registry",
        "bytes": total,
        **{f"{w}_s": times[w] for w in times},
        **{f"{w}_median_s": statistics.median(times[w]) for w in times},
        **{f"{w}_MBps": total / statistics.median(times[w]) / 1e6 for w in times},
        **{f"{w}_peak_rss_mib": max(rss[w]) / 2**20 for w in rss},
        "xet/http": statistics.median(times["xet"]) / statistics.median(times["http"]),
    }


def big(hub: HubServer, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    size = args.gib * GiB
    t = time.perf_counter()
    hub.add_repo("bench/xet-big", {"config.json": b"{}\n",
                                   "model.gguf": Generated(size, seed="xet-big", unique=True)},
                 xet=True)  # fmt: skip
    print(f"file in the CAS in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    hub.bridge_limit = GiB  # it comes only through Xet
    reg = start_registry(work / "reg")
    peak = [0]
    stop = threading.Event()

    def sample() -> None:  # what hf2oci writes besides the registry's storage
        while not stop.wait(0.2):
            mine = sum(stored(p) for p in work.iterdir() if p.is_dir() and p.name != "reg")
            peak[0] = max(peak[0], mine)

    threading.Thread(target=sample, daemon=True).start()
    try:
        took, rss = mirror("bench/xet-big", work, env, "--registry", reg.host,
                           "--max-layer-size", str(args.layer_gib * GiB))  # fmt: skip
        stop.set()
        kept = stored(work / "reg")
    finally:
        reg.stop()
    return {
        "case": f"one {args.gib} GiB file through Xet, max_layer_size {args.layer_gib} GiB",
        "bytes": size,
        "mirror_s": took,
        "MBps": size / took / 1e6,
        "peak_rss_mib": rss / 2**20,
        "scratch_disk_mib": peak[0] / 2**20,
        "registry_stored_gib": kept / GiB,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["paths", "big"])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--gib", type=int, default=None)
    ap.add_argument("--layer-gib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--xet-root", type=Path, default=Path(tempfile.gettempdir()) / "hf2oci-xet")
    args = ap.parse_args()
    args.gib = args.gib or (1 if args.case == "paths" else 12)
    args.xet_root.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="hf2oci-bench-xet-") as tmp,
        HubServer(xet_root=args.xet_root) as hub,
    ):
        work = Path(tmp)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache"),
               "TMPDIR": str(work), "HF_HOME": str(work / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        report = (paths if args.case == "paths" else big)(hub, work, env, args)
    print(json.dumps(report, indent=1))
    out = ROOT / "benchmarks" / f"last-xet-{args.case}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
