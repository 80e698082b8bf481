"""``hf2oci deploy`` for serve's S3 face: the hub with ``--s3-port``, and vLLM streaming a
mirrored model from it (``--s3-endpoint``: k8s and compose), valid for Kubernetes' own schemas
and docker compose, golden output, bad input; the runtime entrypoint given an ``s3://`` model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import assert_golden, cli
from test_k8s import GOLDEN, validate
from test_runtime import recorder, run_entrypoint

IMAGE = "registry.example.com/hgfkeep/models:sentence-transformers--all-MiniLM-L6-v2"
ENDPOINT = "http://hf2oci-hub.ml.svc:9000"
__all__ = ["recorder"]  # a fixture


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("secret", [True, False])
def test_vllm_streaming_from_the_s3_face_validates_and_matches_golden(
    secret: bool, tmp_path: Path
) -> None:
    args = ["deploy", "k8s", IMAGE, "--runtime", "vllm", "--s3-endpoint", ENDPOINT, "--gpu", "1"]
    r = cli(*args, *(["--s3-secret", "hub-s3"] if secret else []))
    assert r.exit_code == 0, r.output
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    deployment, service = yaml.safe_load_all(r.stdout)
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert "initContainers" not in pod and "volumes" not in pod and "volumeMounts" not in server
    env = _env(server)
    assert env["MODEL_DIR"] == "s3://models/sentence-transformers/all-MiniLM-L6-v2/"
    assert env["AWS_ENDPOINT_URL"] == ENDPOINT
    assert env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] == "0"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    if secret:
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": "hub-s3", "key": "AWS_SECRET_ACCESS_KEY"}
        }
        assert "RUNAI_STREAMER_S3_UNSIGNED" not in env
        golden = GOLDEN / "vllm-s3.yaml"
        assert_golden(r.stdout, golden)
    else:
        assert env["RUNAI_STREAMER_S3_UNSIGNED"] == "1" and "AWS_SECRET_ACCESS_KEY" not in env
    assert service["spec"]["ports"][0]["port"] == 8000


def test_a_commits_tag_streams_that_revision() -> None:
    r = cli("deploy", "k8s", IMAGE + "--0123456789ab", "--runtime", "vllm",
            "--s3-endpoint", ENDPOINT)  # fmt: skip
    assert r.exit_code == 0, r.output
    env = _env(next(yaml.safe_load_all(r.stdout))["spec"]["template"]["spec"]["containers"][0])
    assert env["MODEL_DIR"] == "s3://models/sentence-transformers/all-MiniLM-L6-v2@0123456789ab/"
    assert env["SERVED_MODEL_NAME"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_hub_with_its_s3_port_validates_and_matches_golden(tmp_path: Path) -> None:
    r = cli("deploy", "k8s", "--serve", "--registry", "registry.example.com", "--namespace",
            "hgfkeep", "--token-secret", "hub-tokens", "--s3-port", "9000")  # fmt: skip
    assert r.exit_code == 0, r.output
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    deployment, service = yaml.safe_load_all(r.stdout)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--s3-port") + 1] == "9000"
    assert {"name": "s3", "containerPort": 9000} in container["ports"]
    assert {"name": "s3", "port": 9000, "targetPort": "s3"} in service["spec"]["ports"]
    golden = GOLDEN / "hub-s3.yaml"
    assert_golden(r.stdout, golden)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([IMAGE, "--runtime", "llamacpp", "--s3-endpoint", ENDPOINT], "use --runtime vllm"),
        ([IMAGE, "--runtime", "vllm", "--s3-endpoint", "hub:9000"], "http(s)://HOST:PORT"),
        ([IMAGE, "--runtime", "vllm", "--s3-endpoint", ENDPOINT, "--mode", "image-volume"],
         "no --mode"),
        ([IMAGE, "--runtime", "vllm", "--s3-secret", "s"], "goes with --s3-endpoint"),
        ([IMAGE, "--runtime", "vllm", "--s3-endpoint", ENDPOINT, "--s3-secret", "Bad_S"],
         "invalid --s3-secret"),
        ([IMAGE, "--runtime", "vllm", "--s3-port", "9000"], "hub server's"),
        (["--serve", "--registry", "r.io", "--namespace", "n", "--s3-endpoint", ENDPOINT],
         "model server's"),
        (["--serve", "--registry", "r.io", "--namespace", "n", "--s3-port", "8080"],
         "the hub's own port"),
        (["registry.example.com/hgfkeep/models:latest", "--runtime", "vllm", "--s3-endpoint",
          ENDPOINT], "no repo id in its tag"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "k8s", *args)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compose_streaming_from_the_s3_face_is_accepted_by_docker_compose(
    tmp_path: Path,
) -> None:
    r = cli("deploy", "compose", IMAGE, "--runtime", "vllm", "--s3-endpoint", ENDPOINT)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert list(doc["services"]) == ["server"] and "volumes" not in doc
    env = doc["services"]["server"]["environment"]
    assert env["MODEL_DIR"] == "s3://models/sentence-transformers/all-MiniLM-L6-v2/"
    assert env["AWS_ENDPOINT_URL"] == ENDPOINT
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"  # from the shell
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    path = tmp_path / "compose.yaml"
    path.write_text(r.stdout)
    check = subprocess.run(
        [*compose, "-f", str(path), "config"], capture_output=True, text=True,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": "a-token"},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "AWS_SECRET_ACCESS_KEY: a-token" in check.stdout
    bad = cli("deploy", "compose", IMAGE, "--runtime", "llamacpp", "--s3-endpoint", ENDPOINT)
    assert bad.exit_code != 0 and "use --runtime vllm" in bad.stderr


def test_the_entrypoint_streams_an_s3_model_with_runai(tmp_path: Path, recorder: Path) -> None:
    record = tmp_path / "rec.json"
    env = {"MODEL_DIR": "s3://models/org/m/", "VLLM_BIN": str(recorder),
           "RECORD_TO": str(record), "SERVED_MODEL_NAME": "org/m"}  # fmt: skip
    rc, err = run_entrypoint("vllm", env, "--dtype", "float32")
    assert rc == 0, err
    argv = json.loads(record.read_text())["argv"]
    assert argv[:2] == ["serve", "s3://models/org/m/"]
    assert argv[argv.index("--load-format") + 1] == "runai_streamer"
    assert argv[argv.index("--served-model-name") + 1] == "org/m" and argv[-1] == "float32"
    rc, _ = run_entrypoint("vllm", {**env}, "--load-format", "auto")
    assert rc == 0 and json.loads(record.read_text())["argv"].count("--load-format") == 1
