"""Benchmark: the common way vs `--builder docker` vs `--builder oci` vs the raw-PUT limit.

Run on demand (not a test):  python benchmarks/bench_sync.py [--sizes 512,2048] [--resync 50]

Serves a repo (one random weights file of SIZE MiB plus small files) from the test hub, and for
each method starts a fresh registry on 127.0.0.1, then measures wall time, peak extra disk (the
filesystem's used bytes, sampled every 50 ms, minus what the registry itself stores at the end:
that is the output, not scratch) and the peak RSS of the process doing the work (os.wait4; the
Docker daemon's own memory is not included). Needs dockerd, docker-registry, busybox-static.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer  # noqa: E402
from images import busybox_rootfs, push_busybox  # noqa: E402
from servers import Registry, ensure_dockerd, start_registry  # noqa: E402

MiB = 1 << 20


@dataclass
class Result:
    method: str
    seconds: float
    peak_disk: int = 0
    peak_rss: int = 0
    parts: dict[str, float] = field(default_factory=dict)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class DiskSampler:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = used_bytes(path)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, used_bytes(self.path))
            time.sleep(0.05)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, used_bytes(self.path))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Run a command; returns its peak RSS in bytes (raises on failure)."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return int(usage.ru_maxrss) * 1024


def measure(
    name: str, work: Path, fn: Callable[[Registry, str, Path], tuple[int, dict]], rootfs: Path
) -> Result:
    regdir = work / f"reg-{name}"
    reg = start_registry(regdir)
    try:
        base = push_busybox(reg.host, rootfs)
        before = dir_size(reg.root)
        scratch = work / f"scratch-{name}"
        shutil.rmtree(scratch, ignore_errors=True)  # left by the size before
        scratch.mkdir()
        subprocess.run(["sync"], check=True)
        with DiskSampler(work) as disk:
            t0 = time.perf_counter()
            rss, parts = fn(reg, base, scratch)
            seconds = time.perf_counter() - t0
        output = dir_size(reg.root) - before
        return Result(name, seconds, max(0, disk.peak - disk.base - output), rss, parts)
    finally:
        reg.stop()
        shutil.rmtree(regdir, ignore_errors=True)


def timed(cmd: list[str], *, env: dict[str, str], cwd: Path, runs: int) -> dict[str, float]:
    """min/median/max wall seconds of ``runs`` fresh processes (exit status 0 required)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"min": times[0], "median": times[len(times) // 2], "max": times[-1]}


def startup(
    hub: HubServer, env: dict[str, str], work: Path, rootfs: Path, *, runs: int
) -> dict[str, object]:
    """What the scheduled workflow does all day: `hf2oci mirror` of an unchanged repo (two
    metadata requests), and `hf2oci --help`; each a fresh process, as the console script."""
    exe = str(Path(sys.executable).with_name("hf2oci"))
    weights = work / "weights-startup.safetensors"
    with open(weights, "wb") as f:
        for _ in range(512):
            f.write(os.urandom(MiB))
    hub.add_repo("bench/unchanged", {"config.json": b"{}\n", "model.safetensors": weights})
    reg = start_registry(work / "reg-startup")
    base = push_busybox(reg.host, rootfs)
    project = work / "project-startup"
    (project / "get_hf").mkdir(parents=True)
    (project / "get_hf" / "to_get_models.txt").write_text("bench/unchanged\n")
    args = ["mirror", "bench/unchanged", "--registry", reg.host, "--base-image", base,
            "--no-record", "-q"]  # fmt: skip
    subprocess.run([exe, *args], env=env, cwd=project, check=True, capture_output=True)
    out = {
        "no_change_mirror_s": timed([exe, *args], env=env, cwd=project, runs=runs),
        "help_s": timed([exe, "--help"], env=env, cwd=project, runs=runs),
    }
    reg.stop()
    weights.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,2048", help="weights sizes in MiB")
    ap.add_argument("--resync", type=int, default=50, help="repos for the re-sync timing")
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--startup", type=int, default=10,
        help="runs of `hf2oci --help` and of a no-change `hf2oci mirror` (512 MiB repo)",
    )  # fmt: skip
    args = ap.parse_args()
    ensure_dockerd(Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix="hf2oci-bench-", dir=args.workdir))
    rootfs = busybox_rootfs(work / "rootfs")
    hf2oci = [sys.executable, "-m", "hf2oci"]
    report: dict[str, object] = {}
    with HubServer() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF2OCI_CACHE": str(work / "l-cache"),
        }
        for size_mib in (int(s) for s in args.sizes.split(",")):
            weights = work / f"weights-{size_mib}.safetensors"
            with open(weights, "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MiB))
            repo = f"bench/m{size_mib}"
            hub.add_repo(
                repo,
                {
                    "config.json": b'{"a": 1}\n',
                    "README.md": b"# bench\n",
                    "model.safetensors": weights,
                },
            )
            project = work / f"project-{size_mib}"
            (project / "get_hf").mkdir(parents=True)
            (project / "get_hf" / "to_get_models.txt").write_text(f"{repo}\n")

            def common(reg: Registry, base: str, scratch: Path) -> tuple[int, dict]:
                parts = {}
                t = time.perf_counter()
                code = (
                    "import sys; from huggingface_hub import snapshot_download as s; "
                    f"s({repo!r}, local_dir=sys.argv[1], endpoint={hub.url!r})"
                )
                rss = run([sys.executable, "-c", code, str(scratch / "ctx" / "REPO")], env=env)
                shutil.rmtree(scratch / "ctx" / "REPO" / ".cache", ignore_errors=True)
                parts["download"] = time.perf_counter() - t
                (scratch / "ctx" / "Dockerfile").write_text(f"FROM {base}\nCOPY REPO/ /REPO/\n")
                ref = f"{reg.host}/common/models:{repo.replace('/', '--')}"
                t = time.perf_counter()
                run(["docker", "build", "-q", "-t", ref, str(scratch / "ctx")])
                parts["build"] = time.perf_counter() - t
                t = time.perf_counter()
                run(["docker", "push", ref])
                parts["push"] = time.perf_counter() - t
                subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
                return rss, parts

            def builder(kind: str) -> Callable[[Registry, str, Path], tuple[int, dict]]:
                def go(reg: Registry, base: str, scratch: Path) -> tuple[int, dict]:
                    e = {**env, "TMPDIR": str(scratch)}
                    rss = run(
                        [
                            *hf2oci,
                            "sync",
                            "-q",
                            "--force",
                            "--registry",
                            reg.host,
                            "--base-image",
                            base,
                            "--builder",
                            kind,
                        ],
                        env=e,
                        cwd=project,
                    )
                    return rss, {}

                return go

            def limit(reg: Registry, base: str, scratch: Path) -> tuple[int, dict]:
                t = time.perf_counter()
                h = hashlib.sha256()
                with open(weights, "rb") as f:
                    while chunk := f.read(4 * MiB):
                        h.update(chunk)
                digest = "sha256:" + h.hexdigest()
                parts = {"sha256": time.perf_counter() - t}
                t = time.perf_counter()
                r = requests.post(f"{reg.url}/v2/limit/blobs/uploads/")
                loc = r.headers["Location"]
                loc = loc if loc.startswith("http") else reg.url + loc
                sep = "&" if "?" in loc else "?"
                with open(weights, "rb") as f:
                    r = requests.put(
                        f"{loc}{sep}digest={digest}",
                        data=f,
                        headers={"Content-Length": str(weights.stat().st_size)},
                    )
                r.raise_for_status()
                parts["put"] = time.perf_counter() - t
                return 0, parts

            results = [
                measure("common", work, common, rootfs),
                measure("docker", work, builder("docker"), rootfs),
                measure("oci", work, builder("oci"), rootfs),
                measure("limit", work, limit, rootfs),
            ]
            by = {r.method: r for r in results}
            report[f"{size_mib}MiB"] = {
                "results": [r.__dict__ for r in results],
                "common/oci": by["common"].seconds / by["oci"].seconds,
                "oci/limit": by["oci"].seconds / by["limit"].seconds,
            }
            print(json.dumps(report[f"{size_mib}MiB"], indent=1), flush=True)
            weights.unlink()
            subprocess.run(["docker", "image", "prune", "-af"], capture_output=True)

        if args.resync:
            reg = start_registry(work / "reg-resync")
            base = push_busybox(reg.host, rootfs)
            project = work / "project-resync"
            (project / "get_hf").mkdir(parents=True)
            names = []
            for i in range(args.resync):
                name = f"bench/r{i:03d}"
                hub.add_repo(name, {"config.json": b"{}", "model.safetensors": os.urandom(4096)})
                names.append(name)
            (project / "get_hf" / "to_get_models.txt").write_text("\n".join(names) + "\n")
            common_args = ["sync", "-q", "--registry", reg.host, "--base-image", base]
            t = time.perf_counter()
            run([*hf2oci, *common_args], env=env, cwd=project)
            first = time.perf_counter() - t
            t = time.perf_counter()
            run([*hf2oci, *common_args], env=env, cwd=project)
            again = time.perf_counter() - t
            report["resync"] = {"repos": args.resync, "first_s": first, "unchanged_rerun_s": again}
            print(json.dumps(report["resync"], indent=1), flush=True)
            reg.stop()
        if args.startup:
            report["startup"] = startup(hub, env, work, rootfs, runs=args.startup)
            print(json.dumps(report["startup"], indent=1), flush=True)
    out = ROOT / "benchmarks" / "last-run.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
