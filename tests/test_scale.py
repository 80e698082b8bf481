"""The real hub's behaviour at scale, emulated by the test hub: repo info that lists only part of
a big repo (the paginated tree is read instead), 429 with Retry-After over hundreds of repos and
thousands of files, and a hub that fails 1 request in 50 (503s and bodies cut in the middle)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from helpers import cli, make_project, unnumbered_name
from hf2oci.consume.serve.files import read_files
from hf2oci.oci.source import open_image
from servers import Registry


def _files(n: int, *, seed: str, big: int = 0) -> dict[str, bytes]:
    """``n`` small files in a few folders, and ``big`` files of 1.5 MiB (streamed)."""
    rng = random.Random(seed)
    files = {
        f"data/part-{i // 500:02d}/rows-{i:05d}.jsonl": rng.randbytes(rng.randint(20, 300))
        for i in range(n)
    }
    files |= {f"shards/shard-{i:03d}.parquet": rng.randbytes(3 << 19) for i in range(big)}
    return files


def _layout_files(project: Path, out: str, repo_id: str, kind: str = "datasets") -> dict[str, int]:
    image = open_image(f"oci:{project / out / 'hgfkeep' / kind}:{repo_id.replace('/', '--')}")
    return {path: f.size for path, f in read_files(image).items()}


def _digest(result_stdout: str) -> str:
    return str(json.loads(result_stdout)["results"][0]["digest"])


def test_a_repo_of_2500_files_lists_through_the_paginated_tree(hub, project: Path) -> None:
    files = _files(2500, seed="tree")
    repo = "scale/tree-2500"
    hub.add_repo(repo, files, repo_type="dataset")
    hub.siblings_limit = 1000  # repo info names only some of the files, as the hub may
    hub.tree_page = 1000
    make_project(project, datasets=[repo], config={"base_image": "scratch"})
    result = cli("sync", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert hub.count("GET", f"/api/datasets/{repo}/tree/") == 3  # three pages, via Link
    got = _layout_files(project, "oci-images", repo)
    assert got == {path: len(data) for path, data in files.items()}
    assert hub.count("GET", "/resolve/") == len(files)
    # a no-change re-run sees the same commit at the tag: no tree page is read
    hub.reset_log()
    again = cli("sync", "-q", "--json")
    assert json.loads(again.stdout)["results"][0]["status"] == "skipped"
    assert hub.count("GET", "/tree/") == 0
    # a new commit: every file is listed again, page by page
    hub.add_repo(repo, {**files, "data/new.jsonl": b"{}\n"}, repo_type="dataset")
    hub.reset_log()
    moved = cli("sync", "-q", "--json")
    assert json.loads(moved.stdout)["results"][0]["status"] == "mirrored"
    assert hub.count("GET", "/tree/") == 3
    assert len(_layout_files(project, "oci-images", repo)) == len(files) + 1


def test_5000_files_through_a_hub_failing_1_in_50_give_the_healthy_digest(
    hub, project: Path
) -> None:
    files = _files(5000, seed="flaky", big=12)
    repo = "scale/flaky-5000"
    hub.add_repo(repo, files, repo_type="dataset")
    make_project(project, datasets=[repo], config={"base_image": "scratch"})
    healthy = cli("mirror", repo, "--dataset", "--output-dir", "healthy", "--json", "-q")
    assert healthy.exit_code == 0, healthy.output
    hub.flaky(50, "/", kinds=("503", "cut"))  # every request: API, small files, streamed ones
    flaky = cli("mirror", repo, "--dataset", "--output-dir", "flaky", "--json", "-q")
    hits = hub.flaky_hits
    hub.flaky(0)
    assert flaky.exit_code == 0, flaky.output
    assert hits >= 100  # ~5,000 requests, 1 in 50 failed: half 503s, half cut bodies
    assert _digest(flaky.stdout) == _digest(healthy.stdout)
    assert _layout_files(project, "flaky", repo) == {p: len(d) for p, d in files.items()}


def test_429_with_retry_after_is_honoured_over_300_repos_and_2000_files(hub, project: Path) -> None:
    repos = [f"scale/many-{i:03d}" for i in range(300)]
    for i, repo in enumerate(repos):
        hub.add_repo(repo, {"config.json": b'{"i": %d}\n' % i, "README.md": b"# r\n"})
    big = "scale/files-2000"
    big_files = _files(2000, seed="429")
    hub.add_repo(big, big_files)
    make_project(project, models=[*repos, big], config={"base_image": "scratch", "max_workers": 4})
    hub.flaky(50, "/", kinds=("429",))  # Retry-After: 1 on API and resolve calls alike
    started = time.monotonic()
    result = cli("sync", "-q", "--json")
    took = time.monotonic() - started
    hits = hub.flaky_hits
    hub.flaky(0)
    assert result.exit_code == 0, result.output[-3000:]
    statuses = [r["status"] for r in json.loads(result.stdout)["results"]]
    assert statuses == ["mirrored"] * 301
    # ~2,900 requests: ~58 answered 429; each retry waited its second (several at once)
    assert hits >= 50
    assert took >= hits / (4 * 8)  # at most 4 repos × 8 downloads wait at the same time
    got = _layout_files(project, "oci-images", big, kind="models")
    assert got == {p: len(d) for p, d in big_files.items()}


def test_a_large_file_comes_over_parallel_range_parts_in_order(
    hub, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of 1 MiB over 4 connections (sizes scaled down from 4 MiB parts from 64 MiB on),
    through cut connections and 503s: the layer holds the file exactly (hub hash checked)."""
    from hf2oci.intake import files as files_module

    monkeypatch.setattr(files_module, "PARALLEL_MIN_SIZE", 4 << 20)
    monkeypatch.setattr(files_module, "PART_SIZE", 1 << 20)
    monkeypatch.setenv("HF2OCI_HUB_CONNECTIONS", "4")
    data = random.Random("parts").randbytes((12 << 20) + 12345)
    repo = "scale/parts"
    hub.add_repo(repo, {"model.safetensors": data, "config.json": b"{}"})
    make_project(project, models=[repo], config={"base_image": "scratch"})
    hub.flaky(5, "model.safetensors", kinds=("cut", "503"))
    result = cli("sync", "-q", "--json")
    hits = hub.flaky_hits
    hub.flaky(0)
    assert result.exit_code == 0, result.output
    parts = [r for p, r in hub.ranges if "model.safetensors" in p]
    assert hits >= 2  # a cut body and a 503 among the part requests, each tried again
    starts = sorted({int(r.split("=")[1].split("-")[0]) for r in parts})
    # every part asked for by its own range (a cut one resumes where its bytes stopped)
    assert {i << 20 for i in range(13)} <= set(starts)
    image = open_image(f"oci:{project / 'oci-images/hgfkeep/models'}:scale--parts")
    got = read_files(image)["model.safetensors"]
    assert b"".join(got.chunks()) == data


