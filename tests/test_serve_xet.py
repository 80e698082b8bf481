"""``serve`` speaks Xet (issue 35): big LFS files announced with their Xet hash, serve its own
CAS (tokens, reconstructions, xorbs made of the registry's bytes), read by the real
huggingface_hub + hf_xet, with the client's HTTP cap lowered so nothing but Xet can fetch them;
the gates (tokens, signed URLs), hostile input, registry faults; and the arithmetic itself."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cli, make_project, run_json
from hf2oci.consume.serve.files import RepoFile
from hf2oci.consume.serve.store import registry_store
from hf2oci.consume.serve.xet import (
    CHUNK,
    Grant,
    Layout,
    Signer,
    XetSettings,
    XorbRef,
    chunk_header,
    file_hash,
    frame,
    parse_min_size,
    xorb_hash,
)
from hf2oci.errors import ConfigError
from hubserver import HubServer
from servers import Registry
from test_serve import Served

MiB = 1 << 20
KEY = b"k" * 32
#: the client's HTTP cap in these tests: any LFS file above it can only come over Xet
CAP = 64 << 10
UP, PLAIN, TWIN, OTHER, BERT = "xs/upstream", "xs/plain", "xs/twin", "xs/other", "xs/bert"


def _rng_files(seed: str, **sizes: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        name.replace("__", "/").replace("_", "."): rng.randbytes(n) for name, n in sizes.items()
    }


FILES = {
    UP: {
        "config.json": b'{"model_type": "bert"}\n',
        "README.md": b"---\nlicense: mit\n---\n# up\n",
        **_rng_files(UP, model_safetensors=3 * MiB + 5, sub__weights_bin=MiB + 11),
    },
    PLAIN: {
        "config.json": b'{"model_type": "bert"}\n',
        **_rng_files(PLAIN, model_safetensors=3 * MiB + 5, big_safetensors=140 * MiB + 333),
    },
    OTHER: _rng_files(OTHER, model_safetensors=3 * MiB + 5),  # same name and size, not content
}
FILES[TWIN] = {"model.safetensors": FILES[PLAIN]["model.safetensors"], "config.json": b"{}\n"}

TINY_BERT = """
import json, sys
from transformers import BertConfig, BertModel
config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=48, max_position_embeddings=64)
BertModel(config).save_pretrained(sys.argv[1])
print(json.dumps("ok"))
"""


@pytest.fixture(scope="module")
def mirrored(
    hub_server: HubServer, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The repos mirrored once into the registry (UP from the hub's Xet, so its image records
    the hub's Xet hashes; the others from plain HTTP), and a tiny BERT made by transformers."""
    root = tmp_path_factory.mktemp("xet-serve")
    bert = root / "bert"
    run_json(TINY_BERT, str(bert), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    FILES[BERT] = {p.name: p.read_bytes() for p in bert.iterdir() if p.is_file()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_XET_CLIENT_RETRY_BASE_DELAY", "50ms")
        hub_server.add_repo(UP, FILES[UP], xet=True)
        for repo in (PLAIN, TWIN, OTHER, BERT):
            hub_server.add_repo(repo, FILES[repo])
        ns = f"xs{uuid.uuid4().hex[:6]}"
        make_project(root, models=list(FILES))
        mp.chdir(root)
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF2OCI_CACHE", str(root / "cache"))
        r = cli("sync", "-q", "--registry", registry.host, "--namespace", ns,
                "--base-image", "scratch")  # fmt: skip
    assert r.exit_code == 0, r.output
    tree = requests.get(f"{hub_server.url}/api/models/{UP}/tree/main?recursive=true", timeout=10)
    upstream = {e["path"]: e.get("xetHash") for e in tree.json() if e["type"] == "file"}
    assert upstream["model.safetensors"]
    return {"ns": ns, "root": root, "upstream": upstream}


def _settings(min_size: int | None = 0, **kw: Any) -> XetSettings:
    return XetSettings(min_size=min_size, key=KEY, **kw)


@pytest.fixture
def served(mirrored: dict[str, Any], registry: Registry) -> Iterator[Served]:
    server = Served(registry_store(registry.host, mirrored["ns"]), xet=_settings())
    yield server
    server.stop()


def client_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """A client of ``serve`` with only ``HF_ENDPOINT`` and a home of its own (no HF_* inherited:
    Xet on, as installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**env, "HF_ENDPOINT": url, "HF_HOME": str(home), **extra}


#: the start of every client script: the HTTP cap lowered, nothing else of the client touched
CAPPED = f"import huggingface_hub.constants as _c; _c.MAX_HTTP_DOWNLOAD_SIZE = {CAP}\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


# -- the arithmetic ----------------------------------------------------------------------------


def _packed(data: bytes, layout: Layout, k: int) -> bytes:
    """Xorb ``k`` of ``data`` made the slow way."""
    out, base, n = b"", k * layout.span, layout.xorb_len(k)
    for j in range(-(-n // layout.chunk)):
        piece = data[base + j * layout.chunk : base + min((j + 1) * layout.chunk, n)]
        out += chunk_header(len(piece)) + piece
    return out


def _unpack(raw: bytes) -> bytes:
    out, i = b"", 0
    while i < len(raw):
        assert raw[i] == 0 and raw[i + 4] == 0  # version 0, no compression
        n = int.from_bytes(raw[i + 1 : i + 4], "little")
        assert n == int.from_bytes(raw[i + 5 : i + 8], "little") <= layout_chunk_max
        out += raw[i + 8 : i + 8 + n]
        i += 8 + n
    return out


layout_chunk_max = CHUNK


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.integers(1, 400),
    st.sampled_from([1, 4, 16]),
    st.sampled_from([1, 2, 3, 7]),
)
def test_xorbs_and_reconstructions_give_back_every_range_of_the_file(
    data: st.DataObject, size: int, chunk: int, per_xorb: int
) -> None:
    """Any byte range of any xorb, framed from the file's bytes cut anywhere, is the xorb made
    the slow way; any file range, read back from its terms, is the file's bytes."""
    content = random.Random(size * chunk * per_xorb).randbytes(size)
    layout = Layout(size, chunk, per_xorb)
    xorbs = [_packed(content, layout, k) for k in range(layout.xorbs)]
    assert [len(x) for x in xorbs] == [layout.packed_size(k) for k in range(layout.xorbs)]
    k = data.draw(st.integers(0, layout.xorbs - 1))
    start = data.draw(st.integers(0, layout.packed_size(k) - 1))
    end = data.draw(st.integers(start + 1, layout.packed_size(k)))
    framing = layout.framing(k, start, end)
    source = content[framing.file_start : framing.file_start + framing.length]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(source) - 1)), max_size=4)))
    pieces = [source[a:b] for a, b in zip([0, *cuts], [*cuts, len(source)], strict=True)]
    assert b"".join(frame(framing, [p for p in pieces if p])) == xorbs[k][start:end]
    lo = data.draw(st.integers(0, size - 1))
    hi = data.draw(st.integers(lo + 1, size))
    unpacked = b""
    for term in layout.terms(lo, hi):
        raw = xorbs[term.xorb][term.first_byte : term.end_byte]
        piece = _unpack(raw)
        assert len(piece) == term.unpacked and len(raw) == term.end_byte - term.first_byte
        unpacked += piece
    offset = layout.offset_into_first(lo)
    assert unpacked[offset : offset + hi - lo] == content[lo:hi]


