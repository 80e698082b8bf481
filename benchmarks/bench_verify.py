"""How long ``hf2oci verify`` takes on a signed image of many layers (not a test).

    python benchmarks/bench_verify.py [--layers 160] [--rounds 5]

A repo of LAYERS shards of 1.1 MiB on the test hub, mirrored signed into a registry on
127.0.0.1 (one layer each up to the image's cap of 100 layers, ``grouping.MAX_LAYERS``; past it
shards share layers, and verify checks every file of the signed index all the same); then
``hf2oci verify`` in a fresh process, ROUNDS times. Reported: wall seconds min/median/max
(verify reads manifests and signatures, never layers).
"""

from __future__ import annotations

import argparse
import os
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

HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-verify-"))
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (work / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    n = args.layers
    files = {
        f"model-{i:05d}-of-{n:05d}.safetensors": os.urandom(1_150_000) for i in range(1, n + 1)
    }
    reg = start_registry(work / "reg")
    try:
        with HubServer() as hub:
            hub.add_repo("bench/many", files)
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache")}
            subprocess.run(
                [HF2OCI, "mirror", "bench/many", "--registry", reg.host, "--base-image", "scratch",
                 "--no-record", "-q"],
                env={**env, "HF2OCI_SIGNING_KEY": private.decode()}, cwd=work, check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        image = f"{reg.host}/hgfkeep/models:bench--many"
        manifest = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                   f"docker://{image}"], capture_output=True, text=True,
                                  check=True).stdout  # fmt: skip
        layers = manifest.count('"digest"') - 1
        secs = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run([HF2OCI, "verify", image, "--key", str(work / "key.pub")], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            secs.append(time.perf_counter() - t)
        secs.sort()
        print(f"verify of {n} files in {layers} layers: {secs[0]:.2f} / "
              f"{statistics.median(secs):.2f} / {secs[-1]:.2f} s (min/median/max)")  # fmt: skip
    finally:
        reg.stop()


if __name__ == "__main__":
    main()
