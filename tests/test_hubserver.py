"""The test hub speaks the hub's protocol: checked with the real `huggingface_hub` client."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import (
    HfApi,
    ModelInfo,
    RepoFile,
    RepoFolder,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from conftest import RandomRepo
from hubserver import HubServer, git_blob_sha1

LFS_NAME = "model.safetensors"


def _raw(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """A plain stdlib request, to check what the wire carries; returns the response or error."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        return e


def test_repo_info_has_sha_siblings_sizes_lfs_and_card_data(
    hub: HubServer, random_repo: RandomRepo
) -> None:
    repo_id, sha, files = random_repo(card_data={"license": "apache-2.0"})
    api = HfApi(endpoint=hub.url, token=False)

    info = api.repo_info(repo_id, files_metadata=True)

    assert isinstance(info, ModelInfo)
    assert info.id == repo_id and info.sha == sha
    assert info.gated is False and info.private is False
    assert info.card_data is not None and info.card_data["license"] == "apache-2.0"
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(files)
    for name, data in files.items():
        assert siblings[name].size == len(data)
    lfs = siblings[LFS_NAME].lfs
    assert lfs is not None and lfs.sha256 == hashlib.sha256(files[LFS_NAME]).hexdigest()
    assert lfs.size == len(files[LFS_NAME])
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(files["config.json"])
    # Without files_metadata the hub lists names only.
    plain = api.model_info(repo_id)
    assert plain.sha == sha and all(s.size is None for s in plain.siblings or [])


def test_dataset_info_and_type_separation(hub: HubServer, random_repo: RandomRepo) -> None:
    repo_id, sha, _ = random_repo(repo_type="dataset")
    api = HfApi(endpoint=hub.url, token=False)

    assert api.dataset_info(repo_id).sha == sha
    assert api.repo_info(repo_id, repo_type="dataset", revision=sha).sha == sha
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id)  # a dataset is not a model


def test_list_repo_tree_recursive_and_per_folder(hub: HubServer, random_repo: RandomRepo) -> None:
    repo_id, sha, files = random_repo(n_files=3)
    api = HfApi(endpoint=hub.url, token=False)

    entries = list(api.list_repo_tree(repo_id, recursive=True, revision=sha))
    tree_files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    assert set(tree_files) == set(files)
    for name, data in files.items():
        entry = tree_files[name]
        assert entry.size == len(data)
        if name == LFS_NAME:
            assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
        else:
            assert entry.lfs is None and entry.blob_id == git_blob_sha1(data)
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert folders == {"données", "sub", "sub/dir"}

    top = {e.path for e in api.list_repo_tree(repo_id)}
    assert top == {"données", "sub", "config.json", LFS_NAME, "with space.txt"}
    assert {e.path for e in api.list_repo_tree(repo_id, path_in_repo="sub")} == {"sub/dir"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="nope"))


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_snapshot_download_is_byte_identical(
    hub: HubServer, random_repo: RandomRepo, tmp_path: Path, repo_type: str
) -> None:
    repo_id, sha, files = random_repo(repo_type=repo_type)

    folder = Path(
        snapshot_download(repo_id, repo_type=repo_type, endpoint=hub.url, cache_dir=tmp_path)
    )

    assert folder.name == sha
    paths = [p for p in folder.rglob("*") if p.is_file()]
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}
    assert got == files
    prefix = "/datasets/" if repo_type == "dataset" else "/"
    assert hub.count("GET", f"{prefix}{repo_id}/resolve/{sha}/") == len(files)
    assert hub.count("HEAD", "/resolve/") == len(files)


def test_resolve_headers_and_ranges_on_the_wire(hub: HubServer, random_repo: RandomRepo) -> None:
    repo_id, sha, files = random_repo()
    base = f"{hub.url}/{repo_id}/resolve/main"
    lfs_data = files[LFS_NAME]

    head = _raw(f"{base}/{LFS_NAME}", method="HEAD")
    assert head.status == 200
    assert head.headers["X-Repo-Commit"] == sha
    assert head.headers["ETag"] == f'"{hashlib.sha256(lfs_data).hexdigest()}"'
    assert head.headers["Content-Length"] == str(len(lfs_data))
    assert head.headers["Accept-Ranges"] == "bytes"

    part = _raw(f"{base}/{LFS_NAME}", headers={"Range": "bytes=10-19"})
    assert part.status == 206 and part.read() == lfs_data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(lfs_data)}"
    tail = _raw(f"{base}/{LFS_NAME}", headers={"Range": "bytes=100-"})
    assert tail.status == 206 and tail.read() == lfs_data[100:]
    past = _raw(f"{base}/{LFS_NAME}", headers={"Range": f"bytes={len(lfs_data)}-"})
    assert past.code == 416 and past.headers["Content-Range"] == f"bytes */{len(lfs_data)}"

    meta = get_hf_file_metadata(hf_hub_url(repo_id, "données/é t.txt", endpoint=hub.url))
    assert meta.commit_hash == sha and meta.size == len(files["données/é t.txt"])
    assert meta.etag == git_blob_sha1(files["données/é t.txt"])

    harnesses = json.load(_raw(f"{hub.url}/api/agent-harnesses"))
    assert harnesses == {"standardEnvVars": [], "harnesses": {}}