def test_the_hubs_chunk_limits_are_kept() -> None:
    """Chunks of 128 KiB, xorbs of 64 MiB of file bytes (512 chunks), as the hub's."""
    layout = Layout(150_000_123)
    assert layout.chunk == 128 << 10 and layout.span == 64 << 20 and layout.xorbs == 3
    assert layout.packed_size(0) == (64 << 20) + 8 * 512
    last = layout.terms(150_000_000, 150_000_123)
    assert [(t.xorb, t.end - t.start) for t in last] == [(2, 1)]
    assert chunk_header(CHUNK) == b"\x00\x00\x00\x02\x00\x00\x00\x02"


def test_a_file_ending_short_fails_its_xorb() -> None:
    from hf2oci.errors import PackError

    framing = Layout(100, 16, 4).framing(0, 0, 40)
    with pytest.raises(PackError):
        list(frame(framing, [b"x" * 10]))


def _file(**kw: Any) -> RepoFile:
    base: dict[str, Any] = {"path": "m.safetensors", "size": 10, "spans": ((None, 0, 10),)}
    return RepoFile(**{**base, **kw})


def test_which_files_take_xet_and_under_which_hash() -> None:
    sha = _sha(b"x")
    up = "ab" * 32
    assert file_hash(_file(sha256=sha, xet_hash=up)) == up  # the hub's own
    derived = file_hash(_file(sha256=sha))
    assert derived is not None and len(derived) == 64 and derived not in (sha, up)
    assert derived != file_hash(_file(sha256=_sha(b"y")))  # another content, another hash
    assert file_hash(_file(sha256=sha, xet_hash="not-hex")) == derived  # a bad record: ignored
    assert file_hash(_file(blob_id="0" * 40)) is None  # not in LFS
    assert file_hash(_file(sha256=sha, size=0, spans=())) is None  # empty
    assert file_hash(_file(sha256=sha, recorded=False)) is None  # hashes computed, not recorded
    assert XetSettings(min_size=11).announced(_file(sha256=sha)) is None
    assert XetSettings(min_size=10).announced(_file(sha256=sha)) == derived
    assert XetSettings(min_size=None).announced(_file(sha256=sha)) is None
    assert [parse_min_size(t) for t in ("0", "off", "1GiB", "10GB")] == [0, None, 1 << 30, 10**10]
    with pytest.raises(ConfigError):
        parse_min_size("big")


def test_tokens_and_urls_are_signed_and_expire() -> None:
    signer, other = Signer(KEY), Signer(b"o" * 32)
    grant = Grant("model", "org/m", "a" * 40, int(time.time()) + 60)
    token = signer.token(grant)
    assert signer.grant(token) == grant
    assert other.grant(token) is None  # another key
    assert signer.grant(token, now=grant.expires) is None  # expired
    head, _, mac = token.split(".")
    forged = Signer(b"x").token(Grant("model", "org/secret", "a" * 40, grant.expires))
    assert signer.grant(f"{head}.{forged.split('.')[1]}.{mac}") is None
    assert signer.grant("hf2oci-xet1.%%%.x") is None and signer.grant("") is None
    ref = XorbRef("model", "org/m", "a" * 40, "w.bin", "b" * 64, 2, grant.expires)
    query = signer.xorb_query(ref)
    name = xorb_hash("b" * 64, 2)
    assert signer.xorb_ref(name, query) == (ref, "")
    assert signer.xorb_ref(xorb_hash("b" * 64, 3), query) == (None, "signature")
    for key, value in [("p", "../../etc/passwd"), ("x", "3"), ("e", str(grant.expires + 1))]:
        assert signer.xorb_ref(name, {**query, key: value}) == (None, "signature")
    old = XorbRef("model", "org/m", "a" * 40, "w.bin", "b" * 64, 2, int(time.time()) - 1)
    assert signer.xorb_ref(name, signer.xorb_query(old)) == (None, "expired")
    assert signer.xorb_ref(name, {}) == (None, "signature")


