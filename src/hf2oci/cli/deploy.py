"""``hf2oci deploy {dockerfile,compose,k8s,kserve} MODEL_IMAGE``: what serves a model image
offline (OpenAI API on port 8000): a server image's build folder, a compose file, Kubernetes
manifests, or a KServe InferenceService."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import click

from hf2oci import gguf
from hf2oci.cli._common import echo, handle_errors, read_public_key, verbosity
from hf2oci.consume import runtime as entrypoint
from hf2oci.consume.k8s import (
    DEFAULT_SERVE_IMAGE,
    INIT_COMMAND,
    KSERVE_BACKENDS,
    MODES,
    NO_JOIN,
    HubModelSpec,
    HubSpec,
    KServeSpec,
    Mode,
    ServeSpec,
    compose_s3,
    hub_manifests,
    hub_model_compose,
    hub_model_manifests,
    inference_service,
    manifests,
    served_model_name,
)
from hf2oci.consume.runtime import RUNTIMES
from hf2oci.errors import UsageError
from hf2oci.reference import parse_reference
from hf2oci.render import render

LLAMA_CPP_VERSION = "0.3.36"
WHEEL_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF"

s3_endpoint_option = click.option(
    "--s3-endpoint",
    metavar="URL",
    help="vllm: stream the weights from `hf2oci serve --s3-port` at this URL (run:ai's "
    "streamer, --load-format runai_streamer): no copy of the model, no volume; MODEL_IMAGE's "
    "tag names the repo (and a commit's tag its revision).",
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(list(RUNTIMES)),
    help="The server: " + ", ".join(f"{r.name} ({r.model_format})" for r in RUNTIMES.values()),
)
hub_option = click.option(
    "--hub",
    metavar="URL",
    help="llamacpp: load MODEL_IMAGE, given as a repo id ORG/REPO[:QUANT], through the hub "
    "(`hf2oci serve`) at URL with llama.cpp's own `llama-server -hf` (its image, "
    "--runtime-image, by default ghcr.io/ggml-org/llama.cpp:server), the files cached in a "
    "volume; no model image.",
)
serve_option = click.option(
    "--serve",
    is_flag=True,
    help="The hub server (`hf2oci serve`) instead of a model server: no MODEL_IMAGE, no runtime.",
)


def _hub_model(model: str, runtime: str | None, hub: str, runtime_image: str | None,
               **resources: Any) -> HubModelSpec:  # fmt: skip
    """What --hub deploys: llama.cpp's llama-server -hf, through the hub at ``hub``."""
    if runtime not in (None, "llamacpp"):
        raise UsageError("--hub loads a GGUF repo with llama.cpp: --runtime llamacpp")
    image = runtime_image or HubModelSpec.image
    return HubModelSpec(model=model, hub=hub, image=image, **resources)


def _model_or_hub(model_image: str | None, runtime: str | None, serve: bool) -> str:
    """The runtime for a model server; UsageError when the arguments mix the two kinds."""
    if serve:
        if model_image or runtime:
            raise UsageError("--serve deploys the hub server: give no MODEL_IMAGE or --runtime")
        return ""
    if not runtime:
        raise UsageError("give --runtime (" + "|".join(RUNTIMES) + "), or --serve")
    return runtime


@click.group("deploy")
def deploy() -> None:
    """Serve a model image: a server image, a compose file or Kubernetes manifests."""