def test_download_resumes_with_range_after_a_cut_from_a_file_on_disk(
    hub: HubServer, tmp_path: Path
) -> None:
    # Larger than the client's 10 MiB chunk so it has bytes on disk to resume from.
    big = tmp_path / "big.bin"
    data = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32)
    big.write_bytes(data)
    hub.add_repo("testorg/on-disk", {"weights.gguf": big, "config.json": b"{}"})
    hub.cut_next("weights.gguf", after_bytes=11 * 1024 * 1024)

    path = hf_hub_download(
        "testorg/on-disk", "weights.gguf", endpoint=hub.url, cache_dir=tmp_path / "cache"
    )

    assert Path(path).read_bytes() == data
    assert hub.count("GET", "/resolve/main/weights.gguf") == 2
    assert hub.ranges == [("/testorg/on-disk/resolve/main/weights.gguf", "bytes=10485760-")]


def test_errors_are_typed_like_the_hub(
    hub: HubServer, random_repo: RandomRepo, tmp_path: Path
) -> None:
    repo_id, _, _ = random_repo()
    api = HfApi(endpoint=hub.url, token=False)

    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("testorg/does-not-exist")
    assert not isinstance(missing.value, GatedRepoError)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            repo_id, "config.json", revision="0" * 40, endpoint=hub.url, cache_dir=tmp_path
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "no/such file.txt", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("testorg/does-not-exist", endpoint=hub.url, cache_dir=tmp_path)


def test_gated_repo_needs_a_known_token(
    hub: HubServer, random_repo: RandomRepo, tmp_path: Path
) -> None:
    repo_id, _, files = random_repo(gated=True)
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info(repo_id).gated == "auto"  # info stays readable, like the hub

    with pytest.raises(GatedRepoError):
        hf_hub_download(repo_id, "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(GatedRepoError):
        snapshot_download(repo_id, endpoint=hub.url, cache_dir=tmp_path, token="hf_unknown")

    hub.tokens.add("hf_good")
    path = hf_hub_download(
        repo_id, "config.json", endpoint=hub.url, cache_dir=tmp_path, token="hf_good"
    )
    assert Path(path).read_bytes() == files["config.json"]


def test_private_repo_is_hidden_without_a_token(hub: HubServer, tmp_path: Path) -> None:
    hub.add_repo("testorg/private", {"a.txt": b"secret"}, private=True)

    with pytest.raises(RepositoryNotFoundError) as hidden:
        HfApi(endpoint=hub.url, token=False).model_info("testorg/private")
    assert not isinstance(hidden.value, GatedRepoError)

    hub.tokens.add("hf_private")
    info = HfApi(endpoint=hub.url, token="hf_private").model_info("testorg/private")
    assert info.private is True
    folder = snapshot_download(
        "testorg/private", endpoint=hub.url, token="hf_private", cache_dir=tmp_path
    )
    assert (Path(folder) / "a.txt").read_bytes() == b"secret"


def test_commit_moves_a_branch_and_old_shas_stay(
    hub: HubServer, random_repo: RandomRepo, tmp_path: Path
) -> None:
    repo_id, old, files = random_repo()
    api = HfApi(endpoint=hub.url, token=False)

    new = hub.commit(repo_id, {"config.json": b'{"changed": true}\n'}, delete=["with space.txt"])

    assert new != old and len(new) == 40
    info = api.model_info(repo_id)
    assert info.sha == new
    assert "with space.txt" not in {s.rfilename for s in info.siblings or []}
    moved = hf_hub_download(repo_id, "config.json", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(moved).read_bytes() == b'{"changed": true}\n'
    pinned = hf_hub_download(
        repo_id, "config.json", revision=old, endpoint=hub.url, cache_dir=tmp_path
    )
    assert Path(pinned).read_bytes() == files["config.json"]

    # Branch and tag names with '/' resolve too.
    feature = hub.commit(repo_id, {"extra.txt": b"x"}, branch="feature/x")
    assert api.model_info(repo_id, revision="feature/x").sha == feature
    assert hub.tag(repo_id, "v1.0", revision=old) == old
    assert api.model_info(repo_id, revision="v1.0").sha == old


def test_commit_shas_are_deterministic(hub: HubServer) -> None:
    files = {"a.txt": b"a", LFS_NAME: b"\0" * 10}
    first = hub.add_repo("testorg/det", files)
    assert hub.add_repo("testorg/det", dict(reversed(files.items()))) == first
    assert hub.add_repo("testorg/det2", files) != first  # the repo is part of the commit


def test_fail_next_answers_the_status_once(hub: HubServer, random_repo: RandomRepo) -> None:
    repo_id, sha, _ = random_repo()
    api = HfApi(endpoint=hub.url, token=False)
    hub.fail_next(f"/api/models/{repo_id}", status=503, retry_after=7)

    with pytest.raises(HfHubHTTPError) as failed:
        api.model_info(repo_id)

    assert failed.value.response.status_code == 503
    assert failed.value.response.headers["Retry-After"] == "7"
    assert api.model_info(repo_id).sha == sha
    assert hub.count("GET", f"/api/models/{repo_id}") == 2
