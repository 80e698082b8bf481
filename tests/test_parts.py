"""Files over ``max_layer_size`` carried in parts: every layer within the limit (tar included),
and each consumer puts the whole file back: extract (folder, HF cache), serve (downloads and
Range reads across a part's edge), the init container in the Docker engine, ``docker cp`` with
the documented join, and a bundle loaded into another registry."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import cli, make_project, read_tree, run_json, skopeo_inspect, tag_of
from hf2oci import labels as L
from hf2oci.consume.k8s import INIT_COMMAND
from hf2oci.consume.serve.store import registry_store
from hf2oci.repofiles import join_script, parts_of
from servers import Registry, start_registry
from test_serve import Served

MiB = 1 << 20
LIMIT = 2 * MiB
REPO = "parts/big-model"


def _files() -> dict[str, bytes]:
    rng = random.Random(REPO)
    return {
        "config.json": b'{"model_type": "bert"}\n',
        "w/model.safetensors": rng.randbytes(5 * MiB + 123),  # three parts
        "aux.bin": rng.randbytes(LIMIT),  # its tar entry is over the limit: two parts
        "small.safetensors": rng.randbytes(LIMIT - 8192),  # fits whole, tar and all
    }


FILES = _files()


@pytest.fixture(scope="module")
def mirrored(
    hub_server: Any, registry: Registry, busybox_base: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """The repo mirrored once into the registry on busybox: (namespace, image reference)."""
    hub_server.add_repo(REPO, FILES)
    ns = f"parts{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("parts-project")
    make_project(root, models=[REPO])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF2OCI_CACHE", str(root / "cache"))
        r = cli("mirror", REPO, "--no-record", "--registry", registry.host, "--namespace", ns,
                "--base-image", busybox_base, "--max-layer-size", str(LIMIT))  # fmt: skip
    assert r.exit_code == 0, r.output
    return ns, f"{registry.host}/{ns}/models:{tag_of(REPO)}"


def test_each_layer_is_within_the_limit_and_the_image_says_how_to_join(
    mirrored: tuple[str, str],
) -> None:
    _, ref = mirrored
    manifest = skopeo_inspect(f"docker://{ref}", raw=True)
    repo_layers = manifest["layers"][1:]  # after busybox's
    assert max(d["size"] for d in repo_layers) <= LIMIT
    titles = [d.get("annotations", {}).get(L.TITLE) for d in repo_layers]
    for name in ("w/model.safetensors.part-001-of-003", "w/model.safetensors.part-003-of-003",
                 "aux.bin.part-002-of-002", "small.safetensors"):  # fmt: skip
        assert name in titles
    joins = parts_of(manifest["annotations"])
    assert sorted(joins) == ["aux.bin", "w/model.safetensors"]
    big = joins["w/model.safetensors"]
    assert big.sha256 == hashlib.sha256(FILES["w/model.safetensors"]).hexdigest()
    assert big.size == len(FILES["w/model.safetensors"]) and big.part_size % 4096 == 0


def test_extract_and_the_hf_cache_put_the_whole_files_back(
    mirrored: tuple[str, str], tmp_path: Path
) -> None:
    _, ref = mirrored
    r = cli("extract", ref, str(tmp_path / "x"))
    assert r.exit_code == 0, r.output
    assert read_tree(tmp_path / "x") == FILES
    r = cli("extract", ref, str(tmp_path / "cache"), "--hf-cache")
    assert r.exit_code == 0, r.output
    (snapshot,) = (tmp_path / "cache" / f"models--{tag_of(REPO)}" / "snapshots").iterdir()
    assert read_tree(snapshot) == FILES
    r = cli("extract", ref, str(tmp_path / "some"), "--include", "w/*")
    assert r.exit_code == 0, r.output
    assert read_tree(tmp_path / "some") == {"w/model.safetensors": FILES["w/model.safetensors"]}


def test_serve_answers_the_whole_file_and_ranges_across_a_parts_edge(
    mirrored: tuple[str, str], registry: Registry, tmp_path: Path
) -> None:
    ns, _ = mirrored
    server = Served(registry_store(registry.host, ns))
    try:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path),
               "PATH": "/usr/bin:/bin"}  # fmt: skip
        got = run_json(
            "import hashlib, json, sys\nfrom huggingface_hub import hf_hub_download\n"
            "p = hf_hub_download(sys.argv[1], 'w/model.safetensors')\n"
            "print(json.dumps(hashlib.sha256(open(p, 'rb').read()).hexdigest()))",
            REPO, env=env,
        )  # fmt: skip
        assert got == hashlib.sha256(FILES["w/model.safetensors"]).hexdigest()
        data = FILES["w/model.safetensors"]
        edge = parts_of(skopeo_inspect(f"docker://{mirrored[1]}", raw=True)["annotations"])[
            "w/model.safetensors"
        ].part_size
        url = f"{server.url}/{REPO}/resolve/main/w/model.safetensors"
        for start, end in [
            (edge - 10, edge + 10),
            (0, 2 * edge + 5),
            (edge, edge),
            (1, len(data) - 1),
        ]:
            resp = requests.get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=30)
            assert resp.status_code == 206 and resp.content == data[start : end + 1]
        assert requests.get(url, timeout=30).content == data
    finally:
        server.stop()


def test_the_init_container_joins_the_parts_in_the_docker_engine(
    mirrored: tuple[str, str], busybox_base: str
) -> None:
    """The Kubernetes init container's (and compose's) own command, in the real engine: the
    volume ends up with the whole files and no part."""
    _, ref = mirrored
    volume = f"parts-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
    try:
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/mnt/model", ref,
             "sh", "-c", INIT_COMMAND],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        listing = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/m", busybox_base,
             "sh", "-c", "cd /m && find . -type f | sort && sha256sum w/model.safetensors aux.bin"],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        files = [x for x in listing if x.startswith("./")]
        assert files == sorted(f"./{p}" for p in FILES)
        assert hashlib.sha256(FILES["aux.bin"]).hexdigest() in listing
        assert hashlib.sha256(FILES["w/model.safetensors"]).hexdigest() in listing
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


def test_docker_cp_gives_the_parts_and_the_documented_command_joins_them(
    mirrored: tuple[str, str], tmp_path: Path
) -> None:
    _, ref = mirrored
    subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
    cid = subprocess.run(["docker", "create", ref, "sh"], check=True, capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["docker", "cp", f"{cid}:/REPO", str(tmp_path / "REPO")], check=True)
        subprocess.run(["docker", "cp", f"{cid}:/.hf2oci", str(tmp_path / "meta")], check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    got = read_tree(tmp_path / "REPO")
    assert "w/model.safetensors.part-002-of-003" in got and "w/model.safetensors" not in got
    # docs/consumers.md: cat NAME.part-* > NAME
    subprocess.run("cat w/model.safetensors.part-* > joined", shell=True, check=True,
                   cwd=tmp_path / "REPO")  # fmt: skip
    assert (tmp_path / "REPO" / "joined").read_bytes() == FILES["w/model.safetensors"]
    (tmp_path / "REPO" / "joined").unlink()
    # or the image's own script, which checks each file's sha256
    subprocess.run(["sh", str(tmp_path / "meta" / "join.sh"), str(tmp_path / "REPO")], check=True)
    assert read_tree(tmp_path / "REPO") == FILES


def test_the_join_script_refuses_parts_that_do_not_hash_right(
    mirrored: tuple[str, str], tmp_path: Path
) -> None:
    _, ref = mirrored
    joins = parts_of(skopeo_inspect(f"docker://{ref}", raw=True)["annotations"])
    script = tmp_path / "join.sh"
    script.write_bytes(join_script(joins))
    folder = tmp_path / "REPO"
    folder.mkdir()
    data, per = bytearray(FILES["aux.bin"]), joins["aux.bin"].part_size
    data[-5] ^= 1  # one bit off, in the second part
    (folder / "aux.bin.part-001-of-002").write_bytes(data[:per])
    (folder / "aux.bin.part-002-of-002").write_bytes(data[per:])
    for i, name in enumerate(joins["w/model.safetensors"].names):
        start = i * joins["w/model.safetensors"].part_size
        (folder / "w").mkdir(exist_ok=True)
        piece = FILES["w/model.safetensors"][start : start + joins["w/model.safetensors"].part_size]
        (folder / name).write_bytes(piece)
    done = subprocess.run(["sh", str(script), str(folder)], capture_output=True, text=True)
    assert done.returncode == 1 and "aux.bin: its parts do not join to sha256" in done.stderr
    assert not (folder / "aux.bin").exists() and not (folder / "aux.bin.joining").exists()


def test_a_bundle_carries_the_parts_and_the_other_side_extracts_the_whole_files(
    mirrored: tuple[str, str], registry: Registry, tmp_path: Path
) -> None:
    ns, _ = mirrored
    inside = start_registry(tmp_path / "inside")
    try:
        r = cli("bundle", "--registry", registry.host, "--namespace", ns, "-o",
                str(tmp_path / "b"))  # fmt: skip
        assert r.exit_code == 0, r.output
        r = cli("load", str(tmp_path / "b"), "--registry", inside.host)
        assert r.exit_code == 0, r.output
        r = cli("extract", f"{inside.host}/{ns}/models:{tag_of(REPO)}", str(tmp_path / "x"))
        assert r.exit_code == 0, r.output
        assert read_tree(tmp_path / "x") == FILES
    finally:
        inside.stop()


def test_a_streamed_file_whose_bytes_do_not_hash_right_publishes_nothing(
    hub: Any, registry: Registry, project: Path
) -> None:
    """The parts of a streamed file are checked together: a wrong byte in any part fails the
    repo before its image is tagged (the last part's last piece waits for the hash)."""
    from hubserver import Blob

    repo = f"parts/tampered-{uuid.uuid4().hex[:6]}"
    good = random.Random(repo).randbytes(5 * MiB)
    sha = hub.add_repo(repo, {"w.safetensors": good, "config.json": b"{}"})
    bad = bytearray(good)
    bad[100] ^= 1  # in the first part: its layer is written before the last part is read
    honest = hub._repo(repo, "model").commits[sha].files["w.safetensors"]
    hub._repo(repo, "model").commits[sha].files["w.safetensors"] = Blob(  # type: ignore[index]
        honest.size, honest.git_sha1, honest.sha256, True, data=bytes(bad)
    )
    make_project(project, models=[repo])
    ns = f"tamper{uuid.uuid4().hex[:6]}"
    r = cli("mirror", repo, "--no-record", "--registry", registry.host, "--namespace", ns,
            "--base-image", "scratch", "--max-layer-size", str(LIMIT), "--json")  # fmt: skip
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout[r.stdout.find("{") :])
    assert "content hashes to" in doc["results"][0]["message"], doc
    tags = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/{ns}/models"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert tag_of(repo) not in tags.stdout


