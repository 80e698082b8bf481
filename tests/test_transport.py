"""Auth (Basic, Bearer tokens, docker config) and the retry policy, against real registries."""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from faultproxy import FaultProxy, serve
from hf2oci.errors import AuthError, RegistryError
from hf2oci.oci.credentials import Credentials, load_credentials
from hf2oci.oci.push import push
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.transport import Transport
from hf2oci.redact import redact_url
from hf2oci.retry import RetryPolicy
from servers import Registry, start_registry
from test_registry import logged_client, random_image, unique_repo

FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.05, total=10, max_retry_after=0.05)
USER, PASSWORD = "alice", "s3cret-pässword"


# -- credentials ----------------------------------------------------------------------------


def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("bob", "hunter2")
    assert "hunter2" not in repr(creds) and "bob" in repr(creds)


def write_docker_config(path: Path, auths: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"auths": auths}))
    return path / "config.json"


def test_load_credentials_sources(tmp_path: Path) -> None:
    b64 = base64.b64encode(b"u1:p:with:colons").decode()
    cfg = write_docker_config(
        tmp_path / "d",
        {
            "https://index.docker.io/v1/": {"auth": b64},
            "ghcr.io": {"username": "u2", "password": "p2"},
            "https://quay.io/": {"auth": base64.b64encode(b"u3:p3").decode()},
            "other.io": {},
        },
    )
    env: dict[str, str] = {}
    assert load_credentials("docker.io", env=env, docker_config=cfg) == Credentials(
        "u1", "p:with:colons"
    )
    assert load_credentials("ghcr.io", env=env, docker_config=cfg) == Credentials("u2", "p2")
    assert load_credentials("quay.io", env=env, docker_config=cfg) == Credentials("u3", "p3")
    assert load_credentials("other.io", env=env, docker_config=cfg) is None
    assert load_credentials("nowhere.io", env=env, docker_config=cfg) is None
    # the environment wins over the file
    env = {"HF2OCI_REGISTRY_USERNAME": "e", "HF2OCI_REGISTRY_PASSWORD": "ep"}
    assert load_credentials("ghcr.io", env=env, docker_config=cfg) == Credentials("e", "ep")
    # $DOCKER_CONFIG names the folder
    env = {"DOCKER_CONFIG": str(tmp_path / "d")}
    assert load_credentials("ghcr.io", env=env) == Credentials("u2", "p2")
    assert load_credentials("ghcr.io", env={"DOCKER_CONFIG": str(tmp_path / "none")}) is None
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(AuthError, match="cannot read docker config"):
        load_credentials("ghcr.io", env={}, docker_config=cfg)


# -- Basic auth -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("basic")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (work / "htpasswd").write_text(f"{USER}:{hashed}\n")
    reg = start_registry(
        work,
        extra_config=(
            f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {work / 'htpasswd'}\n"
        ),
    )
    yield reg
    reg.stop()


def client_for(host: str, creds: Credentials | None, **kwargs: Any) -> RegistryClient:
    transport = Transport(host, credentials=creds, retry=kwargs.pop("retry", FAST))
    return RegistryClient(host, transport=transport, **kwargs)


def test_basic_auth_push_and_pull(basic_registry: Registry) -> None:
    client = client_for(basic_registry.host, Credentials(USER, PASSWORD))
    image, repo = random_image(), unique_repo()
    assert push(client, image, repo, tags=["t"]) == image.digest
    assert client.get_manifest(repo, "t") is not None
    with client.get_blob(repo, image.layers[0].digest) as stream:
        assert stream.read() == image.layers[0].open().read()


def test_basic_auth_wrong_or_missing_credentials(basic_registry: Registry) -> None:
    repo = unique_repo()
    wrong = client_for(basic_registry.host, Credentials(USER, "wrong-password"))
    with pytest.raises(AuthError) as exc:
        push(wrong, random_image(), repo, tags=["t"])
    message = str(exc.value)
    assert "wrong-password" not in message and "\n" not in message
    assert f"registry {basic_registry.host} refused the credentials for push to {repo}" in message
    assert "HF2OCI_REGISTRY_USERNAME" in message

    anonymous = client_for(basic_registry.host, None)
    with pytest.raises(AuthError, match="needs credentials for pull from"):
        anonymous.get_manifest(repo, "t")


