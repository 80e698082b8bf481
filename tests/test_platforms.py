"""Multi-platform images: one index per tag, one image per platform of the base, the repo's
layers the same blobs in all of them; every reader accepts the index."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import cli, make_project, read_tree, skopeo_inspect, tag_of
from hf2oci import labels as L
from hf2oci.consume.extract import extract
from hf2oci.consume.serve.files import read_files
from hf2oci.errors import RegistryError
from hf2oci.oci.image import MT_INDEX
from hf2oci.oci.source import open_image
from hf2oci.reference import Platform
from test_registry import push_multi_platform_base


def _manifests(ref: str) -> dict[str, dict[str, Any]]:
    """The index at docker:// ``ref`` → each platform's manifest, by architecture."""
    index = skopeo_inspect(f"docker://{ref}", raw=True)
    assert index["mediaType"] == MT_INDEX
    repo = ref.rsplit(":", 1)[0]
    return {
        e["platform"]["architecture"]: skopeo_inspect(f"docker://{repo}@{e['digest']}", raw=True)
        for e in index["manifests"]
    }


def test_sync_makes_an_index_of_every_platform_of_the_base_with_shared_layers(
    hub, random_repo, registry, project: Path, tmp_path: Path
) -> None:
    # the arm64 base has two layers, the amd64 one one: the repo's layers sit at other
    # positions in each image, and the file index (written once) must serve both
    base_repo = f"multi/base-{uuid.uuid4().hex[:8]}"
    push_multi_platform_base(registry, base_repo, arm64_layers=2)
    base = f"{registry.host}/{base_repo}:multi"
    model, sha, files = random_repo(size=300 * 1024)
    make_project(
        project,
        models=[model],
        config={
            "registry": registry.host, "namespace": "plat", "base_image": base,
            "small_file_limit": 1024,  # most files stream: shared StreamLayers, uploaded once
        },
    )  # fmt: skip
    result = cli("sync", "-q", "--json")
    assert result.exit_code == 0, result.output
    ref = f"{registry.host}/plat/models:{tag_of(model)}"

    by_arch = _manifests(ref)
    assert sorted(by_arch) == ["amd64", "arm64"]
    amd64, arm64 = by_arch["amd64"]["layers"], by_arch["arm64"]["layers"]
    assert len(amd64) + 1 == len(arm64)
    repo_layers = [d["digest"] for d in amd64[1:]]
    assert repo_layers == [d["digest"] for d in arm64[2:]]  # same blobs, same digests
    assert len(repo_layers) >= 3
    assert hub.count("GET", "/resolve/") == len(files)  # each file fetched once for both

    index = skopeo_inspect(f"docker://{ref}", raw=True)
    assert index["annotations"]["io.hf2oci.platforms"] == "linux/amd64,linux/arm64"
    assert index["annotations"][L.REVISION] == sha

    # the engine pulls each platform of the one tag; files byte for byte on this machine's
    for arch in ("arm64", "amd64"):
        subprocess.run(
            ["docker", "pull", "-q", "--platform", f"linux/{arch}", ref],
            check=True, capture_output=True,
        )  # fmt: skip
        inspect = subprocess.run(
            ["docker", "image", "inspect", ref], check=True, capture_output=True, text=True
        )
        assert json.loads(inspect.stdout)[0]["Architecture"] == arch
    cid = subprocess.run(
        ["docker", "create", ref, "sh"], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        out = tmp_path / "cp"
        subprocess.run(["docker", "cp", f"{cid}:/REPO", str(out)], check=True, capture_output=True)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    assert read_tree(out) == files

    # every reader takes the index: extract (this machine's platform), the file index on
    # either platform, and a second sync sees it up to date
    extract(ref, tmp_path / "x", plain_http=True)
    assert read_tree(tmp_path / "x") == files
    for arch in ("amd64", "arm64"):
        image = open_image(ref, plain_http=True, platform=Platform("linux", arch))
        found = read_files(image)
        assert sorted(found) == sorted(files)
        for path, data in files.items():
            assert b"".join(found[path].chunks()) == data
    again = cli("sync", "--json", "-q")
    assert json.loads(again.stdout)["results"][0]["status"] == "skipped"

    # one platform asked for: the index is replaced by a single manifest
    one = cli("sync", "--platform", "linux/arm64", "--json", "-q")
    result_doc = json.loads(one.stdout)["results"][0]
    assert result_doc["status"] == "mirrored" and "platforms changed" in result_doc["message"]
    single = skopeo_inspect(f"docker://{ref}", raw=True)
    assert single["mediaType"] != MT_INDEX
    assert skopeo_inspect(f"docker://{ref}", config=True)["architecture"] == "arm64"
    # the files' layers are reused as they were (the file index, last, has other positions)
    assert [d["digest"] for d in single["layers"][2:-1]] == repo_layers[:-1]


def test_index_is_reproducible_and_layouts_get_it_too(
    hub, random_repo, registry, project: Path
) -> None:
    base_repo = f"multi/repro-{uuid.uuid4().hex[:8]}"
    push_multi_platform_base(registry, base_repo)
    base = f"{registry.host}/{base_repo}:multi"
    model, _, files = random_repo()
    make_project(project, models=[model], config={"base_image": base})
    digests = []
    for out in ("a", "b"):
        result = cli(
            "mirror", model, "--platform", "linux/amd64,linux/arm64", "--output-dir", out,
            "--json", "-q",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        digests.append(json.loads(result.stdout)["results"][0]["digest"])
        layout = f"oci:{project / out / 'hgfkeep/models'}:{tag_of(model)}"
        assert skopeo_inspect(layout, raw=True)["mediaType"] == MT_INDEX
    assert digests[0] == digests[1]
    # the same index, written to a registry, has the same digest
    pushed = cli(
        "mirror", model, "--registry", registry.host, "--namespace", "repro",
        "--platform", "linux/amd64,linux/arm64", "--json", "-q",
    )  # fmt: skip
    assert json.loads(pushed.stdout)["results"][0]["digest"] == digests[0]
    # extract reads the layout's index
    extract(f"oci:{project / 'a' / 'hgfkeep/models'}:{tag_of(model)}", project / "x")
    assert read_tree(project / "x") == files
    # a platform the base lacks fails before anything is fetched
    hub.reset_log()
    missing = cli("mirror", model, "--platform", "linux/amd64,linux/s390x", "--output-dir", "c")
    assert missing.exit_code == 1 and "no linux/s390x manifest" in missing.stderr
    assert hub.count("GET", "/resolve/") == 0


def test_scratch_and_single_platform_bases_give_one_manifest(
    hub, random_repo, registry, project: Path
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"base_image": "scratch"})
    result = cli("mirror", model, "--json", "-q")
    assert result.exit_code == 0, result.output
    layout = f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(model)}"
    assert skopeo_inspect(layout, raw=True)["mediaType"] != MT_INDEX
    # a single-platform base cannot give another platform: one clear line
    base_repo = f"single/base-{uuid.uuid4().hex[:8]}"
    images = push_multi_platform_base(registry, base_repo)
    from hf2oci.oci.push import push
    from hf2oci.oci.registry import RegistryClient

    push(RegistryClient(registry.host), images["amd64"], base_repo, tags=["one"])
    make_project(project, config={"base_image": f"{registry.host}/{base_repo}:one"})
    bad = cli("mirror", model, "--platform", "linux/arm64", "--output-dir", "bad")
    assert bad.exit_code == 1
    assert "has one platform (linux/amd64), not linux/arm64" in bad.stderr


def test_an_index_without_this_machines_platform_is_still_read(
    hub, random_repo, registry, project: Path
) -> None:
    """Readers want files, the same in every platform's image: with no image for this machine
    they read the first linux one (a base image must match exactly)."""
    base_repo = f"multi/foreign-{uuid.uuid4().hex[:8]}"
    push_multi_platform_base(registry, base_repo, arches=("arm64", "riscv64"))
    model, _, files = random_repo()
    make_project(
        project, models=[model], config={"base_image": f"{registry.host}/{base_repo}:multi"}
    )
    assert cli("sync", "-q").exit_code == 0
    ref = f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(model)}"
    index = skopeo_inspect(ref, raw=True)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64", "riscv64"]
    extract(ref, project / "x")
    assert read_tree(project / "x") == files
    assert sorted(read_files(open_image(ref))) == sorted(files)
    with pytest.raises(RegistryError, match="no linux/s390x manifest"):
        open_image(ref, platform=Platform("linux", "s390x"))  # asked for: exact
