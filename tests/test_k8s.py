"""`hf2oci k8s`: manifests valid for Kubernetes' own schemas, golden output, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate.utils
import pytest
import yaml

from helpers import assert_golden, cli

#: image volumes are in the schemas from 1.31 on; validate against the newest shipped
NEWEST = str(max(kubernetes_validate.utils.all_versions(), key=kubernetes_validate.utils.Version))

GOLDEN = Path(__file__).parent / "golden" / "k8s"
IMAGE = "registry.example.com/hgfkeep/models:ggml-org--gemma-3-270m-GGUF"


def validate(text: str, tmp_path: Path, version: str = NEWEST) -> subprocess.CompletedProcess[str]:
    """Kubernetes' own schemas of ``version``, strict, on the YAML ``text``."""
    out = tmp_path / f"m-{version}.yaml"
    out.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(out)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("runtime", ["llamacpp", "vllm"])
@pytest.mark.parametrize("mode", ["init", "image-volume"])
def test_manifests_validate_and_match_golden(runtime: str, mode: str, tmp_path: Path) -> None:
    r = cli(
        "deploy",
        "k8s",
        IMAGE,
        "--runtime",
        runtime,
        "--mode",
        mode,
        *(["--gpu", "1"] if runtime == "vllm" else []),
    )
    assert r.exit_code == 0, r.output
    # the newest Kubernetes schemas the package ships (image volumes need ≥ 1.31), strict
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    if mode == "image-volume":  # the schema check is real: 1.30 has no image volumes
        assert validate(r.stdout, tmp_path, "1.30.0").returncode != 0
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    pod = docs[0]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["SERVED_MODEL_NAME"] == "ggml-org/gemma-3-270m-GGUF"
    assert server["readinessProbe"]["httpGet"]["path"] == (
        "/health" if runtime == "vllm" else "/v1/models"
    )
    if mode == "init":
        assert pod["initContainers"][0]["image"] == IMAGE
        assert pod["volumes"][0] == {"name": "model", "emptyDir": {}}
        assert env["MODEL_DIR"] == "/models"
    else:
        assert "initContainers" not in pod
        assert pod["volumes"][0]["image"]["reference"] == IMAGE
        assert server["volumeMounts"][0]["readOnly"] is True
        assert env["MODEL_DIR"] == "/models/REPO"
    golden = GOLDEN / f"{runtime}-{mode}.yaml"
    assert_golden(r.stdout, golden)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--name", "Bad_Name"], "invalid --name 'Bad_Name'"),
        (["--memory", "lots"], "not a Kubernetes quantity"),
        (["--runtime-image", "bad ref"], "invalid image reference"),
    ],
)
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp", *args)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("secrets", [False, True])
def test_hub_server_manifests_validate_and_match_golden(secrets: bool, tmp_path: Path) -> None:
    args = ["deploy", "k8s", "--serve", "--registry", "registry.example.com",
            "--namespace", "hgfkeep", "--replicas", "3"]  # fmt: skip
    if secrets:
        args += ["--token-secret", "hub-tokens", "--registry-secret", "registry-login"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    deployment, service = yaml.safe_load_all(r.stdout)
    assert deployment["spec"]["replicas"] == 3 and service["kind"] == "Service"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["args"][:5] == ["serve", "--registry", "registry.example.com", "--namespace",
                                     "hgfkeep"]  # fmt: skip
    if secrets:
        assert container["args"][-2:] == ["--token-file", "/etc/hf2oci/tokens"]
        assert pod["volumes"][0]["secret"]["secretName"] == "hub-tokens"
        names = {e["name"] for e in container["env"]}
        assert names == {"HF2OCI_REGISTRY_USERNAME", "HF2OCI_REGISTRY_PASSWORD"}
        assert "password" not in r.stdout.split("secretKeyRef")[0]  # only references
    else:
        assert "--token-file" not in container["args"] and "volumes" not in pod
    golden = GOLDEN / f"hub{'-secrets' if secrets else ''}.yaml"
    assert_golden(r.stdout, golden)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--serve", "--registry", "r.io"], "--registry and --namespace"),
        (["--serve", "--registry", "r.io", "--namespace", "n", "--runtime", "vllm"], "no MODEL"),
        (
            ["--serve", "--registry", "r.io", "--namespace", "n", "--token-secret", "Bad"],
            "invalid --token-secret 'Bad'",
        ),
        (
            ["--serve", "--registry", "r.io", "--namespace", "n", "--registry-secret", "a_b"],
            "invalid --registry-secret 'a_b'",
        ),
        (
            ["--serve", "--registry", "r.io", "--namespace", "n", "--cpu", "lots"],
            "--cpu 'lots' is not a Kubernetes quantity",
        ),
        ([IMAGE], "give --runtime"),
    ],
)
def test_hub_server_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "k8s", *args)
    assert r.exit_code in (1, 2) and words in r.stderr and "Traceback" not in r.output


