"""``hf2oci serve``: answer the Hugging Face Hub API from the registry (or OCI layouts), so code
inside the air gap finds mirrored repos by id with only ``HF_ENDPOINT`` set."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from hf2oci.cli._common import echo, get_hf_option, handle_errors, load, verbosity
from hf2oci.errors import ConfigError


@click.command("serve")
@click.option("--registry", help="Registry host to read images from (default: config.yaml's).")
@click.option("--namespace", help="Namespace of the images (default: config.yaml's).")
@click.option(
    "--layout",
    type=click.Path(path_type=Path, file_okay=False),
    help="Serve the OCI layouts under this folder (what sync writes with no registry).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Tokens, one per line: every request must carry `Authorization: Bearer <one>`.",
)
@click.option(
    "--plain-http/--no-plain-http",
    default=None,
    help="HTTP instead of HTTPS to the registry (default: only for localhost/127.x).",
)
@click.option(
    "--ttl", type=click.FloatRange(0), default=30.0, show_default=True,
    help="Seconds a tag's image is cached (sync moves tags).",
)  # fmt: skip
@get_hf_option
@verbosity
@handle_errors
def serve(
    registry: str | None,
    namespace: str | None,
    layout: Path | None,
    host: str,
    port: int,
    token_file: Path | None,
    plain_http: bool | None,
    ttl: float,
    get_hf: Path,
) -> None:
    """Serve the Hub API (models, datasets, files with Range) from the mirrored images."""
    import uvicorn

    from hf2oci.oci.registry import RegistryClient
    from hf2oci.serve.app import create_app
    from hf2oci.serve.store import Store

    config = load(get_hf / "config.yaml", registry=registry, namespace=namespace,
                  plain_http=plain_http)  # fmt: skip
    tokens = _tokens(token_file) if token_file else []
    if layout is not None or not config.registry:
        root = layout if layout is not None else Path(config.output_dir)
        if not root.is_dir():
            raise ConfigError(f"{root}: no such folder of OCI layouts (pass --layout DIR)")
        store = Store(config.namespace, root=root, ttl=ttl)
        where = f"layouts under {root}"
    else:
        client = RegistryClient(config.registry, plain_http=config.plain_http)
        store = Store(config.namespace, client=client, ttl=ttl)
        where = f"{config.registry}/{config.namespace}"
    logging.getLogger("hf2oci.serve").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
    logging.getLogger("hf2oci.serve").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("hf2oci.serve").propagate = False
    echo(f"serving {where} as a hub at http://{host}:{port}" + (" (tokens)" if tokens else ""))
    uvicorn.run(
        create_app(store, tokens=tokens), host=host, port=port, access_log=False,
        log_level="warning", timeout_graceful_shutdown=30,
    )  # fmt: skip


def _tokens(path: Path) -> list[str]:
    try:
        tokens = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the token file ({e.strerror})") from e
    if not tokens:
        raise ConfigError(f"{path}: the token file holds no token")
    return tokens