@deploy.command("dockerfile")
@click.argument("model_image", required=False)
@runtime_option
@serve_option
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--runtime-image", help="Tag to build (shown in the Dockerfile's comments).")
@click.option("--python-image", default="python:3.11-slim", show_default=True)
@click.option("--vllm-image", default="vllm/vllm-openai:latest", show_default=True)
@click.option(
    "--wheels",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="llamacpp: install from the wheels in this folder, with no network and no compiler. "
    f"Make it where PyPI is reachable: CMAKE_ARGS='{WHEEL_CMAKE_ARGS}' pip wheel "
    f"'llama-cpp-python[server]=={LLAMA_CPP_VERSION}' -w DIR (no OpenMP: the slim Python image "
    "has no libgomp).",
)
@verbosity
@handle_errors
def dockerfile(
    model_image: str | None,
    runtime: str | None,
    serve: bool,
    output: Path,
    runtime_image: str | None,
    python_image: str,
    vllm_image: str,
    wheels: Path | None,
) -> None:
    """Write a build folder (Dockerfile + entrypoint.py) for a server image; with MODEL_IMAGE
    its files are baked in under /REPO, without it the server serves what is mounted at
    /models (as the compose file and the Kubernetes manifests do)."""
    runtime = _model_or_hub(model_image, runtime, serve)
    for ref in (model_image, python_image, vllm_image, runtime_image):
        if ref:
            parse_reference(ref)
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"{output} is not empty")
    if serve:
        _hub_dockerfile(output, wheels, python_image, runtime_image or DEFAULT_SERVE_IMAGE)
        return
    wheel_files = _wheelhouse(runtime, wheels) if wheels is not None else []
    output.mkdir(parents=True, exist_ok=True)
    if wheel_files:
        (output / "wheels").mkdir()
        for wheel in wheel_files:
            shutil.copyfile(wheel, output / "wheels" / wheel.name)
    (output / "Dockerfile").write_text(
        render(
            f"runtime/{runtime}/Dockerfile.j2",
            model_image=model_image,
            runtime_image=runtime_image or RUNTIMES[runtime].default_image,
            served_model_name=served_model_name(model_image) if model_image else None,
            python_image=python_image,
            vllm_image=vllm_image,
            llama_cpp_version=LLAMA_CPP_VERSION,
            wheels=bool(wheel_files),
        )
    )
    write_entrypoint(output)
    echo(f"wrote {output}/Dockerfile and entrypoint.py: docker build -t NAME {output}")


def write_entrypoint(folder: Path) -> None:
    """The runtime image's entrypoint: runtime.py, and beside it the gguf module it imports."""
    shutil.copyfile(entrypoint.__file__, folder / "entrypoint.py")
    shutil.copyfile(gguf.__file__, folder / "hf2oci_gguf.py")


def _hub_dockerfile(output: Path, wheels: Path | None, python_image: str, image: str) -> None:
    """The hub server's build folder: hf2oci installed from a wheelhouse, with no network."""
    found = sorted(wheels.glob("hf2oci-*.whl")) if wheels is not None else []
    if not found:
        raise UsageError(
            "--serve needs --wheels DIR holding hf2oci's wheel and its dependencies': "
            "pip wheel /path/to/hf2oci -w DIR (where PyPI is reachable)"
        )
    assert wheels is not None
    (output / "wheels").mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        shutil.copyfile(wheel, output / "wheels" / wheel.name)
    (output / "Dockerfile").write_text(
        render("serve/Dockerfile.j2", python_image=python_image, serve_image=image)
    )
    echo(f"wrote {output}/Dockerfile and wheels/: docker build -t {image} {output}")


def _wheelhouse(runtime: str, folder: Path) -> list[Path]:
    """The wheels to copy into the build folder; the llama-cpp-python one must be there."""
    if runtime != "llamacpp":
        raise UsageError("--wheels is for llamacpp (the vLLM image already holds vLLM)")
    wheels = sorted(folder.glob("*.whl"))
    wanted = f"llama_cpp_python-{LLAMA_CPP_VERSION}-"
    if not any(w.name.startswith(wanted) for w in wheels):
        found = [w.name for w in wheels if w.name.startswith("llama_cpp_python-")]
        raise UsageError(
            f"--wheels {folder}: no {wanted}*.whl"
            + (f" (found {', '.join(found)})" if found else "")
            + f": CMAKE_ARGS='{WHEEL_CMAKE_ARGS}' pip wheel"
            f" 'llama-cpp-python[server]=={LLAMA_CPP_VERSION}' -w {folder}"
        )
    return wheels


@deploy.command("compose")
@click.argument("model_image")
@runtime_option
@hub_option
@click.option("--runtime-image", help="Server image (default: hf2oci/<runtime>-server:latest).")
@s3_endpoint_option
@verbosity
@handle_errors
def compose(
    model_image: str,
    runtime: str | None,
    hub: str | None,
    runtime_image: str | None,
    s3_endpoint: str | None,
) -> None:
    """Print a docker compose file: the model image fills a volume, the server serves it. With
    --s3-endpoint, vLLM streams its weights from serve's S3 face instead; with --hub,
    llama-server loads the repo through the hub."""
    if hub is not None:
        if s3_endpoint is not None:
            raise UsageError("--hub loads the repo through the hub: give no --s3-endpoint")
        click.echo(
            hub_model_compose(_hub_model(model_image, runtime, hub, runtime_image)), nl=False
        )
        return
    runtime = _model_or_hub(model_image, runtime, False)
    parse_reference(model_image)
    image = runtime_image or RUNTIMES[runtime].default_image
    if s3_endpoint is not None:
        click.echo(compose_s3(model_image, runtime, s3_endpoint, image), nl=False)
        return
    click.echo(
        render(
            "compose/compose.yaml.j2",
            runtime=runtime,
            model_image=model_image,
            runtime_image=image,
            served_model_name=served_model_name(model_image),
            init_command=INIT_COMMAND,
        ),
        nl=False,
    )


