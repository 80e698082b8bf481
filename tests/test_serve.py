"""``hf2oci serve``: the real ``huggingface_hub`` client (and transformers) against the Hub API
answered from mirrored images, in a layout and in a registry."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn

from helpers import cli, make_project
from hf2oci.consume.serve.app import create_app
from hf2oci.consume.serve.store import Store
from hf2oci.consume.serve.streaming import ReadBudget
from hf2oci.consume.serve.xet import XetSettings
from hf2oci.oci.blobs import FileBlobLayer
from hf2oci.oci.image import MT_LAYER_TAR
from hf2oci.oci.registry import RegistryClient, RemoteLayer
from servers import free_port

MiB = 1 << 20


class Served:
    """An in-process ``serve`` on 127.0.0.1, stopped at the end."""

    def __init__(
        self, store: Store, tokens: list[str] | None = None, xet: XetSettings | None = None
    ) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(store, tokens=tokens or [], xet=xet), host="127.0.0.1", port=self.port,
            log_level="warning", access_log=False,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _repo_files(seed: str) -> dict[str, bytes]:
    rng = __import__("random").Random(seed)
    return {
        "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
        "README.md": b"---\nlicense: mit\ntags: [test, serve]\nlibrary_name: transformers\n"
        b"---\n# x\n",
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "sub dir/é t.txt": "é".encode() * 50,
        "model.safetensors": rng.randbytes(3 * MiB + 123),
        "other.bin": rng.randbytes(2 * MiB),
    }


@pytest.fixture
def mirrored(hub, project: Path) -> tuple[Path, dict, str]:
    """A model and a dataset mirrored into layouts under project/oci-images."""
    files = _repo_files("serve")
    sha = hub.add_repo("serve-org/tiny", files)
    hub.add_repo("serve-org/data", {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# d\n"},
                 repo_type="dataset")  # fmt: skip
    make_project(project, models=["serve-org/tiny"], datasets=["serve-org/data"],
                 config={"base_image": "scratch"})  # fmt: skip
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output
    return project / "oci-images", files, sha


@pytest.fixture
def served(mirrored: tuple[Path, dict, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    root, _, _ = mirrored
    server = Served(Store("hgfkeep", root=root))
    # the client under test talks to serve only: the test hub is not in its way
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield server
    server.stop()


def _client_api(endpoint: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def test_snapshot_download_and_file_download_by_branch_and_commit(
    served: Served, mirrored: tuple[Path, dict, str], tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    _, files, sha = mirrored
    folder = snapshot_download("serve-org/tiny", cache_dir=tmp_path / "c1", endpoint=served.url)
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*")
           if p.is_file()}  # fmt: skip
    assert got == files
    assert Path(folder).name == sha  # the commit the image holds
    for revision in ("main", sha, sha[:12]):
        path = hf_hub_download(
            "serve-org/tiny", "model.safetensors", revision=revision,
            cache_dir=tmp_path / f"c-{revision}", endpoint=served.url,
        )  # fmt: skip
        assert Path(path).read_bytes() == files["model.safetensors"]
    local = tmp_path / "local"
    snapshot_download("serve-org/tiny", local_dir=local, endpoint=served.url)
    assert (local / "sub dir/é t.txt").read_bytes() == files["sub dir/é t.txt"]


def test_model_info_lists_the_hubs_own_hashes(
    served: Served, mirrored: tuple[Path, dict, str], hub
) -> None:
    _, files, sha = mirrored
    ours = _client_api(served.url).model_info("serve-org/tiny", files_metadata=True)
    theirs = _client_api(hub.url).model_info("serve-org/tiny", files_metadata=True)
    assert ours.sha == theirs.sha == sha
    mine = {
        s.rfilename: (s.size, s.blob_id, s.lfs.sha256 if s.lfs else None) for s in ours.siblings
    }
    real = {
        s.rfilename: (s.size, s.blob_id, s.lfs.sha256 if s.lfs else None) for s in theirs.siblings
    }
    assert mine == real
    assert ours.card_data is not None and ours.card_data.get("license") == "mit"
    assert set(ours.tags) >= {"test", "serve"}
    api = _client_api(served.url)
    assert sorted(api.list_repo_files("serve-org/tiny")) == sorted(files)
    assert [m.id for m in api.list_models(search="tiny")] == ["serve-org/tiny"]
    assert api.dataset_info("serve-org/data").sha


def test_typed_errors(served: Served, tmp_path: Path) -> None:
    from huggingface_hub import errors, hf_hub_download

    api = _client_api(served.url)
    with pytest.raises(errors.RepositoryNotFoundError):
        api.model_info("serve-org/nope")
    with pytest.raises(errors.RevisionNotFoundError):
        api.model_info("serve-org/tiny", revision="v9")
    with pytest.raises(errors.EntryNotFoundError):
        hf_hub_download("serve-org/tiny", "missing.json", cache_dir=tmp_path, endpoint=served.url)
    with pytest.raises(errors.RevisionNotFoundError):
        hf_hub_download("serve-org/tiny", "config.json", revision="f" * 40, cache_dir=tmp_path,
                        endpoint=served.url)  # fmt: skip
    # HEAD answers carry the code too (clients read it from the headers)
    head = requests.head(f"{served.url}/serve-org/tiny/resolve/main/missing.json")
    assert head.status_code == 404 and head.headers["X-Error-Code"] == "EntryNotFound"
    assert len(head.headers["X-Repo-Commit"]) == 40


def test_hf_file_system_and_ranges(served: Served, mirrored: tuple[Path, dict, str]) -> None:
    from huggingface_hub import HfFileSystem

    _, files, _ = mirrored
    fs = HfFileSystem(endpoint=served.url)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("serve-org/tiny", detail=False)}
    assert {"config.json", "tokenizer", "sub dir", "model.safetensors"} <= names
    assert fs.glob("serve-org/tiny/**/*.txt") == [
        "serve-org/tiny/sub dir/é t.txt", "serve-org/tiny/tokenizer/vocab.txt"
    ]  # fmt: skip
    with fs.open("serve-org/tiny/model.safetensors", "rb") as f:
        f.seek(MiB + 7)
        assert f.read(1000) == files["model.safetensors"][MiB + 7 : MiB + 1007]
    url = f"{served.url}/serve-org/tiny/resolve/main/model.safetensors"
    data, size = files["model.safetensors"], len(files["model.safetensors"])
    probe = requests.get(url, headers={"Range": "bytes=0-0"})
    assert probe.status_code == 206 and probe.content == data[:1]
    assert probe.headers["Content-Range"] == f"bytes 0-0/{size}"
    tail = requests.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    mid = requests.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert mid.content == data[-10:]
    bad = requests.get(url, headers={"Range": f"bytes={size}-"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{size}"
    for ignored in ("bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=" + "9" * 40 + "-"):
        whole = requests.get(url, headers={"Range": ignored})
        assert whole.status_code in (200, 416) and "Traceback" not in whole.text
    head = requests.head(url)
    assert head.headers["Accept-Ranges"] == "bytes" and "X-Xet-Hash" not in head.headers
    assert head.headers["X-Linked-Size"] == str(size) and "Link" not in head.headers


@pytest.mark.parametrize(
    "path",
    [
        "/serve-org/tiny/resolve/main/../../../etc/passwd",
        "/serve-org/tiny/resolve/main/%2e%2e/%2e%2e/etc/passwd",
        "/serve-org/tiny/resolve/..%2F..%2Fmain/config.json",
        "/serve-org/tiny/resolve/main/%00config.json",
        "/api/models/serve-org/tiny/tree/main/..%2F..",
        "/other-ns%2Fmodels/x/resolve/main/config.json",
        "/api/models/" + "a" * 5000,
    ],
)
def test_hostile_requests_get_an_error_and_the_server_keeps_serving(
    served: Served, path: str
) -> None:
    resp = requests.get(served.url + path)
    assert 400 <= resp.status_code < 500 and "X-Error-Code" in resp.headers
    assert "root:" not in resp.text and "Traceback" not in resp.text
    assert requests.get(f"{served.url}/serve-org/tiny/resolve/main/config.json").ok


def test_serving_from_a_registry_with_tokens(
    hub, registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import errors, hf_hub_download

    monkeypatch.chdir(tmp_path)
    files = _repo_files("registry")
    hub.add_repo("serve-org/reg", files)
    make_project(
        tmp_path,
        models=["serve-org/reg"],
        config={"base_image": "scratch", "registry": registry.host, "namespace": "srv"},
    )
    assert cli("sync", "-q").exit_code == 0
    server = Served(Store("srv", client=RegistryClient(registry.host)), tokens=["s3cret-1", "two"])
    try:
        assert requests.get(f"{server.url}/health").json() == {"ok": True}
        with pytest.raises(errors.HfHubHTTPError) as exc:
            hf_hub_download("serve-org/reg", "config.json", cache_dir=tmp_path / "a",
                            endpoint=server.url, token="wrong")  # fmt: skip
        assert exc.value.response.status_code == 401
        path = hf_hub_download("serve-org/reg", "model.safetensors", cache_dir=tmp_path / "b",
                               endpoint=server.url, token="two")  # fmt: skip
        assert Path(path).read_bytes() == files["model.safetensors"]
        metrics = requests.get(f"{server.url}/metrics").text
        assert "hf2oci_serve_bytes_total" in metrics and "s3cret" not in metrics
        assert "hf2oci_serve_downloads 0.0" in metrics  # each download counted out at its end
    finally:
        server.stop()


def test_a_re_sync_that_moves_the_tag_is_seen_within_the_ttl(
    hub, mirrored: tuple[Path, dict, str], tmp_path: Path
) -> None:
    root, _, sha = mirrored
    server = Served(Store("hgfkeep", root=root, ttl=0.5))
    try:
        api = _client_api(server.url)
        assert api.model_info("serve-org/tiny").sha == sha
        new = hub.commit("serve-org/tiny", {"config.json": b'{"moved": true}\n'})
        assert cli("sync", "-q").exit_code == 0
        time.sleep(0.6)
        assert api.model_info("serve-org/tiny").sha == new
        assert api.model_info("serve-org/tiny", revision=sha).sha == sha  # the old one stays
    finally:
        server.stop()


def test_old_images_without_a_file_index_still_serve(
    served: Served, mirrored: tuple[Path, dict, str], tmp_path: Path
) -> None:
    """An image made before the index layer: files found by walking the tar headers."""
    from hf2oci.consume.serve.files import read_files
    from hf2oci.oci.source import open_image

    root, files, _ = mirrored
    image = open_image(f"oci:{root / 'hgfkeep/models'}:serve-org--tiny")
    indexed = read_files(image)

    class NoIndex:
        def __init__(self) -> None:
            self.layers = image.layers[:-1]
            self.manifest_doc = {"layers": [{} for _ in image.layers[:-1]]}

    walked = read_files(NoIndex())  # type: ignore[arg-type]
    assert set(walked) == set(indexed) == set(files)
    for path, f in walked.items():
        assert [(o, n) for _, o, n in f.spans] == [(o, n) for _, o, n in indexed[path].spans]
        assert b"".join(f.chunks()) == files[path]
        assert f.etag == indexed[path].etag  # hashes computed once, as the hub has them


def test_big_trees_page_and_a_filtered_repo_serves_only_its_kept_files(hub, project: Path) -> None:
    from huggingface_hub import errors, hf_hub_download

    files = {f"shards/{i // 100:02d}/part-{i:04d}.json": b"{}" for i in range(1500)}
    files["weights.bin"] = b"w" * 1000
    hub.add_repo("serve-org/many", files)
    make_project(project, models=["serve-org/many exclude=*.bin"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    server = Served(Store("hgfkeep", root=project / "oci-images"))
    try:
        first = requests.get(f"{server.url}/api/models/serve-org/many/tree/main?recursive=true")
        assert len(first.json()) == 1000 and 'rel="next"' in first.headers["Link"]
        listed = _client_api(server.url).list_repo_files("serve-org/many")
        assert sorted(listed) == sorted(p for p in files if not p.endswith(".bin"))
        top = requests.get(f"{server.url}/api/models/serve-org/many/tree/main").json()
        assert [(e["type"], e["path"]) for e in top] == [("directory", "shards")]
        with pytest.raises(errors.EntryNotFoundError):
            hf_hub_download("serve-org/many", "weights.bin", cache_dir=project / "c",
                            endpoint=server.url)  # fmt: skip
        info = requests.post(
            f"{server.url}/api/models/serve-org/many/paths-info/main",
            data={"paths": ["shards/00", "shards/00/part-0001.json", "nope"]},
        ).json()
        assert [(e["type"], e["path"]) for e in info] == [
            ("directory", "shards/00"), ("file", "shards/00/part-0001.json")
        ]  # fmt: skip
    finally:
        server.stop()


def test_downloads_share_a_read_budget() -> None:
    """Each read is the budget over the downloads in flight, within bounds: 8 downloads read
    4 MiB at a time, 32 read 1 MiB, thousands 64 KiB; the count follows starts and ends."""
    budget = ReadBudget(budget=32 * MiB, low=64 << 10, high=4 * MiB)
    assert budget.piece() == 4 * MiB
    sizes = []
    for n in range(1, 1001):
        budget.start()
        if n in (1, 8, 32, 1000):
            sizes.append(budget.piece())
    assert sizes == [4 * MiB, 4 * MiB, 1 * MiB, 64 << 10]
    for _ in range(1000):
        budget.end()
    assert budget.active == 0


@pytest.mark.parametrize("where", ["registry", "layout"])
def test_ranges_are_read_in_the_pieces_asked_before_each_read(
    where: str, registry, tmp_path: Path
) -> None:
    """A Range read asks its piece size before every read, so a download started alone shrinks
    its reads when others start (registry blobs and layout files alike)."""
    data = __import__("random").Random(7).randbytes(3 * MiB + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if where == "registry":
        client = RegistryClient(registry.host)
        client.upload_blob("srv/pieces", digest, len(data), lambda: io.BytesIO(data))
        layer: RemoteLayer | FileBlobLayer = RemoteLayer(
            client, "srv/pieces", digest, len(data), MT_LAYER_TAR, digest
        )
    else:
        (tmp_path / "blob").write_bytes(data)
        layer = FileBlobLayer(tmp_path / "blob", media_type=MT_LAYER_TAR, diff_id=digest)
    asked = iter([MiB, 64 << 10, 64 << 10, 4 * MiB])
    got = list(layer.iter_range(100, len(data) - 200, lambda: next(asked)))
    assert b"".join(got) == data[100:-100]
    rest = len(data) - 200 - MiB - (128 << 10)
    assert [len(g) for g in got] == [MiB, 64 << 10, 64 << 10, rest]


ARENAS = """
import ctypes, sys, tempfile, threading, time
if sys.argv[1] == "tune":
    from hf2oci.cli.serve import tune_malloc
    tune_malloc()
libc = ctypes.CDLL(None)
done = threading.Event()
def work():
    held = [bytearray(200_000) for _ in range(20)]
    done.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
time.sleep(0.5)
fd, path = tempfile.mkstemp()
libc.fdopen.restype = ctypes.c_void_p
out = ctypes.c_void_p(libc.fdopen(fd, b"w"))
libc.malloc_info(0, out)
libc.fflush(out)
done.set()
for t in threads:
    t.join()
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.parametrize(("how", "env", "most"), [
    ("plain", {}, None), ("tune", {}, 2), ("tune", {"MALLOC_ARENA_MAX": "6"}, 6),
])  # fmt: skip
def test_serve_caps_glibcs_arenas_unless_the_environment_says(
    how: str, env: dict[str, str], most: int | None
) -> None:
    """8 threads allocating: glibc gives them an arena each (9 with the main one); serve's
    tune_malloc caps them at 2, and a MALLOC_ARENA_MAX in the environment wins."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, how], env={**base, **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    arenas = int(done.stdout.strip())
    if most is None:
        assert arenas > 2  # what the cap changes
    else:
        assert arenas == most
