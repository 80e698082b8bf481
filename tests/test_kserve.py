"""KServe: every image holds /models → REPO (relative), read the way the modelcar sidecar reads
it; `hf2oci deploy kserve` prints an InferenceService KServe's own model classes accept."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import cli, make_project

KSERVE_VENV = Path(os.environ.get("HF2OCI_KSERVE_VENV", "/var/cache/hf2oci/kserve-0.21.0"))
IMAGE = "registry.example.com/hgfkeep/models:sentence-transformers--all-MiniLM-L6-v2"

#: KServe's InferenceService model class (kserve.V1beta1InferenceService, generated from its
#: OpenAPI schema) reads the YAML and writes it back: a field it does not know is dropped and a
#: value of the wrong type raises, so all we wrote must come back as it was (the class adds its
#: defaults, such as the container name "")
_VALIDATE = """
import json, sys
import kserve.models
import kubernetes.client.models as k8s
import yaml
from kserve import ApiClient, V1beta1InferenceService

# KServe's classes name Kubernetes' own (V1ObjectMeta, V1Container…) but look them up among
# its own models: give it Kubernetes' generated classes under those names
for name in dir(k8s):
    if name.startswith("V") and not hasattr(kserve.models, name):
        setattr(kserve.models, name, getattr(k8s, name))

doc = yaml.safe_load(sys.stdin)
class Response:
    data = json.dumps(doc)
client = ApiClient()
isvc = client.deserialize(Response(), V1beta1InferenceService)
print(json.dumps(client.sanitize_for_serialization(isvc), sort_keys=True))
"""


def _kept(ours: object, theirs: object) -> bool:
    """Whether ``theirs`` holds all of ``ours`` unchanged (and maybe more keys)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            k in theirs and _kept(v, theirs[k]) for k, v in ours.items()
        )
    if isinstance(ours, list):
        return (
            isinstance(theirs, list)
            and len(ours) == len(theirs)
            and all(_kept(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    return ours == theirs


def _kserve_reads(manifest: str) -> dict[str, object]:
    python = KSERVE_VENV / "bin" / "python"
    assert python.is_file(), f"no KServe client at {KSERVE_VENV}: run scripts/test.sh"
    out = subprocess.run(
        [str(python), "-c", _VALIDATE], input=manifest, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


@pytest.mark.parametrize("backend", ["vllm", "huggingface"])
def test_inference_service_is_what_kserve_reads(backend: str) -> None:
    r = cli("deploy", "kserve", IMAGE, "--backend", backend, "--gpu", "1", "--memory", "6Gi")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert _kept(json.loads(json.dumps(doc)), _kserve_reads(r.stdout))  # nothing dropped/changed
    model = doc["spec"]["predictor"]["model"]
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert model["storageUri"] == f"oci://{IMAGE}"
    assert model["modelFormat"] == {"name": "huggingface"}
    assert f"--backend={backend}" in model["args"]
    assert "--model_name=sentence-transformers/all-MiniLM-L6-v2" in model["args"]
    assert model["resources"]["limits"] == {"memory": "6Gi", "nvidia.com/gpu": "1"}


def test_kserve_validator_catches_a_bad_manifest() -> None:
    """The check above can fail: an unknown field is dropped, so the round trip differs."""
    r = cli("deploy", "kserve", IMAGE)
    bad = r.stdout.replace("storageUri:", "storageURI:")
    assert not _kept(yaml.safe_load(bad), _kserve_reads(bad))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["not a ref"], "invalid image reference 'not a ref'"),
        ([IMAGE, "--name", "Bad_Name"], "invalid --name 'Bad_Name'"),
        ([IMAGE, "--memory", "lots"], "--memory 'lots' is not a Kubernetes quantity"),
        ([IMAGE, "--backend", "tgi"], "'tgi' is not one of"),
    ],
)
def test_kserve_bad_input_is_one_line(args: list[str], words: str) -> None:
    r = cli("deploy", "kserve", *args)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert words in r.stderr and len(r.stderr.strip().splitlines()) <= 4  # click: usage + error


@pytest.mark.docker
def test_modelcar_reads_models_through_the_link_like_the_sidecar(
    hub, random_repo, registry, busybox_base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model, _, files = random_repo()
    make_project(
        tmp_path,
        models=[model],
        config={"registry": registry.host, "namespace": "kserve", "base_image": busybox_base},
    )
    assert cli("sync", "-q").exit_code == 0
    image = f"{registry.host}/kserve/models:{model.replace('/', '--')}"
    subprocess.run(["docker", "pull", "-q", image], check=True, capture_output=True)

    def run(*args: str) -> bytes:
        return subprocess.run(
            ["docker", "run", "--rm", "--network", "none", *args],
            check=True, capture_output=True, timeout=60,
        ).stdout  # fmt: skip

    # the link is relative: it resolves inside whichever root it is reached through
    assert run(image, "readlink", "/models").strip() == b"REPO"
    assert run(image, "cat", "/proc/self/root/models/config.json") == files["config.json"]

    # KServe's modelcar: the model image runs as a sidecar that links its root's /models into a
    # shared volume; the server container, in the same PID namespace, reads the files there
    name = f"modelcar-{uuid.uuid4().hex[:8]}"
    shared = tmp_path / "mnt"
    shared.mkdir()
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "none", "-v", f"{shared}:/mnt",
         image, "sh", "-c", "ln -sf /proc/$$/root/models /mnt/ && exec sleep 120"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        for path in ("config.json", "sub/dir/part-0.txt", "données/é t.txt"):
            got = run(
                "--pid", f"container:{name}", "-v", f"{shared}:/mnt", busybox_base,
                "sh", "-c", f'for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /mnt/models ] && break; '
                f'sleep 0.5; done; cat "/mnt/models/{path}"',
            )  # fmt: skip
            assert got == files[path], path
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
