"""hf2oci beside its PyPI peer and the raw-PUT limit, in one run (not a test).

    python benchmarks/bench_peers.py [--rounds 3] [--oci-modelcar BIN] [--before DIR] [--rerun]

Two repos on the test hub: one weights file of 512 MiB, and two shards of 192 MiB (384 MiB).
Each round mirrors each repo with each method in turn, into a fresh registry on 127.0.0.1:
`hf2oci mirror` (a fresh process, scratch base, streaming; with --before, also another
checkout's, e.g. the commit before a change), `oci-modelcar push` (PyPI's
oci-modelcar, when BIN is given: `pip install oci-modelcar==1.3.0` into a venv of its own), and
the limit: one sha256 pass over the weights then one raw blob PUT of them. Reported: wall
seconds and peak RSS of the process (os.wait4), min / median / max over the rounds, and each
method's median over the limit's.

``--rerun``: only the no-change re-run, what a scheduled sync does all day. Each method mirrors
the 512 MiB repo once into a registry of its own (not timed), then mirrors it again ``rounds``
times, the methods in turn: hf2oci and "hf2oci before" without ``--force``, the peer's ``push``
as it is. Reported: wall seconds of each fresh process, min / median / max.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from servers import Registry, start_registry  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run ``cmd``; its peak RSS in bytes (a failure raises with its stderr)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    return int(usage.ru_maxrss) * 1024


def raw_put(reg: Registry, weights: list[Path]) -> int:
    """The limit: hash each weights file, then PUT it as one blob."""
    for path in weights:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        r = requests.post(f"{reg.url}/v2/limit/blobs/uploads/")
        loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else reg.url + loc
        sep = "&" if "?" in loc else "?"
        with open(path, "rb") as f:
            r = requests.put(f"{loc}{sep}digest=sha256:{h.hexdigest()}", data=f,
                             headers={"Content-Length": str(path.stat().st_size)})  # fmt: skip
        r.raise_for_status()
    return 0


def _methods(
    args: argparse.Namespace, env: dict[str, str], hub_url: str, name: str, weights: list[Path]
) -> dict[str, Callable[[Registry, Path], int]]:
    """Each method, as ``fn(registry, scratch folder) -> peak RSS``."""

    force = [] if args.rerun else ["--force"]

    def hf2oci(cmd: list[str], extra: dict[str, str]) -> Callable[[Registry, Path], int]:
        def go(reg: Registry, scratch: Path) -> int:
            args = [*cmd, "mirror", f"bench/{name}", "--registry", reg.host,
                    "--base-image", "scratch", "--no-record", "-q", *force]  # fmt: skip
            return run(args, {**env, "HF2OCI_CACHE": str(scratch / "cache"), **extra}, scratch)

        return go

    def peer(reg: Registry, scratch: Path) -> int:
        cmd = [args.oci_modelcar, "push", "--hf-repo", f"bench/{name}", "--hf-endpoint", hub_url,
               "--registry", reg.host, "--target-repo", f"bench/{name}", "--target-tag", "t",
               "--spool-dir", str(scratch / "spool"), "--quiet"]  # fmt: skip
        return run(cmd, {**env, "HF_HOME": str(scratch / "hf")}, scratch)

    methods: dict[str, Callable[[Registry, Path], int]] = {"hf2oci": hf2oci([HF2OCI], {})}
    if not args.rerun:
        methods["limit"] = lambda reg, scratch: raw_put(reg, weights)
    if args.before:
        methods["hf2oci before"] = hf2oci([sys.executable, "-m", "hf2oci"],
                                          {"PYTHONPATH": args.before})  # fmt: skip
    if args.oci_modelcar:
        methods["oci-modelcar"] = peer
    return methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--oci-modelcar", default=None, help="the peer's console script")
    ap.add_argument(
        "--before", default=None, help="the src/ of another hf2oci (a git worktree) to run too"
    )
    ap.add_argument("--rerun", action="store_true", help="only the no-change re-run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-peers-"))
    cases: dict[str, dict[str, Path | bytes]] = {}
    repos = (("m512", [512]),) if args.rerun else (("m512", [512]), ("shards384", [192, 192]))
    for name, sizes in repos:
        files: dict[str, Path | bytes] = {"config.json": b'{"a": 1}\n'}
        for i, size in enumerate(sizes):
            path = work / f"{name}-{i}.safetensors"
            with open(path, "wb") as f:
                for _ in range(size):
                    f.write(os.urandom(MiB))
            key = "model.safetensors" if len(sizes) == 1 else (
                f"model-{i + 1:05d}-of-{len(sizes):05d}.safetensors")  # fmt: skip
            files[key] = path
        cases[name] = files
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
        for name, files in cases.items():
            hub.add_repo(f"bench/{name}", files)
        if args.rerun:
            rerun(args, env, hub.url, work, cases["m512"])
            shutil.rmtree(work, ignore_errors=True)
            return
        for _ in range(args.rounds):
            for name, files in cases.items():
                weights = [p for p in files.values() if isinstance(p, Path)]
                methods = _methods(args, env, hub.url, name, weights)
                for method, fn in methods.items():
                    reg = start_registry(work / "reg")
                    scratch = work / "scratch"
                    scratch.mkdir()
                    try:
                        t = time.perf_counter()
                        rss = fn(reg, scratch)
                        seconds = time.perf_counter() - t
                    finally:
                        reg.stop()
                        shutil.rmtree(work / "reg", ignore_errors=True)
                        shutil.rmtree(scratch, ignore_errors=True)
                    results.setdefault((name, method), []).append((seconds, rss))
    print("| repo | method | seconds min / median / max | × the limit | peak RSS (median) |")
    print("| --- | --- | --- | ---: | ---: |")
    for name in cases:
        limit = statistics.median(s for s, _ in results[(name, "limit")])
        for (case, method), runs in results.items():
            if case != name:
                continue
            secs = sorted(s for s, _ in runs)
            rss = statistics.median(r for _, r in runs) / MiB
            print(f"| {name} | {method} | {secs[0]:.2f} / {statistics.median(secs):.2f} / "
                  f"{secs[-1]:.2f} | {statistics.median(secs) / limit:.2f} | "
                  f"{'–' if method == 'limit' else f'{rss:.0f} MiB'} |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def rerun(
    args: argparse.Namespace, env: dict[str, str], hub_url: str, work: Path,
    files: dict[str, Path | bytes],
) -> None:  # fmt: skip
    """Each method's no-change re-run of the 512 MiB repo, into the registry it mirrored it to
    first, the methods in turn ``args.rounds`` times."""
    weights = [p for p in files.values() if isinstance(p, Path)]
    methods = _methods(args, env, hub_url, "m512", weights)
    places = {}
    for i, (method, fn) in enumerate(methods.items()):
        scratch = work / f"scratch-{i}"
        scratch.mkdir()
        places[method] = (start_registry(work / f"reg-{i}"), scratch)
        fn(*places[method])  # the first mirror
    times: dict[str, list[float]] = {method: [] for method in methods}
    try:
        for _ in range(args.rounds):
            for method, fn in methods.items():
                t = time.perf_counter()
                fn(*places[method])
                times[method].append(time.perf_counter() - t)
    finally:
        for reg, _ in places.values():
            reg.stop()
    print("| method | no-change re-run, seconds min / median / max |")
    print("| --- | --- |")
    for method, secs in times.items():
        secs.sort()
        print(f"| {method} | {secs[0]:.2f} / {statistics.median(secs):.2f} / {secs[-1]:.2f} |")


if __name__ == "__main__":
    main()
