"""``hf2oci k8s``: print Kubernetes manifests that serve a model image."""

from __future__ import annotations

from typing import cast

import click

from hf2oci.cli._common import handle_errors
from hf2oci.k8s import Mode, Runtime, ServeSpec, manifests


@click.command("k8s")
@click.argument("image")
@click.option("--runtime", type=click.Choice(["llamacpp", "vllm"]), required=True)
@click.option(
    "--mode",
    type=click.Choice(["init", "image-volume"]),
    default="init",
    show_default=True,
    help="init: an init container copies /REPO into an emptyDir; image-volume: mount the model "
    "image read-only (Kubernetes ≥ 1.31 image volumes), no copy.",
)
@click.option("--name", help="Deployment/Service name (default: from the tag).")
@click.option("--runtime-image", help="Server image (see `hf2oci runtime dockerfile`).")
@click.option("--cpu", default="2", show_default=True, help="CPU request.")
@click.option("--memory", help="Memory request and limit (default 4Gi llamacpp, 16Gi vllm).")
@click.option("--gpu", type=click.IntRange(0, 64), default=0, show_default=True)
@handle_errors
def k8s(
    image: str,
    runtime: str,
    mode: str,
    name: str | None,
    runtime_image: str | None,
    cpu: str,
    memory: str | None,
    gpu: int,
) -> None:
    """Print a Deployment + Service serving IMAGE (a model image) offline on port 8000."""
    spec = ServeSpec(
        model_image=image,
        runtime=cast(Runtime, runtime),
        mode=cast(Mode, mode),
        name=name,
        runtime_image=runtime_image,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
    )
    click.echo(manifests(spec), nl=False)
