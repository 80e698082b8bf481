"""What the pickle scan costs on a large streamed checkpoint (not a test).

    python benchmarks/bench_scan.py [--gib 2] [--rounds 2]

One PyTorch zip checkpoint (``torch.save`` of 8 MiB tensors, ``--gib`` GiB in all) on the test
hub. Each round mirrors it into a fresh OCI layout with ``--scan refuse`` and with
``--scan off``, side by side, each in a fresh process. Reported: wall seconds and the bytes the
hub served (every body byte it sent: the stream's Range parts, the scan's Range reads), and the
difference between the two: what the scan read beyond the single stream.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def _served(hub: HubServer, name: str, size: int) -> int:
    """Body bytes the hub sent for ``name``: each 206's range, each 200 in full."""
    total = 0
    for path, header in hub.ranges:
        if name in path:
            start, end = header.split("=", 1)[1].split("-")
            total += min(int(end), size - 1) - int(start) + 1
    full = sum(1 for m, p in hub.requests if m == "GET" and name in p)
    return total + max(0, full - len([1 for p, _ in hub.ranges if name in p])) * size


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-scan-"))
    ckpt = work / "pytorch_model.bin"
    n = int(args.gib * 1024 / 8)
    torch.save({f"layer.{i}.weight": torch.full((2 * MiB,), float(i)) for i in range(n)}, ckpt)
    size = ckpt.stat().st_size
    print(f"checkpoint: {size / MiB:.0f} MiB, {n} tensors")
    results: dict[str, list[tuple[float, int]]] = {"refuse": [], "off": []}
    with HubServer() as hub:
        hub.add_repo("bench/ckpt", {"config.json": b"{}", "pytorch_model.bin": ckpt})
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        for _ in range(args.rounds):
            for policy in results:
                out = work / "out"
                hub.reset_log()
                hub.ranges.clear()
                t = time.perf_counter()
                subprocess.run(
                    [HF2OCI, "mirror", "bench/ckpt", "--scan", policy, "--base-image", "scratch",
                     "--output-dir", str(out), "--no-record", "--force", "-q"],
                    env={**env, "HF2OCI_CACHE": str(work / "cache")}, cwd=work, check=True,
                )  # fmt: skip
                seconds = time.perf_counter() - t
                results[policy].append((seconds, _served(hub, "pytorch_model.bin", size)))
                shutil.rmtree(out)
                shutil.rmtree(work / "cache", ignore_errors=True)
    for policy, runs in results.items():
        secs = sorted(s for s, _ in runs)
        served = statistics.median(b for _, b in runs)
        timing = f"{min(secs):6.2f} / {statistics.median(secs):6.2f} / {max(secs):6.2f} s"
        print(f"scan {policy:6}: {timing} (min/median/max), hub served {served / MiB:9.2f} MiB")
    extra = statistics.median(b for _, b in results["refuse"]) - statistics.median(
        b for _, b in results["off"]
    )
    ratio = statistics.median(s for s, _ in results["refuse"]) / statistics.median(
        s for s, _ in results["off"]
    )
    print(f"scan read beyond the stream: {extra / MiB:.2f} MiB; time ratio refuse/off {ratio:.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