# -- what serve announces ------------------------------------------------------------------------


def test_resolve_and_the_tree_announce_lfs_files_with_the_hubs_or_a_derived_hash(
    served: Served, mirrored: dict[str, Any]
) -> None:
    head = requests.head(f"{served.url}/{UP}/resolve/main/model.safetensors", timeout=10)
    commit = head.headers["X-Repo-Commit"]
    assert head.status_code == 200 and len(commit) == 40
    assert head.headers["X-Xet-Hash"] == mirrored["upstream"]["model.safetensors"]
    assert head.links["xet-auth"]["url"] == (
        f"{served.url}/api/models/{UP}/xet-read-token/{commit}"
    )
    assert head.headers["X-Linked-Size"] == str(len(FILES[UP]["model.safetensors"]))
    assert head.headers["X-Linked-Etag"] == f'"{_sha(FILES[UP]["model.safetensors"])}"'
    small = requests.head(f"{served.url}/{UP}/resolve/main/config.json", timeout=10)
    assert "X-Xet-Hash" not in small.headers and "Link" not in small.headers  # not in LFS
    tree = requests.get(f"{served.url}/api/models/{UP}/tree/main?recursive=true", timeout=10)
    hashes = {e["path"]: e.get("xetHash") for e in tree.json() if e["type"] == "file"}
    assert hashes == {p: mirrored["upstream"][p] for p in hashes}  # the hub's, None for small
    plain = requests.head(f"{served.url}/{PLAIN}/resolve/main/model.safetensors", timeout=10)
    derived = plain.headers["X-Xet-Hash"]
    assert len(derived) == 64 and derived != _sha(FILES[PLAIN]["model.safetensors"])
    twin = requests.head(f"{served.url}/{TWIN}/resolve/main/model.safetensors", timeout=10)
    other = requests.head(f"{served.url}/{OTHER}/resolve/main/model.safetensors", timeout=10)
    assert twin.headers["X-Xet-Hash"] == derived != other.headers["X-Xet-Hash"]
    info = requests.post(f"{served.url}/api/models/{PLAIN}/paths-info/main",
                         data={"paths": ["model.safetensors"]}, timeout=10).json()  # fmt: skip
    assert info[0]["xetHash"] == derived


def test_the_minimum_size_and_off_decide_what_is_announced(
    mirrored: dict[str, Any], registry: Registry
) -> None:
    store = registry_store(registry.host, mirrored["ns"])
    for min_size, announced in [(4 * MiB, {"big.safetensors"}), (None, set())]:
        server = Served(store, xet=_settings(min_size))
        try:
            tree = requests.get(f"{server.url}/api/models/{PLAIN}/tree/main", timeout=10).json()
            assert {e["path"] for e in tree if "xetHash" in e} == announced
            token = requests.get(f"{server.url}/api/models/{PLAIN}/xet-read-token/main", timeout=10)
            assert token.status_code == (200 if announced else 404)
        finally:
            server.stop()


def test_the_token_endpoint_answers_both_forms_and_names_serve_as_the_cas(served: Served) -> None:
    r = requests.get(f"{served.url}/api/models/{PLAIN}/xet-read-token/main", timeout=10)
    doc = r.json()
    assert r.status_code == 200 and doc["casUrl"] == served.url == r.headers["X-Xet-Cas-Url"]
    assert doc["accessToken"] == r.headers["X-Xet-Access-Token"]
    assert doc["exp"] == int(r.headers["X-Xet-Token-Expiration"]) > time.time() + 3000
    assert len(r.headers["X-Repo-Commit"]) == 40
    nope = requests.get(f"{served.url}/api/models/xs/nope/xet-read-token/main", timeout=10)
    assert nope.status_code == 404 and nope.headers["X-Error-Code"] == "RepoNotFound"


# -- the real client, with its HTTP cap lowered -------------------------------------------------

DOWNLOADS = (
    CAPPED
    + """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import HfFileSystem, hf_hub_download, snapshot_download
sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
repo, plain = sys.argv[1], sys.argv[2]
out = {"one": sha(hf_hub_download(repo, "model.safetensors"))}
folder = Path(snapshot_download(plain))
out["snapshot"] = {p.name: sha(p) for p in folder.iterdir()}
fs = HfFileSystem()
fs.get_file(f"{repo}/sub/weights.bin", sys.argv[3])
out["fs_get"] = sha(sys.argv[3])
with fs.open(f"{repo}/model.safetensors", "rb") as f:
    f.seek(1000)
    out["fs_range"] = hashlib.sha256(f.read(5000)).hexdigest()
refused = None
try:
    from huggingface_hub.file_download import http_get
    http_get(f"{sys.argv[4]}/{plain}/resolve/main/model.safetensors", open(sys.argv[3], "wb"),
             expected_size=3 * 2**20 + 5)
except ValueError as e:
    refused = str(e)
out["http_refused"] = refused
print(json.dumps(out))
"""
)


