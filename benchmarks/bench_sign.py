"""What signing costs a mirror (not a test).

    python benchmarks/bench_sign.py [--mib 512] [--rounds 3]

One repo of a MIB-sized weights file on the test hub. Each round mirrors it into a fresh
registry on 127.0.0.1 with and without HF2OCI_SIGNING_KEY, side by side, each in a fresh
process (scratch base, streaming). Reported: wall seconds min/median/max and the ratio of the
medians.
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import start_registry  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-sign-"))
    weights = work / "model.safetensors"
    with open(weights, "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(MiB))
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    times: dict[str, list[float]] = {"unsigned": [], "signed": []}
    with HubServer() as hub:
        hub.add_repo("bench/sign", {"config.json": b"{}", "model.safetensors": weights})
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF2OCI_SIGNING_KEY", None)
        for _ in range(args.rounds):
            for how in times:
                reg = start_registry(work / "reg")
                extra = {"HF2OCI_SIGNING_KEY": key.decode()} if how == "signed" else {}
                try:
                    t = time.perf_counter()
                    subprocess.run(
                        [HF2OCI, "mirror", "bench/sign", "--registry", reg.host, "--base-image",
                         "scratch", "--no-record", "--force", "-q"],
                        env={**env, **extra, "HF2OCI_CACHE": str(work / "cache")}, cwd=work,
                        check=True, stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                    times[how].append(time.perf_counter() - t)
                finally:
                    reg.stop()
                    shutil.rmtree(work / "reg", ignore_errors=True)
                    shutil.rmtree(work / "cache", ignore_errors=True)
    for how, secs in times.items():
        secs.sort()
        print(f"{how:9}: {secs[0]:6.2f} / {statistics.median(secs):6.2f} / {secs[-1]:6.2f} s")
    ratio = statistics.median(times["signed"]) / statistics.median(times["unsigned"])
    print(f"signed / unsigned (medians): {ratio:.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
