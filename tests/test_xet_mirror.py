"""Mirroring from a hub that keeps its files in Xet, through the hub's own library (hf_xet)
reading real xorbs from the test hub's CAS: every cell of the build matrix, gated repos,
tokens that expire mid-mirror, xorb reads that fail, a tampered xorb, files the hub's HTTP
bridge refuses, hf_xet missing, and ``xet: off``."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from modelpack_client import ModelPackClient

from helpers import cli, engine_files, make_project, read_tree, skopeo_inspect, tag_of, umoci_files
from hubserver import HubServer
from servers import Registry

MiB = 1 << 20
#: the bridge (the hub's plain-HTTP face of a Xet file) refuses files above this: every large
#: file of the repos below comes only through Xet
BRIDGE_LIMIT = MiB
REPO = "xet/only-model"
GATED = "xet/gated-model"


def _files(seed: str) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
        "README.md": b"---\nlicense: mit\n---\n# xet\n",
        "model.safetensors": rng.randbytes(3 * MiB + 17),  # spans several hf2oci windows
        "données/poids é.safetensors": rng.randbytes(2 * MiB + 1),
        "sub/vocab.txt": b"".join(b"tok%d\n" % i for i in range(300)),
    }


FILES = _files(REPO)
GATED_FILES = _files(GATED)


@pytest.fixture(scope="module")
def xet_repos(hub_server: HubServer) -> HubServer:
    """The repos on the hub once, in Xet (uploaded by hf_xet into the test hub's CAS)."""
    hub_server.add_repo(REPO, FILES, xet=True)
    hub_server.add_repo(GATED, GATED_FILES, xet=True, gated=True)
    return hub_server


@pytest.fixture
def xet_hub(xet_repos: HubServer, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The hub in its Xet era: large files only through Xet; hf_xet's retries quick."""
    monkeypatch.setenv("HF_XET_CLIENT_RETRY_BASE_DELAY", "50ms")
    hub.bridge_limit = BRIDGE_LIMIT
    hub.cas.reset_log()
    return hub


def _mirror(project: Path, *args: str, repo: str = REPO) -> tuple[int, dict[str, Any], str]:
    make_project(project, models=[repo])
    result = cli("mirror", repo, "--no-record", "--json", *args)
    start = 0 if result.stdout.startswith("{") else result.stdout.find("\n{")
    doc = json.loads(result.stdout[start:]) if start >= 0 else {}
    return result.exit_code, doc, result.output


#: (format) → (digest, layer digests) of the repo mirrored from the hub with Xet off (plain
#: resolve bytes, no xetHash in the tree), the oci builder into a layout
_PLAIN: dict[str, tuple[str, list[str]]] = {}


def _plain(fmt: str, hub: HubServer, base: str, root: Path) -> tuple[str, list[str]]:
    if fmt not in _PLAIN:
        hub.xet_enabled = False
        try:
            code, doc, out = _mirror(
                root / fmt, "--format", fmt, "--base-image", base, "--output-dir",
                str(root / fmt / "out"), "--namespace", "plain",
            )  # fmt: skip
        finally:
            hub.xet_enabled = True
        assert code == 0, out
        digest = doc["results"][0]["digest"]
        layout = root / fmt / "out" / "plain" / "models"
        manifest = skopeo_inspect(f"oci:{layout}:{tag_of(REPO)}", raw=True)
        _PLAIN[fmt] = (digest, [d["digest"] for d in manifest["layers"]])
    return _PLAIN[fmt]


CELLS = [
    c
    for c in itertools.product(
        ("oci", "docker"), ("stream", "staged"), ("registry", "local"), ("image", "modelpack")
    )
    if not (c[0] == "docker" and c[3] == "modelpack")  # refused on purpose (test_matrix)
]


@pytest.mark.parametrize("cell", CELLS, ids=["-".join(c) for c in CELLS])
def test_every_cell_reads_xet_files_exactly_as_plain_http_gives_them(
    cell: tuple[str, str, str, str],
    xet_hub: HubServer,
    registry: Registry,
    busybox_base: str,
    project: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The files come through hf_xet (the bridge refuses them), byte for byte; every layer
    holding files is the one the hub without Xet gives; the image differs only by the file
    index, which records each file's Xet hash. The same cell with ``--no-xet`` (the bridge
    let through) gives the very same image."""
    builder, mode, dest, fmt = cell
    base = busybox_base if fmt == "image" else "scratch"
    plain_digest, plain_layers = _plain(fmt, xet_hub, base, tmp_path_factory.mktemp("plain"))
    ns = f"xet-{'-'.join(cell)}-{uuid.uuid4().hex[:6]}"
    args = ["--builder", builder, f"--{mode}", "--format", fmt, "--base-image", base,
            "--namespace", ns, "--output-dir", str(project / "oci-images")]  # fmt: skip
    if dest == "registry":
        args += ["--registry", registry.host]
    bridged = len(xet_hub.bridge.requests)
    code, doc, out = _mirror(project, *args)
    assert code == 0, out
    assert doc["results"][0]["status"] == "mirrored"
    assert xet_hub.cas.count("reconstruction", status=200) > 0
    assert not [r for r in xet_hub.bridge.requests[bridged:] if r[0] == "GET"]
    ref = f"{registry.host}/{ns}/models:{tag_of(REPO)}"
    layout = project / "oci-images" / ns / "models"
    if builder == "docker" and dest == "local":
        name = f"{ns}/models:{tag_of(REPO)}"
        try:
            assert engine_files(name, project / "cp") == FILES
        finally:
            subprocess.run(["docker", "rmi", "-f", name], capture_output=True)
        return
    source = f"docker://{ref}" if dest == "registry" else f"oci:{layout}:{tag_of(REPO)}"
    manifest = skopeo_inspect(source, raw=True)
    layers = [d["digest"] for d in manifest["layers"]]
    if fmt == "modelpack":
        assert layers == plain_layers  # raw layers: each file's bytes, the index in annotations
        if dest == "registry":
            ModelPackClient(insecure=True).pull(ref, project / "mp")
            assert read_tree(project / "mp") == FILES
        return
    assert layers[:-1] == plain_layers[:-1] and layers[-1] != plain_layers[-1]
    assert umoci_files(source, project / "umoci") == FILES
    index = _file_index(source, project / "idx")
    xet_hashes = {e["path"]: e.get("xet_hash") for e in index["files"]}
    assert xet_hashes["model.safetensors"] and xet_hashes["config.json"] is None
    # the Xet path and plain HTTP (the same hub, the bridge let through) make one image
    xet_hub.bridge_limit = 10**12
    _, again, out = _mirror(project, *args, "--no-xet", "--force")
    assert again["results"][0]["digest"] == doc["results"][0]["digest"], out
    assert plain_digest != doc["results"][0]["digest"]


def _file_index(source: str, dest: Path) -> dict[str, Any]:
    """The image's .hf2oci/files.json, read with skopeo and umoci."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", source, f"oci:{dest / 'l'}:t"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{dest / 'l'}:t", str(dest / "r")],
                   check=True, capture_output=True)  # fmt: skip
    return dict(json.loads((dest / "r" / ".hf2oci" / "files.json").read_text()))


def test_a_gated_xet_repo_needs_the_token_for_its_xet_token_too(
    xet_hub: HubServer, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, doc, out = _mirror(project, "--base-image", "scratch", repo=GATED)
    assert code == 1 and "Traceback" not in out
    assert doc["results"][0]["message"].startswith(f"model {GATED} is gated"), doc
    xet_hub.tokens.add("hf_gated_reader")
    monkeypatch.setenv("HF_TOKEN", "hf_gated_reader")
    code, doc, out = _mirror(project, "--base-image", "scratch", "--max-layer-size",
                             str(MiB + 4096), repo=GATED)  # fmt: skip
    assert code == 0, out
    r = cli("extract", f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(GATED)}",
            str(project / "x"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert read_tree(project / "x") == GATED_FILES  # in parts, read by range through Xet


def test_tokens_that_expire_and_xorb_reads_that_fail_still_give_exact_bytes(
    xet_hub: HubServer, project: Path
) -> None:
    """The CAS token lives 5 s and is renewed by hf_xet from the hub's token route; every 5th
    xorb read answers 503 or is cut mid-body (hf_xet retries, hf2oci resumes its window)."""
    repo = f"xet/flaky-{uuid.uuid4().hex[:6]}"
    rng = random.Random(repo)
    files = {f"w-{i}.safetensors": rng.randbytes(12 * MiB + i) for i in range(5)}
    xet_hub.add_repo(repo, {"config.json": b"{}", **files}, xet=True)
    files["config.json"] = b"{}"
    xet_hub.xet_token_ttl = 5.0
    xet_hub.cas.throttle = 8 * MiB  # the mirror outlives the first token
    xet_hub.cas.flaky(5, kinds=("503", "cut"))
    code, _, out = _mirror(project, "--base-image", "scratch", repo=repo)
    assert code == 0, out
    assert xet_hub.cas.flaky_hits >= 2
    assert xet_hub.count("GET", f"/api/models/{repo}/xet-read-token/") >= 2  # renewed
    r = cli("extract", f"oci:{project / 'oci-images/hgfkeep/models'}:{tag_of(repo)}",
            str(project / "x"))  # fmt: skip
    assert r.exit_code == 0 and read_tree(project / "x") == files


def test_a_tampered_xorb_fails_the_repo_on_its_sha256_and_nothing_is_published(
    xet_hub: HubServer, registry: Registry, project: Path
) -> None:
    """hf_xet checks no hash: only hf2oci's sha256 check catches a xorb altered in the CAS."""
    repo = f"xet/tampered-{uuid.uuid4().hex[:6]}"
    files = {"config.json": b"{}", "w.safetensors": random.Random(repo).randbytes(5 * MiB)}
    sha = xet_hub.add_repo(repo, files, xet=True)
    xet_hash = xet_hub._repo(repo, "model").commits[sha].files["w.safetensors"].xet_hash
    xet_hub.cas.tamper(xet_hash, offset=3 * MiB)
    ns = f"tamper{uuid.uuid4().hex[:6]}"
    for extra in ([], ["--max-layer-size", str(2 * MiB)], ["--staged"]):
        code, doc, out = _mirror(project, "--registry", registry.host, "--namespace", ns,
                                 "--base-image", "scratch", *extra, repo=repo)  # fmt: skip
        assert code == 1, out
        message = doc["results"][0]["message"]
        sha256 = hashlib.sha256(files["w.safetensors"]).hexdigest()
        assert "content hashes to" in message and f"the hub says {sha256}" in message, message
        tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false",
                               f"docker://{registry.host}/{ns}/models"],
                              capture_output=True, text=True)  # fmt: skip
        assert tag_of(repo) not in tags.stdout


def test_xet_off_reads_the_bridge_and_a_file_it_refuses_fails_in_one_line(
    xet_hub: HubServer, project: Path
) -> None:
    make_project(project, models=[REPO], config={"xet": "off", "base_image": "scratch"})
    result = cli("sync", "--json")
    doc = json.loads(result.stdout[result.stdout.find("{") :])
    (outcome,) = doc["results"]
    assert outcome["message"] == (
        f"model {REPO}: données/poids é.safetensors comes only through the hub's Xet storage "
        "(its plain-HTTP bridge refused it): set xet: auto in get_hf/config.yaml (or drop "
        "--no-xet)"
    )
    assert "Traceback" not in result.output
    xet_hub.bridge_limit = 10**12  # the bridge takes them all: plain HTTP, no Xet read
    xet_hub.cas.reset_log()
    result = cli("sync", "-q")
    assert result.exit_code == 0, result.output
    assert xet_hub.cas.count("reconstruction", who="client") == 0


def test_without_hf_xet_a_xet_only_file_says_what_to_install(
    xet_hub: HubServer, project: Path, tmp_path: Path
) -> None:
    """A platform with no hf_xet wheel: hf2oci (in a process of its own, where ``import
    hf_xet`` fails) reads what the bridge gives and fails a Xet-only file in one line."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "hf_xet.py").write_text("raise ImportError('no hf_xet wheel for this platform')\n")
    make_project(project, models=[REPO], config={"base_image": "scratch"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "hf2oci", "sync"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "données/poids é.safetensors comes only through the hub's Xet storage (its plain-HTTP "
        "bridge refused it): install hf_xet (pip install hf_xet)"
    ) in done.stderr
    xet_hub.bridge_limit = 10**12
    done = subprocess.run([sys.executable, "-m", "hf2oci", "sync"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # the bridge brings every file: no hf_xet


def test_a_sync_of_xet_plain_and_gated_repos_says_one_line_each_and_records(
    xet_hub: HubServer, random_repo: Any, project: Path
) -> None:
    plain, _, _ = random_repo(size=2 * MiB)
    missing = "xet/not-there"
    make_project(project, models=[REPO, plain, GATED, missing],
                 config={"base_image": "scratch"})  # fmt: skip
    result = cli("sync")
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("  ")]
    assert len(lines) == 2, result.stderr  # the gated and the missing one
    assert any(f"model {GATED} is gated" in ln for ln in lines)
    assert any(f"model {missing} not found" in ln for ln in lines)
    assert "Traceback" not in result.output
    ledger = json.loads((project / "get_hf" / "mirrored.json").read_text())
    recorded = json.dumps(ledger)
    assert REPO in recorded and plain in recorded and GATED not in recorded
    assert REPO in (project / "models.md").read_text()


def test_no_token_reaches_the_output_the_logs_or_the_image(
    xet_hub: HubServer, project: Path, tmp_path: Path
) -> None:
    """The HF token (sent to the hub's token route, and by hf_xet when it renews) and every CAS
    token the hub handed out appear in no output (debug logging on), no file of hf_xet's (its
    logs, under HF_HOME) and nothing hf2oci wrote (layout, records). hf2oci runs in a process
    of its own: hf_xet sets its logging up once a process."""
    secret = "hf_" + uuid.uuid4().hex
    xet_hub.tokens.add(secret)
    xet_hub.xet_token_ttl = 5.0  # hf_xet renews, with the HF token, while it reads
    home = tmp_path / "hf-home"
    make_project(project, models=[GATED], config={"base_image": "scratch"})
    env = {
        **os.environ,
        "HF_TOKEN": secret,
        "HF_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    done = subprocess.run([sys.executable, "-m", "hf2oci", "sync", "-vv", "--json"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cas_tokens = list(xet_hub.cas._tokens)
    needles = [secret, *cas_tokens]
    assert not [n for n in needles if n in done.stdout + done.stderr]
    written = [p for root in (project, home) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" and "xet" in str(p) for p in written)  # hf_xet's logs
    leaked = [p for p in written for n in needles if n.encode() in p.read_bytes()]
    assert not leaked


def test_the_file_index_keeps_the_xet_hash_and_the_file_page_shows_it(
    xet_hub: HubServer, project: Path
) -> None:
    """A Xet file's hash, as the hub names it, survives into the image and onto its page."""
    from hf2oci.consume.serve.store import Store
    from test_serve import Served

    sha = xet_hub._repo(REPO, "model").refs["main"]
    xet_hash = xet_hub._repo(REPO, "model").commits[sha].files["model.safetensors"].xet_hash
    code, _, out = _mirror(project, "--base-image", "scratch", "--max-layer-size", str(2 * MiB))
    assert code == 0, out
    server = Served(Store("hgfkeep", root=project / "oci-images"))
    try:
        import requests

        html = {"Accept": "text/html"}
        page = requests.get(f"{server.url}/{REPO}/blob/main/model.safetensors", headers=html,
                            timeout=30).text  # fmt: skip
        assert "Xet hash" in page and xet_hash in page and "2 parts" in page
        small = requests.get(f"{server.url}/{REPO}/blob/main/config.json", headers=html,
                             timeout=30).text  # fmt: skip
        assert "Xet hash" not in small
    finally:
        server.stop()