def test_basic_auth_from_docker_config(basic_registry: Registry, tmp_path: Path) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cfg = write_docker_config(tmp_path, {f"http://{basic_registry.host}": {"auth": auth}})
    creds = load_credentials(basic_registry.host, env={}, docker_config=cfg)
    client = client_for(basic_registry.host, creds)
    image = random_image()
    assert push(client, image, unique_repo(), tags=["t"]) == image.digest


# -- Bearer tokens --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """A token server like Docker Hub's auth: checks Basic credentials, signs RS256 JWTs."""

    key: rsa.RSAPrivateKey
    cert_der: bytes
    refuse_all: bool = False
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def token(self, scopes: list[str], subject: str) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")[0], scope.split(":")[1], scope.split(":")[2]
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {
            "iss": "test-issuer",
            "sub": subject,
            "aud": "test-registry",
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def start(self) -> str:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                service.requests.append(query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if service.refuse_all or self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(
                    {"token": service.token(query.get("scope", []), USER), "expires_in": 300}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = serve(Handler)
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, TokenService]]:
    work = tmp_path_factory.mktemp("token")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (work / "bundle.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    service = TokenService(key, cert.public_bytes(serialization.Encoding.DER))
    realm = service.start()
    reg = start_registry(
        work,
        extra_config=(
            f"auth:\n  token:\n    realm: {realm}\n    service: test-registry\n"
            f"    issuer: test-issuer\n    rootcertbundle: {work / 'bundle.pem'}\n"
        ),
    )
    yield reg, service
    reg.stop()
    assert service.server is not None
    service.server.shutdown()


def test_bearer_token_push_and_pull(token_registry: tuple[Registry, TokenService]) -> None:
    reg, service = token_registry
    service.refuse_all = False
    service.requests.clear()
    client = client_for(reg.host, Credentials(USER, PASSWORD))
    image, repo = random_image(), unique_repo()
    assert push(client, image, repo, tags=["t"]) == image.digest
    # tokens are cached per scope: one for the push, not one per request
    push_scope = f"repository:{repo}:pull,push"
    assert [q["scope"] for q in service.requests] == [[push_scope]]
    assert all(q["service"] == ["test-registry"] for q in service.requests)

    reader = client_for(reg.host, Credentials(USER, PASSWORD))
    found = reader.get_manifest(repo, "t")
    assert found is not None and found[2] == image.digest
    with reader.get_blob(repo, image.layers[1].digest) as stream:
        assert stream.read() == image.layers[1].open().read()

    # a mount asks for pull on the source repository too
    service.requests.clear()
    other = unique_repo()
    push(client, image, other, tags=["t"], mount_from=[repo])
    scopes = {s for q in service.requests for s in q["scope"]}
    assert f"repository:{repo}:pull" in scopes and f"repository:{other}:pull,push" in scopes


def test_bearer_token_refused(token_registry: tuple[Registry, TokenService]) -> None:
    reg, service = token_registry
    repo = unique_repo()
    wrong = client_for(reg.host, Credentials(USER, "not-it"))
    with pytest.raises(AuthError) as exc:
        push(wrong, random_image(), repo, tags=["t"])
    assert "not-it" not in str(exc.value)
    assert f"refused the credentials for push to {repo}" in str(exc.value)

    service.refuse_all = True
    try:
        right = client_for(reg.host, Credentials(USER, PASSWORD))
        with pytest.raises(AuthError, match="refused the credentials for pull from"):
            right.get_manifest(repo, "t")
        anonymous = client_for(reg.host, None)
        with pytest.raises(AuthError, match="needs credentials"):
            anonymous.get_manifest(repo, "t")
    finally:
        service.refuse_all = False


# -- the retry policy -----------------------------------------------------------------------


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    yield p
    p.server.shutdown()


def test_push_survives_temporary_failures(proxy: FaultProxy, registry: Registry) -> None:
    faults = [
        proxy.fault("HEAD", r"/blobs/sha256:", "cut"),
        proxy.fault("POST", r"/blobs/uploads/$", "503", times=2),
        proxy.fault("PUT", r"/blobs/uploads/.*digest=", "cut"),
        proxy.fault("PUT", r"/blobs/uploads/.*digest=", "502"),
        proxy.fault("PUT", r"/manifests/", "429:0"),
        proxy.fault("PUT", r"/manifests/t$", "500"),
    ]
    # the upload session meets four faults: it is retried as a whole, so it needs five tries
    policy = RetryPolicy(attempts=6, initial=0.01, max_wait=0.05)
    client, _ = logged_client(proxy.host, retry=policy, workers=1)
    image, repo = random_image(), unique_repo()
    assert push(client, image, repo, tags=["t"]) == image.digest
    assert all(f.hits == f.times for f in faults)
    direct, _ = logged_client(registry.host)
    assert direct.get_manifest(repo, "t") == (image.manifest, image.media_type, image.digest)
    for layer in image.layers:
        with direct.get_blob(repo, layer.digest) as stream:
            assert stream.read() == layer.open().read()


def test_chunked_upload_restarts_after_a_failure(proxy: FaultProxy, registry: Registry) -> None:
    fault = proxy.fault("PATCH", r"/blobs/uploads/", "cut")
    client, _ = logged_client(proxy.host, retry=FAST, chunk_size=1000)
    image, repo = random_image(), unique_repo()
    progress: list[int] = []
    push(client, image, repo, tags=["t"], on_progress=progress.append)
    assert fault.hits == 1
    assert sum(progress) == sum(x.size for x in image.layers) + len(image.config)
    assert skopeo_digest(registry, f"{repo}:t") == image.digest


def skopeo_digest(registry: Registry, name: str) -> str:
    direct, _ = logged_client(registry.host)
    found = direct.get_manifest(*name.split(":"))
    assert found is not None
    return found[2]


def test_retry_after_is_honoured_and_capped(proxy: FaultProxy) -> None:
    repo = unique_repo()
    proxy.fault("GET", r"/tags/list", "429:0.4")
    patient = RetryPolicy(attempts=3, initial=0.01, max_wait=0.01, max_retry_after=5)
    client, _ = logged_client(proxy.host, retry=patient)
    start = time.monotonic()
    assert client.list_tags(repo) == []
    assert time.monotonic() - start >= 0.4

    proxy.fault("GET", r"/tags/list", "429:30")
    client, _ = logged_client(proxy.host, retry=FAST)  # caps Retry-After at 0.05 s
    start = time.monotonic()
    assert client.list_tags(repo) == []
    assert time.monotonic() - start < 5


def test_a_manifest_put_the_registry_misreads_as_digest_invalid_is_tried_again(
    proxy: FaultProxy, registry: Registry
) -> None:
    """distribution answers DIGEST_INVALID to a manifest PUT when it reads a blob link that a
    concurrent push of the same blob is writing (seen here with two signed repos mirrored at
    once into one repository); the digest hf2oci sends is the sha256 of the bytes it sends,
    so trying again is right. Any other 400 still fails at once."""
    fault = proxy.fault("PUT", r"/manifests/sha256:", "400!DIGEST_INVALID")
    client, _ = logged_client(proxy.host, retry=FAST)
    image, repo = random_image(), unique_repo()
    assert push(client, image, repo, tags=["t"]) == image.digest
    assert fault.hits == 1
    assert skopeo_digest(registry, f"{repo}:t") == image.digest
    proxy.fault("PUT", r"/manifests/t2$", "400!MANIFEST_INVALID", times=5)
    with pytest.raises(RegistryError, match="MANIFEST_INVALID"):
        client.put_manifest(repo, "t2", image.manifest, image.media_type)
    assert proxy.attempts("PUT", r"/manifests/t2$") == 1


@pytest.mark.parametrize("status", ["403", "404"])
def test_client_errors_fail_at_once(proxy: FaultProxy, status: str) -> None:
    proxy.fault("GET", r"/blobs/", status, times=10)
    client, _ = logged_client(proxy.host, retry=FAST)
    with pytest.raises(RegistryError) as exc:
        client.get_blob(unique_repo(), "sha256:" + "0" * 64)
    assert proxy.attempts("GET", r"/blobs/") == 1
    assert exc.value.status == int(status) and not exc.value.temporary
    assert f"injected {status}" in str(exc.value)


def test_temporary_failures_give_up_after_the_policy(proxy: FaultProxy) -> None:
    proxy.fault("HEAD", r"/blobs/", "503", times=100)
    client, _ = logged_client(proxy.host, retry=FAST)
    with pytest.raises(RegistryError) as exc:
        client.blob_exists(unique_repo(), "sha256:" + "0" * 64)
    assert proxy.attempts("HEAD", r"/blobs/") == FAST.attempts
    assert exc.value.status == 503 and exc.value.temporary


def test_connection_refused_is_a_registry_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client, _ = logged_client(f"127.0.0.1:{port}", retry=FAST)
    with pytest.raises(RegistryError, match=f"registry 127.0.0.1:{port}: HEAD .* failed"):
        client.blob_exists("ns/x", "sha256:" + "0" * 64)


def test_errors_redact_upload_state(proxy: FaultProxy) -> None:
    proxy.fault("PUT", r"/blobs/uploads/", "400", times=10)
    client, _ = logged_client(proxy.host, retry=FAST)
    with pytest.raises(RegistryError) as exc:
        push(client, random_image(), unique_repo(), tags=["t"])
    assert "_state=REDACTED" in str(exc.value) and "digest=sha256" in str(exc.value)
    assert exc.value.url is not None and "_state=REDACTED" in exc.value.url
    assert redact_url("http://h/x?_state=abc&digest=sha256:1") == (
        "http://h/x?_state=REDACTED&digest=sha256:1"
    )


def test_list_tags_follows_link_pages(proxy: FaultProxy, registry: Registry) -> None:
    direct, _ = logged_client(registry.host)
    repo, tags = unique_repo(), [f"t{i}" for i in range(5)]
    push(direct, random_image(), repo, tags=tags)
    proxy.page_tags = 2
    client, log = logged_client(proxy.host, retry=FAST)
    assert sorted(client.list_tags(repo, page_size=2)) == tags
    assert log.count("GET", "/tags/list") == 3


def test_a_retried_head_still_answers(proxy: FaultProxy) -> None:
    client, log = logged_client(proxy.host, retry=FAST)
    proxy.fault("HEAD", r"/blobs/", "503", times=1)
    assert not client.blob_exists(unique_repo(), "sha256:" + "0" * 64)
    assert [status for m, _, status, _ in log.entries if m == "HEAD"] == [503, 404]


@pytest.mark.parametrize("fault", ["503", "429:0", "500"])
def test_a_base_registry_that_keeps_failing_is_one_line(
    proxy: FaultProxy, registry: Registry, fault: str
) -> None:
    """It once crashed with a TypeError (``raise type(e)(...)`` on an error that needs more)."""
    from hf2oci.errors import BaseImageError
    from hf2oci.oci.source import open_base

    image, repo = random_image(), unique_repo()
    push(RegistryClient(registry.host), image, repo, tags=["base"])
    proxy.fault("GET", r"/manifests/", fault, times=100)
    client, _ = logged_client(proxy.host, retry=FAST)
    with pytest.raises(BaseImageError) as exc:
        open_base(f"{proxy.host}/{repo}:base", client=client)
    text = str(exc.value)
    assert "\n" not in text and proxy.host in text and "scratch" in text
    assert f"({fault.split(':')[0]}" in text


def test_serve_reads_a_registry_behind_token_auth(
    token_registry: tuple[Registry, TokenService],
    hub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hf2oci serve` in front of a registry that wants bearer tokens (Docker Hub's scheme):
    credentials come from the same place as for mirror, and never reach a response."""
    import random

    import requests as requests_lib
    from huggingface_hub import hf_hub_download

    from helpers import cli, make_project
    from hf2oci.consume.serve.store import Store
    from test_serve import Served

    reg, service = token_registry
    service.refuse_all = False
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF2OCI_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("HF2OCI_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("HF2OCI_CACHE", str(tmp_path / "cache"))
    files = {"config.json": b"{}\n", "model.safetensors": random.randbytes(2 * 1024 * 1024)}
    hub.add_repo("tok/model", files)
    config = {"registry": reg.host, "namespace": "tok", "base_image": "scratch"}
    make_project(tmp_path, models=["tok/model"], config=config)
    assert cli("sync", "-q").exit_code == 0
    server = Served(Store("tok", client=RegistryClient(reg.host)))
    try:
        path = hf_hub_download("tok/model", "model.safetensors", cache_dir=tmp_path / "c",
                               endpoint=server.url)  # fmt: skip
        assert Path(path).read_bytes() == files["model.safetensors"]
        for url in ("/api/models/tok/model?blobs=true", "/metrics", "/api/models/tok/nope"):
            text = requests_lib.get(server.url + url).text
            assert PASSWORD not in text and USER not in text
    finally:
        server.stop()
