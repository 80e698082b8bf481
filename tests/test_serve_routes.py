"""serve's answers to the hub's other clients (llama.cpp ``-hf``, RamaLama, huggingface.js), read
as their sources read them: ``refs`` with ``targetCommit``, ``raw`` (an LFS file's pointer),
``/v2/{org}/{repo}/manifests/{tag}`` with the hub's quant choice, the first tree page of a
client that does not page, and ``resolve`` by commit with a resume; each behind the same token
gate, ``--verify-key`` policy and metrics as the rest of serve."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from helpers import cli, make_project
from hf2oci.consume.serve.gguf import (
    NO_TAG,
    NOT_GGUF,
    GgufChoice,
    best_mmproj,
    choose_gguf,
    is_model_gguf,
)
from hf2oci.consume.serve.metrics import client_family
from hf2oci.consume.serve.store import Store
from test_serve import Served

REPO = "gguf-org/tiny-GGUF"
TOKEN = "hf_" + "a1" * 20


def _gguf(seed: str, size: int = 4096) -> bytes:
    return b"GGUF" + hashlib.sha256(seed.encode()).digest() * (size // 32)


GGUFS = {
    "tiny-Q4_K_M.gguf": _gguf("q4"),
    "tiny-Q8_0.gguf": _gguf("q8"),
    "F16/tiny-F16-00001-of-00002.gguf": _gguf("f16a"),
    "F16/tiny-F16-00002-of-00002.gguf": _gguf("f16b"),
    "mmproj-tiny-F16.gguf": _gguf("mm16"),
    "mmproj-tiny-Q8_0.gguf": _gguf("mm8"),
    "imatrix.gguf": _gguf("im"),
}
SMALL = {"README.md": b"---\nlicense: mit\n---\n# tiny\n", "params.json": b'{"a": 1}\n'}


@pytest.fixture
def mirrored(hub, project: Path) -> dict[str, Any]:
    """A GGUF repo (quants, a split model, projectors), a safetensors one and a dataset."""
    sha = hub.add_repo(REPO, {**GGUFS, **SMALL})
    hub.add_repo("gguf-org/plain", {"config.json": b"{}", "model.safetensors": os.urandom(64)})
    hub.add_repo("gguf-org/data", {"data/a.csv": b"a\n1\n"}, repo_type="dataset")
    make_project(project, models=[REPO, "gguf-org/plain"], datasets=["gguf-org/data"],
                 config={"base_image": "scratch"})  # fmt: skip
    assert cli("sync", "-q").exit_code == 0
    return {"sha": sha, "root": project / "oci-images"}


@pytest.fixture
def served(mirrored: dict[str, Any]) -> Iterator[Served]:
    server = Served(Store("hgfkeep", root=mirrored["root"]))
    yield server
    server.stop()


def _metric(url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


def test_refs_name_the_branch_and_its_commit_as_the_hub_does(
    served: Served, mirrored: dict[str, Any]
) -> None:
    llama = {"User-Agent": "llama-cpp/b11434", "Accept": "application/json"}
    r = requests.get(f"{served.url}/api/models/{REPO}/refs", headers=llama, timeout=10)
    assert r.status_code == 200
    main = {"name": "main", "ref": "refs/heads/main", "targetCommit": mirrored["sha"]}
    assert r.json() == {"branches": [main], "converts": [], "tags": []}
    prs = requests.get(f"{served.url}/api/models/{REPO}/refs?include_prs=1", timeout=10).json()
    assert prs["pullRequests"] == []
    data = requests.get(f"{served.url}/api/datasets/gguf-org/data/refs", timeout=10)
    assert data.json()["branches"][0]["name"] == "main"
    missing = requests.get(f"{served.url}/api/models/gguf-org/nothing/refs", timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"
    # huggingface_hub reads the same answer
    from huggingface_hub import HfApi

    refs = HfApi(endpoint=served.url).list_repo_refs(REPO)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", mirrored["sha"])]


def test_the_tree_by_commit_and_a_resumed_resolve_as_llama_cpp_reads_them(
    served: Served, mirrored: dict[str, Any]
) -> None:
    sha = mirrored["sha"]
    tree = requests.get(f"{served.url}/api/models/{REPO}/tree/{sha}?recursive=true", timeout=10)
    assert "Link" not in tree.headers  # the whole repo on the first page
    entries = {e["path"]: e for e in tree.json() if e["type"] == "file"}
    assert set(entries) == set(GGUFS) | set(SMALL)
    q4 = GGUFS["tiny-Q4_K_M.gguf"]
    assert entries["tiny-Q4_K_M.gguf"]["lfs"]["oid"] == hashlib.sha256(q4).hexdigest()
    url = f"{served.url}/{REPO}/resolve/{sha}/tiny-Q4_K_M.gguf"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == f'"{hashlib.sha256(q4).hexdigest()}"'
    assert head.headers["Content-Length"] == str(len(q4))
    rest = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=10)
    assert rest.status_code == 206 and rest.content == q4[1000:]
    assert rest.headers["Content-Range"] == f"bytes 1000-{len(q4) - 1}/{len(q4)}"


def test_a_first_tree_page_holds_the_hubs_page_size(hub, project: Path) -> None:
    """A client that does not page (llama.cpp) sees the first 1000 entries, as from the hub."""
    from hf2oci.consume.serve.documents import PAGE

    files = {f"f/{i:04d}.txt": b"x" for i in range(PAGE + 5)}
    sha = hub.add_repo("gguf-org/many", files)
    make_project(project, models=["gguf-org/many"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    server = Served(Store("hgfkeep", root=project / "oci-images"))
    try:
        url = f"{server.url}/api/models/gguf-org/many/tree/{sha}?recursive=true"
        first = requests.get(url, timeout=30)
        assert len(first.json()) == PAGE == 1000 and 'rel="next"' in first.headers["Link"]
    finally:
        server.stop()


def _manifest(url: str, repo: str, tag: str) -> requests.Response:
    ua = {"User-Agent": "llama-cpp", "Accept": "application/json"}
    return requests.get(f"{url}/v2/{repo}/manifests/{tag}", headers=ua, timeout=10)


def test_the_gguf_manifest_picks_the_quant_as_the_hub_does(served: Served) -> None:
    def sha(name: str) -> str:
        return "sha256:" + hashlib.sha256(GGUFS[name]).hexdigest()

    latest = _manifest(served.url, REPO, "latest")
    assert latest.status_code == 200
    assert latest.json() == {
        "ggufFile": {"rfilename": "tiny-Q4_K_M.gguf", "blobId": sha("tiny-Q4_K_M.gguf"),
                     "size": len(GGUFS["tiny-Q4_K_M.gguf"])},
        # the projector nearest in bits, beside it
        "mmprojFile": {"rfilename": "mmproj-tiny-Q8_0.gguf", "blobId": sha("mmproj-tiny-Q8_0.gguf"),
                       "size": len(GGUFS["mmproj-tiny-Q8_0.gguf"])},
    }  # fmt: skip
    for tag, want in [("q8_0", "tiny-Q8_0.gguf"), ("Q4_K_M", "tiny-Q4_K_M.gguf"),
                      ("f16", "F16/tiny-F16-00001-of-00002.gguf")]:  # fmt: skip
        assert _manifest(served.url, REPO, tag).json()["ggufFile"]["rfilename"] == want
    unknown = _manifest(served.url, REPO, "Q5_K_S")
    assert unknown.status_code == 400 and unknown.json() == {"error": NO_TAG}
    plain = _manifest(served.url, "gguf-org/plain", "latest")
    assert plain.status_code == 400 and plain.json() == {"error": NOT_GGUF}
    missing = _manifest(served.url, "gguf-org/nothing", "latest")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"
    head = requests.head(f"{served.url}/v2/{REPO}/manifests/latest", timeout=10)
    assert head.status_code == 200 and not head.content


def test_raw_gives_small_files_and_lfs_pointers(served: Served, mirrored: dict[str, Any]) -> None:
    url = f"{served.url}/{REPO}/raw/main"
    small = requests.get(f"{url}/params.json", timeout=10)
    assert small.status_code == 200 and small.content == SMALL["params.json"]
    assert small.headers["Content-Type"].startswith("text/plain")
    assert small.headers["X-Repo-Commit"] == mirrored["sha"]
    q8 = GGUFS["tiny-Q8_0.gguf"]
    pointer = requests.get(f"{url}/tiny-Q8_0.gguf", timeout=10)
    assert pointer.text == (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(q8).hexdigest()}\nsize {len(q8)}\n"
    )
    blob_id = hashlib.sha1(b"blob %d\0" % len(pointer.content) + pointer.content).hexdigest()
    assert pointer.headers["ETag"] == f'"{blob_id}"'  # the pointer's git blob id, as the tree's
    exists = requests.head(f"{url}/tiny-Q8_0.gguf", timeout=10)
    assert exists.status_code == 200 and exists.headers["Content-Length"] == str(len(pointer.text))
    gone = requests.head(f"{url}/nothing.gguf", timeout=10)
    assert gone.status_code == 404 and gone.headers["X-Error-Code"] == "EntryNotFound"
    data = requests.get(f"{served.url}/datasets/gguf-org/data/raw/main/data/a.csv", timeout=10)
    assert data.content == b"a\n1\n"
    # a browser opening a raw link gets the file, not a page
    html = requests.get(f"{url}/params.json", headers={"Accept": "text/html"}, timeout=10)
    assert html.content == SMALL["params.json"]


def test_every_route_is_counted_by_route_and_client(served: Served) -> None:
    _manifest(served.url, REPO, "latest")
    requests.get(f"{served.url}/api/models/{REPO}/refs", timeout=10)
    requests.head(f"{served.url}/{REPO}/raw/main/params.json",
                  headers={"User-Agent": "node"}, timeout=10)  # fmt: skip
    requests_total = "hf2oci_serve_requests_total"
    assert _metric(served.url, requests_total, route="gguf-manifest", method="GET",
                   status="200") == 1  # fmt: skip
    assert _metric(served.url, requests_total, route="refs", method="GET", status="200") == 1
    assert _metric(served.url, requests_total, route="raw", method="HEAD", status="200") == 1
    clients = "hf2oci_serve_client_requests_total"
    assert _metric(served.url, clients, client="llama.cpp") == 1
    assert _metric(served.url, clients, client="node") == 1
    assert _metric(served.url, clients, client="python-urllib") == 0


def test_the_token_gate_covers_the_new_routes(mirrored: dict[str, Any]) -> None:
    server = Served(Store("hgfkeep", root=mirrored["root"]), tokens=[TOKEN])
    try:
        for path in (f"/api/models/{REPO}/refs", f"/{REPO}/raw/main/params.json",
                     f"/v2/{REPO}/manifests/latest"):  # fmt: skip
            assert requests.get(server.url + path, timeout=10).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert requests.get(server.url + path, headers=auth, timeout=10).status_code == 200
    finally:
        server.stop()


def test_with_a_verify_key_the_new_routes_answer_verified_images_only(
    hub, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_signing import KEY_ENV, _key_pem

    private, public = _key_pem()
    hub.add_repo("gguf-org/unsigned", {"u-Q4_K_M.gguf": _gguf("u")})
    make_project(project, models=["gguf-org/unsigned"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.setenv(KEY_ENV, private.decode())
    hub.add_repo("gguf-org/signed", {"s-Q4_K_M.gguf": _gguf("s")})
    make_project(project, models=["gguf-org/signed"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    server = Served(Store("hgfkeep", root=project / "oci-images", ttl=0, verify_key=public))
    try:
        for path in ("/api/models/{}/refs", "/{}/raw/main/{}-Q4_K_M.gguf",
                     "/v2/{}/manifests/latest"):  # fmt: skip
            good = server.url + path.format("gguf-org/signed", "s")
            bad = server.url + path.format("gguf-org/unsigned", "u")
            assert requests.get(good, timeout=10).status_code == 200
            refused = requests.get(bad, timeout=10)
            assert refused.status_code == 403
            assert refused.headers["X-Error-Code"] == "UnverifiedImage"
    finally:
        server.stop()


# -- the quant choice, on its own -------------------------------------------------------------


def test_choose_gguf_follows_llama_cpp() -> None:
    names = sorted(GGUFS)
    assert choose_gguf(names, "latest") == GgufChoice("tiny-Q4_K_M.gguf", "mmproj-tiny-Q8_0.gguf")
    assert choose_gguf(names, "F16") == GgufChoice("F16/tiny-F16-00001-of-00002.gguf",
                                                   "mmproj-tiny-F16.gguf")  # fmt: skip
    assert choose_gguf(names, "Q4_K") is None  # Q4_K names no Q4_K_M file
    assert choose_gguf(["a-Q8_0.gguf", "b-q4_k_m.gguf"], "latest") == GgufChoice("b-q4_k_m.gguf")
    assert choose_gguf(["z-IQ2_XS.gguf", "a.txt", "mmproj-f16.gguf"], "") == GgufChoice(
        "z-IQ2_XS.gguf", "mmproj-f16.gguf"
    )
    assert choose_gguf(["mmproj-f16.gguf", "imatrix.gguf"], "latest") is None
    # a projector in another folder is not the model's
    assert best_mmproj(["a/m-Q4_K_M.gguf", "b/mmproj.gguf"], "a/m-Q4_K_M.gguf") is None
    assert best_mmproj(["a/m-Q4_K_M.gguf", "mmproj.gguf"], "a/m-Q4_K_M.gguf") == "mmproj.gguf"


_NAME = st.builds(
    lambda d, stem, q, part: f"{d}{stem}-{q}{part}.gguf",
    st.sampled_from(["", "sub/"]),
    st.sampled_from(["m", "mmproj-m", "imatrix"]),
    st.sampled_from(["Q4_K_M", "q8_0", "F16", "IQ2_XS", "Q4_K"]),
    st.sampled_from(["", "-00001-of-00002", "-00002-of-00002"]),
)


@given(st.lists(_NAME, unique=True), st.sampled_from(["latest", "Q4_K_M", "q8_0", "f16", "Q4_K"]))
def test_a_choice_is_a_first_part_of_a_model_with_the_tag(names: list[str], tag: str) -> None:
    choice = choose_gguf(sorted(names), tag)
    models = [n for n in names if is_model_gguf(n) and "-00002-of-" not in n]
    if choice is None:
        wanted = [q.lower() for q in (("Q4_K_M", "Q8_0") if tag == "latest" else (tag,))]
        named = [n for n in models for q in wanted if f"{q}." in n.lower() or f"{q}-" in n.lower()]
        assert not named and (tag != "latest" or not models)
        return
    assert choice.model in models
    if tag != "latest":
        assert f"-{tag.lower()}" in choice.model.lower()
    assert choice.mmproj is None or "mmproj" in choice.mmproj


def test_client_families() -> None:
    assert client_family("llama-cpp/b11434-abc") == "llama.cpp"
    assert client_family("unknown/None; hf_hub/2.4.0; python/3.11.7") == "huggingface_hub"
    assert client_family("unknown/None; hf-hub/0.4.1; rust/unknown") == "hf-hub-rust"
    assert client_family("Python-urllib/3.11") == "python-urllib"
    assert client_family("Mozilla/5.0 (X11)") == "browser"
    assert client_family("") == "other"