@deploy.command("k8s")
@click.argument("model_image", required=False)
@runtime_option
@serve_option
@click.option("--registry", help="--serve: the registry the hub reads.")
@click.option("--namespace", help="--serve: the namespace of the mirrored images.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 100),
    default=2,
    show_default=True,
    help="--serve: replicas (stateless: each reads the registry).",
)
@click.option(
    "--token-secret",
    help="--serve: a Secret whose key `tokens` lists bearer tokens; --hub: a Secret whose key "
    "`token` is one of them (an hf_… token: llama.cpp sends no other).",
)
@click.option("--registry-secret", help="--serve: a Secret with the registry's username/password.")
@click.option(
    "--s3-port",
    type=click.IntRange(1, 65535),
    help="--serve: answer the S3 API on this port too (`serve --s3-port`), for weight streamers.",
)
@s3_endpoint_option
@click.option(
    "--s3-secret",
    help="--s3-endpoint: a Secret with keys AWS_ACCESS_KEY_ID (any) and AWS_SECRET_ACCESS_KEY "
    "(a serve token); without it, anonymous reads.",
)
@click.option(
    "--mode",
    type=click.Choice(list(MODES)),
    default="init",
    show_default=True,
    help="init: an init container copies /REPO into an emptyDir; image-volume: mount the model "
    "image read-only (Kubernetes ≥ 1.31 image volumes), no copy.",
)
@click.option(
    "--format",
    "model_format",
    type=click.Choice(["image", "modelpack"]),
    default="image",
    show_default=True,
    help="What MODEL_IMAGE is: an image (files under /REPO) or a ModelPack artifact "
    "(image-volume mode only: CRI-O ≥ 1.33 mounts it; containerd does not).",
)
@hub_option
@click.option("--name", help="Deployment/Service name (default: from the tag).")
@click.option("--runtime-image", help="Server image (see `hf2oci deploy dockerfile`).")
@click.option("--cpu", default="2", show_default=True, help="CPU request.")
@click.option("--memory", help="Memory request and limit (default: the runtime's).")
@click.option("--gpu", type=click.IntRange(0, 64), default=0, show_default=True)
@verbosity
@handle_errors
def k8s(
    model_image: str | None,
    runtime: str | None,
    serve: bool,
    hub: str | None,
    registry: str | None,
    namespace: str | None,
    replicas: int,
    token_secret: str | None,
    registry_secret: str | None,
    s3_port: int | None,
    s3_endpoint: str | None,
    s3_secret: str | None,
    mode: str,
    model_format: str,
    name: str | None,
    runtime_image: str | None,
    cpu: str,
    memory: str | None,
    gpu: int,
) -> None:
    """Print a Deployment + Service serving MODEL_IMAGE offline on port 8000 (or, with --serve,
    the hub server for a registry's mirrored images, on port 8080; with --hub, llama-server
    loading the repo through the hub)."""
    if hub is not None:
        if serve or model_image is None:
            raise UsageError(
                "--hub deploys llama-server for a repo: give ORG/REPO[:QUANT], no --serve"
            )
        if mode != "init" or model_format != "image":
            raise UsageError("--hub mounts no image: give no --mode or --format")
        if s3_port or s3_endpoint or s3_secret:
            raise UsageError("--hub loads the repo through the hub: give no --s3-* option")
        loader = _hub_model(model_image, runtime, hub, runtime_image, name=name, cpu=cpu,
                            memory=memory or RUNTIMES["llamacpp"].default_memory, gpu=gpu,
                            token_secret=token_secret)  # fmt: skip
        click.echo(hub_model_manifests(loader), nl=False)
        return
    runtime = _model_or_hub(model_image, runtime, serve)
    if serve and (s3_endpoint or s3_secret):
        raise UsageError("--s3-endpoint, --s3-secret: a model server's (--serve has --s3-port)")
    if not serve and s3_port:
        raise UsageError("--s3-port is the hub server's (--serve); a model server's: --s3-endpoint")
    if s3_secret and not s3_endpoint:
        raise UsageError("--s3-secret goes with --s3-endpoint")
    if serve:
        if not registry or not namespace:
            raise UsageError("--serve needs --registry and --namespace (what the hub reads)")
        server = HubSpec(
            registry=registry, namespace=namespace, name=name or "hf2oci-hub", replicas=replicas,
            serve_image=runtime_image or DEFAULT_SERVE_IMAGE, token_secret=token_secret,
            registry_secret=registry_secret, cpu=cpu if cpu != "2" else "500m", s3_port=s3_port,
        )  # fmt: skip
        click.echo(hub_manifests(server), nl=False)
        return
    assert model_image is not None
    spec = ServeSpec(
        model_image=model_image,
        runtime=runtime,
        mode=cast(Mode, mode),
        format=model_format,
        name=name,
        runtime_image=runtime_image,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        s3_endpoint=s3_endpoint,
        s3_secret=s3_secret,
    )
    click.echo(manifests(spec), nl=False)
    if spec.mode == "image-volume":
        echo(NO_JOIN.format(what="an image volume"))


