"""The hub's metadata (``intake/hub.py``): each file's Xet hash from the tree listing, the token
found as huggingface_hub finds it (its file located at call time), the hub's refusals read by
huggingface_hub and worded as ours, the endpoint read at call time, the one retry policy around
each request (a failed tree page asked for again alone, a name that does not resolve never),
offline mode, and one-line errors for answers the hub would never give."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import cli, make_project
from hf2oci.errors import HubError, HubUnreachable, RepoNotFound, RevisionNotFound
from hf2oci.intake import hub as hub_module
from hf2oci.intake.files import Reader
from hf2oci.retry import RetryPolicy
from hf2oci.spec import RepoSpec
from hubserver import HubServer


def _xet_hash(hub: HubServer, repo: str, sha: str, path: str) -> str:
    """The Xet hash the hub's CAS gave a file when it was uploaded."""
    found = hub._repo(repo, "model").commits[sha].files[path].xet_hash
    assert found is not None and len(found) == 64
    return found


def _spec(repo_id: str, revision: str | None = None, kind: str = "model") -> RepoSpec:
    return RepoSpec(repo_id, kind, revision)  # type: ignore[arg-type]


@pytest.fixture
def tries(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """A quick retry policy for the hub (3 tries within a second); the failures it retried."""
    seen: list[BaseException] = []
    policy = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05, total=5.0, on_retry=seen.append)
    monkeypatch.setattr(hub_module, "HUB_POLICY", policy)
    return seen


def test_each_file_carries_the_xet_hash_the_tree_listing_names(hub: HubServer) -> None:
    files = {"config.json": b"{}\n", "model.safetensors": b"\0" * 4096, "sub/a.txt": b"a"}
    sha = hub.add_repo("xet/hashes", files, xet=True)
    xet = _xet_hash(hub, "xet/hashes", sha, "model.safetensors")
    state = hub_module.fetch_state(_spec("xet/hashes"))
    assert not state.partial
    assert {f.path: f.xet_hash for f in state.files} == {
        "config.json": None, "model.safetensors": xet, "sub/a.txt": None}  # fmt: skip
    big = state.file("model.safetensors")
    assert big.sha256 is not None and big.size == 4096 and big.blob_id
    assert hub.count("GET", "/api/models/xet/hashes/tree/") == 1


def test_the_plan_reads_the_tree_only_for_a_repo_to_mirror(hub: HubServer, project: Path) -> None:
    """What a sync asks for on every run stays one request a repo: repo info (files without Xet
    hashes, ``partial``). The tree, with the hashes, is read for a repo whose image is to be
    made, and not on a no-change re-run."""
    hub.add_repo("xet/plan", {"config.json": b"{}\n", "model.safetensors": b"\1" * 2048}, xet=True)
    quick = hub_module.fetch_state(_spec("xet/plan"), complete=False)
    assert quick.partial and all(f.xet_hash is None for f in quick.files)
    assert hub.count("GET", "/tree/") == 0
    make_project(project, models=["xet/plan"], config={"base_image": "scratch"})
    planned = cli("plan", "--json")
    assert planned.exit_code == 0, planned.output
    assert hub.count("GET", "/api/models/xet/plan/tree/") == 1
    assert cli("sync", "-q").exit_code == 0
    hub.reset_log()
    again = cli("sync", "--json")
    assert json.loads(again.stdout)["skipped"] == 1
    assert hub.count("GET", "/tree/") == 0 and hub.count("GET", "/api/models/xet/plan/") == 1


def test_refusals_are_the_one_line_messages(hub: HubServer, random_repo: Any) -> None:
    """(A gated repo's metadata is open to all; its files are refused: test_sync.)"""
    model, _, _ = random_repo()
    hub.add_repo("secret/private", {"config.json": b"{}"}, private=True)
    url = hub.url
    cases: list[tuple[RepoSpec, type[HubError], str]] = [
        (_spec("nobody/missing"), RepoNotFound,
         f"model nobody/missing not found on {url} (if it is private, set HF_TOKEN)"),
        (_spec("secret/private"), RepoNotFound,
         f"model secret/private not found on {url} (if it is private, set HF_TOKEN)"),
        (_spec("nobody/missing", kind="dataset"), RepoNotFound,
         f"dataset nobody/missing not found on {url} (if it is private, set HF_TOKEN)"),
        (_spec(model, "no-such-branch"), RevisionNotFound,
         f"model {model}: revision 'no-such-branch' not found"),
    ]  # fmt: skip
    for spec, kind, message in cases:
        with pytest.raises(kind) as got:
            hub_module.fetch_state(spec)
        assert str(got.value) == message


