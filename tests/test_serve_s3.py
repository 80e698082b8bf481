"""``hf2oci serve --s3-port``: the real boto3 client against serve's S3 face over mirrored images,
and the same checks against moto's S3 server holding the same objects (a reference
implementation: the tests test S3, not our reading of it). Then what only serve has: pinned
revisions, SigV4 details, absolute-form targets, anonymous reads, metrics, the access log,
``--verify-key``, the CLI."""

from __future__ import annotations

import http.client
import logging
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hf2oci.consume.serve.s3 import sigv4
from hf2oci.consume.serve.store import Store
from s3servers import (
    DATASET,
    MINILM,
    NEIGHBOUR,
    REPO,
    STREAMED,
    TOKEN,
    Endpoint,
    Mirror,
    S3Served,
    keys,
    moto_endpoint,
    shared_mirror,
    small_files,
)


@pytest.fixture(scope="session")
def s3_mirror(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    return shared_mirror(hub_server, tmp_path_factory)


@pytest.fixture(scope="module", params=["serve", "moto"])
def endpoint(request: pytest.FixtureRequest, s3_mirror: Mirror) -> Iterator[Endpoint]:
    """serve's S3 face (SigV4 with a serve token), or moto holding the same objects."""
    if request.param == "serve":
        served = S3Served(Store("hgfkeep", root=s3_mirror.layouts), tokens=[TOKEN])
        yield Endpoint("serve", served.url, {})
        served.stop()
    else:
        objects = {k: v for k, v in s3_mirror.objects.items() if not k[1].startswith(MINILM)}
        moto = moto_endpoint(objects)
        yield moto
        moto.stop()


def _error(e: Any) -> tuple[int, str]:
    response = e.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def signed(
    endpoint: Endpoint, method: str, path: str, *, query: str = "", secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:  # fmt: skip
    """A request signed by botocore's SigV4 signer (as boto3 signs), sent by requests."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = endpoint.url + path + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers=headers or {})
    credentials = Credentials(endpoint.access_key, secret or endpoint.secret or "x")
    S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    return requests.request(method, url, headers=dict(request.headers.items()), timeout=30)


# -- the same checks against serve and moto ------------------------------------------------------


def test_listings_with_and_without_a_delimiter(endpoint: Endpoint) -> None:
    s3 = endpoint.client()
    files = small_files()
    got, prefixes = keys(s3.get_paginator("list_objects_v2").paginate(
        Bucket="models", Prefix=f"{REPO}/"))  # fmt: skip
    assert got == sorted(f"{REPO}/{p}" for p in files) and not prefixes  # nothing of hf2oci's
    page = s3.list_objects_v2(Bucket="models", Prefix=f"{REPO}/", Delimiter="/")
    top = sorted(f"{REPO}/{p}" for p in files if "/" not in p)
    assert [o["Key"] for o in page["Contents"]] == top
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [
        f"{REPO}/sub dir/", f"{REPO}/tokenizer/", f"{REPO}/weights/",
    ]  # fmt: skip
    sizes = {o["Key"]: o["Size"] for o in page["Contents"]}
    assert sizes[f"{REPO}/model.safetensors"] == len(files["model.safetensors"])
    assert sizes[f"{REPO}/empty.txt"] == 0
    # "s3-org/tiny-2/" sorts before "s3-org/tiny/" ('-' < '/'), as S3 orders bytes
    org = s3.list_objects_v2(Bucket="models", Prefix="s3-org/", Delimiter="/")
    assert [p["Prefix"] for p in org["CommonPrefixes"]] == [
        "s3-org/streamed/", f"{NEIGHBOUR}/", f"{REPO}/",
    ]  # fmt: skip
    assert "Contents" not in org
    root = s3.list_objects_v2(Bucket="models", Delimiter="/")
    assert {"s3-org/"} <= {p["Prefix"] for p in root["CommonPrefixes"]}
    partial = s3.list_objects_v2(Bucket="models", Prefix=f"{REPO}/tok")
    assert [o["Key"] for o in partial["Contents"]] == [
        f"{REPO}/tokenizer/merges.txt", f"{REPO}/tokenizer/vocab.txt",
    ]  # fmt: skip
    data = s3.list_objects_v2(Bucket="datasets", Prefix=f"{DATASET}/")
    assert [o["Key"] for o in data["Contents"]] == [f"{DATASET}/README.md",
                                                    f"{DATASET}/data/train.csv"]  # fmt: skip
    assert s3.list_objects_v2(Bucket="models", Prefix="nobody/")["KeyCount"] == 0
    v1 = s3.list_objects(Bucket="models", Prefix=f"{REPO}/weights/")
    assert [o["Key"] for o in v1["Contents"]] == [f"{REPO}/weights/part-1.bin",
                                                  f"{REPO}/weights/part-2.bin"]  # fmt: skip


@pytest.mark.parametrize("delimiter", ["", "/"])
def test_paging_with_max_keys_2_covers_every_key_once(endpoint: Endpoint, delimiter: str) -> None:
    s3 = endpoint.client()
    every, every_prefix = keys(s3.get_paginator("list_objects_v2").paginate(
        Bucket="models", Prefix="s3-org/", Delimiter=delimiter))  # fmt: skip
    paged, paged_prefixes, pages, token = [], [], 0, None
    while True:
        more = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket="models", Prefix="s3-org/", Delimiter=delimiter,
                                  MaxKeys=2, **more)  # fmt: skip
        pages += 1
        assert page["KeyCount"] <= 2
        paged += [o["Key"] for o in page.get("Contents", [])]
        paged_prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert paged == every and paged_prefixes == every_prefix
    assert len(set(paged)) == len(paged) and pages >= (len(paged) + len(paged_prefixes)) // 2
    if delimiter:
        assert every_prefix == ["s3-org/streamed/", f"{NEIGHBOUR}/", f"{REPO}/"] and not every
    else:
        assert f"{REPO}/a+b c.json" in every and f"{NEIGHBOUR}/x/y.txt" in every
    after = s3.list_objects_v2(Bucket="models", Prefix=f"{REPO}/", StartAfter=f"{REPO}/tokenizer/")
    assert after["Contents"][0]["Key"] == f"{REPO}/tokenizer/merges.txt"


def test_keys_with_spaces_plus_and_non_ascii(endpoint: Endpoint, s3_mirror: Mirror) -> None:
    s3 = endpoint.client()
    for path in ("sub dir/é t+x.txt", "a+b c.json"):
        key = f"{REPO}/{path}"
        want = s3_mirror.data("models", key)
        assert s3.get_object(Bucket="models", Key=key)["Body"].read() == want
        assert s3.head_object(Bucket="models", Key=key)["ContentLength"] == len(want)
        listed = s3.list_objects_v2(Bucket="models", Prefix=key)  # boto3: encoding-type=url
        assert [o["Key"] for o in listed["Contents"]] == [key]
    plain = signed(endpoint, "GET", "/models", query="list-type=2&prefix=s3-org%2Ftiny%2Fa%2B")
    assert "<Key>s3-org/tiny/a+b c.json</Key>" in plain.text  # not encoded unless asked


def test_head_and_get_whole_and_ranged(endpoint: Endpoint, s3_mirror: Mirror) -> None:
    s3 = endpoint.client()
    key = f"{REPO}/model.safetensors"
    data = s3_mirror.data("models", key)
    head = s3.head_object(Bucket="models", Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"')
    assert head["ResponseMetadata"]["HTTPHeaders"]["accept-ranges"] == "bytes"
    whole = s3.get_object(Bucket="models", Key=key)
    assert whole["Body"].read() == data and whole["ETag"] == head["ETag"]
    for asked, start, end in [("bytes=0-7", 0, 7), ("bytes=100-1048675", 100, 1048675),
                              (f"bytes={len(data) - 10}-", len(data) - 10, len(data) - 1),
                              ("bytes=-100", len(data) - 100, len(data) - 1),
                              (f"bytes=5-{len(data) + 99}", 5, len(data) - 1)]:  # fmt: skip
        got = s3.get_object(Bucket="models", Key=key, Range=asked)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"] == f"bytes {start}-{end}/{len(data)}"
        assert got["ContentLength"] == end - start + 1 and got["ETag"] == head["ETag"]
        assert got["Body"].read() == data[start : end + 1]
    ranged_head = s3.head_object(Bucket="models", Key=key, Range="bytes=0-7")
    assert ranged_head["ContentLength"] == 8
    empty = s3.get_object(Bucket="models", Key=f"{REPO}/empty.txt")
    assert empty["Body"].read() == b"" and empty["ContentLength"] == 0


def test_errors(endpoint: Endpoint) -> None:
    from botocore.exceptions import ClientError

    s3 = endpoint.client()
    for bucket, key in [
        ("models", f"{REPO}/missing.json"),
        ("models", "nobody/none/x"),
        ("models", f"{REPO}/tokenizer/"),
        ("datasets", f"{REPO}/config.json"),
    ]:
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket=bucket, Key=key)
        assert _error(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="spaces", Key=f"{REPO}/config.json")
    assert _error(e) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="spaces")
    assert _error(e) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="models", Key=f"{REPO}/missing.json")
    assert _error(e) == (404, "404")
    head = signed(endpoint, "HEAD", f"/models/{REPO}/missing.json")
    assert head.status_code == 404 and head.content == b""  # a HEAD miss has no body
    size = len(small_files()["config.json"])
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="models", Key=f"{REPO}/config.json", Range=f"bytes={size}-")
    assert _error(e) == (416, "InvalidRange")
    bad = signed(endpoint, "GET", f"/models/{REPO}/config.json", headers={"Range": "bytes=999-"})
    assert bad.status_code == 416 and "<Code>InvalidRange</Code>" in bad.text
    missing = signed(endpoint, "GET", f"/models/{REPO}/missing.json")
    assert missing.headers["Content-Type"].startswith("application/xml")
    assert "<Code>NoSuchKey</Code>" in missing.text and "<RequestId>" in missing.text


def test_signatures_checked(endpoint: Endpoint) -> None:
    from botocore.exceptions import ClientError

    key = f"{REPO}/config.json"
    assert endpoint.client().get_object(Bucket="models", Key=key)["Body"].read()
    with pytest.raises(ClientError) as e:
        endpoint.client(secret="not-the-token").get_object(Bucket="models", Key=key)
    assert _error(e) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as e:
        endpoint.client(secret="not-the-token").list_objects_v2(Bucket="models")
    assert _error(e) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as e:
        endpoint.client(signed=False).get_object(Bucket="models", Key=key)
    assert _error(e)[0] == 403
    unsigned = requests.get(f"{endpoint.url}/models/{key}", timeout=10)
    assert unsigned.status_code == 403  # (moto sends no body with it; serve says AccessDenied)
    assert endpoint.name == "moto" or "<Code>AccessDenied</Code>" in unsigned.text


# -- serve only ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(s3_mirror: Mirror) -> Iterator[S3Served]:
    server = S3Served(Store("hgfkeep", root=s3_mirror.layouts), tokens=[TOKEN, "another"])
    yield server
    server.stop()


def _serve(served: S3Served) -> Endpoint:
    return Endpoint("serve", served.url, {})


def test_a_pinned_revision_is_reachable(served: S3Served, s3_mirror: Mirror) -> None:
    s3 = _serve(served).client()
    commit = s3_mirror.commits[REPO]
    want = s3_mirror.data("models", f"{REPO}/config.json")
    for revision in (commit, commit[:12]):
        key = f"{REPO}@{revision}/config.json"
        assert s3.get_object(Bucket="models", Key=key)["Body"].read() == want
        listed, _ = keys(s3.get_paginator("list_objects_v2").paginate(
            Bucket="models", Prefix=f"{REPO}@{revision}/"))  # fmt: skip
        assert listed == sorted(f"{REPO}@{revision}/{p}" for p in small_files())
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="models", Key=f"{REPO}@{'f' * 40}/config.json")
    assert _error(e) == (404, "NoSuchKey")


def test_any_region_and_any_token_of_the_file(served: S3Served) -> None:
    import boto3
    from botocore.config import Config

    for region, token in (("eu-west-3", TOKEN), ("us-east-1", "another")):
        s3 = boto3.client(
            "s3", endpoint_url=served.url, region_name=region, aws_access_key_id="anyone",
            aws_secret_access_key=token, config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip
        assert s3.head_object(Bucket="models", Key=f"{REPO}/config.json")["ContentLength"]


def test_signature_rules(served: S3Served) -> None:
    """Clock skew, the headers a signature must cover, the payload hash, the header's form."""

    def verify(headers: list[tuple[str, str]], now: float | None = None) -> str:
        return sigv4.verify(method="GET", raw_path="/models/a/b/c", raw_query="",
                            headers=headers, secrets=[TOKEN], now=now)  # fmt: skip

    def signed_headers(when: float, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method="GET", url="http://h:1/models/a/b/c", headers=extra or {})
        signer = S3SigV4Auth(Credentials("k", TOKEN), "s3", "us-east-1")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
        request.context["timestamp"] = stamp
        signer._modify_request_before_signing(request)
        request.headers.replace_header("X-Amz-Date", stamp)
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signer._inject_signature_to_request(request, signature)
        return [(k.lower(), v) for k, v in request.headers.items()] + [("host", "h:1")]

    now = time.time()
    assert verify(signed_headers(now), now) == "k"
    with pytest.raises(sigv4.Refused) as e:
        verify(signed_headers(now - 16 * 60), now)
    assert e.value.code == "RequestTimeTooSkewed"
    assert verify(signed_headers(now - 14 * 60), now) == "k"
    tampered = [(k, "bytes=0-1" if k == "range" else v)
                for k, v in signed_headers(now, {"Range": "bytes=0-7"})]  # fmt: skip
    with pytest.raises(sigv4.Refused) as e:
        verify(tampered, now)
    assert e.value.code == "SignatureDoesNotMatch"
    short = "AWS4-HMAC-SHA256 Credential=k/20260101/us-east-1/s3"
    for value, code in [(short, "AuthorizationHeaderMalformed"), ("AWS k:abc", "InvalidArgument")]:
        with pytest.raises(sigv4.Refused) as e:
            verify([("authorization", value), ("x-amz-date", "20260101T000000Z")])
        assert e.value.code == code
    with pytest.raises(sigv4.Refused) as e:
        verify([(k, "1" * 64 if k == "x-amz-content-sha256" else v)
                for k, v in signed_headers(now)], now)  # fmt: skip
    assert e.value.code == "XAmzContentSHA256Mismatch"
    bad_date = [(k, "20261399T999999Z" if k == "x-amz-date" else v) for k, v in signed_headers(now)]
    with pytest.raises(sigv4.Refused) as e:
        verify(bad_date, now)
    assert e.value.code == "AccessDenied"
    auth = sigv4.parse_authorization(dict(signed_headers(now))["authorization"])
    assert auth.signature not in repr(auth)


def _absolute_form(url: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """``GET http://HOST:PORT/PATH HTTP/1.1``, as run:ai's client sends it to an http
    endpoint."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = [f"GET {url}{path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        sock.sendall(("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_absolute_form_targets_are_answered_and_signed_by_their_path(
    served: S3Served, s3_mirror: Mirror
) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key = f"{REPO}/sub dir/é t+x.txt"
    path = "/models/" + requests.utils.quote(key, safe="/~")
    host = served.url.removeprefix("http://")
    request = AWSRequest(method="GET", url=served.url + path, headers={
        "Range": "bytes=2-9", "content-type": "application/xml",
        "x-amz-api-version": "2006-03-01", "host": host})  # fmt: skip
    S3SigV4Auth(Credentials("runai", TOKEN), "s3", "us-east-1").add_auth(request)
    status, body = _absolute_form(served.url, path, list(request.headers.items()))
    assert status == 206 and body == s3_mirror.data("models", key)[2:10]
    listing = "/models?list-type=2&prefix=s3-org%2Ftiny%2Fweights%2F"
    request = AWSRequest(method="GET", url=served.url + listing, headers={"host": host})
    S3SigV4Auth(Credentials("runai", TOKEN), "s3", "us-east-1").add_auth(request)
    status, body = _absolute_form(served.url, listing, list(request.headers.items()))
    assert status == 200 and b"<Key>s3-org/tiny/weights/part-1.bin</Key>" in body
    status, body = _absolute_form(served.url, path, [("Host", host)])
    assert status == 403 and b"<Code>AccessDenied</Code>" in body


def test_anonymous_reads_without_a_token_file(s3_mirror: Mirror) -> None:
    server = S3Served(Store("hgfkeep", root=s3_mirror.layouts))
    try:
        s3 = Endpoint("serve", server.url, {}, secret=None).client(signed=False)
        key = f"{REPO}/config.json"
        want = small_files()["config.json"]
        assert s3.get_object(Bucket="models", Key=key)["Body"].read() == want
        assert requests.get(f"{server.url}/models/{key}", timeout=10).ok
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["datasets", "models"]
        assert s3.head_bucket(Bucket="models")["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert requests.put(f"{server.url}/models/{key}", data=b"x", timeout=10).status_code == 405
        acl = requests.get(f"{server.url}/models/{key}?acl", timeout=10)
        assert acl.status_code == 501 and "<Code>NotImplemented</Code>" in acl.text
    finally:
        server.stop()


def test_metrics_by_operation_and_a_log_without_secrets(
    s3_mirror: Mirror, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    server = S3Served(Store("hgfkeep", root=s3_mirror.layouts), tokens=[TOKEN], registry=registry)
    try:
        s3 = _serve(server).client()
        with caplog.at_level(logging.INFO, logger="hf2oci.serve.access"):
            s3.list_objects_v2(Bucket="models", Prefix=f"{REPO}/")
            s3.head_object(Bucket="models", Key=f"{REPO}/config.json")
            s3.get_object(Bucket="models", Key=f"{REPO}/config.json", Range="bytes=0-3")
            s3.get_object(Bucket="models", Key=f"{REPO}/config.json")["Body"].read()
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                _serve(server).client(secret="wrong").get_object(Bucket="models", Key="a/b/c")
            with pytest.raises(Exception):  # noqa: B017 - a key that would forge a log line
                s3.get_object(Bucket="models", Key="a/b/x\nS3 GET /forged 200")
        answered = [("ListObjectsV2", 200), ("HeadObject", 200), ("GetObject", 206),
                    ("GetObject", 200), ("GetObject", 403)]  # fmt: skip
        want = [f'hf2oci_serve_s3_requests_total{{operation="{op}",status="{status}"}} 1.0'
                for op, status in answered]  # fmt: skip
        deadline = time.monotonic() + 5  # a request is counted once its answer is sent
        while True:
            metrics = generate_latest(registry).decode()
            if all(w in metrics for w in want) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [w for w in want if w not in metrics] == []
        sent = 4 + len(small_files()["config.json"])  # a range of 4 bytes, then the whole file
        assert f"hf2oci_serve_s3_bytes_total {float(sent)}" in metrics
        lines = [r.getMessage() for r in caplog.records]
        assert any("GetObject 206" in line for line in lines), lines
        for line in lines:
            assert TOKEN not in line and "Signature" not in line and "Credential" not in line
            assert "\n" not in line
    finally:
        server.stop()


def test_a_verify_key_lists_and_reads_verified_images_only(
    hub, random_repo, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from helpers import cli, make_project
    from test_signing import KEY_ENV, _key_pem

    signed_repo, _, files = random_repo()
    unsigned_repo, _, _ = random_repo()
    private, public = _key_pem()
    config = {"namespace": "s3v", "base_image": "scratch"}
    make_project(project, models=[unsigned_repo], config=config)
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.setenv(KEY_ENV, private.decode())
    make_project(project, models=[signed_repo], config=config)
    assert cli("sync", "-q").exit_code == 0
    server = S3Served(Store("s3v", root=project / "oci-images", ttl=0, verify_key=public))
    try:
        s3 = Endpoint("serve", server.url, {}, secret=None).client(signed=False)
        for delimiter in ("", "/"):
            listed, prefixes = keys(s3.get_paginator("list_objects_v2").paginate(
                Bucket="models", Prefix="testorg/", Delimiter=delimiter))  # fmt: skip
            if delimiter:
                assert prefixes == [f"{signed_repo}/"] and not listed
            else:
                assert listed == sorted(f"{signed_repo}/{p}" for p in files)
        got = s3.get_object(Bucket="models", Key=f"{signed_repo}/model.safetensors")
        assert got["Body"].read() == files["model.safetensors"]
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket="models", Key=f"{unsigned_repo}/config.json")
        assert _error(e) == (403, "AccessDenied")
    finally:
        server.stop()


def test_the_cli_answers_s3_beside_the_hub_and_stops_on_sigterm(
    s3_mirror: Mirror, tmp_path: Path
) -> None:
    from servers import free_port
    from test_serve_clients import start_serve

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    s3_port = free_port()
    log = tmp_path / "serve.log"
    args = ["--layout", str(s3_mirror.layouts), "--s3-port", str(s3_port), "--token-file",
            str(tokens)]  # fmt: skip
    proc, url = start_serve(args, tmp_path, log)
    try:
        s3 = Endpoint("serve", f"http://127.0.0.1:{s3_port}", {}).client()
        key = f"{REPO}/config.json"
        assert (
            s3.get_object(Bucket="models", Key=key)["Body"].read() == small_files()["config.json"]
        )
        hub = requests.get(f"{url}/api/models/{REPO}", timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert hub.json()["sha"] == s3_mirror.commits[REPO]
        metrics = requests.get(f"{url}/metrics", timeout=10).text  # one /metrics for both faces
        assert 'hf2oci_serve_s3_requests_total{operation="GetObject",status="200"} 1.0' in metrics
        assert "hf2oci_serve_requests_total" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert f"S3 GET /models/{key} GetObject 200" in text and TOKEN not in text


def _soon(check: Any, seconds: float = 2.0) -> bool:
    """``check()`` within ``seconds`` (serve's side of a request ends just after the client's)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_reads_share_serves_budget_and_give_it_back(s3_mirror: Mirror) -> None:
    """A GetObject holds a place in the read budget it shares with the Hub API (memory bounded
    whatever the number of ranges in flight) and gives it back, when the client leaves too."""

    from hf2oci.consume.serve.streaming import ReadBudget

    budget = ReadBudget()
    server = S3Served(Store("hgfkeep", root=s3_mirror.layouts), budget=budget)
    try:
        url = f"{server.url}/models/{STREAMED}/model.safetensors"  # 64 MiB: more than sockets hold
        with requests.get(url, stream=True, timeout=10) as r:
            assert next(r.iter_content(1024)) and budget.active == 1
            assert budget.piece() == 4 << 20  # one download in flight: the biggest reads
        assert _soon(lambda: budget.active == 0)  # the client left mid-body
        ranged = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
        assert len(ranged.content) == 100 and _soon(lambda: budget.active == 0)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "path",
    [
        f"/models/{REPO}/%00config.json", f"/models/{REPO}/%01%02", f"/models/{REPO}/%FF%FE",
        f"/models/{REPO}/../../../etc/passwd", f"/models/{REPO}/%2e%2e/%2e%2e/config.json",
        "/models/" + "a/" * 600 + "x", f"/models/{REPO}@/config.json", "/models/x",
        f"/%FF/{REPO}/config.json", "/models?list-type=2&continuation-token=%%%",
        "/models?list-type=2&max-keys=lots", "/models?list-type=2&encoding-type=base64",
        "/models?list-type=2&prefix=%00%01",
    ],
)  # fmt: skip
def test_hostile_requests_get_an_s3_error_and_the_server_keeps_serving(
    anonymous: S3Served, path: str
) -> None:
    import xml.etree.ElementTree as ET

    host, port = anonymous.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)  # as written: no client normalises it on the way
    r = conn.getresponse()
    body = r.read()
    assert r.status in (200, 400, 404), body
    doc = ET.fromstring(body)  # well-formed XML, whatever the request held
    if r.status != 200:
        assert doc.tag == "Error" and doc.findtext("Code") in (
            "NoSuchKey", "NoSuchBucket", "InvalidArgument"
        )  # fmt: skip
    assert requests.head(f"{anonymous.url}/models/{REPO}/config.json", timeout=10).ok


@pytest.fixture(scope="module")
def anonymous(s3_mirror: Mirror) -> Iterator[S3Served]:
    server = S3Served(Store("hgfkeep", root=s3_mirror.layouts))
    yield server
    server.stop()