def _one_missing(at: int) -> tuple[list[str], str]:
    names = [f"model-{i:05d}-of-00164.safetensors" for i in range(1, 165)]
    return [n for n in names if n != names[at - 1]], names[at - 1]


SHARDS_163 = {  # 163 shards, and the one a second revision adds
    "85 missing": _one_missing(85),
    "36 missing": _one_missing(36),
    "unnumbered": ([unnumbered_name(i) for i in range(163)], unnumbered_name(174)),
}


@pytest.mark.parametrize(
    ("shards", "layers"), [("85 missing", 1), ("36 missing", 2), ("unnumbered", 5)]
)
def test_one_shard_more_of_163_uploads_only_the_layers_the_grouping_changes(
    shards: str, layers: int, hub, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stable grouping measured end to end: 163 shards of 1 MiB under a 2.5 MiB layer limit
    (two shards a layer at most, as 4.3 GB shards under GHCR's 10 GB). A revision with one
    shard more uploads its layer, and one more where the count makes two blocks join (36);
    for names without numbers next to the layer count limit, what the path-hash runs and
    their joins say (here 5); then the file index, config and manifest. Only the files of
    those layers are downloaded."""
    from hf2oci.pack.formats.grouping import group_files, layer_budget
    from servers import start_registry

    reg = start_registry(tmp_path / "reg")
    try:
        rng = random.Random("163")
        names, added = SHARDS_163[shards]
        files = {name: rng.randbytes(1 << 20) for name in names}
        hub.add_repo("scale/shards", files)
        limit = int(2.5 * (1 << 20))
        make_project(project, models=["scale/shards"], config={
            "registry": reg.host, "base_image": "scratch", "max_layer_size": "2.5MiB"})  # fmt: skip
        assert cli("sync", "-q").exit_code == 0
        before = _registry_blobs(reg)
        image = open_image(f"{reg.host}/hgfkeep/models:scale--shards", plain_http=True)
        assert len(image.layers) <= 100 and all(la.size <= limit for la in image.layers)

        sized = [(n, 1 << 20) for n in files]
        old = group_files(sized, max_layers=layer_budget(0), max_layer_size=limit)
        new = group_files([*sized, (added, 1 << 20)], max_layers=layer_budget(0),
                          max_layer_size=limit)  # fmt: skip
        changed = set(new) - set(old)
        assert len(changed) == layers and any(added in g for g in changed)
        hub.commit("scale/shards", {added: rng.randbytes(1 << 20)})
        monkeypatch.setenv("HF2OCI_CACHE", str(project / "other-cache"))  # another runner
        hub.reset_log()
        assert cli("sync", "-q").exit_code == 0
        uploaded = _registry_blobs(reg) - before
        assert len(uploaded) == len(changed) + 3  # + the file index, the config, the manifest
        fetched = {p.split("/resolve/")[1].split("/", 1)[1] for m, p in hub.requests
                   if m == "GET" and "/resolve/" in p}  # fmt: skip
        assert fetched == {name for group in changed for name in group}
    finally:
        reg.stop()


def _registry_blobs(reg: Registry) -> set[str]:
    root = reg.root / "docker" / "registry" / "v2" / "blobs"
    return {p.parent.name for p in root.rglob("data")}