def test_the_token_file_is_found_where_hf_home_points_now(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub works out where its token file is when it is imported: an ``HF_HOME``
    or ``HF_TOKEN_PATH`` set later is still where the token is read from."""
    import huggingface_hub.constants

    hub.add_repo("secret/by-file", {"config.json": b"{}"}, private=True)
    hub.tokens.add("hf_fromTheFile0000")
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text("hf_fromTheFile0000\n")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert hub_module.token() == "hf_fromTheFile0000"
    assert hub_module.fetch_state(_spec("secret/by-file")).commit
    other = tmp_path / "other-token"
    other.write_text("hf_notKnown\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(other))
    assert hub_module.token() == "hf_notKnown"
    with pytest.raises(RepoNotFound) as got:  # a token was sent: no hint to set one
        hub_module.fetch_state(_spec("secret/by-file"))
    assert str(got.value) == f"model secret/by-file not found on {hub.url}"
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheFile0000")  # the variable comes first
    assert hub_module.fetch_state(_spec("secret/by-file")).commit


def test_a_failed_tree_page_is_asked_for_again_alone(hub: HubServer, tries: list[Any]) -> None:
    files = {f"d/f{i:04d}.txt": b"%d" % i for i in range(25)}
    hub.add_repo("xet/pages", files)
    hub.tree_page = 10
    hub.fail_next("cursor=10", status=503)
    hub.fail_next("cursor=20", status=429, retry_after=1)
    started = time.monotonic()
    state = hub_module.fetch_state(_spec("xet/pages"))
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert {f.path for f in state.files} == set(files)
    assert len(tries) == 2
    tree = [p for m, p in hub.requests if m == "GET" and "/tree/" in p]
    assert len(tree) == 5  # 3 pages, the 2nd and 3rd twice; never the 1st again
    assert sum("cursor" not in p for p in tree) == 1


def test_a_hub_that_keeps_failing_is_unreachable_after_the_policy(
    hub: HubServer, tries: list[Any]
) -> None:
    hub.add_repo("flaky/always", {"config.json": b"{}"})
    hub.fail_next("/api/models/flaky/always", status=503, times=10)
    with pytest.raises(HubUnreachable) as got:
        hub_module.fetch_state(_spec("flaky/always"))
    assert str(got.value) == (
        f"model flaky/always: cannot reach the hub at {hub.url}: the hub answered HTTP 503"
    )
    assert len(tries) == 2  # 3 tries in all


def test_a_name_that_does_not_resolve_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch, tries: list[Any]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    with pytest.raises(HubUnreachable) as got:
        hub_module.fetch_state(_spec("org/model"))
    assert str(got.value).startswith(
        "model org/model: cannot reach the hub at http://hub.invalid: its name does not resolve"
    )
    assert tries == []


def test_tls_that_fails_is_not_tried_again(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, tries: list[Any]
) -> None:
    """The one transient-error rule (``retry.is_temporary``) for the hub as for the registry: a
    TLS failure is no blip (the hub retried it six times over minutes, the registry never)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url.replace("http://", "https://"))  # plain HTTP there
    with pytest.raises(HubUnreachable) as got:
        hub_module.fetch_state(_spec("org/model"))
    assert "cannot reach the hub at https://127.0.0.1" in str(got.value)
    assert "TLS failed" in str(got.value)
    assert tries == []


def test_a_refused_connection_is_tried_again_then_unreachable(
    monkeypatch: pytest.MonkeyPatch, tries: list[Any]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachable) as got:
        hub_module.fetch_state(_spec("org/model"))
    assert str(got.value) == (
        f"model org/model: cannot reach the hub at http://127.0.0.1:{port}: "
        "the connection was refused"
    )
    assert len(tries) == 2


def test_offline_mode_asks_nothing(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("off/line", {"config.json": b"{}"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable) as got:
        hub_module.fetch_state(_spec("off/line"))
    assert str(got.value) == "model off/line: HF_HUB_OFFLINE is set, cannot reach the hub"
    assert hub.requests == []


# -- answers the hub would never give ---------------------------------------------------------

#: (method, path) -> (status, headers, body) of the stub hub below
Answers = dict[tuple[str, str], tuple[int, dict[str, str], bytes]]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Answers, list[str]]]:
    """A hub that answers what a test sets (its URL is HF_ENDPOINT), logging the paths asked."""
    answers: Answers = {}
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            asked.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, headers, body = answers.get(
                (self.command, self.path.partition("?")[0]), (404, {}, b"{}")
            )
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_stubToken0000")
    try:
        yield url, answers, asked
    finally:
        server.shutdown()
        server.server_close()


SHA = "c" * 40
INFO = "/api/models/org/m/revision/main"
TREE = f"/api/models/org/m/tree/{SHA}"


