"""`hf2oci extract`: registry and layout sources, digests, --hf-cache, hostile images."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from helpers import cli, make_project, read_tree, skopeo_inspect, tag_of
from hf2oci.consume.extract import extract
from hf2oci.oci import layout
from hf2oci.oci.image import MT_LAYER_GZIP, MT_LAYER_ZSTD, SCRATCH, assemble
from hf2oci.oci.push import push
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.source import open_image
from layers import BytesLayer


def _big(files: dict[str, bytes]) -> dict[str, bytes]:
    return {**files, "model-00002.safetensors": os.urandom(3 << 20)}  # a streamed layer too


def test_extract_from_registry_and_layout_gives_the_hub_bytes(
    hub, random_repo, registry, busybox_base, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, files = random_repo()
    files = _big(files)
    hub.commit(model, {"model-00002.safetensors": files["model-00002.safetensors"]})
    make_project(
        project,
        models=[model],
        config={"registry": registry.host, "namespace": "ex", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    make_project(project / "l", models=[model], config={"base_image": busybox_base})
    monkeypatch.chdir(project / "l")
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.chdir(project)

    ref = f"{registry.host}/ex/models:{tag_of(model)}"
    r = cli("extract", ref, str(project / "from-registry"), "--json")
    assert r.exit_code == 0, r.output
    assert read_tree(project / "from-registry") == files
    assert json.loads(r.stdout)["files"] == len(files)

    lay = f"oci:{project / 'l/oci-images/hgfkeep/models'}:{tag_of(model)}"
    assert cli("extract", lay, str(project / "from-layout")).exit_code == 0
    assert read_tree(project / "from-layout") == files
    bare = lay.removeprefix("oci:")  # PATH:TAG, PATH holding an oci-layout file
    assert cli("extract", bare, str(project / "bare"), "--workers", "1").exit_code == 0
    assert read_tree(project / "bare") == files

    r = cli("extract", ref, str(project / "only-json"), "--include", "*.json")
    assert r.exit_code == 0
    assert set(read_tree(project / "only-json")) == {p for p in files if p.endswith(".json")}

    refused = cli("extract", ref, str(project / "from-registry"))
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert cli("extract", ref, str(project / "from-registry"), "--force").exit_code == 0
    assert not list(project.glob(".from-registry*"))  # no partial or old copies left


def test_a_corrupt_blob_fails_and_leaves_no_dest(hub, random_repo, project: Path) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    path = project / "oci-images/hgfkeep/models"
    image = open_image(f"oci:{path}:{tag_of(model)}")
    blob = layout.blob_path(path, image.layers[-1].digest)
    data = bytearray(blob.read_bytes())
    data[-2000] ^= 0xFF  # inside a file's bytes: the tar still parses
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = cli("extract", f"oci:{path}:{tag_of(model)}", str(project / "dest"))
    assert r.exit_code == 1 and "hashed to" in r.stderr and "Traceback" not in r.output
    assert not (project / "dest").exists()
    assert not list(project.glob(".dest.partial-*"))


def test_a_corrupt_blob_in_the_registry_fails_and_leaves_no_dest(
    hub, random_repo, registry, busybox_base, project: Path
) -> None:
    model, _, _ = random_repo()
    make_project(
        project,
        models=[model],
        config={"registry": registry.host, "namespace": "bad", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    ref = f"{registry.host}/bad/models:{tag_of(model)}"
    manifest = skopeo_inspect(f"docker://{ref}", raw=True)
    digest = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    data_file = registry.root / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    data = bytearray(data_file.read_bytes())
    data[-2000] ^= 0xFF
    data_file.write_bytes(bytes(data))
    for extra in ([], ["--hf-cache"]):
        r = cli("extract", ref, str(project / "dest"), *extra)
        assert r.exit_code == 1, r.output
        assert "hashed to" in r.stderr and "Traceback" not in r.output
        assert not (project / "dest").exists()
    assert not list(project.glob(".dest*"))  # no partial folder left either


def test_leftovers_of_a_killed_run_are_removed(project: Path) -> None:
    image = assemble(SCRATCH, [BytesLayer(_layer({"REPO/a.txt": b"a"}))], **_META)
    layout.write_layout(image, project / "lay", tags=["t"])
    leftover = project / ".dest.partial-abc123"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "half.bin").write_bytes(b"half")
    assert cli("extract", f"oci:{project / 'lay'}:t", str(project / "dest")).exit_code == 0
    assert read_tree(project / "dest") == {"a.txt": b"a"}
    assert not leftover.exists()
    assert sorted(p.name for p in project.iterdir()) == ["dest", "lay"]


_META: dict[str, Any] = {"labels": {}, "annotations": {}, "created": "2026-01-01T00:00:00Z"}


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers_are_unpacked_and_their_diff_id_checked(
    compression: str, project: Path
) -> None:
    files = {"REPO/w.bin": os.urandom(300_000), "REPO/sub/c.json": b"{}", "etc/skip": b"x"}
    tar = _layer(files)
    if compression == "gzip":
        packed, media_type = gzip.compress(tar), MT_LAYER_GZIP
    else:
        packed, media_type = zstandard.ZstdCompressor().compress(tar), MT_LAYER_ZSTD
    good = BytesLayer(packed, media_type, diff_id=_sha(tar))
    layout.write_layout(assemble(SCRATCH, [good], **_META), project / "lay", tags=["ok"])
    assert cli("extract", f"oci:{project / 'lay'}:ok", str(project / "out")).exit_code == 0
    assert read_tree(project / "out") == {"w.bin": files["REPO/w.bin"], "sub/c.json": b"{}"}

    lying = BytesLayer(packed, media_type, diff_id=_sha(b"something else"))
    layout.write_layout(assemble(SCRATCH, [lying], **_META), project / "lay", tags=["bad"])
    r = cli("extract", f"oci:{project / 'lay'}:bad", str(project / "bad"))
    assert r.exit_code == 1 and "uncompressed layer" in r.stderr, r.output
    assert not (project / "bad").exists()


def test_hf_cache_is_what_huggingface_hub_reads_offline(
    hub, random_repo, registry, busybox_base, project: Path
) -> None:
    model, sha, files = random_repo()
    dataset, dsha, dfiles = random_repo(repo_type="dataset", n_files=2)
    make_project(
        project,
        models=[model],
        datasets=[dataset],
        config={"registry": registry.host, "namespace": "hfc", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    cache = project / "hf-cache"
    for kind, repo in (("models", model), ("datasets", dataset), ("models", model)):
        r = cli("extract", f"{registry.host}/hfc/{kind}:{tag_of(repo)}", str(cache), "--hf-cache")
        assert r.exit_code == 0, r.output  # into an existing cache, and again: idempotent
    repo_dir = cache / f"models--{tag_of(model)}"
    assert (repo_dir / "refs" / "main").read_text() == sha
    assert (cache / f"datasets--{tag_of(dataset)}" / "refs" / "main").read_text() == dsha
    link = repo_dir / "snapshots" / sha / "sub" / "dir" / "part-0.txt"
    assert link.is_symlink() and not os.readlink(link).startswith("/")
    assert sorted(p.name for p in cache.iterdir()) == [
        f"datasets--{tag_of(dataset)}",
        f"models--{tag_of(model)}",
    ]  # no staging folder left
    code = f"""
