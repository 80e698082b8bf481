"""The test hub as a Xet hub: real xorbs uploaded by hf_xet, read back by the real clients.

hf_xet's own ``download_stream`` and huggingface_hub's ``hf_hub_download`` read Xet files from
`xetcas.XetCas` through the hub's token route; with Xet off (``HF_HUB_DISABLE_XET=1``, read at
import, hence a subprocess) the bytes come over the CAS bridge, which refuses files above its
limit. Faults: flaky xorb GETs, expired tokens and URLs, forged URLs, and a tampered file that
hf_xet cannot tell from the real one (only a sha256 check can).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import hf_xet
import pytest
from huggingface_hub import HfApi, RepoFile, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError

from helpers import run_json
from hubserver import Generated, HubServer

MiB = 1024 * 1024
REPO = "xetorg/model"


@dataclass(frozen=True)
class XetRepo:
    repo_id: str
    sha: str
    files: dict[str, bytes]
    hashes: dict[str, str]  # file name -> Xet hash


@pytest.fixture(scope="module")
def xet_repo(hub_server: HubServer) -> XetRepo:
    """A Xet repo of two LFS files where b is a with 300 kB inserted: uploaded one after the
    other, b reuses a's chunks on both sides of its new data, so it spans two xorbs."""
    rng = random.Random("xethub")
    a = rng.randbytes(3 * MiB)
    b = a[:1_000_000] + rng.randbytes(300_000) + a[1_000_000:]
    files = {"config.json": b'{"model_type": "xet"}', "a.safetensors": a, "b.safetensors": b}
    sha = hub_server.add_repo(REPO, files, xet=True)
    blobs = hub_server._repo(REPO, "model").commits[sha].files
    hashes = {n: blob.xet_hash for n, blob in blobs.items() if blob.xet_hash}
    return XetRepo(REPO, sha, files, hashes)  # type: ignore[arg-type]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _raw(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """A plain stdlib request (redirects not followed): the response or the HTTP error."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        return _OPENER.open(req, timeout=30)
    except urllib.error.HTTPError as e:
        return e


def _token_url(hub: HubServer, repo_id: str = REPO, rev: str = "main") -> str:
    return f"{hub.url}/api/models/{repo_id}/xet-read-token/{rev}"


def _stream(
    hub: HubServer, xet_hash: str, size: int, start: Any = None, end: Any = None, **config: Any
) -> bytes:
    """A file (or bytes [start, end)) through hf_xet's own download_stream, authorised by the
    hub's token route (the CAS URL comes from its JSON); ``config``: more XetConfig settings."""
    assert hub.cas is not None
    session = hub.cas.session(**config)  # 50 ms retry delay, telemetry off
    with session.new_download_stream_group(token_refresh_url=_token_url(hub)) as group:
        info = hf_xet.XetFileInfo(xet_hash, size)
        return b"".join(group.download_stream(info, start=start, end=end))


def _reconstruction(hub: HubServer, xet_hash: str, rng: str | None = None) -> Any:
    """A v1 reconstruction asked for with a fresh token, over plain HTTP."""
    token = json.load(_raw(_token_url(hub)))["accessToken"]
    headers = {"Authorization": f"Bearer {token}"} | ({"Range": rng} if rng else {})
    assert hub.cas is not None
    return _raw(f"{hub.cas.url}/v1/reconstructions/{xet_hash}", headers=headers)


def _in_subprocess(hub: HubServer, tmp_path: Path, names: list[str], **env: str) -> dict[str, str]:
    """hf_hub_download of each file in a fresh interpreter (huggingface_hub reads
    HF_HUB_DISABLE_XET at import): name -> sha256 of what came, or the error."""
    code = (
        "import hashlib, json, sys\n"
        "from huggingface_hub import hf_hub_download\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    try:\n"
        "        path = hf_hub_download(sys.argv[1], name)\n"
        "        out[name] = hashlib.sha256(open(path, 'rb').read()).hexdigest()\n"
        "    except Exception as e:\n"
        "        out[name] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(out))\n"
    )
    home = tmp_path / f"hf-{time.monotonic_ns()}"
    full_env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home),
                "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", **env}  # fmt: skip
    full_env.pop("HF_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", code, REPO, *names],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the CAS holds real xorbs ----------------------------------------------------------------


