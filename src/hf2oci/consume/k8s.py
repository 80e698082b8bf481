"""Kubernetes manifests that serve a model image: Deployment + Service with a runtime, the hub
server, or a KServe InferenceService reading the image as a modelcar."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hf2oci import naming
from hf2oci.consume.runtime import RUNTIMES
from hf2oci.errors import InvalidRepoId, UsageError
from hf2oci.reference import parse_reference
from hf2oci.render import render
from hf2oci.repofiles import JOIN_PATH, REPO_DIR

Mode = Literal["init", "image-volume", "s3"]
#: the --mode choices ("s3", the weights streamed from serve's S3 face, comes with --s3-endpoint)
MODES: tuple[Mode, ...] = ("init", "image-volume")
#: what the init step (Kubernetes init container, compose service) runs in the model image: copy
#: /REPO into the volume, then put back any file carried in parts (``repofiles.JOIN_PATH``)
INIT_COMMAND = (
    f"cp -a /{REPO_DIR}/. /mnt/model/ && if [ -f /{JOIN_PATH} ]; then sh /{JOIN_PATH} "
    "/mnt/model; fi"
)
#: said where a mount, not a copy, serves the image: nothing there can join parts
NO_JOIN = (
    "note: a file over the registry's layer size limit is carried in parts "
    "(label io.hf2oci.parts) that {what} cannot join: serve such images with "
    "`hf2oci deploy k8s --mode init`"
)
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?")


@dataclass(frozen=True)
class ServeSpec:
    model_image: str
    runtime: str
    mode: Mode = "init"
    #: what MODEL_IMAGE is: an image (files under /REPO) or a ModelPack artifact (files at its
    #: root, one per layer; no shell, so only an image volume can hold it)
    format: str = "image"
    name: str | None = None
    runtime_image: str | None = None
    cpu: str = "2"
    memory: str | None = None
    gpu: int = 0
    #: ``hf2oci serve --s3-port``'s URL: vLLM streams the weights from it (run:ai's streamer)
    s3_endpoint: str | None = None
    #: a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a serve token); without
    #: it, anonymous reads (a serve with no token file)
    s3_secret: str | None = None


def _check(*, names: Mapping[str, str | None], quantities: Mapping[str, str]) -> None:
    """UsageError, naming the option, for a name or a quantity that Kubernetes would refuse."""
    for what, value in names.items():
        if value is not None and (len(value) > 63 or not _DNS1123.fullmatch(value)):
            raise UsageError(
                f"invalid {what} {value!r}: lower-case letters, digits and '-', at most 63"
            )
    for what, value in quantities.items():
        if not _QUANTITY.fullmatch(value):
            raise UsageError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")


def served_model_name(model_image: str) -> str:
    """The repo id, read back from the image tag (``org--name`` → ``org/name``) when it can be."""
    ref = parse_reference(model_image)
    try:
        return naming.repo_id_from_tag(ref.tag or "")
    except InvalidRepoId:
        return ref.repository.rsplit("/", 1)[-1]


def default_name(model_image: str, runtime: str) -> str:
    ref = parse_reference(model_image)
    base = (ref.tag or ref.repository.rsplit("/", 1)[-1]).lower()
    base = re.sub(r"[^a-z0-9-]+", "-", base)
    base = re.sub(r"-+", "-", base).strip("-")
    return f"{base[: 62 - len(runtime)].rstrip('-')}-{runtime}"


def s3_model_url(model_image: str) -> str:
    """Where serve's S3 face has the files of ``model_image``: ``s3://models/ORG/NAME/`` for a
    repo's moving tag, ``s3://models/ORG/NAME@SHA12/`` for a commit's tag."""
    tag = parse_reference(model_image).tag or ""
    try:
        repo_id = naming.repo_id_from_tag(tag)
    except InvalidRepoId as e:
        raise UsageError(f"{model_image}: no repo id in its tag for the S3 face ({e})") from e
    parts = tag.split(naming.SEP)
    return f"s3://models/{repo_id}{'@' + parts[2] if len(parts) == 3 else ''}/"


def manifests(spec: ServeSpec) -> str:
    """kubectl-ready YAML for ``spec``; UsageError for names, references or sizes k8s refuses."""
    parse_reference(spec.model_image)
    if spec.s3_endpoint is not None:
        _check_s3(spec.runtime, spec.s3_endpoint, spec.mode, spec.format)
    if spec.format == "modelpack" and spec.mode == "init":
        raise UsageError(
            "a ModelPack artifact has no shell for an init container to copy with: use "
            "--mode image-volume (CRI-O ≥ 1.33 mounts ModelPack artifacts)"
        )
    runtime = RUNTIMES[spec.runtime]
    runtime_image = spec.runtime_image or runtime.default_image
    parse_reference(runtime_image)
    name = spec.name or default_name(spec.model_image, spec.runtime)
    memory = spec.memory or runtime.default_memory
    _check(names={"--name": name, "--s3-secret": spec.s3_secret},
           quantities={"--cpu": spec.cpu, "--memory": memory})  # fmt: skip
    mode = "s3" if spec.s3_endpoint is not None else spec.mode
    model_dir = (
        s3_model_url(spec.model_image) if mode == "s3"
        # an image volume mounts the image's root, where the files are under REPO/ (a
        # ModelPack artifact's are at its root)
        else "/models/REPO" if spec.mode == "image-volume" and spec.format == "image"
        else "/models"
    )  # fmt: skip
    return render(
        "k8s/deployment.yaml.j2",
        app=name,
        runtime=spec.runtime,
        mode=mode,
        s3_endpoint=spec.s3_endpoint,
        s3_secret=spec.s3_secret,
        format=spec.format,
        model_image=spec.model_image,
        runtime_image=runtime_image,
        init_command=INIT_COMMAND,
        model_dir=model_dir,
        served_model_name=served_model_name(spec.model_image),
        health_path=runtime.health_path,
        cpu=spec.cpu,
        memory=memory,
        gpu=spec.gpu,
    )


def _check_s3(runtime: str, endpoint: str, mode: str, model_format: str) -> None:
    """UsageError for a deployment that cannot stream from serve's S3 face."""
    if runtime != "vllm":
        raise UsageError(f"--s3-endpoint: {runtime} reads files, not S3; use --runtime vllm")
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--s3-endpoint {endpoint!r}: give serve's S3 URL, http(s)://HOST:PORT")
    if mode != "init" or model_format != "image":
        raise UsageError("--s3-endpoint streams the weights: no --mode, no --format")


