"""The record stage: the ledger (``get_hf/mirrored.json``), the pages (models.md /
datasets.md) and git (commit, push). Names load with their module, when first used: a command
that records nothing never imports git or jinja2."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_AUTHOR": "git",
    "commit_message": "git",
    "commit_records": "git",
    "redact": "git",
    "DEFAULT_LEDGER": "ledger",
    "LEDGER_VERSION": "ledger",
    "Ledger": "ledger",
    "load_ledger": "ledger",
    "save_ledger": "ledger",
    "PAGES": "markdown",
    "pull_command": "markdown",
    "record_results": "markdown",
    "render_markdown": "markdown",
    "write_records": "markdown",
    "human_size": "markdown",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