def test_hub_downloads_snapshots_and_hf_file_system_come_over_xet(
    served: Served, tmp_path: Path
) -> None:
    """Above the lowered cap, plain HTTP is refused (as above 50 GB): every LFS file arrives
    over Xet, byte for byte; small files and Range reads stay plain HTTP."""
    before = _metric(served.url, "hf2oci_serve_xet_reconstructions_total")
    got = run_json(DOWNLOADS, UP, PLAIN, str(tmp_path / "w.bin"), served.url,
                   env=client_env(served.url, tmp_path / "home"))  # fmt: skip
    assert got["one"] == _sha(FILES[UP]["model.safetensors"])
    assert got["snapshot"] == {n: _sha(d) for n, d in FILES[PLAIN].items()}
    assert got["fs_get"] == _sha(FILES[UP]["sub/weights.bin"])
    assert got["fs_range"] == _sha(FILES[UP]["model.safetensors"][1000:6000])
    assert "too large" in (got["http_refused"] or "")  # the cap is what we think it is
    assert _metric(served.url, "hf2oci_serve_xet_reconstructions_total") >= before + 4
    assert _metric(served.url, "hf2oci_serve_xet_bytes_total") >= 140 * MiB


STREAMS = """
import hashlib, json, sys
import hf_xet, requests
url, repo, size, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ranges = json.loads(sys.argv[5])
tok = requests.get(f"{url}/api/models/{repo}/xet-read-token/main", timeout=10).json()
head = requests.head(f"{url}/{repo}/resolve/main/big.safetensors", timeout=10)
info = hf_xet.XetFileInfo(head.headers["X-Xet-Hash"], size)
config = hf_xet.XetConfig().with_config({"client.reconstruction_api_version": version})
session = hf_xet.XetSession(config=config)
out = []
with session.new_download_stream_group(endpoint=tok["casUrl"], token=tok["accessToken"],
                                       token_expiry_unix_secs=tok["exp"]) as group:
    for start, end in ranges:
        data = b"".join(group.download_stream(info, start=start, end=end))
        out.append([len(data), hashlib.sha256(data).hexdigest()])
print(json.dumps(out))
"""


@pytest.mark.parametrize("version", [1, 2])
def test_hf_xets_own_download_streams_read_whole_files_and_ranges(
    served: Served, tmp_path: Path, version: int
) -> None:
    """hf_xet's own API against serve's CAS, v1 and v2: the whole file (three xorbs) and
    ranges inside a chunk, across chunks and across xorbs, to the last byte."""
    data = FILES[PLAIN]["big.safetensors"]
    size, x = len(data), 64 * MiB
    ranges = [(None, None), (5, 77), (CHUNK - 3, 3 * CHUNK + 9), (x - 100, 2 * x + 100),
              (size - 10, None), (0, 1)]  # fmt: skip
    before = _metric(served.url, f'hf2oci_serve_xet_reconstructions_total{{version="{version}"}}')
    got = run_json(STREAMS, served.url, PLAIN, str(size), str(version), json.dumps(ranges),
                   env=client_env(served.url, tmp_path))  # fmt: skip
    want = [data[s or 0 : size if e is None else e] for s, e in ranges]
    assert got == [[len(w), _sha(w)] for w in want]
    after = _metric(served.url, f'hf2oci_serve_xet_reconstructions_total{{version="{version}"}}')
    assert after >= before + len(ranges)


BERT_LOAD = (
    CAPPED
    + """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1])
want = load_file(sys.argv[2])
got = model.state_dict()
same = all(torch.equal(got[k], v) for k, v in want.items() if k in got)
print(json.dumps({"same": same, "tensors": len(want)}))
"""
)


def test_transformers_from_pretrained_loads_over_xet(
    served: Served, mirrored: dict[str, Any], tmp_path: Path
) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(FILES[BERT]["model.safetensors"])
    assert len(FILES[BERT]["model.safetensors"]) > CAP  # only Xet can bring it
    before = _metric(served.url, "hf2oci_serve_xet_reconstructions_total")
    got = run_json(BERT_LOAD, BERT, str(weights), env=client_env(served.url, tmp_path / "h"))
    assert got == {"same": True, "tensors": got["tensors"]} and got["tensors"] > 10
    assert _metric(served.url, "hf2oci_serve_xet_reconstructions_total") > before


TWINS = (
    CAPPED
    + """
import hashlib, json, os, sys
from pathlib import Path
from huggingface_hub import hf_hub_download
out = []
for repo in sys.argv[1:]:
    p = hf_hub_download(repo, "model.safetensors")
    out.append([hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.path.realpath(p)])
print(json.dumps(out))
"""
)


def test_the_same_content_under_two_repo_ids_lands_right_in_one_cache(
    served: Served, tmp_path: Path
) -> None:
    """huggingface_hub keeps a blob store shared across repos, keyed by the Xet hash: the
    twin's file is the plain repo's (one download), the other repo's, of the same name and size
    but other bytes, is its own."""
    bytes_before = _metric(served.url, "hf2oci_serve_xet_bytes_total")
    got = run_json(TWINS, PLAIN, TWIN, OTHER, env=client_env(served.url, tmp_path))
    want = [FILES[r]["model.safetensors"] for r in (PLAIN, TWIN, OTHER)]
    assert [g[0] for g in got] == [_sha(w) for w in want]
    sent = _metric(served.url, "hf2oci_serve_xet_bytes_total") - bytes_before
    assert sent < 2.1 * len(want[0])  # the twin came from the shared store, not from serve
    assert got[0][1] != got[2][1]


def test_clients_with_xet_disabled_keep_plain_http(served: Served, tmp_path: Path) -> None:
    code = (
        "import hashlib, json, sys\nfrom pathlib import Path\n"
        "from huggingface_hub import hf_hub_download\n"
        "p = hf_hub_download(sys.argv[1], 'big.safetensors')\n"
        "print(json.dumps(hashlib.sha256(Path(p).read_bytes()).hexdigest()))"
    )
    before = _metric(served.url, "hf2oci_serve_xet_reconstructions_total")
    env = client_env(served.url, tmp_path, HF_HUB_DISABLE_XET="1")
    assert run_json(code, PLAIN, env=env) == _sha(FILES[PLAIN]["big.safetensors"])
    assert _metric(served.url, "hf2oci_serve_xet_reconstructions_total") == before