def test_files_span_xorbs_and_share_chunks(hub: HubServer, xet_repo: XetRepo) -> None:
    assert hub.cas is not None
    a_terms = hub.cas.terms(xet_repo.hashes["a.safetensors"])
    b_terms = hub.cas.terms(xet_repo.hashes["b.safetensors"])
    assert len({t.xorb for t in b_terms}) >= 2  # b spans xorbs
    assert {t.xorb for t in a_terms} & {t.xorb for t in b_terms}  # and shares a's chunks
    assert sum(t.size for t in b_terms) == len(xet_repo.files["b.safetensors"])
    assert "config.json" not in xet_repo.hashes  # small files stay in git, as on the hub
    for xorb in hub.cas.xorbs():
        chunks = hub.cas.chunks(xorb)
        assert chunks and all(0 < c.size <= 128 * 1024 for c in chunks)


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1-fallback"])
def test_hf_xet_download_stream_gives_exact_bytes_and_ranges(
    hub: HubServer, xet_repo: XetRepo, v2: bool
) -> None:
    assert hub.cas is not None
    hub.cas.v2 = v2
    for name, xet_hash in xet_repo.hashes.items():
        data = xet_repo.files[name]
        assert _stream(hub, xet_hash, len(data)) == data
    b, b_hash = xet_repo.files["b.safetensors"], xet_repo.hashes["b.safetensors"]
    # across term and xorb boundaries, mid-chunk, the last byte
    for start, end in [(0, 1), (999_990, 1_300_010), (123_457, 2_987_654), (len(b) - 1, len(b))]:
        assert _stream(hub, b_hash, len(b), start, end) == b[start:end], (start, end)
    assert hub.cas.reconstructions >= 6
    asked = [r for r in hub.cas.log if r.route == "reconstruction"]
    if v2:
        assert all("/v2/" in r.path and r.status == 200 for r in asked)
    else:  # each new session asks v2 once, gets 404, and keeps v1
        assert any("/v2/" in r.path and r.status == 404 for r in asked)
        assert all("/v1/" in r.path for r in asked if r.status == 200)


