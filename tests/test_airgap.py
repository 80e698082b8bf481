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

    # load: every tag, the same digests, signatures along
    result = cli("load", str(bundle), "--registry", inside.host,
                 "--verify-key", str(tmp_path / "key.pub"))  # fmt: skip
    assert result.exit_code == 0, result.output
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


def _check_served(ns: str, repo_id: str, files: dict[str, bytes], *,
                  registry_host: str | None = None, layout: Path | None = None) -> None:  # fmt: skip
    from huggingface_hub import hf_hub_download

    from hf2oci.consume.serve.store import Store, registry_store
    from test_serve import Served

    store = (registry_store(registry_host, ns, plain_http=True) if registry_host
             else Store(ns, root=layout))  # fmt: skip
    served = Served(store)
    try:
        path = hf_hub_download(repo_id, "model.safetensors", endpoint=served.url,
                               cache_dir=str(Path(os.environ["HF_HOME"]) / f"c{time.time_ns()}"))
        assert Path(path).read_bytes() == files["model.safetensors"]
    finally:
        served.stop()
