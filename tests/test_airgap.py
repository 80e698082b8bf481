"""Crossing an air gap with two real registries, "outside" and "inside", and no path between them
but the bundle: inventory → bundle → load, checked by skopeo, docker, extract and serve; damaged
and hostile bundles; a load killed and run again; prune and the registry's garbage collection."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from faultproxy import FaultProxy
from helpers import cli, docker_files, make_project, read_tree, tag_of, umoci_files
from servers import Registry, start_registry
from test_signing import KEY_ENV, _key_pem

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": f"{MT_MANIFEST}, application/vnd.oci.image.index.v1+json"}


@pytest.fixture
def inside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An empty registry of its own: the inside of the gap."""
    reg = start_registry(tmp_path_factory.mktemp("inside"))
    yield reg
    reg.stop()


def _digest(registry: Registry, repo: str, tag: str) -> str | None:
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers=ACCEPT, timeout=10)
    return resp.headers["Docker-Content-Digest"] if resp.status_code == 200 else None


def _tags(registry: Registry, repo: str) -> list[str]:
    resp = requests.get(f"{registry.url}/v2/{repo}/tags/list", timeout=10)
    return sorted(resp.json().get("tags") or []) if resp.status_code == 200 else []


def _ns(seed: str) -> str:
    return "gap" + hashlib.sha256(seed.encode()).hexdigest()[:8]


def _mirror(project: Path, registry: Registry, ns: str, models: list[str], datasets: list[str],
            key: bytes | None = None) -> None:  # fmt: skip
    config = {"registry": registry.host, "namespace": ns, "base_image": "scratch"}
    make_project(project, models=models, datasets=datasets, config=config)
    env = {KEY_ENV: key.decode()} if key else {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = cli("sync", "-q")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert result.exit_code == 0, result.output


def _files_in(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())


def test_a_first_bundle_of_three_repos_crosses_into_an_empty_registry(
    hub, random_repo, registry, inside, project: Path, tmp_path: Path, docker_engine: None
) -> None:
    m1, _, files1 = random_repo()
    m2, _, _ = random_repo(n_files=2)
    d1, _, dfiles = random_repo(repo_type="dataset")
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    ns = _ns(m1)
    _mirror(project, registry, ns, [m1, m2], [d1], key=private)

    # the inside says what it holds (nothing yet); the outside bundles the rest
    inv = tmp_path / "inventory.json"
    result = cli("inventory", "--registry", inside.host, "--namespace", ns, "-o", str(inv))
    assert result.exit_code == 0, result.output
    assert json.loads(inv.read_text())["repositories"] == {}
    bundle = tmp_path / "first"
    result = cli("bundle", "--registry", registry.host, "--namespace", ns, "--since", str(inv),
                 "-o", str(bundle))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 repos" in result.output
    info = json.loads((bundle / "bundle.json").read_text())
    assert {r["repo_id"] for r in info["repos"]} == {m1, m2, d1}
    # the checksum list is sha256sum's: an independent check of every file
    check = subprocess.run(["sha256sum", "--quiet", "-c", "checksums.sha256"], cwd=bundle,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {ln.split("  ", 1)[1] for ln in (bundle / "checksums.sha256").read_text().splitlines()}
    assert listed == set(_files_in(bundle)) - {"checksums.sha256"}

    # skopeo reads the bundle as the OCI layout it is: the same digest as outside
    repo = f"{ns}/models"
    outside_digest = _digest(registry, repo, tag_of(m1))
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{bundle}:{repo}:{tag_of(m1)}"],
                         check=True, capture_output=True).stdout  # fmt: skip
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == outside_digest
    assert umoci_files(f"oci:{bundle}:{repo}:{tag_of(m1)}", tmp_path / "umoci") == files1

    # load: every tag, the same digests, signatures along; the inside's records follow
    inside_get_hf = tmp_path / "inside-project" / "get_hf"
    inside_get_hf.mkdir(parents=True)
    key = str(tmp_path / "key.pub")
    result = cli("load", str(bundle), "--registry", inside.host, "--verify-key", key,
                 "--get-hf", str(inside_get_hf))  # fmt: skip
    assert result.exit_code == 0, result.output
    ledger = json.loads((inside_get_hf / "mirrored.json").read_text())
    outside_ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    entry = ledger["models"][m1]
    assert entry["image"] == f"{inside.host}/{ns}/models"
    assert entry["digest"] == outside_ledger["models"][m1]["digest"]
    assert entry["size"] == outside_ledger["models"][m1]["size"] > 0
    assert d1 in ledger["datasets"]
    assert f"{inside.host}/{ns}/models" in (inside_get_hf.parent / "models.md").read_text()
    for r, model in ((repo, m1), (repo, m2), (f"{ns}/datasets", d1)):
        assert _digest(inside, r, tag_of(model)) == _digest(registry, r, tag_of(model))
    assert _tags(inside, repo) == _tags(registry, repo)
    verified = cli("verify", f"{inside.host}/{repo}:{tag_of(m1)}", "--key",
                   str(tmp_path / "key.pub"))  # fmt: skip
    assert verified.exit_code == 0, verified.output

    # the consumers inside: docker pull, extract, serve (the real client), and serve --layout
    assert docker_files(f"{inside.host}/{repo}:{tag_of(m1)}", tmp_path / "docker") == files1
    out = tmp_path / "extracted"
    result = cli("extract", f"{inside.host}/{ns}/datasets:{tag_of(d1)}", str(out))
    assert result.exit_code == 0, result.output
    assert read_tree(out) == dfiles
    _check_served(ns, m1, files1, registry_host=inside.host)
    _check_served(ns, m1, files1, layout=bundle)


def _check_served(
    ns: str,
    repo_id: str,
    files: dict[str, bytes],
    *,
    registry_host: str | None = None,
    layout: Path | None = None,
) -> None:
    from huggingface_hub import hf_hub_download

    from hf2oci.consume.serve.store import Store, registry_store
    from test_serve import Served

    store = (registry_store(registry_host, ns, plain_http=True) if registry_host
             else Store(ns, root=layout))  # fmt: skip
    served = Served(store)
    try:
        path = hf_hub_download(
            repo_id,
            "model.safetensors",
            endpoint=served.url,
            cache_dir=str(Path(os.environ["HF_HOME"]) / f"c{time.time_ns()}"),
        )
        assert Path(path).read_bytes() == files["model.safetensors"]
    finally:
        served.stop()


def _layers(registry: Registry, repo: str, tag: str) -> dict[str, int]:
    doc = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers=ACCEPT,
                       timeout=10).json()  # fmt: skip
    return {d["digest"]: d["size"] for d in [doc["config"], *doc["layers"]]}