def _info(**extra: Any) -> bytes:
    sibling = {"rfilename": "a.txt", "size": 1, "blobId": "b" * 40}
    doc = {"id": "org/m", "sha": SHA, "lastModified": "2026-01-02T03:04:05.000Z",
           "siblings": [sibling], **extra}  # fmt: skip
    return json.dumps(doc).encode()


def _entry(path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "file", "oid": "b" * 40, "size": 1, "path": path, **extra}


@pytest.mark.parametrize(
    ("info", "tree", "message"),
    [
        (b"<html>busy</html>", None, "model org/m: the hub's answer is not JSON"),
        (b"[1, 2]", None, "model org/m: the hub's answer is not a JSON object"),
        (_info(siblings=[{"size": 3}]), None,
         "model org/m: the hub's file list is malformed (KeyError('rfilename'))"),
        (_info(sha=None), None, "model org/m: the hub gave no commit for revision 'main'"),
        (_info(siblings=[{"rfilename": "../up.txt", "size": 1}]), None,
         "model org/m: the hub lists a file path that could escape: '../up.txt'"),
        (_info(), b'{"not": "a list"}', "model org/m: the hub's tree listing is not a list"),
        (_info(), json.dumps([{"type": "file", "path": "a"}]).encode(),
         "model org/m: the hub's tree listing is malformed (KeyError('size'))"),
        (_info(), b'[["a"]]',
         "model org/m: the hub's tree listing is malformed (an entry is not an object)"),
        (_info(), json.dumps([_entry("a"), _entry("a")]).encode(),
         "model org/m: the hub's tree listing names 'a' twice"),
        (_info(), json.dumps([_entry("/etc/passwd")]).encode(),
         "model org/m: the hub lists a file path that could escape: '/etc/passwd'"),
    ],
)  # fmt: skip
def test_a_malformed_answer_is_a_one_line_hub_error(
    stub: tuple[str, Answers, list[str]], info: bytes, tree: bytes | None, message: str
) -> None:
    _, answers, _ = stub
    answers[("GET", INFO)] = (200, {}, info)
    answers[("GET", TREE)] = (200, {}, tree or b"[]")
    with pytest.raises(HubError) as got:
        hub_module.fetch_state(_spec("org/m"))
    assert str(got.value).startswith(message)
    assert "\n" not in str(got.value)


def test_a_next_page_on_another_host_is_refused_and_gets_no_token(
    stub: tuple[str, Answers, list[str]],
) -> None:
    _, answers, asked = stub
    answers[("GET", INFO)] = (200, {}, _info())
    elsewhere = f"http://127.0.0.2:1/{TREE}?cursor=1"
    answers[("GET", TREE)] = (200, {"Link": f'<{elsewhere}>; rel="next"'},
                              json.dumps([_entry("a.txt")]).encode())  # fmt: skip
    with pytest.raises(HubError) as got:
        hub_module.fetch_state(_spec("org/m"))
    assert str(got.value) == f"model org/m: the hub's next page is on another host ({elsewhere})"
    assert [p.partition("?")[0] for p in asked] == [INFO, TREE]


def test_scan_verdicts_come_from_paths_info(hub: HubServer) -> None:
    hub.add_repo("scan/verdicts", {"a.pkl": b"x", "b.bin": b"y", "c.txt": b"z"})
    hub.set_security("scan/verdicts", "a.pkl", "unsafe")
    hub.set_security("scan/verdicts", "b.bin", "safe")
    state = hub_module.fetch_state(_spec("scan/verdicts"))
    got = hub_module.security_verdicts(state, ["a.pkl", "b.bin", "c.txt", "gone.pkl"])
    assert got == {"a.pkl": "unsafe", "b.bin": "safe"}
    assert hub.count("POST", "/paths-info/") == 1


def test_a_listed_file_the_hub_then_refuses_is_missing(
    stub: tuple[str, Answers, list[str]],
) -> None:
    _, answers, _ = stub
    answers[("GET", INFO)] = (200, {}, _info())
    answers[("GET", TREE)] = (200, {}, json.dumps([_entry("a.txt")]).encode())
    state = hub_module.fetch_state(_spec("org/m"))
    missing = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "no such file"}
    answers[("GET", f"/org/m/resolve/{SHA}/a.txt")] = (404, missing, b"{}")
    with pytest.raises(HubError) as got:
        b"".join(Reader(state).stream(state.file("a.txt")))
    assert str(got.value) == f"model org/m@{SHA}: a listed file is missing on the hub (a.txt)"
    gate = {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}
    answers[("GET", f"/org/m/resolve/{SHA}/a.txt")] = (403, gate, b"{}")
    with pytest.raises(HubError) as gated:
        b"".join(Reader(state).stream(state.file("a.txt")))
    assert str(gated.value) == (
        "model org/m is gated: the token sent (HF_TOKEN or the token file) has no access: "
        "accept the terms on the hub with that account"
    )
