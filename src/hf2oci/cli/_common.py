"""What every command shares: secrets kept out of output, one-line errors, config loading."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from hf2oci.cli._verbosity import is_quiet, verbosity
from hf2oci.config import Config, load_config
from hf2oci.errors import ConfigError, Hf2ociError, ListError, UsageError
from hf2oci.intake.lists import read_lists
from hf2oci.redact import redact
from hf2oci.spec import RepoSpec

F = TypeVar("F", bound=Callable[..., Any])


def echo(message: str, *, err: bool = True) -> None:
    click.echo(redact(message), err=err)


def fail(exc: Hf2ociError) -> NoReturn:
    echo(f"error: {exc}")
    sys.exit(exc.exit_code)


def handle_errors(func: F) -> F:
    """Expected failures end as one line on stderr and an exit status, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Hf2ociError as e:
            fail(e)

    return wrapper  # type: ignore[return-value]


def load(config_path: Path, **overrides: Any) -> Config:
    if config_path.exists():
        config = load_config(config_path, display=_display(config_path))
    else:
        config = Config()
    return config.with_overrides(**{k: v for k, v in overrides.items() if v is not None})


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def plain_http_option(func: F) -> F:
    """``--plain-http/--no-plain-http``: for every command that reads or writes a registry."""
    return click.option(
        "--plain-http/--no-plain-http",
        default=None,
        help="HTTP instead of HTTPS to the registry (default: only for localhost/127.x).",
    )(func)


def get_hf_option(func: F) -> F:
    """``--get-hf DIR``: where the lists, config.yaml, prepare.sh and the record are."""
    return click.option(
        "--get-hf",
        "get_hf",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("get_hf"),
        show_default=True,
        help="Folder with to_get_models.txt, to_get_datasets.txt, config.yaml, prepare.sh and "
        "the record.",
    )(func)


def _repo_type(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    dataset = ctx.params.pop("dataset", False)
    if value is not None and dataset and value != "dataset":
        raise click.BadParameter("--dataset says dataset", param_hint="--repo-type")
    return value or ("dataset" if dataset else "model")


def repo_type_option(func: F) -> F:
    """``--repo-type model|dataset`` (as ``hf download`` says it), ``--dataset`` for short."""
    func = click.option(
        "--repo-type",
        type=click.Choice(["model", "dataset"]),
        callback=_repo_type,
        help="What the repo id names (default: model).",
    )(func)
    return click.option(
        "--dataset", is_flag=True, is_eager=True, expose_value=False,
        callback=lambda ctx, _p, v: ctx.params.__setitem__("dataset", v) if v else None,
        help="Short for --repo-type dataset.",
    )(func)  # fmt: skip


def read_project(get_hf: Path, **overrides: Any) -> tuple[Config, list[RepoSpec], list[ListError]]:
    """The config (flags win) and the lists of ``get_hf/``, which must exist; a line that
    names no format gets the configured one."""
    if not get_hf.is_dir():
        raise ConfigError(f"{get_hf}: no such folder (pass --get-hf DIR)")
    config = load(get_hf / "config.yaml", **overrides)
    specs, errors = read_lists(get_hf, format=config.format)
    return config, specs, errors


__all__ = ["is_quiet", "redact", "verbosity"]


def policy_key(flag: Path | None, get_hf: Path, config: Config | None = None) -> bytes | None:
    """The consumers' public key: ``--verify-key``, else config.yaml's ``verify_key`` (its
    errors name the setting), else None."""
    if flag is not None:
        return read_public_key(flag)
    if config is None:
        config = load(get_hf / "config.yaml")
    if config.verify_key is None:
        return None
    try:
        return read_public_key(Path(config.verify_key))
    except ConfigError as e:
        raise ConfigError(f"{_display(get_hf / 'config.yaml')}: verify_key: {e}") from e


def read_public_key(path: Path | None) -> bytes | None:
    """The PEM public key at ``path`` (None when none is given), checked to be an ECDSA key:
    ConfigError in one line when it cannot be read or is not one."""
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the key ({e.strerror})") from e
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.trust.verify import public_key

    try:
        public_key(pem)
    except UsageError as e:
        raise ConfigError(f"{path}: {e}") from e
    return pem