# -- gates and refusals -----------------------------------------------------------------------

FETCH = (
    CAPPED
    + """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import hf_hub_download
try:
    p = hf_hub_download(sys.argv[1], sys.argv[2])
    print(json.dumps({"sha": hashlib.sha256(Path(p).read_bytes()).hexdigest()}))
except Exception as e:
    status = getattr(getattr(e, "response", None), "status_code", None)
    print(json.dumps({"error": type(e).__name__, "status": status}))
"""
)


def _token(url: str, repo: str, **headers: str) -> str:
    r = requests.get(f"{url}/api/models/{repo}/xet-read-token/main", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["accessToken"])


def _reconstruction(url: str, repo: str, path: str, token: str, **headers: str) -> Any:
    auth = {k: v for k, v in headers.items() if k == "Authorization"}
    xet = requests.head(f"{url}/{repo}/resolve/main/{path}", timeout=10, headers=auth)
    xet = xet.headers["X-Xet-Hash"]
    return requests.get(f"{url}/v2/reconstructions/{xet}", timeout=10,
                        headers={**headers, "Authorization": f"Bearer {token}"})  # fmt: skip


def test_the_token_gate_covers_the_token_endpoint_and_reconstructions(
    mirrored: dict[str, Any], registry: Registry, tmp_path: Path
) -> None:
    from hf2oci.consume.serve.xet import derive_key

    tokens = ["hub-token-1", "hub-token-2"]
    store = registry_store(registry.host, mirrored["ns"])
    key = derive_key(tokens, store.namespace)
    server = Served(store, tokens=tokens, xet=XetSettings(min_size=0, key=key))
    try:
        api = f"{server.url}/api/models/{PLAIN}/xet-read-token/main"
        assert requests.get(api, timeout=10).status_code == 401
        for lookalike in ("/v1/reconstructions/resolve/main/x", "/v2/reconstructions/tree/main",
                          "/-/xet/xorb/resolve/main/x"):  # fmt: skip
            assert requests.get(server.url + lookalike, timeout=10).status_code == 401
        bearer = {"Authorization": "Bearer hub-token-2"}
        cas_token = _token(server.url, PLAIN, **bearer)
        xet = requests.head(f"{server.url}/{PLAIN}/resolve/main/model.safetensors",
                            headers=bearer, timeout=10).headers["X-Xet-Hash"]  # fmt: skip
        recon = f"{server.url}/v2/reconstructions/{xet}"
        assert requests.get(recon, timeout=10).status_code == 401  # no CAS token
        assert requests.get(recon, headers=bearer, timeout=10).status_code == 401  # a hub token
        ok = requests.get(recon, headers={"Authorization": f"Bearer {cas_token}"}, timeout=10)
        assert ok.status_code == 200
        # a replica given the same token file accepts it; one with another does not
        twin = Served(store, tokens=tokens[::-1], xet=XetSettings(min_size=0, key=derive_key(
            tokens[::-1], store.namespace)))  # fmt: skip
        stranger = Served(store, tokens=["x"], xet=XetSettings(min_size=0, key=derive_key(
            ["x"], store.namespace)))  # fmt: skip
        try:
            auth = {"Authorization": f"Bearer {cas_token}"}
            path = f"/v2/reconstructions/{xet}"
            assert requests.get(twin.url + path, headers=auth, timeout=10).status_code == 200
            assert requests.get(stranger.url + path, headers=auth, timeout=10).status_code == 401
            url = next(iter(ok.json()["xorbs"].values()))[0]["url"]
            moved = url.replace(server.url, twin.url)
            assert requests.get(moved, headers={"Range": "bytes=0-99"}, timeout=10).ok
            moved = url.replace(server.url, stranger.url)
            assert requests.get(moved, timeout=10).status_code == 403
        finally:
            twin.stop()
            stranger.stop()
        # xorb URLs need no Authorization: they are signed
        assert requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10).status_code == 206
        denied = run_json(FETCH, PLAIN, "model.safetensors",
                          env=client_env(server.url, tmp_path / "a"))  # fmt: skip
        assert denied["status"] == 401
        env = client_env(server.url, tmp_path / "b", HF_TOKEN="hub-token-1")
        got = run_json(FETCH, PLAIN, "model.safetensors", env=env)
        assert got == {"sha": _sha(FILES[PLAIN]["model.safetensors"])}
    finally:
        server.stop()


