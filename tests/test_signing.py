"""Signatures beside what is published (cosign's formats), checked by independent means:
``openssl dgst -sha256 -verify`` over the stored payload and over DSSE's pre-authentication
encoding, the payload's digest against the registry's, the objects against cosign's media types
and annotations. A real registry, OCI layouts, the test hub."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import cli, make_project, skopeo_inspect, tag_of
from hf2oci.trust.signing import SigningKeyError, load_signing_key, pae

KEY_ENV = "HF2OCI_SIGNING_KEY"


def _key_pem(password: bytes | None = None) -> tuple[bytes, bytes]:
    """A fresh P-256 key: (private PEM, public PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _openssl_verifies(public: Path, signature: bytes, data: bytes, tmp: Path) -> bool:
    (tmp / "sig.der").write_bytes(signature)
    (tmp / "data").write_bytes(data)
    proc = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(tmp / "sig.der"),
         str(tmp / "data")], capture_output=True, text=True,
    )  # fmt: skip
    return proc.returncode == 0 and "Verified OK" in proc.stdout


def test_the_key_is_read_from_the_environment_and_bad_keys_are_one_line(tmp_path: Path) -> None:
    assert load_signing_key({}) is None
    private, _ = _key_pem()
    assert load_signing_key({KEY_ENV: private.decode()}) is not None
    path = tmp_path / "k.pem"
    path.write_bytes(private)
    assert load_signing_key({KEY_ENV: str(path)}) is not None
    locked, _ = _key_pem(b"s3cret-pass")
    key = load_signing_key({KEY_ENV: locked.decode(), "HF2OCI_SIGNING_KEY_PASSWORD": "s3cret-pass"})
    assert key is not None and "s3cret" not in repr(key)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases = {
        "not a key": ({KEY_ENV: "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"},
                      "not a PEM private key"),
        "missing file": ({KEY_ENV: str(tmp_path / "absent.pem")}, "cannot read"),
        "rsa": ({KEY_ENV: rsa_pem.decode()}, "an ECDSA P-256 key is needed"),
        "locked": ({KEY_ENV: locked.decode()}, "needs HF2OCI_SIGNING_KEY_PASSWORD"),
        "wrong password": ({KEY_ENV: locked.decode(), "HF2OCI_SIGNING_KEY_PASSWORD": "no"},
                           "does not open it"),
    }  # fmt: skip
    for name, (env, why) in cases.items():
        with pytest.raises(SigningKeyError) as e:
            load_signing_key(env)
        message = str(e.value)
        assert why in message and "\n" not in message, (name, message)
        assert "BEGIN" not in message and "nope" not in message, (name, message)


def _blob(registry: Any, repo: str, digest: str) -> bytes:
    r = requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=10)
    r.raise_for_status()
    return r.content


def _manifest(registry: Any, repo: str, ref: str) -> tuple[dict[str, Any], str]:
    r = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{ref}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json,"
                           "application/vnd.oci.image.index.v1+json"},
        timeout=10,
    )  # fmt: skip
    r.raise_for_status()
    return r.json(), r.headers["Docker-Content-Digest"]