def test_a_second_revision_carries_only_the_changed_shards_and_small_parts(
    hub, registry, inside, project: Path, tmp_path: Path
) -> None:
    import random

    rng = random.Random("delta")
    shards = {f"model-{i:05d}-of-00012.safetensors": rng.randbytes(1_200_000 + i)
              for i in range(1, 13)}  # fmt: skip
    repo_id = f"testorg/sharded-{rng.randbytes(4).hex()}"
    hub.add_repo(repo_id, {"config.json": b'{"a": 1}\n', **shards})
    ns = _ns(repo_id)
    repo = f"{ns}/models"
    _mirror(project, registry, ns, [repo_id], [])
    first = tmp_path / "first.tar"
    assert cli("bundle", "--registry", registry.host, "--namespace", ns, "-o", str(first),
               "--only", repo_id).exit_code == 0  # fmt: skip
    assert cli("load", str(first), "--registry", inside.host).exit_code == 0
    before = _layers(registry, repo, tag_of(repo_id))

    changed = sorted(shards)[3:5]
    hub.commit(repo_id, {name: rng.randbytes(1_200_000) for name in changed})
    _mirror(project, registry, ns, [repo_id], [])
    after = _layers(registry, repo, tag_of(repo_id))
    new = {d: s for d, s in after.items() if d not in before}
    assert sum(1 for s in new.values() if s > 1_000_000) == 2  # the two shards' layers

    inv = tmp_path / "inside.json"
    assert cli("inventory", "--registry", inside.host, "--namespace", ns,
               "-o", str(inv)).exit_code == 0  # fmt: skip
    second = tmp_path / "second"
    result = cli("bundle", "--registry", registry.host, "--namespace", ns, "--since", str(inv),
                 "-o", str(second))  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads((second / "bundle.json").read_text())
    manifests = {m["digest"] for m in info["manifests"]}
    carried = {d: s for d, s in info["blobs"].items() if d not in manifests}
    assert carried == new  # exactly the changed layers, config and file index
    blob_bytes = sum(p.stat().st_size for p in (second / "blobs").rglob("*") if p.is_file())
    assert blob_bytes == sum(new.values()) + sum(info["blobs"][d] for d in manifests)
    assert blob_bytes < 2 * 1_200_000 + 200_000  # not the 14 MiB of the repo
    assert set(info["expects"]) == set(after) - set(new)

    result = cli("load", str(second), "--registry", inside.host)
    assert result.exit_code == 0, result.output
    assert "2 tags" in result.output or "tags" in result.output
    assert _digest(inside, repo, tag_of(repo_id)) == _digest(registry, repo, tag_of(repo_id))
    extracted = tmp_path / "x"
    assert cli("extract", f"{inside.host}/{repo}:{tag_of(repo_id)}", str(extracted)).exit_code == 0
    assert hashlib.sha256(read_tree(extracted)[changed[0]]).digest() != hashlib.sha256(
        shards[changed[0]]).digest()  # fmt: skip
    assert read_tree(extracted)[sorted(shards)[0]] == shards[sorted(shards)[0]]

    # an inventory that says the inside holds what it lost: one line, nothing published
    stale = tmp_path / "stale-inside"
    other = start_registry(tmp_path / "other")
    try:
        result = cli("load", str(second), "--registry", other.host)
        assert result.exit_code != 0
        assert "lacks" in result.output and "inventory" in result.output, result.output
        assert _tags(other, repo) == []
    finally:
        other.stop()
    assert not stale.exists()


