"""``hf2oci runtime``: build folders for the llama.cpp and vLLM server images, and compose."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from hf2oci import runtime as entrypoint
from hf2oci.cli._common import echo, handle_errors
from hf2oci.errors import UsageError
from hf2oci.k8s import DEFAULT_RUNTIME_IMAGE, served_model_name
from hf2oci.oci.reference import parse_reference
from hf2oci.render import render

LLAMA_CPP_VERSION = "0.3.36"
WHEEL_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF"


@click.group("runtime")
def runtime() -> None:
    """Runtime images that serve a model image offline (OpenAI API on port 8000)."""


@runtime.command("dockerfile")
@click.argument("server", type=click.Choice(["llamacpp", "vllm"]))
@click.option(
    "--model-image",
    help="The model image made by hf2oci, baked in under /REPO (default: none, the server "
    "serves what is mounted at /models, as the compose and k8s examples do).",
)
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
@handle_errors
def dockerfile(
    server: str,
    model_image: str | None,
    output: Path,
    runtime_image: str | None,
    python_image: str,
    vllm_image: str,
    wheels: Path | None,
) -> None:
    """Write a build folder (Dockerfile + entrypoint.py) for a SERVER image."""
    for ref in (model_image, python_image, vllm_image, runtime_image):
        if ref:
            parse_reference(ref)
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"{output} is not empty")
    wheel_files = _wheelhouse(server, wheels) if wheels is not None else []
    output.mkdir(parents=True, exist_ok=True)
    if wheel_files:
        (output / "wheels").mkdir()
        for wheel in wheel_files:
            shutil.copyfile(wheel, output / "wheels" / wheel.name)
    (output / "Dockerfile").write_text(
        render(
            f"runtime/{server}/Dockerfile.j2",
            model_image=model_image,
            runtime_image=runtime_image or DEFAULT_RUNTIME_IMAGE[server],
            served_model_name=served_model_name(model_image) if model_image else None,
            python_image=python_image,
            vllm_image=vllm_image,
            llama_cpp_version=LLAMA_CPP_VERSION,
            wheels=bool(wheel_files),
        )
    )
    shutil.copyfile(entrypoint.__file__, output / "entrypoint.py")
    echo(f"wrote {output}/Dockerfile and entrypoint.py: docker build -t NAME {output}")


def _wheelhouse(server: str, folder: Path) -> list[Path]:
    """The wheels to copy into the build folder; the llama-cpp-python one must be there."""
    if server != "llamacpp":
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


@runtime.command("compose")
@click.argument("server", type=click.Choice(["llamacpp", "vllm"]))
@click.option("--model-image", required=True)
@click.option("--runtime-image", help="Server image (default: hf2oci/<server>-server:latest).")
@handle_errors
def compose(server: str, model_image: str, runtime_image: str | None) -> None:
    """Print a docker compose file: the model image fills a volume, the server serves it."""
    parse_reference(model_image)
    click.echo(
        render(
            "compose/compose.yaml.j2",
            runtime=server,
            model_image=model_image,
            runtime_image=runtime_image or DEFAULT_RUNTIME_IMAGE[server],
            served_model_name=served_model_name(model_image),
        ),
        nl=False,
    )
