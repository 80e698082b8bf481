"""``-v``/``-q`` anywhere on the command line (light: the group imports it for ``--help``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def _count_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        root = ctx.find_root()
        root.meta["hf2oci.verbose"] = root.meta.get("hf2oci.verbose", 0) + value
        configure_logging(root.meta["hf2oci.verbose"])


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["hf2oci.quiet"] = True


def verbosity(func: F) -> F:
    """``-v`` (more logging, ``-vv`` debug) and ``-q`` (no progress lines), accepted before the
    command name and after it alike (as crane's persistent flags)."""
    func = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
        help="No progress lines.",
    )(func)  # fmt: skip
    return click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_count_verbose,
        help="More logging (-vv for debug).",
    )(func)  # fmt: skip


def is_quiet() -> bool:
    """Whether ``-q`` was given anywhere on the command line."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get("hf2oci.quiet"))