def test_a_modelpack_artifact_carries_raw_parts_that_extract_and_serve_join(
    hub: Any, project: Path
) -> None:
    from hf2oci.consume.serve.store import Store

    repo = f"parts/mp-{uuid.uuid4().hex[:6]}"
    hub.add_repo(repo, FILES)
    make_project(project, models=[repo])
    r = cli("mirror", repo, "--no-record", "--format", "modelpack", "--max-layer-size",
            str(LIMIT))  # fmt: skip
    assert r.exit_code == 0, r.output
    layout = project / "oci-images" / "hgfkeep" / "models"
    ref = f"oci:{layout}:{tag_of(repo)}"
    manifest = skopeo_inspect(ref, raw=True)
    assert max(d["size"] for d in manifest["layers"]) <= LIMIT
    paths = [d["annotations"]["org.cncf.model.filepath"] for d in manifest["layers"]]
    assert "w/model.safetensors.part-003-of-003" in paths and "aux.bin" in paths  # raw: no tar
    r = cli("extract", ref, str(project / "x"))
    assert r.exit_code == 0, r.output
    assert read_tree(project / "x") == FILES
    server = Served(Store("hgfkeep", root=project / "oci-images"))
    try:
        url = f"{server.url}/{repo}/resolve/main/w/model.safetensors"
        assert requests.get(url, timeout=30).content == FILES["w/model.safetensors"]
        head = requests.head(url, timeout=30)
        sha = hashlib.sha256(FILES["w/model.safetensors"]).hexdigest()
        assert head.headers["X-Linked-Etag"].strip('"') == sha
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["--staged", "--stream"])
def test_parts_of_files_on_disk_or_streamed_give_one_image(
    mode: str, hub: Any, project: Path
) -> None:
    """A file downloaded first (--staged, or a prepare hook's output) goes in the same parts as
    one streamed: the same image, the whole file back."""
    repo = "parts/staged"
    if not hub._repos.get(("model", repo)):
        hub.add_repo(repo, FILES)
    make_project(project, models=[repo])
    r = cli("mirror", repo, "--no-record", "--max-layer-size", str(LIMIT), "--base-image",
            "scratch", mode, "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    digest = json.loads(r.stdout[r.stdout.find("{") :])["results"][0]["digest"]
    _DIGESTS.setdefault(repo, digest)
    assert _DIGESTS[repo] == digest  # staged and streamed: one image
    x = cli("extract", f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(repo)}",
            str(project / "x"))  # fmt: skip
    assert x.exit_code == 0, x.output
    assert read_tree(project / "x") == FILES


_DIGESTS: dict[str, str] = {}