def test_image_volume_of_a_modelpack_artifact(tmp_path: Path) -> None:
    r = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp", "--mode", "image-volume",
            "--format", "modelpack")  # fmt: skip
    assert r.exit_code == 0, r.output
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "CRI-O >= 1.33" in r.stdout and "containerd does not" in r.stdout
    server = next(yaml.safe_load_all(r.stdout))["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["MODEL_DIR"] == "/models"  # an artifact's files are at its root
    refused = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp", "--format", "modelpack")
    assert refused.exit_code == 2 and "use --mode image-volume" in refused.stderr


def test_mounts_that_cannot_join_parts_say_so_and_the_init_step_joins_them() -> None:
    """An image volume or a KServe modelcar mounts the image as it is: a file carried in parts
    (over the registry's layer size limit) stays in parts there. deploy says so in one line on
    stderr (the manifests on stdout stay as they are); the init container runs join.sh."""
    volume = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp", "--mode", "image-volume")
    modelcar = cli("deploy", "kserve", IMAGE)
    init = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp")
    for r, what in ((volume, "an image volume"), (modelcar, "a modelcar")):
        assert r.exit_code == 0
        (line,) = r.stderr.splitlines()
        assert line.startswith(
            "note: a file over the registry's layer size limit is carried in parts (label "
            f"io.hf2oci.parts) that {what} cannot join"
        )
        assert "note:" not in r.stdout
    assert init.exit_code == 0 and init.stderr == ""
    assert "sh /.hf2oci/join.sh /mnt/model" in init.stdout
    compose = cli("deploy", "compose", IMAGE, "--runtime", "llamacpp")
    assert "sh /.hf2oci/join.sh /mnt/model" in compose.stdout


HUB_MODEL = "ggml-org/gemma-3-270m-GGUF:Q4_K_M"


def test_llama_server_through_the_hub_validates_and_matches_golden(tmp_path: Path) -> None:
    """--hub: llama.cpp's own server loads the repo by id through serve (`-hf`), no image."""
    r = cli("deploy", "k8s", HUB_MODEL, "--hub", "http://hf2oci-hub:8080",
            "--token-secret", "hub-token")  # fmt: skip
    assert r.exit_code == 0, r.output
    v = validate(r.stdout, tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    deployment, service = yaml.safe_load_all(r.stdout)
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert "initContainers" not in pod and pod["volumes"] == [{"name": "cache", "emptyDir": {}}]
    assert server["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    assert server["args"][:4] == ["-hf", HUB_MODEL, "--alias", "ggml-org/gemma-3-270m-GGUF"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in server["env"]}
    assert env["MODEL_ENDPOINT"] == "http://hf2oci-hub:8080" and env["LLAMA_CACHE"] == "/cache"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hub-token", "key": "token"}}
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["ports"][0]["port"] == 8000
    golden = GOLDEN / "llamacpp-hub.yaml"
    assert_golden(r.stdout, golden)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["not-a-repo", "--hub", "http://h:8080"], "give ORG/REPO[:QUANT]"),
        (["o/r:Q4 K", "--hub", "http://h:8080"], "is not a quant tag"),
        ([HUB_MODEL, "--hub", "h:8080"], "give the hub's URL"),
        ([HUB_MODEL, "--hub", "http://h", "--runtime", "vllm"], "--runtime llamacpp"),
        ([HUB_MODEL, "--hub", "http://h", "--mode", "image-volume"], "mounts no image"),
        ([HUB_MODEL, "--hub", "http://h", "--token-secret", "A_B"], "invalid --token-secret"),
        ([HUB_MODEL, "--hub", "http://h", "--s3-endpoint", "http://s:9000"], "no --s3-* option"),
        ([HUB_MODEL, "--hub", "http://h", "--s3-port", "9000"], "no --s3-* option"),
    ],
)
def test_llama_server_through_the_hub_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "k8s", *args)
    assert r.exit_code in (1, 2) and words in r.stderr and "Traceback" not in r.output


def test_llama_server_through_the_hub_in_compose_takes_no_s3_endpoint() -> None:
    r = cli("deploy", "compose", HUB_MODEL, "--hub", "http://h:8080",
            "--s3-endpoint", "http://s:9000")  # fmt: skip
    assert r.exit_code == 2 and "give no --s3-endpoint" in r.stderr, r.output


def test_llama_server_through_the_hub_in_compose(tmp_path: Path) -> None:
    import shutil

    r = cli("deploy", "compose", HUB_MODEL, "--hub", "http://hub.internal:8080")
    assert r.exit_code == 0, r.output
    server = yaml.safe_load(r.stdout)["services"]["server"]
    assert server["command"][:2] == ["-hf", HUB_MODEL]
    assert server["environment"]["MODEL_ENDPOINT"] == "http://hub.internal:8080"
    assert server["volumes"] == ["cache:/cache"]
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    path = tmp_path / "compose.yaml"
    path.write_text(r.stdout)
    check = subprocess.run([*compose, "-f", str(path), "config", "-q"], capture_output=True,
                           text=True, env={**os.environ, "HF_TOKEN": ""})  # fmt: skip
    assert check.returncode == 0, check.stderr
