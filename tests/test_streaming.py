"""The oci builder's streaming path: hub → registry/layout in one pass, reuse, faults, kills."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    cli,
    docker_files,
    make_project,
    read_tree,
    skopeo_inspect,
    skopeo_tags,
    tag_of,
    umoci_files,
)
from servers import Registry, start_registry

MiB = 1 << 20


def _weights(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _big_repo(hub, name: str, *, shards: int = 2, size: int = 3 * MiB) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "test"}\n',
        "tokenizer.json": b'{"vocab": {}}\n',
        "sub dir/données.txt": "é".encode() * 100,
    }
    for i in range(shards):
        files[f"model-{i + 1:05d}-of-{shards:05d}.safetensors"] = _weights(f"{name}{i}", size)
    hub.add_repo(name, files)
    return files


def _blobs(reg: Registry) -> set[str]:
    root = reg.root / "docker" / "registry" / "v2" / "blobs"
    return {p.parent.name for p in root.rglob("data")}


@pytest.fixture
def own_registry(tmp_path: Path):
    reg = start_registry(tmp_path / "reg")
    yield reg
    reg.stop()


def test_streamed_image_is_exact_and_identical_to_the_staged_one(
    hub, registry, busybox_base, project: Path
) -> None:
    files = _big_repo(hub, "stream/exact")
    make_project(project, models=["stream/exact"])
    common = ["--registry", registry.host, "--base-image", busybox_base, "-q"]
    hub.reset_log()
    assert cli("sync", "--namespace", "streamed", *common).exit_code == 0
    # the large files were fetched once each, straight from the hub (no snapshot on disk)
    for name in files:
        if name.endswith(".safetensors"):
            assert hub.count("GET", "/resolve/") and hub.count("GET", name) == 1
    staged = cli("sync", "--namespace", "staged", "--staged", *common)
    assert staged.exit_code == 0, staged.output
    a = skopeo_inspect(f"docker://{registry.host}/streamed/models:stream--exact")
    b = skopeo_inspect(f"docker://{registry.host}/staged/models:stream--exact")
    assert a["Digest"] == b["Digest"]
    # one layer per large file, small files together, annotated with what they hold
    manifest = skopeo_inspect(f"docker://{registry.host}/streamed/models:stream--exact", raw=True)
    titles = [
        layer.get("annotations", {}).get("org.opencontainers.image.title")
        for layer in manifest["layers"]
    ]
    assert titles[-3:-1] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert titles[-1] == ".hf2oci/files.json"  # the file index, outside /REPO
    assert all(
        layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        for layer in manifest["layers"][1:]
    )
    assert docker_files(f"{registry.host}/streamed/models:stream--exact", project / "o") == files


def test_streaming_into_a_layout(hub, project: Path) -> None:
    files = _big_repo(hub, "stream/layout", shards=1)
    make_project(project, models=["stream/layout"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "hgfkeep" / "models"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:stream--layout", str(project / "b")],
        check=True,
        capture_output=True,
    )
    assert read_tree(project / "b" / "REPO") == files
    leftovers = [p for p in (layout / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_new_revision_uploads_and_downloads_only_the_changed_file(
    hub, own_registry: Registry, project: Path
) -> None:
    files = _big_repo(hub, "stream/delta", shards=3)
    make_project(
        project,
        models=["stream/delta"],
        config={"registry": own_registry.host, "base_image": "scratch"},
    )
    assert cli("sync", "-q").exit_code == 0
    before = _blobs(own_registry)
    # a new revision that changes one shard; the layer cache is gone (another machine)
    changed = _weights("changed", 3 * MiB)
    hub.commit("stream/delta", {"model-00002-of-00003.safetensors": changed})
    os.environ["HF2OCI_CACHE"] = str(project / "other-cache")
    hub.reset_log()
    assert cli("sync", "-q").exit_code == 0
    new = _blobs(own_registry) - before
    # the changed shard's layer, the file index, the config and the manifest: nothing else
    assert len(new) == 4
    downloaded = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert not any("00001-of" in p or "00003-of" in p for p in downloaded)
    assert any("00002-of" in p for p in downloaded)
    got = docker_free_read(own_registry, "hgfkeep/models", "stream--delta", project / "x")
    assert got == {**files, "model-00002-of-00003.safetensors": changed}


def docker_free_read(reg: Registry, repo: str, tag: str, dest: Path) -> dict[str, bytes]:
    """The image's /REPO files read with skopeo and umoci (no engine)."""
    return umoci_files(f"docker://{reg.host}/{repo}:{tag}", dest)