@pytest.fixture
def outside_repo(hub, random_repo, registry, project: Path) -> tuple[str, str, dict[str, bytes]]:
    """A model of 2.5 MiB mirrored outside: (namespace, repo id, files)."""
    model, _, files = random_repo(size=5 * 512 * 1024)
    ns = _ns(model)
    _mirror(project, registry, ns, [model], [])
    return ns, model, files


def _bundle(registry: Registry, ns: str, out: Path, *extra: str) -> Path:
    result = cli("bundle", "--registry", registry.host, "--namespace", ns, "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    return out


def _refused(bundle: Path, inside: Registry, ns: str, *needles: str) -> str:
    """load fails with one line holding the needles, and nothing is published."""
    result = cli("load", str(bundle), "--registry", inside.host)
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _tags(inside, f"{ns}/models") == []
    return lines[0]


def test_a_split_tar_bundle_loads_and_each_damage_is_one_line_with_nothing_published(
    outside_repo, registry, inside, tmp_path: Path
) -> None:
    ns, model, files = outside_repo
    first = _bundle(registry, ns, tmp_path / "b" / "m.tar", "--split", "1MiB")
    volumes = sorted(p.name for p in first.parent.iterdir())
    assert volumes == ["m.tar.001", "m.tar.002", "m.tar.003", "m.tar.sha256"]
    assert all((first.parent / v).stat().st_size == 1 << 20 for v in volumes[:2])
    check = subprocess.run(["sha256sum", "-c", "m.tar.sha256"], cwd=first.parent,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout
    # the volumes joined are a tar of the layout that skopeo reads
    joined = tmp_path / "joined"
    joined.mkdir()
    cat = subprocess.run(f"cat {first.parent}/m.tar.0* | tar -x -C {joined}", shell=True)
    assert cat.returncode == 0
    assert umoci_files(f"oci:{joined}:{ns}/models:{tag_of(model)}", tmp_path / "u") == files

    def copy() -> Path:
        target = tmp_path / f"copy{time.time_ns()}"
        shutil.copytree(first.parent, target)
        return target

    # a truncated volume, a missing one, a flipped byte in a blob
    damaged = copy()
    with open(damaged / "m.tar.002", "r+b") as f:
        f.truncate(1000)
    _refused(damaged / "m.tar", inside, ns, "m.tar.002", "truncated")
    damaged = copy()
    (damaged / "m.tar.003").unlink()
    _refused(damaged / "m.tar", inside, ns, "m.tar.003", "missing")
    damaged = copy()
    with open(damaged / "m.tar.002", "r+b") as f:
        f.seek(500_000)
        byte = f.read(1)
        f.seek(500_000)
        f.write(bytes([byte[0] ^ 1]))
    line = _refused(damaged / "m.tar.001", inside, ns, "m.tar.002")
    assert "damaged" in line or "sha256" in line

    result = cli("load", str(first), "--registry", inside.host)
    assert result.exit_code == 0, result.output
    assert _digest(inside, f"{ns}/models", tag_of(model)) == _digest(
        registry, f"{ns}/models", tag_of(model))  # fmt: skip


def _rewrite_bundle_json(bundle: Path, change: Any) -> None:
    """Change bundle.json as an attacker would: the checksum list and index.json follow."""
    info = json.loads((bundle / "bundle.json").read_text())
    change(info)
    data = json.dumps(info).encode()
    (bundle / "bundle.json").write_bytes(data)
    sums = (bundle / "checksums.sha256").read_text().splitlines()
    sums = [f"{hashlib.sha256(data).hexdigest()}  bundle.json" if ln.endswith("  bundle.json")
            else ln for ln in sums]  # fmt: skip
    (bundle / "checksums.sha256").write_text("".join(f"{ln}\n" for ln in sums))


def test_hostile_folder_bundles_are_refused_and_nothing_is_written_outside(
    outside_repo, registry, inside, tmp_path: Path
) -> None:
    ns, _, _ = outside_repo
    good = _bundle(registry, ns, tmp_path / "good")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the bundle")

    def copy() -> Path:
        target = tmp_path / f"copy{time.time_ns()}"
        shutil.copytree(good, target)
        return target

    info = json.loads((good / "bundle.json").read_text())
    manifests = {m["digest"] for m in info["manifests"]}
    big = max((d for d in info["blobs"] if d not in manifests), key=lambda d: info["blobs"][d])
    name = "blobs/sha256/" + big[7:]

    bad = copy()  # a flipped byte: the upload is cut before its end
    data = bytearray((bad / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / name).write_bytes(bytes(data))
    _refused(bad, inside, ns, name, "damaged")
    assert requests.head(f"{inside.url}/v2/{ns}/models/blobs/{big}", timeout=5).status_code == 404

    bad = copy()  # a blob replaced by a symlink to a file outside the bundle
    (bad / name).unlink()
    (bad / name).symlink_to(secret)
    _refused(bad, inside, ns, name, "symlink")

    bad = copy()  # the blobs folder itself a symlink
    shutil.rmtree(bad / "blobs")
    (bad / "blobs").symlink_to(good / "blobs")
    _refused(bad, inside, ns, "blobs", "symlink")

    bad = copy()  # a file that is not what the checksum list says
    (bad / "index.json").write_bytes(b'{"manifests": []}')
    _refused(bad, inside, ns, "index.json", "checksums.sha256")

    for hostile, needle in (
        (lambda i: i.update(volumes=[{"name": "../../etc/passwd", "size": 1}]), "volumes"),
        (lambda i: i.update(volumes=[{"name": "/etc/passwd", "size": 1}]), "volumes"),
        (lambda i: i["refs"][0].update(repository="../evil"), "refs"),
        (lambda i: i["refs"][0].update(repository="othernamespace/models"), "outside the"),
        (lambda i: i.update(blobs={**i["blobs"], "sha256:../../x": 1}), "blobs"),
        (lambda i: i.update(kind="something-else"), "kind"),
    ):
        bad = copy()
        _rewrite_bundle_json(bad, hostile)
        _refused(bad, inside, ns, "bundle.json", needle)

    bad = copy()  # a checksum line naming a path outside
    with open(bad / "checksums.sha256", "a") as f:
        f.write(f"{'0' * 64}  ../secret.txt\n")
    _refused(bad, inside, ns, "checksums.sha256", "not a checksum line")
    assert secret.read_bytes() == b"outside the bundle"


def _hostile_tar(path: Path, good: Path, extra: tarfile.TarInfo, content: bytes = b"") -> None:
    """The good bundle's files as a tar, with one hostile member after the small files."""
    import io

    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("oci-layout", "bundle.json", "checksums.sha256", "index.json"):
            tar.add(good / name, arcname=name)
        tar.addfile(extra, io.BytesIO(content) if content else None)
        for blob in sorted((good / "blobs" / "sha256").iterdir()):
            tar.add(blob, arcname=f"blobs/sha256/{blob.name}")


def test_hostile_tars_are_refused_naming_the_member(
    outside_repo, registry, inside, tmp_path: Path
) -> None:
    ns, _, _ = outside_repo
    good = _bundle(registry, ns, tmp_path / "good")
    cases = []
    link = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases.append((link, b"", "symlink"))
    hard = tarfile.TarInfo("blobs/sha256/" + "b" * 64)
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../../etc/passwd"
    cases.append((hard, b"", "symlink"))
    dotdot = tarfile.TarInfo("../../escape.txt")
    dotdot.size = 3
    cases.append((dotdot, b"abc", "not a blob"))
    absolute = tarfile.TarInfo("/tmp/escape.txt")
    absolute.size = 3
    cases.append((absolute, b"abc", "not a blob"))
    for i, (member, content, needle) in enumerate(cases):
        path = tmp_path / f"hostile{i}.tar"
        _hostile_tar(path, good, member, content)
        _refused(path, inside, ns, str(path), needle)
    assert not Path("/tmp/escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_a_load_killed_midway_finishes_on_the_second_run_without_uploading_twice(
    hub, random_repo, registry, inside, project: Path, tmp_path: Path
) -> None:
    models = [random_repo(size=300_000)[0] for _ in range(3)]
    ns = _ns(models[0])
    _mirror(project, registry, ns, models, [])
    bundle = _bundle(registry, ns, tmp_path / "b.tar")
    proxy = FaultProxy(inside.host)
    proxy.delay = 0.15  # a slow link, so the kill lands in the middle
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "hf2oci", "load", str(bundle), "--registry", proxy.host]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def puts() -> list[str]:
        return [p for m, p in list(proxy.seen) if m == "PUT" and "digest=" in p]

    deadline = time.monotonic() + 60
    while len(puts()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    first = len(puts())
    assert first >= 2
    assert _tags(inside, f"{ns}/models") == []  # tags come last: none yet
    proxy.delay = 0
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    uploaded = [p.split("digest=")[1].split("&")[0] for p in puts()]
    assert len(uploaded) == len(set(uploaded)), "a blob was uploaded twice"
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("bundle.json")
        assert member is not None
        info = json.loads(member.read())
    manifests = {m["digest"] for m in info["manifests"]}
    assert {u.replace("%3A", ":") for u in uploaded} == set(info["blobs"]) - manifests
    for model in models:
        assert _digest(inside, f"{ns}/models", tag_of(model)) == _digest(
            registry, f"{ns}/models", tag_of(model))  # fmt: skip


def _registry_disk(reg: Registry) -> int:
    return sum(p.stat().st_size for p in reg.root.rglob("*") if p.is_file())


def test_prune_keeps_the_moving_tag_and_the_newest_revision_and_gc_frees_the_rest(
    hub, registry, tmp_path: Path, project: Path
) -> None:
    import random

    from hf2oci import naming

    own = start_registry(tmp_path / "reg")  # its disk is measured: a registry of its own
    try:
        rng = random.Random("prune")
        repo_id = f"testorg/pruned-{rng.randbytes(4).hex()}"
        keep_id = f"testorg/pinned-{rng.randbytes(4).hex()}"
        shas = [hub.add_repo(repo_id, {"model.safetensors": rng.randbytes(2_000_000)})]
        pinned_sha = hub.add_repo(keep_id, {"model.safetensors": rng.randbytes(1_000_000)})
        ns = _ns(repo_id)
        private, _ = _key_pem()
        for _ in range(2):
            _mirror(project, own, ns, [repo_id, f"{keep_id}@{pinned_sha}"], [], key=private)
            time.sleep(1.1)  # commit dates are to the second: the newest must be newest
            shas.append(hub.commit(repo_id, {"model.safetensors": rng.randbytes(2_000_000)}))
        _mirror(project, own, ns, [repo_id, f"{keep_id}@{pinned_sha}"], [], key=private)
        repo = f"{ns}/models"
        tags = _tags(own, repo)
        revision_tags = [naming.revision_tag(repo_id, s) for s in shas]
        assert set(revision_tags) <= set(tags)
        old = [_digest(own, repo, t) for t in revision_tags[:2]]

        dry = cli("prune", "--registry", own.host, "--namespace", ns, "--keep", "1", "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert dry.output.count("would remove") == 2 and _tags(own, repo) == tags
        for days, removed in (("36500", 0), ("0", 2)):  # older than a century / than now
            aged = cli("prune", "--registry", own.host, "--namespace", ns, "--older-than", days,
                       "--dry-run")  # fmt: skip
            assert aged.exit_code == 0 and aged.output.count("would remove") == removed, aged.output
        result = cli("prune", "--registry", own.host, "--namespace", ns, "--keep", "1")
        assert result.exit_code == 0, result.output
        left = _tags(own, repo)
        assert tag_of(repo_id) in left and revision_tags[2] in left
        assert not set(revision_tags[:2]) & set(left)
        for digest in old:  # the signatures of the pruned images went with them
            assert digest is not None and not any(t.startswith(digest.replace(":", "-"))
                                                  for t in left)  # fmt: skip
        assert naming.revision_tag(keep_id, pinned_sha) in left  # a list line pins it

        # the registry's own garbage collection frees the old layers
        before = _registry_disk(own)
        own.stop()
        config = own.root.parent / "config.yml"
        gc = subprocess.run(["docker-registry", "garbage-collect", "--delete-untagged",
                             str(config)], capture_output=True, text=True)  # fmt: skip
        assert gc.returncode == 0, gc.stdout[-2000:] + gc.stderr[-2000:]
        after = _registry_disk(own)
        assert before - after >= 2 * 2_000_000, (before, after)
    finally:
        own.stop()


def test_prune_against_a_registry_that_refuses_deletes_is_one_line(
    hub, random_repo, tmp_path: Path, project: Path
) -> None:
    reg = start_registry(tmp_path / "nodelete", extra_config="")
    cfg = reg.root.parent / "config.yml"
    reg.stop()
    cfg.write_text(cfg.read_text().replace("enabled: true", "enabled: false"))
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    reg = Registry(reg.host, reg.root, proc)
    try:
        from servers import wait_http

        wait_http(f"{reg.url}/v2/")
        model, _, _ = random_repo()
        ns = _ns(model)
        _mirror(project, reg, ns, [model], [])
        time.sleep(1.1)  # commit dates are to the second
        hub.commit(model, {"config.json": b'{"b": 2}\n'})
        _mirror(project, reg, ns, [model], [])
        result = cli("prune", "--registry", reg.host, "--namespace", ns, "--keep", "1")
        assert result.exit_code != 0
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "refuses deletes" in lines[0], result.output
    finally:
        reg.stop()


def test_bad_arguments_are_one_line(registry, inside, tmp_path: Path, outside_repo) -> None:
    ns, _, _ = outside_repo
    cases = [
        (["bundle", "--registry", registry.host, "--namespace", ns, "--only", "acme/absent",
          "-o", str(tmp_path / "x")], "acme/absent"),
        (["bundle", "--registry", registry.host, "--namespace", ns, "--only", "not a repo",
          "-o", str(tmp_path / "x")], "invalid repo id"),
        (["bundle", "--registry", registry.host, "--namespace", ns, "--since",
          str(tmp_path / "none.json"), "-o", str(tmp_path / "x")], "none.json"),
        (["bundle", "--registry", registry.host, "--namespace", ns, "--split", "lots",
          "-o", str(tmp_path / "x.tar")], "--split"),
        (["bundle", "--registry", registry.host, "--namespace", ns, "--split", "4GiB",
          "-o", str(tmp_path / "x")], "tar"),
        (["load", str(tmp_path / "absent"), "--registry", inside.host], "absent"),
        (["prune", "--registry", inside.host, "--namespace", ns], "--keep"),
    ]  # fmt: skip
    (tmp_path / "bad.json").write_text('{"kind": "hf2oci-inventory"}')
    cases.append((["bundle", "--registry", registry.host, "--namespace", ns, "--since",
                   str(tmp_path / "bad.json"), "-o", str(tmp_path / "x")], "bad.json"))  # fmt: skip
    existing = _bundle(registry, ns, tmp_path / "exists")
    cases.append((["bundle", "--registry", registry.host, "--namespace", ns,
                   "-o", str(existing)], "exists"))  # fmt: skip
    for args, needle in cases:
        result = cli(*args)
        assert result.exit_code != 0, args
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, result.output)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.tar").exists()


def test_an_inventory_of_a_thousand_repos_fits_in_a_mebibyte() -> None:
    from hf2oci.airgap.schema import Held, Inventory

    inv = Inventory("registry.inside:5000", "hgfkeep")
    h = lambda s: "sha256:" + hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    tags = inv.tags.setdefault("hgfkeep/models", {})
    blobs = inv.blobs.setdefault("hgfkeep/models", set())
    for i in range(1000):  # a moving tag and its pinned tag, a config and 8 layers each
        name = f"org-{i:04d}--model-name-{i:04d}"
        tags[name] = tags[f"{name}--{h(name)[7:19]}"] = Held(h(name), h(name)[7:47])
        blobs.update(h(f"{name}/{j}") for j in range(9))
    data = inv.to_json()
    assert len(data) <= 1 << 20, len(data)
    again = Inventory.from_json(data, "inv.json")
    assert again.tags == inv.tags and again.blobs == inv.blobs


def test_load_with_a_key_refuses_unsigned_or_foreign_images_and_publishes_the_rest(
    hub, random_repo, registry, inside, project: Path, tmp_path: Path
) -> None:
    signed, _, _ = random_repo()
    unsigned, _, _ = random_repo()
    private, public = _key_pem()
    _, other_public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    (tmp_path / "other.pub").write_bytes(other_public)
    ns = _ns(signed)
    _mirror(project, registry, ns, [signed], [], key=private)
    _mirror(project, registry, ns, [signed, unsigned], [])
    bundle = _bundle(registry, ns, tmp_path / "b" / "both.tar", "--split", "1MiB")
    repo = f"{ns}/models"

    result = cli("load", str(bundle), "--registry", inside.host,
                 "--verify-key", str(tmp_path / "other.pub"))  # fmt: skip
    assert result.exit_code == 1
    assert result.output.count("not verified") == 2, result.output
    assert _tags(inside, repo) == []  # neither image, nor their signatures

    result = cli("load", str(bundle), "--registry", inside.host,
                 "--verify-key", str(tmp_path / "key.pub"))  # fmt: skip
    assert result.exit_code == 1
    refused = [ln for ln in result.output.splitlines() if "not verified" in ln]
    assert len(refused) == 1 and tag_of(unsigned) in refused[0], result.output
    assert "signature" in refused[0]
    assert _digest(inside, repo, tag_of(signed)) == _digest(registry, repo, tag_of(signed))
    assert _digest(inside, repo, tag_of(unsigned)) is None
    verified = cli("verify", f"{inside.host}/{repo}:{tag_of(signed)}", "--key",
                   str(tmp_path / "key.pub"))  # fmt: skip
    assert verified.exit_code == 0, verified.output

    # re-homed under another namespace, without a key: both, the same digests
    result = cli("load", str(bundle), "--registry", inside.host, "--namespace", "rehomed")
    assert result.exit_code == 0, result.output
    for model in (signed, unsigned):
        assert _digest(inside, "rehomed/models", tag_of(model)) == _digest(
            registry, repo, tag_of(model))  # fmt: skip
