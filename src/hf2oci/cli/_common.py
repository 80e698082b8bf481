"""What every command shares: secrets kept out of output, one-line errors, config loading."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from hf2oci.config import Config, load_config
from hf2oci.errors import Hf2ociError

F = TypeVar("F", bound=Callable[..., Any])

#: environment variables whose values must never be printed
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF2OCI_REGISTRY_PASSWORD")


def redact(text: str) -> str:
    for var in SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


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