def test_hub_faults_mid_stream_are_resumed(hub, own_registry: Registry, project: Path) -> None:
    files = _big_repo(hub, "stream/faults", shards=2)
    hub.fail_next("model-00001-of-00002", status=503, times=2)
    hub.fail_next("model-00002-of-00002", status=429, retry_after=1)
    hub.cut_next("model-00002-of-00002", after_bytes=MiB + 123)
    make_project(
        project,
        models=["stream/faults"],
        config={"registry": own_registry.host, "base_image": "scratch"},
    )
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output
    assert any("model-00002" in path for path, _ in hub.ranges), "\n".join(map(str, hub.requests))
    assert (
        docker_free_read(own_registry, "hgfkeep/models", "stream--faults", project / "x") == files
    )


def test_content_that_does_not_match_the_hub_hash_is_never_published(
    hub, own_registry: Registry, project: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(_weights("good", 2 * MiB))
    hub.add_repo("stream/corrupt", {"config.json": b"{}", "model.safetensors": weights})
    # same size and mtime, other bytes: the hub still announces the old sha256
    st = weights.stat()
    weights.write_bytes(_weights("evil", 2 * MiB))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    make_project(
        project,
        models=["stream/corrupt"],
        config={"registry": own_registry.host, "base_image": "scratch"},
    )
    result = cli("sync", "-q")
    assert result.exit_code == 1
    assert "hashes to" in result.stderr and "Traceback" not in result.output
    tags = skopeo_tags(f"{own_registry.host}/hgfkeep/models")
    assert not [t for t in tags if "stream--corrupt" in t]  # nor its --<sha> tag
    # at most the small files' layer and the file index got in: no blob holds the bad weights,
    # no manifest exists
    assert len(_blobs(own_registry)) <= 2


def test_sigkill_mid_push_never_leaves_a_tag_and_the_rerun_completes(
    hub, own_registry: Registry, project: Path
) -> None:
    files = _big_repo(hub, "stream/killed", shards=3, size=4 * MiB)
    make_project(
        project,
        models=["stream/killed"],
        config={"registry": own_registry.host, "base_image": "scratch"},
    )
    (project / "tmp").mkdir()  # a killed run cannot clean its scratch: keep it in the test's dir
    env = {**os.environ, "HF2OCI_CACHE": str(project / "cache"), "TMPDIR": str(project / "tmp")}
    hub.throttle = 8 * MiB  # slow enough to be killed in the middle
    proc = subprocess.Popen(
        [sys.executable, "-m", "hf2oci", "sync", "-q"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while hub.count("GET", "model-00003-of-00003") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL  # killed, not finished
    finally:
        hub.throttle = None
    tags = skopeo_tags(f"{own_registry.host}/hgfkeep/models")
    assert not [t for t in tags if "stream--killed" in t]  # nor its --<sha> tag
    hub.reset_log()
    rerun = subprocess.run(
        [sys.executable, "-m", "hf2oci", "sync", "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["mirrored"] == 1
    assert (
        docker_free_read(own_registry, "hgfkeep/models", "stream--killed", project / "x") == files
    )


def test_registry_faults_during_streamed_uploads_end_with_exact_content(
    hub, own_registry: Registry, project: Path
) -> None:
    from faultproxy import FaultProxy

    files = _big_repo(hub, "stream/regfaults", shards=2)
    proxy = FaultProxy(own_registry.host)
    try:
        cut = proxy.fault("PATCH", r"/blobs/uploads/", "cut")
        fail = proxy.fault("PUT", r"/blobs/uploads/.*digest=", "500")
        busy = proxy.fault("PUT", r"/manifests/", "503")
        make_project(
            project,
            models=["stream/regfaults"],
            config={"registry": proxy.host, "base_image": "scratch"},
        )
        hub.reset_log()
        result = cli("sync", "-q")
        assert result.exit_code == 0, result.output
        assert cut.hits == fail.hits == busy.hits == 1
        # a failed upload session is started over, streaming the file from the hub again
        shard_gets = [p for m, p in hub.requests if m == "GET" and "safetensors" in p]
        assert len(shard_gets) >= 3
    finally:
        proxy.server.shutdown()
    got = docker_free_read(own_registry, "hgfkeep/models", "stream--regfaults", project / "x")
    assert got == files


def test_wrong_registry_credentials_are_one_line_without_the_password(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"ci:" + bcrypt.hashpw(b"right-password", bcrypt.gensalt(4)) + b"\n")
    reg = start_registry(
        tmp_path / "authreg",
        extra_config=f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
    )
    try:
        model, _, _ = random_repo()
        make_project(
            project, models=[model], config={"registry": reg.host, "base_image": "scratch"}
        )
        monkeypatch.setenv("HF2OCI_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("HF2OCI_REGISTRY_PASSWORD", "wrong-password-123")
        bad = cli("sync", "-q")
        assert bad.exit_code == 1
        assert "wrong-password-123" not in bad.output and "Traceback" not in bad.output
        assert "refused the credentials" in bad.stderr
        monkeypatch.setenv("HF2OCI_REGISTRY_PASSWORD", "right-password")
        good = cli("sync", "-q")
        assert good.exit_code == 0, good.output
        assert "right-password" not in good.output
    finally:
        reg.stop()


@pytest.mark.parametrize("mode", ["--stream", "--staged"])
def test_a_hub_that_fails_every_fourth_download_still_mirrors_exactly(
    hub, project: Path, mode: str
) -> None:
    """Every hub request goes through the retry policy, small files too: one transient 503 or
    cut body used to fail the whole repo (3 runs out of 3)."""
    files = {f"small/file-{i}.json": f'{{"i": {i}}}\n'.encode() for i in range(7)}
    files.update(
        {f"model-{i}.safetensors": _weights(f"flaky{i}", MiB + 1000 * i) for i in range(5)}
    )
    name = f"acme/tiny-bert-{mode.strip('-')}"
    hub.add_repo(name, files)
    make_project(project)
    hub.flaky(4)
    result = cli("mirror", name, "--base-image", "scratch", mode, "--no-record")
    hub.flaky(0)
    assert result.exit_code == 0, result.output
    assert hub.count("GET", "/resolve/") > len(files)  # faults happened and were retried
    out = project / "out"
    extracted = cli(
        "extract", f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(name)}", str(out)
    )
    assert extracted.exit_code == 0, extracted.output
    assert read_tree(out) == files


def test_a_hostile_hub_path_fails_its_repo_and_writes_nothing_outside(
    hub, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    scratch = tmp_path / "scratch" / "deep"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # downloads go under tmp_path
    hub.add_repo("evil/paths", {"config.json": b"{}", "../../escape.txt": b"gotcha"})
    make_project(project)
    result = cli("mirror", "evil/paths", "--base-image", "scratch", "--no-record")
    assert result.exit_code == 1 and "could escape" in result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("escape.txt"))


@pytest.mark.parametrize("mode", ["--stream", "--staged"])
def test_xet_era_redirects_download_over_plain_http_and_never_send_the_token_away(
    hub, project: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The real hub now answers resolve of LFS files with a 302 to a CDN on another host, with
    Xet headers: the bytes still come over plain HTTP, checked against the LFS sha256, and
    HF_TOKEN never reaches that host."""
    token = "hf_xet_era_token_0123456789"
    hub.tokens.add(token)
    monkeypatch.setenv("HF_TOKEN", token)
    files = {"config.json": b"{}", "model.safetensors": _weights("xet", 3 * MiB),
             "small.bin": _weights("xet-small", 1000)}  # fmt: skip
    name = f"xet/model-{mode.strip('-')}"
    hub.add_repo(name, files, gated=True)  # the token is needed at the hub itself
    cdn = hub.xet_redirects()
    make_project(project)
    result = cli("mirror", name, "--base-image", "scratch", mode, "--no-record", "-q")
    assert result.exit_code == 0, result.output
    served = [path for _, path, _ in cdn.requests]
    assert len(served) >= 2  # both LFS files came from the CDN
    for _, _, headers in cdn.requests:
        assert not any(k.lower() == "authorization" for k in headers), headers
        assert token not in json.dumps(headers)
    out = project / "out"
    got = cli("extract", f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(name)}", str(out))
    assert got.exit_code == 0 and read_tree(out) == files


def test_429_with_retry_after_is_honoured(hub, project: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": _weights("rate", 2 * MiB)}
    hub.add_repo("rate/limited", files)
    hub.fail_next("/api/models/rate/limited", status=429, retry_after=1)
    hub.fail_next("/resolve/", status=429, retry_after=1, times=2)
    make_project(project)
    started = time.monotonic()
    result = cli("mirror", "rate/limited", "--base-image", "scratch", "--no-record", "-q")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.0  # it waited as told, at least once
    assert hub.count("GET", "/api/models/rate/limited") >= 2
