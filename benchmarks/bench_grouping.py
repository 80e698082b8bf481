"""Layer grouping stability, two rules side by side (not a test; pure, no servers).

    python benchmarks/bench_grouping.py [--old REV] [--only NAME]

"now" is ``hf2oci.pack.formats.grouping``; "old" is the grouping code of ``formats/image.py`` at
git revision REV (default df2a341, the last one before the rule moved to its own module),
loaded from git into a module of its own. For each case, with a one-layer base's budget (98
layers) and a 10 GB layer limit: the layers the repo takes, and for each file (or every k-th)
the repo with and without it: the new layers a revision uploads when the file is added, and
when it is removed (mean and max), and how many of those revisions move more than 2. Growing
cases add one file a revision. The figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from hf2oci.pack.formats import grouping  # noqa: E402

GB = 10**9
BUDGET, CAP = 98, 10 * GB
Sized = list[tuple[str, int]]
Grouper = Callable[[Sized], list[tuple[str, ...]]]


def unnumbered_name(i: int) -> str:
    """tests/helpers.unnumbered_name (kept here so the benchmark needs no test imports)."""
    import hashlib

    letters = str.maketrans("0123456789", "ghijklmnop")
    return f"w/{hashlib.sha256(b'%d' % i).hexdigest()[:12].translate(letters)}.st"


def old_rule(rev: str) -> types.ModuleType:
    """The grouping functions of formats/image.py at ``rev``, as a module."""
    text = subprocess.run(["git", "show", f"{rev}:src/hf2oci/formats/image.py"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout  # fmt: skip
    start, end = text.index("class LayerTooBig"), text.index("def layer_annotations")
    consts = [line for line in text.splitlines()
              if line.split(" = ")[0] in ("MAX_LAYERS", "MAX_REPO_LAYERS", "SMALL_GROUP_BYTES",
                                          "DEFAULT_SMALL_FILE_LIMIT")]  # fmt: skip
    source = "\n".join([
        "from __future__ import annotations",
        "import functools, hashlib, math, re",
        "from collections.abc import Mapping, Sequence",
        "from dataclasses import dataclass",
        "from hf2oci.errors import PackError",
        "from hf2oci.units import human_size",
        *consts,
        text[start:end],
    ])  # fmt: skip
    module = types.ModuleType(f"old_grouping_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:formats/image.py", "exec"), module.__dict__)
    return module


def cases() -> dict[str, Sized]:
    rng = random.Random(7)
    mixed = [(f"m/part-{i:04d}.bin", rng.randint(50 * 10**6, 3 * GB)) for i in range(300)]
    mixed_unnumbered = [(unnumbered_name(i), n) for i, (_, n) in enumerate(mixed)]
    two = [(f"a/model-{i:05d}-of-00080.safetensors", int(4.3 * GB)) for i in range(1, 81)]
    two += [(f"b/pytorch_model-{i:05d}-of-00060.bin", int(3.1 * GB)) for i in range(1, 61)]
    two += [(unnumbered_name(1000 + i), rng.randint(1, 4) * GB) for i in range(30)]
    shard = int(4.3 * GB)
    return {
        "163 × 4.3 GB model-00001-of-00163.safetensors":
            [(f"model-{i:05d}-of-00163.safetensors", shard) for i in range(1, 164)],
        "163 × 4.3 GB pytorch_model-00001-of-00163.bin":
            [(f"pytorch_model-{i:05d}-of-00163.bin", shard) for i in range(1, 164)],
        "163 × 4.3 GB data/train-00001-of-00163-<hash>.parquet":
            [(f"data/train-{i:05d}-of-00163-5bd6a2ff.parquet", shard) for i in range(1, 164)],
        "190 × 4.3 GB": [(f"model-{i:05d}.safetensors", shard) for i in range(190)],
        "250 × 3.3 GB (3 a layer)":
            [(f"model-{i:05d}.safetensors", int(3.3 * GB)) for i in range(250)],
        "400 × 1.9 GB (5 a layer)":
            [(f"model-{i:05d}.safetensors", int(1.9 * GB)) for i in range(400)],
        "250 × 3.3 GB numbered 0, 3, 6…":
            [(f"model-{i:05d}.safetensors", int(3.3 * GB)) for i in range(0, 750, 3)],
        "1,000 × 200 MB parquet": [(f"train/{i:05d}.parquet", 200 * 10**6) for i in range(1000)],
        "300 × 50 MB–3 GB numbered": mixed,
        "80 + 60 shards of two families, 30 unnumbered": two,
        "140 × 4.3 GB unnumbered": [(unnumbered_name(i), shard) for i in range(140)],
        "163 × 4.3 GB unnumbered (at the count limit)":
            [(unnumbered_name(i), shard) for i in range(163)],
        "300 × 50 MB–3 GB unnumbered": mixed_unnumbered,
        "180 × 4.3 GB numbered at random out of 1,000":
            [(f"s/part-{i}.bin", shard) for i in random.Random(5).sample(range(1000), 180)],
    }  # fmt: skip


GROWING = {
    "train/00050.parquet … 420 × 200 MB": ("train/{:05d}.parquet", 200 * 10**6, 50, 420),
    "w/00050.bin … 420 × 2 GB": ("w/{:05d}.bin", 2 * GB, 50, 420),
    "model-00050.safetensors … 196 × 4.3 GB": ("model-{:05d}.safetensors", int(4.3 * GB), 50, 196),
}


def new(before: Sequence[tuple[str, ...]], after: Sequence[tuple[str, ...]]) -> int:
    return len(set(after) - set(before))


def stability(group: Grouper, files: Sized) -> str:
    try:
        full = group(files)
    except Exception as e:
        return f"fails: {str(e)[:40]}"
    step = max(1, len(files) // 150)
    added, removed = [], []
    for which in range(0, len(files), step):
        without = group(files[:which] + files[which + 1 :])
        added.append(new(without, full))
        removed.append(new(full, without))
    over = sum(n > 2 for n in added + removed)
    sample = "" if step == 1 else f" (1 in {step})"
    return (f"{len(full)} L, {sum(added) / len(added):.2f} ({max(added)}), "
            f"{sum(removed) / len(removed):.2f} ({max(removed)}), {over} of "
            f"{len(added) + len(removed)}{sample}")  # fmt: skip


def growth(group: Grouper, name: str, size: int, start: int, end: int) -> str:
    before = group([(name.format(i), size) for i in range(start)])
    uploads = []
    for n in range(start + 1, end + 1):
        after = group([(name.format(i), size) for i in range(n)])
        uploads.append(new(before, after))
        before = after
    return f"{sum(uploads)} for {len(uploads)} files, max {max(uploads)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="df2a341", help="git revision of the old rule")
    ap.add_argument("--only", default="", help="run the cases whose name holds this")
    args = ap.parse_args()
    old = old_rule(args.old)
    rules: dict[str, Grouper] = {
        "old": lambda f: old.group_files(f, max_layers=BUDGET, max_layer_size=CAP),
        "now": lambda f: grouping.group_files(f, max_layers=BUDGET, max_layer_size=CAP),
    }
    print("| files | old: layers, one added mean (max), one removed, > 2 | now: same |")
    print("| --- | --- | --- |")
    for title, files in cases().items():
        if args.only in title:
            cells = [stability(rule, files) for rule in rules.values()]
            print(f"| {title} | {' | '.join(cells)} |", flush=True)
    print("\n| growing repo | old: all uploads, max | now |")
    print("| --- | --- | --- |")
    for title, spec in GROWING.items():
        if args.only in title:
            cells = [growth(rule, *spec) for rule in rules.values()]
            print(f"| {title} | {' | '.join(cells)} |", flush=True)
    for label, rule in rules.items():
        files = cases()["1,000 × 200 MB parquet"]
        t = time.perf_counter()
        rule(files)
        print(f"\n{label}: one grouping of 1,000 files in {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