def test_a_signed_mirror_carries_a_cosign_signature_and_a_provenance_openssl_verifies(
    hub, random_repo, registry, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, sha, files = random_repo()
    private, public = _key_pem(b"pw-Zq81")
    (tmp_path / "key.pub").write_bytes(public)
    config = {"registry": registry.host, "namespace": "signed", "base_image": "scratch"}
    make_project(project, models=[model], config=config)
    monkeypatch.setenv(KEY_ENV, private.decode())
    monkeypatch.setenv("HF2OCI_SIGNING_KEY_PASSWORD", "pw-Zq81")
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert "signed " in result.output
    repo = "signed/models"
    _, digest = _manifest(registry, repo, tag_of(model))

    # the signature: cosign's tag, media types and annotation, over a payload naming the digest
    sig_manifest, _ = _manifest(registry, repo, digest.replace(":", "-") + ".sig")
    assert sig_manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert sig_manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    (layer,) = sig_manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload = _blob(registry, repo, layer["digest"])
    doc = json.loads(payload)
    assert doc["critical"]["image"]["docker-manifest-digest"] == digest
    assert doc["critical"]["type"] == "cosign container image signature"
    assert doc["critical"]["identity"]["docker-reference"] == f"{registry.host}/{repo}"
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    assert _openssl_verifies(tmp_path / "key.pub", signature, payload, tmp_path)
    # another key does not verify it; a changed payload does not verify
    _, other = _key_pem()
    (tmp_path / "other.pub").write_bytes(other)
    assert not _openssl_verifies(tmp_path / "other.pub", signature, payload, tmp_path)
    assert not _openssl_verifies(
        tmp_path / "key.pub", signature, payload.replace(b"sha256", b"sha257"), tmp_path
    )

    # the provenance: a DSSE envelope of an in-toto statement, SLSA provenance, signed over PAE
    att_manifest, _ = _manifest(registry, repo, digest.replace(":", "-") + ".att")
    (att,) = att_manifest["layers"]
    assert att["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert att["annotations"]["predicateType"] == "https://slsa.dev/provenance/v1"
    envelope = json.loads(_blob(registry, repo, att["digest"]))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    body = base64.b64decode(envelope["payload"])
    dsse_sig = base64.b64decode(envelope["signatures"][0]["sig"])
    assert _openssl_verifies(
        tmp_path / "key.pub", dsse_sig, pae(envelope["payloadType"], body), tmp_path
    )
    statement = json.loads(body)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [
        {"name": f"{registry.host}/{repo}", "digest": {"sha256": digest[7:]}}
    ]
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["repo_id"] == model
    deps = build["resolvedDependencies"]
    assert deps[0]["digest"] == {"gitCommit": sha}
    listed = {d["name"]: d for d in deps[1:]}
    assert set(listed) == set(files)
    assert listed["model.safetensors"]["annotations"]["size"] == len(files["model.safetensors"])
    assert "sha256" in listed["model.safetensors"]["digest"]

    # hf2oci verify agrees, reading from the registry
    checked = cli(
        "verify", f"{registry.host}/{repo}:{tag_of(model)}", "--key", str(tmp_path / "key.pub")
    )
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("ok ") == 3
    refused = cli(
        "verify", f"{registry.host}/{repo}:{tag_of(model)}", "--key", str(tmp_path / "other.pub")
    )
    assert refused.exit_code == 1 and "FAIL signature" in refused.output

    # signatures live beside the image: an unsigned mirror has the same digest
    monkeypatch.delenv(KEY_ENV)
    make_project(project, models=[model], config={**config, "namespace": "unsigned"})
    assert cli("sync", "-q").exit_code == 0
    assert _manifest(registry, "unsigned/models", tag_of(model))[1] == digest

    # the key and its password are nowhere: not in the output, records, labels or blobs
    labels = skopeo_inspect(f"docker://{registry.host}/{repo}:{tag_of(model)}")
    texts = [
        result.output,
        (project / "get_hf" / "mirrored.json").read_text(),
        (project / "models.md").read_text(),
        json.dumps(labels),
    ]
    stored = b"".join(
        p.read_bytes() for p in registry.root.rglob("data") if p.stat().st_size < 1 << 20
    )
    secret_bits = [private.decode().splitlines()[1], "pw-Zq81"]
    for secret in secret_bits:
        assert all(secret not in t for t in texts)
        assert secret.encode() not in stored


def test_a_bad_key_fails_the_run_before_any_download(
    hub, random_repo, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"namespace": "badkey", "base_image": "scratch"})
    monkeypatch.setenv(
        KEY_ENV, "-----BEGIN PRIVATE KEY-----\nAAAA-not-a-key\n-----END PRIVATE KEY-----"
    )
    hub.reset_log()
    result = cli("sync")
    assert result.exit_code != 0
    assert "error: HF2OCI_SIGNING_KEY: not a PEM private key" in result.output
    assert "AAAA-not-a-key" not in result.output and "Traceback" not in result.output
    assert hub.count("GET", "/resolve/") == 0


def test_a_layout_gets_the_same_signature_tags(hub, random_repo, project: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model, _, _ = random_repo()
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    make_project(project, models=[model], config={"namespace": "lay", "base_image": "scratch"})
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "lay" / "models"
    index = json.loads((layout / "index.json").read_text())
    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    digest = names[tag_of(model)]
    sig = json.loads(
        (layout / "blobs" / "sha256" / names[digest.replace(":", "-") + ".sig"][7:]).read_text()
    )
    (layer,) = sig["layers"]
    payload = (layout / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digest
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    assert _openssl_verifies(tmp_path / "key.pub", signature, payload, tmp_path)
    assert digest.replace(":", "-") + ".att" in names


def test_signing_turned_on_signs_what_is_there_once_and_force_signs_again(
    hub, random_repo, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"namespace": "later", "base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0  # unsigned
    layout = project / "oci-images" / "later" / "models"

    def tags() -> dict[str, str]:
        index = json.loads((layout / "index.json").read_text())
        return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                for m in index["manifests"]}  # fmt: skip

    digest = tags()[tag_of(model)]
    sig_tag = digest.replace(":", "-") + ".sig"
    assert sig_tag not in tags()
    private, _ = _key_pem()
    monkeypatch.setenv(KEY_ENV, private.decode())
    plan = cli("sync", "--json")
    assert plan.exit_code == 0, plan.output
    assert "not signed yet" in plan.output
    assert tags()[tag_of(model)] == digest and sig_tag in tags()  # the same image, now signed
    first = tags()[sig_tag]
    again = json.loads(cli("sync", "--json").stdout)
    assert again["skipped"] == 1 and tags()[sig_tag] == first  # nothing signed again
    assert cli("sync", "--force", "-q").exit_code == 0
    assert tags()[sig_tag] != first  # a new signature (ECDSA signatures differ each time)


def test_an_index_and_each_platform_image_are_signed(
    hub, random_repo, registry, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from test_registry import push_multi_platform_base

    base_repo = f"multi/signed-{uuid.uuid4().hex[:8]}"
    push_multi_platform_base(registry, base_repo)
    model, _, _ = random_repo()
    config = {"base_image": f"{registry.host}/{base_repo}:multi", "registry": registry.host,
              "namespace": "signedidx"}  # fmt: skip
    make_project(project, models=[model], config=config)
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    monkeypatch.setenv(KEY_ENV, private.decode())
    result = cli("sync", "--platform", "linux/amd64,linux/arm64", "-q")
    assert result.exit_code == 0, result.output
    repo = "signedidx/models"
    index, digest = _manifest(registry, repo, tag_of(model))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    signed = [digest, *(m["digest"] for m in index["manifests"])]
    assert len(signed) == 3
    for one in signed:
        sig, _ = _manifest(registry, repo, one.replace(":", "-") + ".sig")
        (layer,) = sig["layers"]
        payload = _blob(registry, repo, layer["digest"])
        assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == one
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        assert _openssl_verifies(tmp_path / "key.pub", signature, payload, tmp_path)
    att, _ = _manifest(registry, repo, digest.replace(":", "-") + ".att")
    envelope = json.loads(_blob(registry, repo, att["layers"][0]["digest"]))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert [s["digest"]["sha256"] for s in statement["subject"]] == [d[7:] for d in signed]


def _index(layout: Path) -> dict[str, Any]:
    return json.loads((layout / "index.json").read_text())


def _retag(layout: Path, tag: str, digest: str, media_type: str | None = None) -> None:
    """Point ``tag`` of the layout at ``digest`` (what someone with write access could do)."""
    index = _index(layout)
    for m in index["manifests"]:
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag:
            blob = layout / "blobs" / "sha256" / digest[7:]
            m.update(digest=digest, size=blob.stat().st_size)
            if media_type:
                m["mediaType"] = media_type
    (layout / "index.json").write_text(json.dumps(index))


def _drop(layout: Path, tag: str) -> None:
    index = _index(layout)
    ref_name = "org.opencontainers.image.ref.name"
    index["manifests"] = [m for m in index["manifests"] if m["annotations"][ref_name] != tag]
    (layout / "index.json").write_text(json.dumps(index))


def test_verify_passes_a_signed_image_and_refuses_each_kind_of_tampering(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf2oci.oci import layout as oci_layout
    from hf2oci.trust.signing import attestation_artifact, load_signing_key

    a, _, _ = random_repo()
    b, _, _ = random_repo()
    private, public = _key_pem()
    key_pub = tmp_path / "key.pub"
    key_pub.write_bytes(public)
    _, other = _key_pem()
    (tmp_path / "other.pub").write_bytes(other)
    make_project(project, models=[a, b], config={"namespace": "ver", "base_image": "scratch"})
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "ver" / "models"
    ref = f"oci:{layout}:{tag_of(a)}"

    def check(*extra: str, key: Path = key_pub) -> tuple[int, str]:
        result = cli("verify", ref, "--key", str(key), *extra)
        return result.exit_code, result.output

    code, out = check()
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "ok signature",
        "ok provenance",
        "ok tag",
    ]
    doc = json.loads(cli("verify", ref, "--key", str(key_pub), "--json").stdout)
    assert doc["ok"] is True and len(doc["findings"]) == 3

    # signed by another key
    code, out = check(key=tmp_path / "other.pub")
    assert code == 1 and "FAIL signature: a signature the key does not verify" in out
    assert "FAIL provenance: an attestation the key does not verify" in out

    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in _index(layout)["manifests"]
    }
    digest_a, digest_b = names[tag_of(a)], names[tag_of(b)]

    # the tag moved to another (signed) image
    _retag(layout, tag_of(a), digest_b)
    code, out = check()
    assert code == 1 and f"FAIL tag: {tag_of(a)} names {a}, the image holds {b}" in out
    _retag(layout, tag_of(a), digest_a)

    # the manifest re-written (as when a layer is replaced and the manifest pushed again)
    manifest = json.loads(oci_layout.read_blob(layout, digest_a))
    manifest.setdefault("annotations", {})["x"] = "changed"
    data = json.dumps(manifest).encode()
    forged = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / forged[7:]).write_bytes(data)
    _retag(layout, tag_of(a), forged)
    code, out = check()
    assert code == 1 and f"FAIL signature: none ({forged.replace(':', '-')}.sig is absent)" in out
    _retag(layout, tag_of(a), digest_a)

    # a provenance (signed by the right key) of another commit
    att = digest_a.replace(":", "-") + ".att"
    envelope_manifest = json.loads(oci_layout.read_blob(layout, names[att]))
    envelope = json.loads(oci_layout.read_blob(layout, envelope_manifest["layers"][0]["digest"]))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"] = (
        "0" * 40
    )
    key = load_signing_key({KEY_ENV: private.decode()})
    assert key is not None
    oci_layout.write_layout(attestation_artifact(key, statement), layout, tags=[att])
    code, out = check()
    assert (
        code == 1
        and "FAIL provenance: a provenance of commit 0000000000000000000000000000000000000000"
        in out
    )

    # the signature deleted
    _drop(layout, digest_a.replace(":", "-") + ".sig")
    code, out = check()
    assert code == 1 and "FAIL signature: none (" in out
    assert "Traceback" not in out


def test_extract_with_a_verify_key_refuses_before_writing_and_checks_every_file(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf2oci.oci import layout as oci_layout
    from hf2oci.trust.signing import attestation_artifact, load_signing_key

    model, _, files = random_repo()
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    _, other = _key_pem()
    (tmp_path / "other.pub").write_bytes(other)
    make_project(project, models=[model], config={"namespace": "ext", "base_image": "scratch"})
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "ext" / "models"
    ref = f"oci:{layout}:{tag_of(model)}"
    good = cli("extract", ref, str(tmp_path / "ok"), "--verify-key", str(tmp_path / "key.pub"))
    assert good.exit_code == 0, good.output
    from helpers import read_tree

    assert read_tree(tmp_path / "ok") == files
    bad = cli("extract", ref, str(tmp_path / "no"), "--verify-key", str(tmp_path / "other.pub"))
    assert bad.exit_code != 0 and "not verified, nothing written: FAIL signature" in bad.output
    assert not (tmp_path / "no").exists()

    # a provenance, signed by the key, whose hash of one file is not the image's bytes
    names = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in _index(layout)["manifests"]
    }
    att = names[tag_of(model)].replace(":", "-") + ".att"
    envelope_manifest = json.loads(oci_layout.read_blob(layout, names[att]))
    envelope = json.loads(oci_layout.read_blob(layout, envelope_manifest["layers"][0]["digest"]))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for dep in statement["predicate"]["buildDefinition"]["resolvedDependencies"][1:]:
        if dep["name"] == "model.safetensors":
            dep["digest"] = {"sha256": "0" * 64}
    key = load_signing_key({KEY_ENV: private.decode()})
    assert key is not None
    oci_layout.write_layout(attestation_artifact(key, statement), layout, tags=[att])
    changed = cli("extract", ref, str(tmp_path / "ch"), "--verify-key", str(tmp_path / "key.pub"))
    assert changed.exit_code != 0
    assert "model.safetensors does not match its signed hash; nothing written" in changed.output
    assert not (tmp_path / "ch").exists()


@pytest.mark.parametrize("where", ["registry", "layout"])
def test_the_model_signature_verifies_with_openssfs_model_signing_after_extract(
    where: str, hub, registry, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The independent ``model_signing verify key`` accepts the extracted folder with the
    signature hf2oci made from the streamed digests, and refuses it once a file changes."""
    import random
    import shutil
    import uuid

    rng = random.Random(where)
    files = {
        "config.json": b'{"model_type": "bert"}\n',
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "sub/tokenizer.json": b'{"v": 1}\n',
        "model.safetensors": rng.randbytes(3 << 20),  # streamed, LFS: the hub's sha256
    }
    model = f"msig/{where}-{uuid.uuid4().hex[:8]}"
    hub.add_repo(model, files)
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    config: dict[str, Any] = {"namespace": f"ms{where}", "base_image": "scratch"}
    if where == "registry":
        config["registry"] = registry.host
    make_project(project, models=[model], config=config)
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    image = (
        f"{registry.host}/ms{where}/models:{tag_of(model)}"
        if where == "registry"
        else f"oci:{project}/oci-images/ms{where}/models:{tag_of(model)}"
    )
    dest, sig = tmp_path / "model", tmp_path / "model.sig"
    got = cli("extract", image, str(dest), "--signature", str(sig),
              "--verify-key", str(tmp_path / "key.pub"))  # fmt: skip
    assert got.exit_code == 0, got.output
    tool = shutil.which("model_signing") or str(
        Path(__import__("sys").executable).with_name("model_signing")
    )

    def ms_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "verify", "key", "--signature", str(sig), "--public_key",
             str(tmp_path / "key.pub"), str(dest)], capture_output=True, text=True,
        )  # fmt: skip

    ok = ms_verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (dest / "config.json").write_bytes(b'{"model_type": "evil"}\n')
    bad = ms_verify()
    assert bad.returncode != 0 and "config.json" in bad.stdout + bad.stderr


def test_extract_signature_of_an_unsigned_image_writes_nothing(
    hub, random_repo, project: Path, tmp_path: Path
) -> None:
    model, _, _ = random_repo()
    make_project(project, models=[model], config={"namespace": "nosig", "base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    ref = f"oci:{project}/oci-images/nosig/models:{tag_of(model)}"
    got = cli("extract", ref, str(tmp_path / "d"), "--signature", str(tmp_path / "d.sig"))
    assert got.exit_code != 0 and "no model signature refers to it; nothing written" in got.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.sig").exists()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_serve_with_a_verify_key_serves_signed_images_only_and_cuts_bytes_not_signed(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from hf2oci.consume.serve.store import Store
    from hf2oci.oci import layout as oci_layout
    from hf2oci.trust.signing import attestation_artifact, load_signing_key
    from test_serve import Served

    signed, _, files = random_repo(size=(9 << 20) + 12345)  # 3 pieces of 4 MiB
    unsigned, _, _ = random_repo()
    private, public = _key_pem()
    _, other = _key_pem()
    make_project(project, models=[unsigned], config={"namespace": "sv", "base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.setenv(KEY_ENV, private.decode())
    make_project(project, models=[signed], config={"namespace": "sv", "base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    root = project / "oci-images"
    server = Served(Store("sv", root=root, ttl=0, verify_key=public))
    wrong = Served(Store("sv", root=root, ttl=0, verify_key=other))
    try:
        api = HfApi(endpoint=server.url)
        assert api.model_info(signed).sha
        serve_log = _Records()
        logging.getLogger("hf2oci.serve").addHandler(serve_log)
        try:
            got = hf_hub_download(signed, "model.safetensors", endpoint=server.url,
                                  cache_dir=tmp_path / "c")  # fmt: skip
        finally:
            logging.getLogger("hf2oci.serve").removeHandler(serve_log)
        assert Path(got).read_bytes() == files["model.safetensors"]
        assert not [r for r in serve_log.records if "cut" in r.getMessage()]  # whole, not resumed
        with pytest.raises(HfHubHTTPError) as e:
            api.model_info(unsigned)
        assert e.value.response.status_code == 403
        r = requests.get(f"{server.url}/{unsigned}/resolve/main/config.json", timeout=10)
        assert r.status_code == 403 and r.headers["X-Error-Code"] == "UnverifiedImage"
        assert "FAIL signature: none" in r.headers["X-Error-Message"]
        r = requests.get(f"{wrong.url}/{signed}/resolve/main/config.json", timeout=10)
        assert r.status_code == 403 and "does not verify" in r.headers["X-Error-Message"]

        # the provenance (signed by the key) says other bytes than the image holds: a whole
        # download is cut before its end, a Range read (bound by the manifest) still answers
        layout = root / "sv" / "models"
        names = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                 for m in _index(layout)["manifests"]}  # fmt: skip
        att = names[tag_of(signed)].replace(":", "-") + ".att"
        envelope_manifest = json.loads(oci_layout.read_blob(layout, names[att]))
        envelope = json.loads(
            oci_layout.read_blob(layout, envelope_manifest["layers"][0]["digest"])
        )
        statement = json.loads(base64.b64decode(envelope["payload"]))
        for dep in statement["predicate"]["buildDefinition"]["resolvedDependencies"][1:]:
            if dep["name"] == "model.safetensors":
                dep["digest"] = {"sha256": "1" * 64}
        key = load_signing_key({KEY_ENV: private.decode()})
        assert key is not None
        oci_layout.write_layout(attestation_artifact(key, statement), layout, tags=[att])
        url = f"{server.url}/{signed}/resolve/main/model.safetensors"
        received = b""
        server_log = _Records()
        logging.getLogger("uvicorn.error").addHandler(server_log)
        try:
            with (
                pytest.raises(requests.exceptions.RequestException),
                requests.get(url, stream=True, timeout=10) as r,
            ):
                assert r.status_code == 200
                for chunk in r.iter_content(1 << 16):
                    received += chunk
        finally:
            logging.getLogger("uvicorn.error").removeHandler(server_log)
        assert len(received) < len(files["model.safetensors"])
        assert not [rec for rec in server_log.records if rec.exc_info]  # a cut, no traceback
        part = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
        assert part.status_code == 206 and part.content == files["model.safetensors"][:100]
    finally:
        server.stop()
        wrong.stop()


@pytest.mark.parametrize("how", ["sha256", "gitBlob"])
def test_a_checked_download_hashes_its_pieces_in_order_and_holds_back_the_last(how: str) -> None:
    """serve --verify-key hashes each piece beside its send: the pieces of a whole file pass
    in order and unchanged, and a changed byte anywhere cuts the body before its last piece."""
    import hashlib
    import os
    from types import SimpleNamespace
    from typing import cast

    from hf2oci.consume.serve.files import RepoFile
    from hf2oci.consume.serve.streaming import BodyCut as _BodyCut
    from hf2oci.consume.serve.streaming import checked as _checked
    from hf2oci.digest import git_blob_hash

    data = os.urandom(1 << 20)
    h = hashlib.sha256() if how == "sha256" else git_blob_hash(len(data))
    h.update(data)
    want = {how: h.hexdigest()}
    f = cast(RepoFile, SimpleNamespace(path="model.bin", size=len(data)))
    pieces = [data[i : i + 4099] for i in range(0, len(data), 4099)]  # 256 uneven pieces
    assert list(_checked(iter(pieces), f, want)) == pieces
    for where in (0, len(pieces) // 2, len(pieces) - 1):
        bad = list(pieces)
        bad[where] = bytes([bad[where][0] ^ 1]) + bad[where][1:]
        sent: list[bytes] = []
        with pytest.raises(_BodyCut):
            for piece in _checked(iter(bad), f, want):
                sent.append(piece)
        assert sent == bad[:-1]  # all but the last: never the whole wrong file
    sent = []
    with pytest.raises(_BodyCut):  # a layer that ends short is cut too
        for piece in _checked(iter(pieces[:-1]), f, want):
            sent.append(piece)
    assert sent == pieces[:-1]


def test_deploy_policy_makes_containers_tools_demand_a_signature(
    hub, random_repo, registry, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy hf2oci writes is one containers/image reads: Debian's skopeo applies its
    sigstoreSigned requirement to the mirror's repository. An unsigned image there has "no
    signature"; a signed one has its cosign signature found (and then, Debian having sigstore
    disabled, cannot be checked: cosign-aware nodes check it); an image outside copies."""
    model, _, _ = random_repo()
    config = {"registry": registry.host, "namespace": "pol", "base_image": "scratch"}
    make_project(project, models=[model], config={**config, "namespace": "free"})
    assert cli("sync", "-q").exit_code == 0
    make_project(project, models=[model], config={**config, "namespace": "bare"})
    assert cli("sync", "-q").exit_code == 0
    private, public = _key_pem()
    monkeypatch.setenv(KEY_ENV, private.decode())
    make_project(project, models=[model], config=config)
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.delenv(KEY_ENV)
    (tmp_path / "key.pub").write_bytes(public)
    out = tmp_path / "node"
    got = cli("deploy", "policy", f"{registry.host}/pol/models", f"{registry.host}/bare/models",
              "--key", str(tmp_path / "key.pub"), "-o", str(out))  # fmt: skip
    assert got.exit_code == 0, got.output
    doc = json.loads((out / "policy.json").read_text())
    (req,) = doc["transports"]["docker"][f"{registry.host}/pol/models"]
    assert req["type"] == "sigstoreSigned" and req["signedIdentity"] == {"type": "matchRepository"}
    assert "use-sigstore-attachments: true" in (out / "registries.d" / "hf2oci.yaml").read_text()
    for (one,) in doc["transports"]["docker"].values():
        one["keyPath"] = str(out / "keys" / "hf2oci.pub")  # where the node would have it
    (out / "policy.json").write_text(json.dumps(doc))

    def copy(repo: str) -> subprocess.CompletedProcess[str]:
        source = f"docker://{registry.host}/{repo}:{tag_of(model)}"
        dest = f"oci:{tmp_path / repo.replace('/', '_')}:t"
        return subprocess.run(
            ["skopeo", "--policy", str(out / "policy.json"), "--registries.d",
             str(out / "registries.d"), "copy", "--src-tls-verify=false", source, dest],
            capture_output=True, text=True,
        )  # fmt: skip

    unsigned = copy("bare/models")
    assert unsigned.returncode != 0 and "no signature exists" in unsigned.stderr, unsigned.stderr
    signed = copy("pol/models")
    assert signed.returncode != 0 and "sigstore disabled" in signed.stderr, signed.stderr
    assert copy("free/models").returncode == 0
    bad = cli(
        "deploy", "policy", "x/y", "--key", str(project / "get_hf" / "config.yaml"), "-o", str(out)
    )
    assert bad.exit_code != 0 and "not a PEM public key" in bad.output


def test_malformed_signature_artifacts_are_findings_not_tracebacks(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf2oci.oci import layout as oci_layout
    from hf2oci.trust.signing import MT_DSSE, MT_SIMPLE_SIGNING, SIGNATURE_ANNOTATION, _artifact

    model, _, _ = random_repo()
    private, public = _key_pem()
    (tmp_path / "key.pub").write_bytes(public)
    make_project(project, models=[model], config={"namespace": "mal", "base_image": "scratch"})
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "mal" / "models"
    digest = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
              for m in _index(layout)["manifests"]}[tag_of(model)]  # fmt: skip
    stem = digest.replace(":", "-")
    bad_sig = _artifact(b"{not json", MT_SIMPLE_SIGNING, {SIGNATURE_ANNOTATION: "%%%"})
    bad_att = _artifact(b'{"payload": 3}', MT_DSSE, {"predicateType": "x"})
    oci_layout.write_layout(bad_sig, layout, tags=[f"{stem}.sig"])
    oci_layout.write_layout(bad_att, layout, tags=[f"{stem}.att"])
    got = cli("verify", f"oci:{layout}:{tag_of(model)}", "--key", str(tmp_path / "key.pub"))
    assert got.exit_code == 1 and "Traceback" not in got.output
    assert f"FAIL signature: {stem}.sig is malformed" in got.output
    assert f"FAIL provenance: {stem}.att is malformed" in got.output


def test_tampering_in_a_real_registry_is_refused_by_verify_extract_and_serve(
    hub, random_repo, registry, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the registry itself: the tag moved to another signed image, the manifest pushed again
    with a layer replaced, a provenance of another commit, the signature deleted. Each is one
    FAIL line of verify, an extract that writes nothing, and a 403 from serve."""
    import hashlib

    from hf2oci.consume.serve.store import registry_store
    from hf2oci.oci import push
    from hf2oci.oci.registry import RegistryClient
    from hf2oci.trust.signing import attestation_artifact, load_signing_key
    from test_serve import Served

    a, _, _ = random_repo()
    b, _, _ = random_repo()
    private, public = _key_pem()
    pub = tmp_path / "key.pub"
    pub.write_bytes(public)
    ns = f"tamper{hashlib.sha256(a.encode()).hexdigest()[:6]}"
    config = {"registry": registry.host, "namespace": ns, "base_image": "scratch"}
    make_project(project, models=[a, b], config=config)
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    repo = f"{ns}/models"
    ref = f"{registry.host}/{repo}:{tag_of(a)}"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    base = f"{registry.url}/v2/{repo}/manifests"
    good = requests.get(f"{base}/{tag_of(a)}", headers=accept, timeout=10)
    digest_a = good.headers["Docker-Content-Digest"]

    def put(tag: str, body: bytes) -> None:
        mt = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        r = requests.put(f"{base}/{tag}", data=body, timeout=10, headers=mt)
        r.raise_for_status()

    server = Served(registry_store(registry.host, ns, ttl=0, stale=0, verify_key=public))

    def refused(why: str, n: int) -> None:
        checked = cli("verify", ref, "--key", str(pub))
        assert checked.exit_code == 1 and why in checked.output, checked.output
        dest = tmp_path / f"x{n}"
        ext = cli("extract", ref, str(dest), "--verify-key", str(pub))
        assert ext.exit_code != 0 and "nothing written" in ext.output and not dest.exists()
        r = requests.get(f"{server.url}/{a}/resolve/main/config.json", timeout=10)
        assert r.status_code == 403 and r.headers["X-Error-Code"] == "UnverifiedImage", (
            r.status_code
        )

    try:
        assert cli("verify", ref, "--key", str(pub)).exit_code == 0
        # the tag moved to b's (signed) image
        put(tag_of(a), requests.get(f"{base}/{tag_of(b)}", headers=accept, timeout=10).content)
        checked = cli("verify", ref, "--key", str(pub))
        assert checked.exit_code == 1 and f"FAIL tag: {tag_of(a)} names {a}" in checked.output
        dest = tmp_path / "moved"
        assert cli("extract", ref, str(dest), "--verify-key", str(pub)).exit_code != 0
        assert not dest.exists()
        put(tag_of(a), good.content)
        # the manifest pushed again with its first layer replaced by another blob
        manifest = json.loads(good.content)
        other = json.loads(requests.get(f"{base}/{tag_of(b)}", headers=accept, timeout=10).content)
        manifest["layers"][0] = other["layers"][0]
        put(tag_of(a), json.dumps(manifest).encode())
        refused("FAIL signature: none", 1)
        put(tag_of(a), good.content)
        # a provenance, signed by the key, of another commit
        client = RegistryClient(registry.host)
        att = digest_a.replace(":", "-") + ".att"
        envelope_doc = requests.get(f"{base}/{att}", headers=accept, timeout=10).json()
        blob = requests.get(f"{registry.url}/v2/{repo}/blobs/{envelope_doc['layers'][0]['digest']}",
                            timeout=10).json()  # fmt: skip
        statement = json.loads(base64.b64decode(blob["payload"]))
        statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"] = {
            "gitCommit": "f" * 40
        }
        key = load_signing_key({KEY_ENV: private.decode()})
        assert key is not None
        original_att = requests.get(f"{base}/{att}", headers=accept, timeout=10).content
        push.push(client, attestation_artifact(key, statement), repo, tags=[att])
        refused("FAIL provenance: a provenance of commit ffff", 2)
        put(att, original_att)
        assert cli("verify", ref, "--key", str(pub)).exit_code == 0
        # the signature deleted
        sig = digest_a.replace(":", "-") + ".sig"
        sig_digest = requests.get(f"{base}/{sig}", headers=accept, timeout=10).headers[
            "Docker-Content-Digest"
        ]
        assert requests.delete(f"{base}/{sig_digest}", timeout=10).status_code == 202
        refused("FAIL signature: none", 3)
    finally:
        server.stop()


def test_verify_key_in_config_is_the_consumers_policy(
    hub, random_repo, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, _ = random_repo()
    private, public = _key_pem()
    _, other = _key_pem()
    (project / "keys").mkdir(parents=True)
    (project / "keys" / "mirror.pub").write_bytes(public)
    (project / "keys" / "other.pub").write_bytes(other)
    make_project(project, models=[model], config={"namespace": "pol", "base_image": "scratch"})
    monkeypatch.setenv(KEY_ENV, private.decode())
    assert cli("sync", "-q").exit_code == 0
    monkeypatch.delenv(KEY_ENV)
    make_project(project, models=[model], config={"namespace": "polu", "base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    signed = f"oci:{project / 'oci-images' / 'pol' / 'models'}:{tag_of(model)}"
    unsigned = f"oci:{project / 'oci-images' / 'polu' / 'models'}:{tag_of(model)}"

    # the consumer's config names the key: extract uses only images it verifies
    (project / "get_hf" / "config.yaml").write_text("verify_key: keys/mirror.pub\n")
    ok = cli("extract", signed, str(tmp_path / "ok"))
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "ok" / "config.json").is_file()
    refused = cli("extract", unsigned, str(tmp_path / "no"))
    assert refused.exit_code != 0 and "signature" in refused.output
    assert not (tmp_path / "no").exists()
    # the flag wins over the config
    flagged = cli("extract", signed, str(tmp_path / "fl"), "--verify-key", "keys/other.pub")
    assert flagged.exit_code != 0 and not (tmp_path / "fl").exists()
    # a key that is not there: one line naming the setting, for extract and serve alike
    (project / "get_hf" / "config.yaml").write_text("verify_key: keys/absent.pub\n")
    for args in (["extract", signed, str(tmp_path / "ab")],
                 ["serve", "--layout", str(project / "oci-images"), "--port", "1"]):  # fmt: skip
        result = cli(*args)
        assert result.exit_code != 0
        assert (
            "get_hf/config.yaml: verify_key: keys/absent.pub: cannot read the key" in result.output
        )
        assert "Traceback" not in result.output
    (project / "get_hf" / "config.yaml").write_text("verify_key: [a, list]\n")
    bad = cli("extract", signed, str(tmp_path / "ab"))
    assert bad.exit_code != 0 and "get_hf/config.yaml:1: " in bad.output