import json, sys
from pathlib import Path
from huggingface_hub import snapshot_download, hf_hub_download
folder = snapshot_download({model!r}, cache_dir=sys.argv[1], local_files_only=True)
one = hf_hub_download({model!r}, "config.json", cache_dir=sys.argv[1], local_files_only=True)
files = {{p.relative_to(folder).as_posix(): p.read_bytes().hex()
         for p in Path(folder).rglob("*") if p.is_file()}}
ds = snapshot_download({dataset!r}, repo_type="dataset", cache_dir=sys.argv[1],
                       local_files_only=True)
dfiles = {{p.relative_to(ds).as_posix(): p.read_bytes().hex()
          for p in Path(ds).rglob("*") if p.is_file()}}
print(json.dumps({{"folder": folder, "one": Path(one).read_bytes().hex(), "files": files,
                  "dfiles": dfiles}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ENDPOINT", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(out)
    assert sha in doc["folder"]
    assert {k: bytes.fromhex(v) for k, v in doc["files"].items()} == files
    assert bytes.fromhex(doc["one"]) == files["config.json"]
    assert {k: bytes.fromhex(v) for k, v in doc["dfiles"].items()} == dfiles


def test_hf_cache_refs_name_the_revision_the_image_was_made_from(
    hub, random_repo, registry, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, main_sha, files = random_repo()
    v1_sha = hub.commit(model, {"config.json": b'{"v": 1}'}, branch="v1")
    cache = project / "hf-cache"
    repo_dir = cache / f"models--{tag_of(model)}"

    def mirror_and_extract(ns: str, line: str) -> None:
        make_project(
            project / ns,
            models=[line],
            config={"registry": registry.host, "namespace": ns, "base_image": "scratch"},
        )
        monkeypatch.chdir(project / ns)
        assert cli("sync", "-q").exit_code == 0
        ref = f"{registry.host}/{ns}/models:{tag_of(model)}"
        r = cli("extract", ref, str(cache), "--hf-cache", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["ref"] == (line.partition("@")[2] or "main")

    def refs() -> dict[str, str]:
        return {p.name: p.read_text() for p in (repo_dir / "refs").iterdir()}

    # a commit asked for by its sha gets no ref of its own (as in huggingface_hub), but the
    # cache's only copy answers code that names no revision
    mirror_and_extract("pinned", f"{model}@{main_sha}")
    assert refs() == {"main": main_sha}
    # a branch: refs/<branch>; an existing refs/main is never moved by another revision
    mirror_and_extract("onbranch", f"{model}@v1")
    assert refs() == {"main": main_sha, "v1": v1_sha}
    assert sorted(p.name for p in (repo_dir / "snapshots").iterdir()) == sorted([main_sha, v1_sha])
    code = f"""
import json, sys
from pathlib import Path
from huggingface_hub import snapshot_download
def config(**kw):
    folder = snapshot_download({model!r}, cache_dir=sys.argv[1], local_files_only=True, **kw)
    return (Path(folder) / "config.json").read_bytes().hex()
print(json.dumps({{"v1": config(revision="v1"), "sha": config(revision={main_sha!r}),
                  "unnamed": config()}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ENDPOINT", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert bytes.fromhex(doc["v1"]) == b'{"v": 1}'
    assert bytes.fromhex(doc["sha"]) == bytes.fromhex(doc["unnamed"]) == files["config.json"]

    # the branch moves: a new image of v1 moves refs/v1, still not refs/main
    v1_new = hub.commit(model, {"config.json": b'{"v": 2}'}, branch="v1")
    mirror_and_extract("onbranch", f"{model}@v1")
    assert refs() == {"main": main_sha, "v1": v1_new}


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("io.huggingface.revision", "../../../../victim"),
        ("io.huggingface.revision", "/abs/victim"),
        ("io.huggingface.repo_id", "../victim"),
        ("io.huggingface.repo_type", "../victim"),
        ("io.huggingface.ref", "../../../../victim"),
        ("io.huggingface.ref", "/victim"),
    ],
)
def test_hostile_labels_never_become_paths_in_the_hf_cache(
    tmp_path: Path, label: str, value: str
) -> None:
    labels = {
        "io.huggingface.repo_id": "org/name",
        "io.huggingface.repo_type": "model",
        "io.huggingface.revision": "a" * 40,
        "io.huggingface.ref": "main",
    }
    labels[label] = value
    meta = {**_META, "labels": labels}
    image = assemble(SCRATCH, [BytesLayer(_layer({"REPO/a.txt": b"a"}))], **meta)
    layout.write_layout(image, tmp_path / "lay", tags=["t"])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    cache = tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    r = cli("extract", f"oci:{tmp_path / 'lay'}:t", str(cache), "--hf-cache")
    assert r.exit_code == 1 and label in r.stderr and "Traceback" not in r.output, r.output
    assert list(victim.iterdir()) == [victim / "keep.txt"]
    assert list(cache.iterdir()) == []  # nothing written, not even a staging folder
    assert not Path("/abs/victim").exists()


def _hostile_layer(kind: str) -> BytesLayer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, *, data: bytes = b"pwned", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for k, v in attrs.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        add("REPO/ok.txt", data=b"fine")
        if kind == "traversal":
            add("REPO/../../outside/evil.txt")
        elif kind == "absolute":
            add("/tmp/evil.txt")
        elif kind == "symlink":
            add("REPO/etc", type=tarfile.SYMTYPE, linkname="/etc")
            add("REPO/etc/evil.txt")
        elif kind == "hardlink":
            add("REPO/passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        elif kind == "device":
            add("REPO/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        elif kind == "whiteout":
            add("REPO/.wh.config.json")
        elif kind == "fifo":
            add("REPO/pipe", type=tarfile.FIFOTYPE)
        elif kind == "repo-symlink":
            add("REPO", type=tarfile.SYMTYPE, linkname="/etc")
        elif kind == "twice":
            add("REPO/ok.txt", data=b"other")
        elif kind == "file-then-folder":
            add("REPO/ok.txt/inner.txt")
    return BytesLayer(buf.getvalue())


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("traversal", "'..'"),
        ("absolute", "absolute"),
        ("symlink", "links"),
        ("hardlink", "links"),
        ("device", "not a regular file"),
        ("whiteout", "whiteout"),
        ("fifo", "not a regular file"),
        ("repo-symlink", "links"),
        ("twice", "appears twice"),
        ("file-then-folder", "share its path"),
    ],
)
@pytest.mark.parametrize("where", ["layout", "registry"])
def test_hostile_images_are_refused_and_nothing_escapes(
    kind: str, words: str, where: str, tmp_path: Path, registry
) -> None:
    image = assemble(
        SCRATCH, [_hostile_layer(kind)], labels={}, annotations={}, created="2026-01-01T00:00:00Z"
    )
    if where == "layout":
        layout.write_layout(image, tmp_path / "lay", tags=["bad"])
        ref = f"oci:{tmp_path / 'lay'}:bad"
    else:
        push(RegistryClient(registry.host), image, f"hostile/{kind}", tags=["bad"])
        ref = f"{registry.host}/hostile/{kind}:bad"
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    dest = tmp_path / "work" / "dest"
    r = cli("extract", ref, str(dest))
    assert r.exit_code == 1, r.output
    assert words in r.stderr and "Traceback" not in r.output
    assert not dest.exists() and list(sentinel.iterdir()) == []
    assert not Path("/tmp/evil.txt").exists()
    assert list((tmp_path / "work").iterdir()) == []  # no partial folder left


def test_an_interrupted_extract_leaves_nothing_that_looks_complete(project: Path) -> None:
    layers = [BytesLayer(_layer({f"REPO/part{i}.bin": os.urandom(100_000)})) for i in range(3)]
    layout.write_layout(assemble(SCRATCH, layers, **_META), project / "lay", tags=["t"])

    def interrupt(digest: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(f"oci:{project / 'lay'}:t", project / "dest", on_layer=interrupt)
    assert sorted(p.name for p in project.iterdir()) == ["lay"]

    result = extract(f"oci:{project / 'lay'}:t", project / "dest", workers=3)
    assert (result.files, result.bytes, result.dest) == (3, 300_000, project / "dest")
    assert result.repo_id is None and result.snapshot is None


# -- reading from a registry that cuts connections, and writing with O_DIRECT --------------------


def _pushed(registry: Any, files: dict[str, bytes], repo: str) -> str:
    """An image with one layer of ``files`` (under REPO/) pushed straight to ``registry``."""
    layer = BytesLayer(_layer({f"REPO/{k}": v for k, v in files.items()}))
    image = assemble(SCRATCH, [layer], **_META)
    push(RegistryClient(registry.host), image, repo, tags=["t"])
    return layer.digest


@pytest.mark.parametrize("ignore_range", [False, True])
def test_a_blob_cut_part_way_is_resumed_where_it_stopped(
    registry, project: Path, ignore_range: bool
) -> None:
    from faultproxy import FaultProxy

    files = {"w.bin": os.urandom(5 << 20), "c.json": b"{}"}
    repo = f"cut/resume-{int(ignore_range)}"
    digest = _pushed(registry, files, repo)
    proxy = FaultProxy(registry.host)
    proxy.ignore_range = ignore_range  # a registry that answers a Range request in full
    try:
        cuts = proxy.fault("GET", f"/blobs/{digest}", "cut-after:1500000", times=2)
        result = extract(f"{proxy.host}/{repo}:t", project / "dest")
        assert cuts.hits == 2 and proxy.attempts("GET", f"/blobs/{digest}") == 3
    finally:
        proxy.server.shutdown()
    assert read_tree(project / "dest") == files
    assert result.bytes == len(files["w.bin"]) + 2


def test_a_cut_while_skipping_what_was_had_starts_that_answer_over(registry, project: Path) -> None:
    """A registry that ignores Range sends the blob from its start again: the bytes already
    had are skipped. A cut inside that skip must drop the answer, not read on from the middle
    of it (which gave wrong bytes, caught only by the digest)."""
    from faultproxy import FaultProxy

    files = {"w.bin": os.urandom(5 << 20), "c.json": b"{}"}
    digest = _pushed(registry, files, "cut/skip")
    proxy = FaultProxy(registry.host)
    proxy.ignore_range = True
    try:
        proxy.fault("GET", f"/blobs/{digest}", "cut-after:1500000")
        proxy.fault("GET", f"/blobs/{digest}", "cut-after:700000")  # inside the skip
        result = extract(f"{proxy.host}/cut/skip:t", project / "dest")
        assert proxy.attempts("GET", f"/blobs/{digest}") == 3
    finally:
        proxy.server.shutdown()
    assert read_tree(project / "dest") == files and result.files == 2


def test_a_proxy_that_gzips_what_it_passes_on_still_gives_the_exact_bytes(
    registry, project: Path
) -> None:
    from faultproxy import FaultProxy

    files = {"w.bin": os.urandom(3 << 20), "c.json": b'{"a": 1}'}
    _pushed(registry, files, "proxy/gzip")
    proxy = FaultProxy(registry.host)
    proxy.gzip_bodies = True  # Content-Encoding: gzip: the blob is decoded, then checked
    try:
        assert extract(f"{proxy.host}/proxy/gzip:t", project / "dest").files == 2
    finally:
        proxy.server.shutdown()
    assert read_tree(project / "dest") == files


def test_a_blob_cut_again_and_again_resumes_where_each_cut_stopped(registry, project: Path) -> None:
    """Every read of the blob cut after 100,000 bytes, 12 times: each cut is picked up at the
    byte it stopped at (a Range request), so the bytes arrive whole and exact."""
    from faultproxy import FaultProxy

    files = {"w.bin": os.urandom(1 << 20)}
    digest = _pushed(registry, files, "cut/often")
    proxy = FaultProxy(registry.host)
    try:
        proxy.fault("GET", f"/blobs/{digest}", "cut-after:100000", times=12)
        r = cli("extract", f"{proxy.host}/cut/often:t", str(project / "dest"))
        ranges = [r for p, r in proxy.ranges if digest in p]
    finally:
        proxy.server.shutdown()
    assert r.exit_code == 0, r.output
    assert read_tree(project / "dest") == files
    starts = [int(v.split("=")[1].split("-")[0]) for v in ranges if v]
    assert len(starts) >= 10 and starts == sorted(starts) and len(set(starts)) == len(starts)


def test_a_blob_that_keeps_being_cut_fails_cleanly(registry, project: Path) -> None:
    """No byte comes however often it is asked: the retry policy gives up, with one line."""
    from faultproxy import FaultProxy

    digest = _pushed(registry, {"w.bin": os.urandom(2 << 20)}, "cut/always")
    proxy = FaultProxy(registry.host)
    try:
        proxy.fault("GET", f"/blobs/{digest}", "cut-after:0", times=100)
        r = cli("extract", f"{proxy.host}/cut/always:t", str(project / "dest"))
    finally:
        proxy.server.shutdown()
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"reading blob {digest} failed after" in r.stderr
    assert not (project / "dest").exists() and not list(project.glob(".dest*"))


def _resident_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache (util-linux's fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("size", [(16 << 20) + 1, 17 << 20])
def test_big_files_go_to_the_disk_directly_unless_asked_not_to(
    registry, project: Path, size: int
) -> None:
    files = {"big.bin": os.urandom(size), "small.json": b'{"a": 1}'}
    repo = f"direct/s{size}"
    _pushed(registry, files, repo)
    ref = f"{registry.host}/{repo}:t"
    assert cli("extract", ref, str(project / "direct")).exit_code == 0
    # O_DIRECT left (almost) nothing in the page cache: at most the pages of the short tail
    assert _resident_bytes(project / "direct/big.bin") <= 8192
    assert read_tree(project / "direct") == files
    assert cli("extract", "--no-direct", ref, str(project / "cached")).exit_code == 0
    assert _resident_bytes(project / "cached/big.bin") >= size - 4096
    assert read_tree(project / "cached") == files


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_a_filesystem_without_o_direct_is_written_through_the_page_cache(
    registry, tmp_path: Path
) -> None:
    files = {"big.bin": os.urandom(17 << 20)}
    _pushed(registry, files, "direct/tmpfs")
    dest = Path(tempfile.mkdtemp(dir="/dev/shm")) / "dest"
    try:
        # tmpfs refuses O_DIRECT: the extract notices and writes the usual way
        assert extract(f"{registry.host}/direct/tmpfs:t", dest).files == 1
        assert read_tree(dest) == files
    finally:
        shutil.rmtree(dest.parent)


@pytest.mark.parametrize("blocks_before_boundary", [1, 2, 3])
def test_tar_headers_that_straddle_read_buffers_are_read_whole(
    project: Path, blocks_before_boundary: int
) -> None:
    # the first file ends so that the next one's PAX header (a long name) sits across the
    # 1 MiB boundary between two read-ahead buffers
    first = os.urandom((1 << 20) - 512 * blocks_before_boundary - 512)
    long_name = "/".join(c * 200 for c in "def") + ".json"
    files = {"REPO/a.bin": first, f"REPO/{long_name}": b"{}", "REPO/z.txt": b"z"}
    layer = BytesLayer(_layer(files))
    layout.write_layout(assemble(SCRATCH, [layer], **_META), project / "lay", tags=["t"])
    assert extract(f"oci:{project / 'lay'}:t", project / "dest").files == 3
    assert read_tree(project / "dest") == {"a.bin": first, long_name: b"{}", "z.txt": b"z"}


def test_the_meter_is_told_every_byte_read(project: Path) -> None:
    layers = [BytesLayer(_layer({f"REPO/p{i}.bin": os.urandom(1_500_000 + i)})) for i in range(3)]
    layout.write_layout(assemble(SCRATCH, layers, **_META), project / "lay", tags=["t"])
    totals: list[int] = []
    seen: list[int] = []

    def meter(total: int) -> Callable[[int], None]:
        totals.append(total)
        return seen.append

    extract(f"oci:{project / 'lay'}:t", project / "dest", meter=meter)
    assert totals == [sum(layer.size for layer in layers)]
    assert sum(seen) == totals[0] and len(seen) > 3  # several parts a layer, not one at the end