def test_multirange_fetches_get_multipart_answers(hub: HubServer, xet_repo: XetRepo) -> None:
    """A v2 URL covers all of a xorb's ranges; asked for several at once, the CAS answers
    ``multipart/byteranges``, which hf_xet reads when multi-range fetching is on."""
    assert hub.cas is not None
    b, b_hash = xet_repo.files["b.safetensors"], xet_repo.hashes["b.safetensors"]
    token = json.load(_raw(_token_url(hub)))["accessToken"]
    v2 = _raw(f"{hub.cas.url}/v2/reconstructions/{b_hash}",
              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    fetch = [f for entries in json.load(v2)["xorbs"].values() for f in entries]
    url, ranges = next((f["url"], f["ranges"]) for f in fetch if len(f["ranges"]) >= 2)
    spans = [(r["bytes"]["start"], r["bytes"]["end"]) for r in ranges]
    single = [_raw(url, headers={"Range": f"bytes={s}-{e}"}).read() for s, e in spans]
    both = _raw(url, headers={"Range": "bytes=" + ",".join(f"{s}-{e}" for s, e in spans)})
    assert both.status == 206
    assert both.headers.get_content_type() == "multipart/byteranges"
    body = both.read()
    boundary = both.headers.get_param("boundary").encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    assert [p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for p in parts] == single

    hub.cas.reset_log()
    multirange = {"client.enable_multirange_fetching": True}
    assert _stream(hub, b_hash, len(b), **multirange) == b
    assert any("," in (r.range or "") for r in hub.cas.log if r.route == "xorb")


def test_reconstruction_json_and_ranges_on_the_wire(hub: HubServer, xet_repo: XetRepo) -> None:
    b, b_hash = xet_repo.files["b.safetensors"], xet_repo.hashes["b.safetensors"]
    whole = json.load(_reconstruction(hub, b_hash))
    assert whole["offset_into_first_range"] == 0
    assert sum(t["unpacked_length"] for t in whole["terms"]) == len(b)
    for term in whole["terms"]:
        fetch = whole["fetch_info"][term["hash"]]
        assert any(
            f["range"]["start"] <= term["range"]["start"]
            and term["range"]["end"] <= f["range"]["end"]
            for f in fetch
        )
    part = json.load(_reconstruction(hub, b_hash, "bytes=1000000-1000099"))
    assert len(part["terms"]) == 1 and part["offset_into_first_range"] > 0
    assert part["terms"][0]["unpacked_length"] >= 100

    past = _reconstruction(hub, b_hash, f"bytes={len(b)}-{len(b) + 10}")
    assert past.status == 416
    assert _reconstruction(hub, "0" * 64).status == 404


# -- huggingface_hub over Xet and over the bridge --------------------------------------------


def test_hf_hub_download_reads_xet_files_over_xet(
    hub: HubServer, xet_repo: XetRepo, tmp_path: Path
) -> None:
    assert not constants.HF_HUB_DISABLE_XET, "this test needs huggingface_hub's Xet path"
    assert hub.cas is not None and hub.bridge is not None
    for name, data in xet_repo.files.items():
        path = hf_hub_download(REPO, name, endpoint=hub.url, cache_dir=tmp_path, token=False)
        assert Path(path).read_bytes() == data

    assert hub.cas.count("reconstruction", who="client", status=200) >= 2
    assert hub.bridge.requests == []  # nothing came over plain HTTP
    assert hub.count("HEAD", "/resolve/main/b.safetensors") == 1  # then Xet, with its token
    assert hub.count("GET", "/resolve/main/config.json") == 1  # a git file: plain bytes


def test_tree_and_resolve_headers_announce_xet(hub: HubServer, xet_repo: XetRepo) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    entries = {e.path: e for e in api.list_repo_tree(REPO) if isinstance(e, RepoFile)}
    for name, data in xet_repo.files.items():
        assert entries[name].xet_hash == xet_repo.hashes.get(name)
        if name in xet_repo.hashes:
            assert entries[name].lfs is not None and entries[name].lfs.sha256 == _sha(data)
    infos = api.get_paths_info(REPO, list(xet_repo.files))
    assert {i.path: i.xet_hash for i in infos if isinstance(i, RepoFile)} == {
        n: xet_repo.hashes.get(n) for n in xet_repo.files
    }

    head = _raw(f"{hub.url}/{REPO}/resolve/main/b.safetensors", method="HEAD")
    b = xet_repo.files["b.safetensors"]
    assert head.status == 302
    assert head.headers["X-Xet-Hash"] == xet_repo.hashes["b.safetensors"]
    assert head.headers["X-Linked-Size"] == str(len(b))
    assert head.headers["X-Linked-Etag"] == f'"{_sha(b)}"' == head.headers["ETag"]
    assert head.headers["X-Repo-Commit"] == xet_repo.sha
    assert head.headers["Link"] == f'<{_token_url(hub, rev=xet_repo.sha)}>; rel="xet-auth"'
    assert head.headers["Location"].startswith("http://127.0.0.2:")


def test_without_xet_the_client_reads_the_bridge(
    hub: HubServer, xet_repo: XetRepo, tmp_path: Path
) -> None:
    assert hub.cas is not None and hub.bridge is not None
    names = ["a.safetensors", "b.safetensors"]
    got = _in_subprocess(hub, tmp_path, names, HF_HUB_DISABLE_XET="1")

    assert got == {n: _sha(xet_repo.files[n]) for n in names}
    served = [path for method, path, _ in hub.bridge.requests if method == "GET"]
    assert sorted(served) == sorted(f"/xet-bridge/{xet_repo.hashes[n]}" for n in names)
    assert not any("authorization" in {k.lower() for k in h} for _, _, h in hub.bridge.requests)
    assert hub.cas.count("reconstruction", who="client") == 0  # only the bridge read the CAS
    assert hub.cas.count("reconstruction", who="bridge") >= 2
    assert hub.count("GET", "/xet-read-token/") == 0


def test_the_bridge_serves_ranges_and_refuses_files_above_its_limit(
    hub: HubServer, xet_repo: XetRepo, tmp_path: Path
) -> None:
    assert hub.bridge is not None
    a, a_hash = xet_repo.files["a.safetensors"], xet_repo.hashes["a.safetensors"]
    url = f"{hub.bridge.url}/xet-bridge/{a_hash}"
    part = _raw(url, headers={"Range": "bytes=1000-2999999"})
    assert part.status == 206 and part.read() == a[1000:3_000_000]
    assert part.headers["Content-Range"] == f"bytes 1000-2999999/{len(a)}"
    assert _raw(url, headers={"Range": f"bytes={len(a)}-"}).status == 416

    hub.bridge_limit = 2 * MiB  # a (3 MiB) is now "above 50 GB"
    assert _raw(url).status == 400
    got = _in_subprocess(hub, tmp_path, ["a.safetensors"], HF_HUB_DISABLE_XET="1")
    assert got["a.safetensors"].startswith("BadRequestError")
    assert "too large for the bridge" in got["a.safetensors"]
    # over Xet the same file still comes
    path = hf_hub_download(REPO, "a.safetensors", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == a


def test_a_hub_without_xet_serves_the_same_repo_plainly(
    hub: HubServer, xet_repo: XetRepo, tmp_path: Path
) -> None:
    assert hub.cas is not None and hub.bridge is not None
    hub.xet_enabled = False
    api = HfApi(endpoint=hub.url, token=False)
    assert all(getattr(e, "xet_hash", None) is None for e in api.list_repo_tree(REPO))
    head = _raw(f"{hub.url}/{REPO}/resolve/main/b.safetensors", method="HEAD")
    assert head.status == 200 and "X-Xet-Hash" not in head.headers
    assert _raw(_token_url(hub)).status == 404

    path = hf_hub_download(REPO, "b.safetensors", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == xet_repo.files["b.safetensors"]
    assert hub.cas.count("reconstruction") == 0 and hub.bridge.requests == []


def test_commit_uploads_new_lfs_files_to_xet(hub: HubServer, tmp_path: Path) -> None:
    rng = random.Random("commit")
    first = rng.randbytes(MiB)
    hub.add_repo("xetorg/committed", {"w.safetensors": first}, xet=True)
    second = first[:500_000] + b"changed" + first[500_000:]
    sha = hub.commit("xetorg/committed", {"w.safetensors": second, "x.bin": b"\0" * 100})
    blobs = hub._repo("xetorg/committed", "model").commits[sha].files
    assert blobs["w.safetensors"].xet_hash and blobs["x.bin"].xet_hash  # .bin is LFS
    path = hf_hub_download(
        "xetorg/committed", "w.safetensors", endpoint=hub.url, cache_dir=tmp_path
    )
    assert Path(path).read_bytes() == second
    assert hub.bridge is not None and hub.bridge.requests == []


def test_dataset_repos_speak_xet_too(hub: HubServer, tmp_path: Path) -> None:
    data = random.Random("dataset").randbytes(MiB)
    sha = hub.add_repo("xetorg/data", {"train.parquet": data}, repo_type="dataset", xet=True)
    head = _raw(f"{hub.url}/datasets/xetorg/data/resolve/main/train.parquet", method="HEAD")
    link = f'<{hub.url}/api/datasets/xetorg/data/xet-read-token/{sha}>; rel="xet-auth"'
    assert head.status == 302 and head.headers["Link"] == link
    path = hf_hub_download("xetorg/data", "train.parquet", repo_type="dataset",
                           endpoint=hub.url, cache_dir=tmp_path)  # fmt: skip
    assert Path(path).read_bytes() == data
    assert hub.count("GET", "/api/datasets/xetorg/data/xet-read-token/") >= 1
    assert hub.bridge is not None and hub.bridge.requests == []


# -- tokens ----------------------------------------------------------------------------------


def test_token_route_answers_headers_and_json(hub: HubServer, xet_repo: XetRepo) -> None:
    assert hub.cas is not None
    hub.xet_token_ttl = 600
    answer = _raw(_token_url(hub, rev=xet_repo.sha))
    body = json.load(answer)

    assert answer.status == 200
    assert body["casUrl"] == answer.headers["X-Xet-Cas-Url"] == hub.cas.url
    assert body["accessToken"] == answer.headers["X-Xet-Access-Token"]
    assert body["exp"] == int(answer.headers["X-Xet-Token-Expiration"])
    assert time.time() + 590 < body["exp"] <= time.time() + 600
    url = f"{hub.cas.url}/v1/reconstructions/{xet_repo.hashes['a.safetensors']}"
    assert _raw(url, headers={"Authorization": f"Bearer {body['accessToken']}"}).status == 200
    assert _raw(url).status == 401
    assert _raw(url, headers={"Authorization": "Bearer xet_forged"}).status == 401
    assert _raw(_token_url(hub, rev="nope")).headers["X-Error-Code"] == "RevisionNotFound"


def test_gated_and_private_repos_need_the_hub_token(hub: HubServer, tmp_path: Path) -> None:
    data = random.Random("gated").randbytes(MiB)
    hub.add_repo("xetorg/gated", {"m.safetensors": data}, gated=True, xet=True)
    hub.add_repo("xetorg/private", {"m.safetensors": data}, private=True, xet=True)
    hub.tokens.add("hf_member")
    gated, private = _token_url(hub, "xetorg/gated"), _token_url(hub, "xetorg/private")

    no_token = _raw(gated)
    assert no_token.status == 401 and no_token.headers["X-Error-Code"] == "GatedRepo"
    wrong = _raw(gated, headers={"Authorization": "Bearer hf_stranger"})
    assert wrong.status == 403 and wrong.headers["X-Error-Code"] == "GatedRepo"
    assert _raw(gated, headers={"Authorization": "Bearer hf_member"}).status == 200
    hidden = _raw(private)
    assert hidden.status == 404 and hidden.headers["X-Error-Code"] == "RepoNotFound"
    assert _raw(private, headers={"Authorization": "Bearer hf_member"}).status == 200

    with pytest.raises(GatedRepoError):
        hf_hub_download("xetorg/gated", "m.safetensors", endpoint=hub.url, cache_dir=tmp_path,
                        token=False)  # fmt: skip
    path = hf_hub_download("xetorg/gated", "m.safetensors", endpoint=hub.url,
                           cache_dir=tmp_path, token="hf_member")  # fmt: skip
    assert Path(path).read_bytes() == data
    assert hub.count("GET", "/api/models/xetorg/gated/xet-read-token/") >= 4


def test_expired_tokens_are_refused_and_hf_xet_renews_them(
    hub: HubServer, xet_repo: XetRepo
) -> None:
    assert hub.cas is not None
    hub.xet_token_ttl = 2.0
    a, a_hash = xet_repo.files["a.safetensors"], xet_repo.hashes["a.safetensors"]
    token = json.load(_raw(_token_url(hub)))["accessToken"]
    url = f"{hub.cas.url}/v1/reconstructions/{a_hash}"
    answer = json.load(_raw(url, headers={"Authorization": f"Bearer {token}"}))
    xorb_url = next(iter(answer["fetch_info"].values()))[0]["url"]
    time.sleep(2.1)
    assert _raw(url, headers={"Authorization": f"Bearer {token}"}).status == 401
    assert _raw(xorb_url, headers={"Range": "bytes=0-7"}).status == 403  # the URL expired too

    # hf_xet told the stale token lasts an hour gets the CAS's 401, and gives up
    session = hub.cas.session()
    stale = session.new_download_stream_group(
        endpoint=hub.cas.url, token=token, token_expiry_unix_secs=int(time.time()) + 3600
    )
    hub.reset_log()
    got = None
    with contextlib.suppress(Exception):  # hf_xet's error type for a 401 is not public
        got = b"".join(stale.download_stream(hf_xet.XetFileInfo(a_hash, len(a))))
    # it fails: an error or, as hf_xet 1.8 does about one time in four, an empty stream with
    # no error at all (the stream's channel closes before the error is recorded)
    assert got is None or got == b""
    assert hub.cas.count("reconstruction", status=401) == 1

    # with the hub's token route it renews: one download, then another after the TTL
    hub.reset_log()
    with session.new_download_stream_group(token_refresh_url=_token_url(hub)) as group:
        assert b"".join(group.download_stream(hf_xet.XetFileInfo(a_hash, len(a)))) == a
        time.sleep(2.1)
        got = group.download_stream(hf_xet.XetFileInfo(a_hash, len(a)), start=7, end=len(a))
        assert b"".join(got) == a[7:]
    assert hub.count("GET", "/xet-read-token/") >= 2
    assert hub.cas.count("reconstruction", status=401) == 0


_DOWNLOAD = """
import json, sys
from huggingface_hub import hf_hub_download
path = hf_hub_download(sys.argv[1], sys.argv[2], endpoint=sys.argv[3], cache_dir=sys.argv[4])
print(json.dumps(path))
"""


def test_hf_hub_download_renews_short_tokens_through_xet_auth(
    hub: HubServer, tmp_path: Path
) -> None:
    """With 2 s tokens (which hf_xet, renewing any token within 30 s of its expiry, renews before
    each call) and an expired xorb URL mid-download, huggingface_hub's download gets new tokens
    through the ``rel="xet-auth"`` URL, asks for the reconstruction again and completes.

    A repo of its own: huggingface_hub caches a token per token URL for the process while it
    has over 60 s left. Every third xorb GET fails, each read once: with every second one, the
    retry of a failed GET could land on the next failure each time. The client runs in a process
    of its own with hf_xet's retry delay at 50 ms: at its default (3 s at first, read once per
    process) a retry came after the 2 s its URL lives, met a real expiry too, and after minutes
    hf_xet gave up (a 403; CI at fe24792).
    """
    rng = random.Random("renew")
    a = rng.randbytes(2 * MiB)
    b = a[:700_000] + rng.randbytes(200_000) + a[700_000:]
    hub.add_repo("xetorg/renew", {"a.safetensors": a}, xet=True)
    sha = hub.commit("xetorg/renew", {"b.safetensors": b})
    assert hub.cas is not None
    hub.xet_token_ttl = 2.0
    hub.cas.flaky(3, kinds=("403",), once_per_read=True)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_XET"}
    env["HF_XET_CLIENT_RETRY_BASE_DELAY"] = "50ms"
    path = run_json(_DOWNLOAD, "xetorg/renew", "b.safetensors", hub.url, str(tmp_path), env=env,
                    timeout=120)  # fmt: skip
    assert Path(path).read_bytes() == b
    assert hub.cas.flaky_hits >= 1 and hub.cas.reconstructions >= 2
    assert hub.count("GET", f"/xet-read-token/{sha}") >= 2
    assert hub.cas.count("reconstruction", status=401) == 0


# -- faults ----------------------------------------------------------------------------------


def test_flaky_xorb_gets_still_give_exact_bytes(hub: HubServer, xet_repo: XetRepo) -> None:
    assert hub.cas is not None
    hub.cas.flaky(5)
    b, b_hash = xet_repo.files["b.safetensors"], xet_repo.hashes["b.safetensors"]
    for start, end in [(None, None), (0, 2_000_000), (1_500_000, len(b)), (None, None)]:
        want = b[start or 0 : len(b) if end is None else end]
        assert _stream(hub, b_hash, len(b), start, end) == want
    assert hub.cas.flaky_hits >= 2  # a 503 and a cut body, both retried
    assert hub.cas.xorb_gets >= 10


def test_expired_xorb_urls_make_hf_xet_ask_again(hub: HubServer, xet_repo: XetRepo) -> None:
    assert hub.cas is not None
    hub.cas.flaky(3, kinds=("403",))
    b, b_hash = xet_repo.files["b.safetensors"], xet_repo.hashes["b.safetensors"]
    assert _stream(hub, b_hash, len(b)) == b
    assert hub.cas.flaky_hits >= 1
    assert hub.cas.reconstructions >= 2  # asked again for fresh URLs


def test_forged_or_widened_xorb_urls_are_refused(hub: HubServer, xet_repo: XetRepo) -> None:
    answer = json.load(_reconstruction(hub, xet_repo.hashes["b.safetensors"]))
    fetch = next(iter(answer["fetch_info"].values()))[0]
    url, start, end = fetch["url"], fetch["url_range"]["start"], fetch["url_range"]["end"]
    good = _raw(url, headers={"Range": f"bytes={start}-{end}"})
    assert good.status == 206 and len(good.read()) == end - start + 1

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def forged(**changes: str) -> str:
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, **changes})}"

    assert _raw(forged(sig="0" * 64), headers={"Range": f"bytes={start}-{end}"}).status == 403
    later = str(float(query["exp"]) + 3600)
    assert _raw(forged(exp=later), headers={"Range": f"bytes={start}-{end}"}).status == 403
    assert _raw(url, headers={"Range": f"bytes={start}-{end + 1}"}).status == 403  # wider
    assert _raw(url, headers={"Range": "bytes=999999999-"}).status == 416  # past the end