@deploy.command("kserve")
@click.argument("model_image")
@click.option(
    "--backend",
    type=click.Choice(list(KSERVE_BACKENDS)),
    default="vllm",
    show_default=True,
    help="The backend of KServe's Hugging Face server.",
)
@click.option("--name", help="InferenceService name (default: from the tag).")
@click.option("--cpu", default="2", show_default=True, help="CPU request.")
@click.option("--memory", default="8Gi", show_default=True, help="Memory request and limit.")
@click.option("--gpu", type=click.IntRange(0, 64), default=0, show_default=True)
@verbosity
@handle_errors
def kserve(
    model_image: str, backend: str, name: str | None, cpu: str, memory: str, gpu: int
) -> None:
    """Print a KServe InferenceService serving MODEL_IMAGE (format image) as a modelcar:
    storageUri oci://MODEL_IMAGE, read through the image's /models link. ModelPack artifacts
    have no /models: serve those with `deploy k8s --mode image-volume` on CRI-O."""
    spec = KServeSpec(model_image, backend=backend, name=name, cpu=cpu, memory=memory, gpu=gpu)
    click.echo(inference_service(spec), nl=False)
    echo(NO_JOIN.format(what="a modelcar"))


#: where the policy expects the public key on each node
NODE_KEY_PATH = "/etc/containers/keys/hf2oci.pub"


@deploy.command("policy")
@click.argument("repositories", nargs=-1, required=True)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The public key (PEM) that signs the mirror's images.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True)
@verbosity
@handle_errors
def policy(repositories: tuple[str, ...], key_path: Path, output: Path) -> None:
    """Write the node files that make CRI-O (or podman, skopeo) refuse any image of
    REPOSITORIES (e.g. ghcr.io/hgfkeep/models) that the key did not sign: policy.json (a
    containers-policy.json with a sigstoreSigned requirement per repository), registries.d/
    hf2oci.yaml (read cosign's signature tags) and keys/hf2oci.pub. Merge the transports entries
    into the node's own /etc/containers/policy.json."""
    import json

    pem = read_public_key(key_path)
    assert pem is not None
    scopes: dict[str, list[dict[str, object]]] = {}
    registries = set()
    for repo in repositories:
        ref = parse_reference(f"{repo.rstrip('/')}:x")
        name = f"{ref.registry}/{ref.repository}"
        registries.add(ref.registry)
        scopes[name] = [
            {
                "type": "sigstoreSigned",
                "keyPath": NODE_KEY_PATH,
                "signedIdentity": {"type": "matchRepository"},
            }
        ]
    doc = {"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": scopes}}
    (output / "registries.d").mkdir(parents=True, exist_ok=True)
    (output / "keys").mkdir(exist_ok=True)
    (output / "policy.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    lines = ["docker:"]
    for host in sorted(registries):
        lines += [f"  {host}:", "    use-sigstore-attachments: true"]
    (output / "registries.d" / "hf2oci.yaml").write_text("\n".join(lines) + "\n")
    (output / "keys" / "hf2oci.pub").write_bytes(pem)
    echo(f"wrote {output}/policy.json, registries.d/hf2oci.yaml and keys/hf2oci.pub "
         f"(install under /etc/containers on each node)")  # fmt: skip