def compose_s3(model_image: str, runtime: str, endpoint: str, runtime_image: str) -> str:
    """A compose file whose vLLM streams the weights of ``model_image`` from serve's S3 face."""
    _check_s3(runtime, endpoint, "init", "image")
    parse_reference(runtime_image)
    return render("compose/compose-s3.yaml.j2", model_image=model_image,
                  runtime_image=runtime_image, s3_endpoint=endpoint,
                  model_dir=s3_model_url(model_image),
                  served_model_name=served_model_name(model_image))  # fmt: skip


DEFAULT_SERVE_IMAGE = "hf2oci/serve:latest"


@dataclass(frozen=True)
class HubSpec:
    """``hf2oci serve`` as a Kubernetes Deployment + Service."""

    registry: str
    namespace: str
    name: str = "hf2oci-hub"
    replicas: int = 2
    port: int = 8080
    serve_image: str = DEFAULT_SERVE_IMAGE
    #: a Secret with key ``tokens`` (one per line): every request then needs one of them
    token_secret: str | None = None
    #: a Secret with keys ``username`` and ``password`` for the registry
    registry_secret: str | None = None
    cpu: str = "500m"
    #: the S3 face's port too (``serve --s3-port``), for weight streamers
    s3_port: int | None = None


def hub_manifests(spec: HubSpec) -> str:
    """kubectl-ready YAML for the hub server; UsageError for what Kubernetes would refuse."""
    parse_reference(spec.serve_image)
    names = {"--name": spec.name, "--token-secret": spec.token_secret,
             "--registry-secret": spec.registry_secret}  # fmt: skip
    _check(names=names, quantities={"--cpu": spec.cpu})
    if spec.s3_port == spec.port:
        raise UsageError(f"--s3-port {spec.s3_port} is the hub's own port: give another")
    return render("k8s/hub.yaml.j2", spec=spec)