def test_tampered_file_comes_back_wrong_and_undetected(
    hub: HubServer, xet_repo: XetRepo, tmp_path: Path
) -> None:
    """hf_xet checks no content hash: a file served with one chunk of other bytes (same length)
    downloads without error, so only the downloader's sha256 check can catch it."""
    assert hub.cas is not None
    a, a_hash = xet_repo.files["a.safetensors"], xet_repo.hashes["a.safetensors"]
    hub.cas.tamper(a_hash, offset=len(a) // 2)

    got = _stream(hub, a_hash, len(a))
    assert len(got) == len(a) and got != a and _sha(got) != _sha(a)
    differ = [i for i in range(0, len(a), 4096) if got[i : i + 4096] != a[i : i + 4096]]
    assert differ and (differ[-1] - differ[0]) <= 128 * 1024  # one chunk
    path = hf_hub_download(REPO, "a.safetensors", endpoint=hub.url, cache_dir=tmp_path)
    assert _sha(Path(path).read_bytes()) != _sha(a)  # huggingface_hub does not notice either
    b = xet_repo.files["b.safetensors"]
    assert _stream(hub, xet_repo.hashes["b.safetensors"], len(b)) == b  # others untouched

    hub.cas.clear_faults()
    assert _stream(hub, a_hash, len(a)) == a


def test_cas_takes_only_what_hf_xet_sends(hub: HubServer) -> None:
    """Uploads need a write token; the routes hf_xet probes first answer as it expects."""
    cas = hub.start_xet()
    read, _ = cas.issue_token(60)
    write, _ = cas.issue_token(60, write=True)
    post = f"{cas.url}/v1/xorbs/default/{'ab' * 32}"
    assert _raw(post, method="POST", headers={"Authorization": f"Bearer {read}"}).status == 403
    auth = {"Authorization": f"Bearer {write}"}
    assert _raw(f"{cas.url}/v1/chunks/default/{'cd' * 32}", headers=auth).status == 404
    assert _raw(f"{cas.url}/v2/shards", method="POST", headers=auth).status == 404
    assert _raw(f"{cas.url}/v1/shards", method="POST", headers=auth).status == 400  # no shard
    assert _raw(f"{cas.url}/v1/telemetry", method="POST").status == 200


def _generated_pieces(n: int) -> Iterator[bytes]:
    rng = random.Random("stream")
    for _ in range(n):
        yield rng.randbytes(MiB)


def test_streamed_uploads_and_known_sha256_skip_the_upload(
    hub: HubServer, xet_repo: XetRepo
) -> None:
    cas = hub.start_xet()
    data = b"".join(_generated_pieces(4))
    [streamed] = cas.upload([_generated_pieces(4)], sha256s=[_sha(data)])
    assert cas.file_size(streamed) == len(data)
    cas.reset_log()
    assert cas.upload([data], sha256s=[_sha(data)]) == [streamed]
    assert cas.log == []  # known by its sha256: nothing sent
    assert _stream(hub, streamed, len(data)) == data


def test_generated_content_dedups_unless_unique(hub: HubServer, tmp_path: Path) -> None:
    """Benchmarks of Xet need content that does not dedup: plain `Generated` repeats most of
    its chunks, ``unique=True`` none."""
    files = {"plain.safetensors": Generated(8 * MiB, seed="dedup"),
             "unique.safetensors": Generated(8 * MiB, seed="dedup", unique=True)}  # fmt: skip
    sha = hub.add_repo("xetorg/generated", files, xet=True)
    assert hub.cas is not None
    blobs = hub._repo("xetorg/generated", "model").commits[sha].files
    stored = {}
    for name, blob in blobs.items():
        assert blob.xet_hash is not None
        chunks = {(t.xorb, t.start, t.end) for t in hub.cas.terms(blob.xet_hash)}
        stored[name] = sum(c.size for xorb, s, e in chunks for c in hub.cas.chunks(xorb)[s:e])
    assert stored["plain.safetensors"] < 4 * MiB  # ~1/3 here, ~1/10 at 1 GiB
    assert stored["unique.safetensors"] == 8 * MiB
    path = hf_hub_download("xetorg/generated", "unique.safetensors", endpoint=hub.url,
                           cache_dir=tmp_path)  # fmt: skip
    assert _sha(Path(path).read_bytes()) == blobs["unique.safetensors"].sha256


def test_snapshot_download_over_xet(hub: HubServer, xet_repo: XetRepo, tmp_path: Path) -> None:
    """snapshot_download takes the Xet hashes from the tree listing and sends no HEAD for Xet
    files: it builds the token URL itself."""
    folder = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path, token=False))
    got = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert got == xet_repo.files
    assert hub.cas is not None and hub.bridge is not None
    assert hub.cas.count("reconstruction", who="client", status=200) >= 2
    assert hub.bridge.requests == []
    assert hub.count("HEAD", "/resolve/") == 1  # config.json only
