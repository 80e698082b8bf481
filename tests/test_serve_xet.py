"""``serve`` speaks Xet (issue 35): big LFS files announced with their Xet hash, serve its own
CAS (tokens, reconstructions, xorbs made of the registry's bytes), read by the real
huggingface_hub + hf_xet, with the client's HTTP cap lowered so nothing but Xet can fetch them;
the gates (tokens, signed URLs), hostile input, registry faults; and the arithmetic itself."""

from __future__ import annotations

import hashlib
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
from hf2oci.consume.serve.store import RepoFile, registry_store
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