#: KServe's Hugging Face server: its backends
KSERVE_BACKENDS = ("vllm", "huggingface")


@dataclass(frozen=True)
class KServeSpec:
    """An InferenceService for KServe's Hugging Face server, the model image as its modelcar."""

    model_image: str
    backend: str = "vllm"
    name: str | None = None
    cpu: str = "2"
    memory: str = "8Gi"
    gpu: int = 0


def inference_service(spec: KServeSpec) -> str:
    """kubectl-ready YAML of the InferenceService; UsageError for what Kubernetes would refuse.

    The storage URI is ``oci://`` + the image reference (a tag or a digest, as given).
    """
    ref = parse_reference(spec.model_image)
    if spec.backend not in KSERVE_BACKENDS:
        raise UsageError(f"backend {spec.backend!r}: choose {' or '.join(KSERVE_BACKENDS)}")
    name = spec.name or default_name(spec.model_image, "kserve")
    _check(names={"--name": name}, quantities={"--cpu": spec.cpu, "--memory": spec.memory})
    return render(
        "k8s/inferenceservice.yaml.j2",
        spec=spec,
        isvc_name=name,
        storage_uri=f"oci://{ref}",
        served_model_name=served_model_name(spec.model_image),
    )


#: llama.cpp's own server image (CPU); ``-hf`` makes it fetch a GGUF repo by its id
LLAMA_SERVER_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
_QUANT_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HUB_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s\"'\\]*)?")


@dataclass(frozen=True)
class HubModelSpec:
    """llama.cpp's ``llama-server -hf ORG/REPO[:QUANT]`` loading a GGUF repo through the hub
    (``hf2oci serve`` at ``hub``) by itself: no model image, the files cached in a volume
    (``LLAMA_CACHE``), so a restart starts from the cache even while the hub is away."""

    model: str
    hub: str
    name: str | None = None
    image: str = LLAMA_SERVER_IMAGE
    #: a Secret with key ``token``: one of the hub's tokens (an ``hf_…`` one: llama.cpp sends
    #: no other)
    token_secret: str | None = None
    cpu: str = "2"
    memory: str = "4Gi"
    gpu: int = 0

    @property
    def repo_id(self) -> str:
        return self.model.split(":", 1)[0]


def _checked_hub_model(spec: HubModelSpec) -> str:
    """The spec's name; UsageError for a model, hub address or name that would not work."""
    repo_id, _, quant = spec.model.partition(":")
    try:
        naming.validate_repo_id(repo_id)
    except InvalidRepoId as e:
        raise UsageError(
            f"{spec.model!r}: give ORG/REPO[:QUANT], e.g. ggml-org/gemma-3-270m-GGUF:Q4_K_M"
        ) from e
    if ":" in spec.model and not _QUANT_TAG.fullmatch(quant):
        raise UsageError(f"{quant!r} is not a quant tag (e.g. Q4_K_M, Q8_0)")
    if not _HUB_URL.fullmatch(spec.hub):
        raise UsageError(f"--hub {spec.hub!r}: give the hub's URL, e.g. http://hf2oci-hub:8080")
    parse_reference(spec.image)
    name = spec.name or default_name(f"x:{repo_id.replace('/', '--')}", "llamacpp")
    _check(names={"--name": name, "--token-secret": spec.token_secret},
           quantities={"--cpu": spec.cpu, "--memory": spec.memory})  # fmt: skip
    return name


def hub_model_manifests(spec: HubModelSpec) -> str:
    """kubectl-ready YAML: a Deployment + Service of ``llama-server -hf`` through the hub."""
    name = _checked_hub_model(spec)
    return render("k8s/llamacpp-hub.yaml.j2", spec=spec, app=name)


def hub_model_compose(spec: HubModelSpec) -> str:
    """A docker compose file of ``llama-server -hf`` through the hub, its cache a volume."""
    _checked_hub_model(spec)
    return render("compose/llamacpp-hub.yaml.j2", spec=spec)
