"""Crossing the gap: bundle and load against their limits (not a test).

    python benchmarks/bench_airgap.py [--gib 2] [--files 4] [--rounds 3] [--tar-split GIB]

One repo of FILES random weights files (GIB in all) on the test hub, mirrored once into an
"outside" registry and once into layouts (no registry). Each round, side by side:
- ``hf2oci bundle --registry`` (a folder) vs ``skopeo sync --src docker --dest dir`` of the
  moving tag (one image; the bundle also holds the pinned tag, same digest);
- ``hf2oci bundle --layout`` (hard links from the layouts on the same disk);
- ``hf2oci load`` of that bundle into a fresh "inside" registry vs the raw limit: sha256 of each
  blob file, then one streamed PUT each (what bench_sync.py calls the limit).
With ``--tar-split``, the bundle is a tar in volumes of that size and ``load`` streams it (the
limit still PUTs the same blobs from a folder bundle). Reported: wall seconds min/median/max,
ratios of medians, peak RSS of bundle and load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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

from hubserver import Generated, HubServer  # noqa: E402
from servers import Registry, start_registry  # noqa: E402

MiB = 1 << 20
HF2OCI = str(Path(sys.executable).with_name("hf2oci"))


def run(cmd: list[str], *, env: dict[str, str], cwd: Path) -> int:
    """Run a command; its peak RSS in bytes (raises on failure)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    return int(usage.ru_maxrss) * 1024


def limit_put(reg: Registry, bundle: Path) -> None:
    for blob in sorted((bundle / "blobs" / "sha256").iterdir()):
        h = hashlib.sha256()
        with open(blob, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        r = requests.post(f"{reg.url}/v2/limit/blobs/uploads/", timeout=60)
        loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else reg.url + loc
        sep = "&" if "?" in loc else "?"
        with open(blob, "rb") as f:
            r = requests.put(f"{loc}{sep}digest=sha256:{h.hexdigest()}", data=f, timeout=600,
                             headers={"Content-Length": str(blob.stat().st_size)})  # fmt: skip
        r.raise_for_status()


def stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tar-split", type=float, default=0.0)
    ap.add_argument("--rss-only", action="store_true",
                    help="bundle and load alone (no skopeo, no layouts, no limit), the files "
                    "made by the test hub on the fly: a 10 GiB run fits the disk")  # fmt: skip
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf2oci-airgap-"))
    per_file = int(args.gib * 1024 / args.files)
    files: dict[str, bytes | Path | Generated] = {"config.json": b'{"model_type": "bench"}\n'}
    for i in range(args.files):
        path = work / f"model-{i + 1:05d}-of-{args.files:05d}.safetensors"
        if args.rss_only:
            files[path.name] = Generated(per_file * MiB, seed=path.name)
            continue
        with open(path, "wb") as f:
            for _ in range(per_file):
                f.write(os.urandom(MiB))
        files[path.name] = path
    times: dict[str, list[float]] = {
        k: [] for k in ("bundle", "skopeo", "bundle-layout", "load", "limit")
    }
    rss: dict[str, list[int]] = {"bundle": [], "load": []}
    outside = start_registry(work / "outside")
    try:
        with HubServer() as hub:
            hub.add_repo("bench/airgap", files)
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1",
                   "HF2OCI_CACHE": str(work / "cache")}  # fmt: skip
            env.pop("HF2OCI_SIGNING_KEY", None)
            project = work / "project"
            (project / "get_hf").mkdir(parents=True)
            (project / "get_hf" / "to_get_models.txt").write_text("bench/airgap\n")
            (project / "get_hf" / "to_get_datasets.txt").write_text("")
            t = time.perf_counter()
            run([HF2OCI, "mirror", "bench/airgap", "--registry", outside.host, "--namespace",
                 "bench", "--base-image", "scratch"], env=env, cwd=project)  # fmt: skip
            mirror_s = time.perf_counter() - t
            if not args.rss_only:
                run([HF2OCI, "mirror", "bench/airgap", "--namespace", "bench", "--base-image",
                     "scratch", "--output-dir", str(work / "layouts")], env=env,
                    cwd=project)  # fmt: skip
        ref = f"{outside.host}/bench/models:bench--airgap"
        for r in range(args.rounds):
            steps: list[tuple[str, Callable[[], None]]] = []
            bundle = work / f"bundle{r}"

            tar = work / f"tar{r}" / "b.tar"

            def do_bundle(bundle: Path = bundle, tar: Path = tar) -> None:
                rss["bundle"].append(run([HF2OCI, "bundle", "--registry", outside.host,
                                          "--namespace", "bench", "-o", str(bundle)],
                                         env=env, cwd=project))  # fmt: skip
                if args.tar_split:
                    run([HF2OCI, "bundle", "--registry", outside.host, "--namespace", "bench",
                         "-o", str(tar), "--split", f"{int(args.tar_split * 1024)}MiB"],
                        env=env, cwd=project)  # fmt: skip

            def do_skopeo(r: int = r) -> None:
                run(["skopeo", "sync", "--src", "docker", "--dest", "dir", "--src-tls-verify=false",
                     ref, str(work / f"skopeo{r}")], env=env, cwd=project)  # fmt: skip

            def do_layout(r: int = r) -> None:
                run([HF2OCI, "bundle", "--layout", str(work / "layouts"), "--namespace", "bench",
                     "-o", str(work / f"lbundle{r}")], env=env, cwd=project)  # fmt: skip

            steps = [("bundle", do_bundle), ("skopeo", do_skopeo), ("bundle-layout", do_layout)]
            if args.rss_only:
                steps = steps[:1]
            if r % 2:
                steps = steps[::-1]
            for name, fn in steps:
                subprocess.run(["sync"], check=True)
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            names = ["load", "limit"] if r % 2 == 0 else ["limit", "load"]
            for name in ["load"] if args.rss_only else names:
                inside = start_registry(work / f"inside-{name}")
                try:
                    subprocess.run(["sync"], check=True)
                    t = time.perf_counter()
                    if name == "load":
                        source = tar if args.tar_split else bundle
                        rss["load"].append(run([HF2OCI, "load", str(source), "--registry",
                                                inside.host], env=env, cwd=project))  # fmt: skip
                    else:
                        limit_put(inside, bundle)
                    times[name].append(time.perf_counter() - t)
                finally:
                    inside.stop()
                    shutil.rmtree(work / f"inside-{name}", ignore_errors=True)
            for p in (bundle, work / f"skopeo{r}", work / f"lbundle{r}", tar.parent):
                shutil.rmtree(p, ignore_errors=True)
    finally:
        outside.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) if v else math.nan for k, v in times.items()}
    print(json.dumps({
        "repo": f"{args.files} files, {per_file * args.files} MiB", "mirror_s": mirror_s,
        "seconds": {k: stats(v) for k, v in times.items()},
        "bundle/skopeo": med["bundle"] / med["skopeo"],
        "load/limit": med["load"] / med["limit"],
        "peak_rss_mib": {k: max(v) / MiB for k, v in rss.items()},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
