"""What ``serve --verify-key`` costs whole-file downloads (not a test).

    python benchmarks/bench_serve_verify.py [--rounds 3] [--mib 128] [--readers 8]

Eight shards of MIB MiB, mirrored signed into a registry on 127.0.0.1. Two ``hf2oci serve``
processes read it, one with ``--verify-key`` (each whole download hashed as it is sent and
checked against the signed provenance) and one without. Each round downloads the 8 shards
through each, in turn, READERS at once (8); a first round checks every byte and is not timed,
the timed ones read as a client that does not hash. Reported: seconds min/median/max, the
ratio of the medians, and the CPU seconds each serve process spent per round (the check's cost
is one sha256 pass over every byte: on a machine whose cores the plain path already fills, that
CPU time is wall time).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import free_port, start_registry  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def _serve(reg_host: str, work: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [HF2OCI, "serve", "--registry", reg_host, "--namespace", "b", "--port", str(port), *extra],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    return proc, url


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _download(url: str, check: bool) -> str:
    """The body's sha256 (``check``), else its length: the first round checks every byte,
    the others read as a client that does not hash (the hub client's own loop)."""
    h, n = hashlib.sha256(), 0
    with requests.get(url, stream=True, timeout=120) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            if check:
                h.update(chunk)
            n += len(chunk)
    return h.hexdigest() if check else str(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--readers", type=int, default=8,
                    help="downloads at once (8: the target's case; 1: the 8 in turn, which leaves"
                         " a core idle here)")  # fmt: skip
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-serve-verify-"))
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (work / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    names, want = [], {}
    files: dict[str, Path | bytes] = {"config.json": b"{}"}
    for i in range(1, 9):
        path = work / f"s{i}"
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        name = f"model-{i:05d}-of-00008.safetensors"
        files[name] = path
        names.append(name)
        want[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    reg = start_registry(work / "reg")
    servers = []
    try:
        with HubServer() as hub:
            hub.add_repo("bench/sv", files)
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF2OCI_CACHE": str(work / "cache"),
                   "HF2OCI_SIGNING_KEY": private.decode()}  # fmt: skip
            subprocess.run([HF2OCI, "mirror", "bench/sv", "--registry", reg.host, "--namespace",
                            "b", "--base-image", "scratch", "--no-record", "-q"], env=env,
                           cwd=work, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        plain, plain_url = _serve(reg.host, work, [])
        checked, checked_url = _serve(reg.host, work, ["--verify-key", str(work / "key.pub")])
        servers = [plain, checked]
        times: dict[str, list[float]] = {"without": [], "with --verify-key": []}
        cpu: dict[str, list[float]] = {how: [] for how in times}
        for r in range(args.rounds + 1):  # round 0 checks the bytes and is not timed
            for how, url, proc in (("without", plain_url, plain),
                                   ("with --verify-key", checked_url, checked)):  # fmt: skip
                cpu0 = _cpu_seconds(proc.pid)
                t = time.perf_counter()
                urls = [f"{url}/bench/sv/resolve/main/{n}" for n in names]
                check = r == 0
                with ThreadPoolExecutor(args.readers) as pool:
                    got = list(pool.map(_download, urls, [check] * len(urls)))
                expected = [want[n] if check else str(args.mib * MiB) for n in names]
                assert got == expected, "bytes differ"
                if not check:
                    times[how].append(time.perf_counter() - t)
                    cpu[how].append(_cpu_seconds(proc.pid) - cpu0)
        for how, secs in times.items():
            secs.sort()
            print(f"8 x {args.mib} MiB, {args.readers} at once, {how:18}: {secs[0]:6.2f} / "
                  f"{statistics.median(secs):6.2f}"
                  f" / {secs[-1]:6.2f} s; serve's CPU {statistics.median(cpu[how]):.2f} s"
                  f" (median, {os.cpu_count()} cores here)")  # fmt: skip
        ratio = statistics.median(times["with --verify-key"]) / statistics.median(times["without"])
        print(f"with / without (medians): {ratio:.3f}")
    finally:
        for proc in servers:
            proc.terminate()
        reg.stop()


if __name__ == "__main__":
    main()
