"""`hf2oci k8s`: manifests valid for Kubernetes' own schemas, golden output, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate.utils
import pytest
import yaml

from helpers import cli

#: image volumes are in the schemas from 1.31 on; validate against the newest shipped
NEWEST = str(max(kubernetes_validate.utils.all_versions(), key=kubernetes_validate.utils.Version))

GOLDEN = Path(__file__).parent / "golden" / "k8s"
IMAGE = "registry.example.com/hgfkeep/models:ggml-org--gemma-3-270m-GGUF"


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
    out = tmp_path / "m.yaml"
    out.write_text(r.stdout)
    # the newest Kubernetes schemas the package ships (image volumes need ≥ 1.31), strict
    v = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", NEWEST, str(out)],
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stdout + v.stderr
    if mode == "image-volume":  # the schema check is real: 1.30 has no image volumes
        old = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", str(out)]
        assert subprocess.run(old, capture_output=True).returncode != 0
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
    if os.environ.get("HF2OCI_UPDATE_GOLDEN"):
        golden.write_text(r.stdout)
    assert r.stdout == golden.read_text()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--name", "Bad_Name"], "invalid name"),
        (["--memory", "lots"], "not a Kubernetes quantity"),
        (["--runtime-image", "bad ref"], "invalid image reference"),
    ],
)
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "k8s", IMAGE, "--runtime", "llamacpp", *args)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