def test_unknown_hashes_ranges_past_the_end_and_bad_urls_get_the_cas_answers(
    served: Served,
) -> None:
    token = _token(served.url, PLAIN)
    auth = {"Authorization": f"Bearer {token}"}
    size = len(FILES[PLAIN]["model.safetensors"])
    assert requests.get(f"{served.url}/v2/reconstructions/{'0' * 64}", headers=auth,
                        timeout=10).status_code == 404  # fmt: skip
    assert requests.get(f"{served.url}/v1/reconstructions/{'0' * 64}", headers=auth,
                        timeout=10).status_code == 404  # fmt: skip
    assert requests.get(f"{served.url}/v2/reconstructions/xyz", headers=auth,
                        timeout=10).status_code == 400  # fmt: skip
    past = _reconstruction(served.url, PLAIN, "model.safetensors", token, Range=f"bytes={size}-")
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    tail = _reconstruction(served.url, PLAIN, "model.safetensors", token,
                           Range=f"bytes={size - 1}-{size + 100}").json()  # fmt: skip
    assert [t["unpacked_length"] for t in tail["terms"]] == [size % CHUNK]
    assert tail["offset_into_first_range"] == size % CHUNK - 1
    doc = _reconstruction(served.url, PLAIN, "model.safetensors", token).json()
    entry = next(iter(doc["xorbs"].values()))[0]
    url, last = entry["url"], entry["ranges"][0]["bytes"]["end"]
    r = requests.get(url, headers={"Range": f"bytes={last + 1}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{last + 1}"
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and len(whole.content) == last + 1
    forged = url.replace("&s=", "&s=A")
    expired = requests.get(url.replace("&e=", "&e=1"), timeout=10)
    assert requests.get(forged, timeout=10).status_code == 403 and expired.status_code == 403
    signer = Signer(KEY)
    query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
    from urllib.parse import unquote, urlencode

    ref = XorbRef("model", PLAIN, query["c"], "model.safetensors", unquote(query["f"]), 0,
                  int(time.time()) - 1)  # fmt: skip
    old = f"{url.split('?')[0]}?{urlencode(signer.xorb_query(ref))}"
    r = requests.get(old, timeout=10)
    assert r.status_code == 403 and "expired" in r.headers["X-Error-Message"]
    assert _metric(served.url, 'hf2oci_serve_xet_refused_total{reason="expired"}') >= 1
    assert _metric(served.url, 'hf2oci_serve_xet_refused_total{reason="signature"}') >= 2
    telemetry = requests.post(f"{served.url}/v1/telemetry", data=b"x" * 100_000, timeout=10)
    assert telemetry.status_code == 200


RECOVERS = (
    CAPPED
    + """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import hf_hub_download
p = hf_hub_download(sys.argv[1], sys.argv[2])
print(json.dumps(hashlib.sha256(Path(p).read_bytes()).hexdigest()))
"""
)


@pytest.mark.parametrize("how", ["forged", "expired"])
def test_a_forged_or_expired_xorb_url_is_refused_and_the_client_asks_again(
    served: Served, tmp_path: Path, how: str
) -> None:
    """A proxy between the client and serve spoils the first two xorb URLs it passes on (a
    changed signature, or an expiry already past, signed right): serve answers 403, hf_xet
    asks for the reconstruction again, and the download ends exact."""
    from urllib.parse import parse_qsl, urlencode

    from faultproxy import FaultProxy

    proxy = FaultProxy(f"127.0.0.1:{served.port}")
    spoiled = []

    def spoil(path: str) -> str:
        if not path.startswith("/-/xet/xorb/") or len(spoiled) >= 2:
            return path
        spoiled.append(path)
        base, _, query = path.partition("?")
        fields = dict(parse_qsl(query))
        if how == "forged":
            fields["s"] = fields["s"][::-1]
        else:
            ref = XorbRef(fields["t"], fields["r"], fields["c"], fields["p"], fields["f"],
                          int(fields["x"]), int(time.time()) - 5)  # fmt: skip
            fields = Signer(KEY).xorb_query(ref)
        return f"{base}?{urlencode(fields)}"

    proxy.rewrite = spoil
    url = f"http://{proxy.host}"
    before = _metric(served.url, "hf2oci_serve_xet_reconstructions_total")
    try:
        env = client_env(url, tmp_path, HF_XET_CLIENT_RETRY_BASE_DELAY="50ms")
        got = run_json(RECOVERS, PLAIN, "big.safetensors", env=env)
    finally:
        proxy.server.shutdown()
    assert got == _sha(FILES[PLAIN]["big.safetensors"])
    assert len(spoiled) == 2
    reason = "signature" if how == "forged" else "expired"
    assert _metric(served.url, f'hf2oci_serve_xet_refused_total{{reason="{reason}"}}') >= 2
    assert _metric(served.url, "hf2oci_serve_xet_reconstructions_total") > before + 1


def test_hostile_hashes_tokens_and_urls_never_reach_the_registry(
    mirrored: dict[str, Any], registry: Registry
) -> None:
    """Each request below is refused before serve reads anything: the registry (behind a
    counting proxy) sees not one request for any of them, and serve keeps serving."""
    from urllib.parse import urlencode

    from faultproxy import FaultProxy

    proxy = FaultProxy(registry.host)
    server = Served(registry_store(proxy.host, mirrored["ns"], ttl=0), xet=_settings())
    try:
        good = _token(server.url, PLAIN)
        forged = Signer(b"not the key" * 3).token(Grant("model", PLAIN, "a" * 40, 2**40))
        other = Signer(KEY).token(Grant("model", "../../etc", "a" * 40, int(time.time()) + 60))
        doc = _reconstruction(server.url, PLAIN, "model.safetensors", good).json()
        url = next(iter(doc["xorbs"].values()))[0]["url"]
        base, query = url.split("?", 1)
        fields = dict(p.split("=", 1) for p in query.split("&"))
        bad_fields = [("p", "..%2F..%2Fetc%2Fpasswd"), ("r", "..%2Fx"), ("x", "9" * 30),
                      ("c", "main"), ("t", "space"), ("f", "0" * 64)]  # fmt: skip
        hostile: list[tuple[str, dict[str, str]]] = [
            (f"/v2/reconstructions/{'g' * 64}", {"Authorization": f"Bearer {good}"}),
            ("/v2/reconstructions/..%2F..%2Fetc%2Fpasswd", {"Authorization": f"Bearer {good}"}),
            (f"/v2/reconstructions/{'0' * 64}", {}),
            (f"/v2/reconstructions/{'0' * 64}", {"Authorization": f"Bearer {forged}"}),
            (f"/v2/reconstructions/{'0' * 64}", {"Authorization": "Bearer " + "x" * 10000}),
            (f"/v1/reconstructions/{'0' * 64}", {"Authorization": f"Bearer {good[:-2]}"}),
            ("/-/xet/xorb/" + "0" * 64 + "?" + query, {}),
            (f"{base.replace(server.url, '')}?{urlencode({'p': '/etc/passwd'})}", {}),
            *[(base.replace(server.url, "") + "?" + "&".join(
                f"{k}={v if k != key else value}" for k, v in fields.items()), {})
              for key, value in bad_fields],
        ]  # fmt: skip
        # a token naming a repo id that is not one: refused by the store's validation
        hostile.append((f"/v2/reconstructions/{'0' * 64}", {"Authorization": f"Bearer {other}"}))
        for path, headers in hostile:
            seen = len(proxy.seen)
            r = requests.get(server.url + path, headers=headers, timeout=10)
            assert r.status_code in (400, 401, 403, 404), (path, r.status_code)
            assert "Traceback" not in r.text and "root:" not in r.text
            assert len(proxy.seen) == seen, (path, proxy.seen[seen:])
        assert requests.get(url, headers={"Range": "bytes=0-7"}, timeout=10).status_code == 206
    finally:
        server.stop()
        proxy.server.shutdown()


# -- files in parts, registry faults, pages, verified images ------------------------------------

PARTS = "xs/parts"
PART_LIMIT = 2 * MiB


@pytest.fixture(scope="module")
def parted(hub_server: HubServer, mirrored: dict[str, Any], registry: Registry) -> int:
    """A repo whose weights (5 MiB) are carried in three parts (layers of at most 2 MiB), in
    the module's namespace; returns the part size."""
    from helpers import skopeo_inspect, tag_of
    from hf2oci.repofiles import parts_of

    FILES[PARTS] = _rng_files(PARTS, w__model_safetensors=5 * MiB + 123)
    hub_server.add_repo(PARTS, FILES[PARTS])
    ns, root = mirrored["ns"], mirrored["root"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HF_ENDPOINT", hub_server.url)
        mp.setenv("HF2OCI_CACHE", str(root / "cache"))
        r = cli("mirror", PARTS, "--no-record", "--registry", registry.host, "--namespace", ns,
                "--base-image", "scratch", "--max-layer-size", str(PART_LIMIT))  # fmt: skip
    assert r.exit_code == 0, r.output
    manifest = skopeo_inspect(f"docker://{registry.host}/{ns}/models:{tag_of(PARTS)}", raw=True)
    join = parts_of(manifest["annotations"])["w/model.safetensors"]
    assert len(join.names) == 3
    return int(join.part_size)


PARTS_READ = (
    CAPPED
    + """
import hashlib, json, sys
from pathlib import Path
import hf_xet, requests
from huggingface_hub import hf_hub_download
url, repo, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
whole = hashlib.sha256(Path(hf_hub_download(repo, "w/model.safetensors")).read_bytes()).hexdigest()
tok = requests.get(f"{url}/api/models/{repo}/xet-read-token/main", timeout=10).json()
xet = requests.head(f"{url}/{repo}/resolve/main/w/model.safetensors", timeout=10)
info = hf_xet.XetFileInfo(xet.headers["X-Xet-Hash"], size)
out = []
with hf_xet.XetSession().new_download_stream_group(
        endpoint=tok["casUrl"], token=tok["accessToken"], token_expiry_unix_secs=tok["exp"]) as g:
    for start, end in json.loads(sys.argv[4]):
        data = b"".join(g.download_stream(info, start=start, end=end))
        out.append(hashlib.sha256(data).hexdigest())
print(json.dumps({"whole": whole, "ranges": out}))
"""
)


def test_a_file_carried_in_parts_comes_whole_over_xet_and_its_ranges_cross_the_edges(
    served: Served, parted: int, tmp_path: Path
) -> None:
    data = FILES[PARTS]["w/model.safetensors"]
    edge = parted
    ranges = [(edge - 10, edge + 10), (edge - CHUNK, 2 * edge + CHUNK), (0, len(data))]
    got = run_json(PARTS_READ, served.url, PARTS, str(len(data)), json.dumps(ranges),
                   env=client_env(served.url, tmp_path))  # fmt: skip
    assert got == {"whole": _sha(data), "ranges": [_sha(data[a:b]) for a, b in ranges]}


CONCURRENT = (
    CAPPED
    + """
import hashlib, json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from huggingface_hub import hf_hub_download

def one(i):
    p = hf_hub_download(sys.argv[1], "model.safetensors", cache_dir=f"{sys.argv[2]}/c{i}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()

with ThreadPoolExecutor(4) as pool:
    print(json.dumps(list(pool.map(one, range(4)))))
"""
)
#: the size of each of the 4 concurrent downloads through the failing registry (the issue's
#: 384 MiB; benchmarks/bench_serve_xet.py runs 8 of them)
FAULTY_SIZE = 384 * MiB


def test_four_xet_downloads_through_a_registry_failing_every_fifth_blob_read_are_exact(
    hub: HubServer, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 5th blob read fails (a 503, then a body cut after 4 bytes, in turn) while 4
    clients fetch a 384 MiB file over Xet at once: serve retries and resumes its registry reads,
    every byte arrives exact, no 5xx reaches a client, and the faults are counted."""
    from faultproxy import FaultProxy
    from hubserver import Generated

    content = Generated(FAULTY_SIZE, seed="faulty-xet", unique=True)
    want = hashlib.sha256()
    for piece in content.read(0, FAULTY_SIZE):
        want.update(piece)
    monkeypatch.chdir(tmp_path)
    hub.add_repo("xs/faulty", {"model.safetensors": content, "config.json": b"{}\n"})
    ns = f"xf{uuid.uuid4().hex[:6]}"
    config = {"base_image": "scratch", "registry": registry.host, "namespace": ns}
    make_project(tmp_path, models=["xs/faulty"], config=config)
    assert cli("sync", "-q").exit_code == 0
    proxy = FaultProxy(registry.host)
    server = Served(registry_store(proxy.host, ns, ttl=60), xet=_settings())
    try:
        requests.head(f"{server.url}/xs/faulty/resolve/main/model.safetensors", timeout=30)
        faults = proxy.fault("GET", "/blobs/sha256:", "503|cut-after:4", times=10**6, every=5)
        env = client_env(server.url, tmp_path / "home", HF_XET_CLIENT_RETRY_BASE_DELAY="50ms")
        got = run_json(CONCURRENT, "xs/faulty", str(tmp_path / "caches"), env=env, timeout=600)
        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    finally:
        server.stop()
        proxy.server.shutdown()
    assert got == [want.hexdigest()] * 4
    sent = sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("hf2oci_serve_xet_bytes_total"))  # fmt: skip
    assert sent >= 4 * FAULTY_SIZE  # four downloads, each through serve
    assert faults.hits >= 4
    lines = metrics.splitlines()
    answered = [line for line in lines if line.startswith("hf2oci_serve_requests_total")]
    assert answered and not [line for line in answered if 'status="5' in line]
    assert [line for line in answered if 'route="xet-xorb"' in line]
    kinds = {line.split('"')[1]: float(line.split()[-1]) for line in lines
             if line.startswith("hf2oci_serve_upstream_faults_total{")}  # fmt: skip
    assert kinds.get("status", 0) >= 1 and kinds.get("cut", 0) >= 1


def test_the_pages_say_which_transfer_each_file_takes(
    mirrored: dict[str, Any], registry: Registry
) -> None:
    server = Served(registry_store(registry.host, mirrored["ns"]), xet=_settings(4 * MiB))
    html = {"Accept": "text/html"}
    try:
        tree = requests.get(f"{server.url}/{PLAIN}/tree/main", headers=html, timeout=10).text
        rows = {row.split('">')[2].split("<")[0]: row.split('class="transfer">')[1].split("<")[0]
                for row in tree.split("<tr")[1:] if 'class="transfer"' in row}  # fmt: skip
        assert rows == {"big.safetensors": "Xet", "config.json": "HTTP",
                        "model.safetensors": "HTTP"}  # fmt: skip
        big = requests.get(f"{server.url}/{PLAIN}/blob/main/big.safetensors", headers=html,
                           timeout=10).text  # fmt: skip
        assert "Xet, through this server" in big and "HF_HUB_DISABLE_XET=1" in big
        small = requests.get(f"{server.url}/{PLAIN}/blob/main/model.safetensors", headers=html,
                             timeout=10).text  # fmt: skip
        assert '<dd class="transfer">plain HTTP</dd>' in small
    finally:
        server.stop()


def test_with_a_verify_key_xet_serves_verified_images_only(
    hub: HubServer, random_repo: Any, project: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Tokens are given for verified images only, and a reconstruction's file must be in the
    signed file list; the bytes then come as Range reads do, bound by the verified manifest."""
    from hf2oci.consume.serve.store import Store
    from test_signing import KEY_ENV, _key_pem

    signed, _, files = random_repo(size=3 * MiB + 1)
    unsigned, _, _ = random_repo()
    private, public = _key_pem()
    config = {"namespace": "xv", "base_image": "scratch"}
    make_project(project, models=[unsigned], config=config)
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.setenv(KEY_ENV, private.decode())
    make_project(project, models=[signed], config=config)
    assert cli("sync", "-q").exit_code == 0
    store = Store("xv", root=project / "oci-images", ttl=0, verify_key=public)
    server = Served(store, xet=_settings())
    try:
        got = run_json(FETCH, signed, "model.safetensors", env=client_env(server.url, tmp_path))
        assert got == {"sha": _sha(files["model.safetensors"])}
        assert _metric(server.url, "hf2oci_serve_xet_reconstructions_total") >= 1
        r = requests.get(f"{server.url}/api/models/{unsigned}/xet-read-token/main", timeout=10)
        assert r.status_code == 403 and r.headers["X-Error-Code"] == "UnverifiedImage"
    finally:
        server.stop()


def test_the_command_takes_xet_min_size(
    mirrored: dict[str, Any], registry: Registry, tmp_path: Path
) -> None:
    """``hf2oci serve --xet-min-size``: a size, ``0``, ``off``; a bad one is one line, exit 2."""
    import subprocess
    import sys

    from servers import free_port

    bad = cli("serve", "--registry", registry.host, "--namespace", "x", "--xet-min-size", "big")
    assert bad.exit_code == 2 and "--xet-min-size 'big'" in bad.output
    for size, announced in [("4MiB", {"big.safetensors"}), ("off", set())]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hf2oci", "serve", "--registry", registry.host, "--namespace",
             mirrored["ns"], "--port", str(port), "--xet-min-size", size],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{url}/health", timeout=1).ok:
                        break
                except requests.RequestException:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            tree = requests.get(f"{url}/api/models/{PLAIN}/tree/main", timeout=10).json()
            assert {e["path"] for e in tree if "xetHash" in e} == announced
        finally:
            proc.terminate()
            proc.wait(30)
