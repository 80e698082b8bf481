"""Renders the jinja2 templates shipped in ``templates/`` (Dockerfile, records, manifests)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: where the templates are: the package data of an installed wheel (pyproject force-includes the
#: top-level ``templates/`` folder there), then the checkout's folder for an editable install
_ROOTS: tuple[Traversable, ...] = (
    files("hf2oci") / "templates",
    Path(__file__).resolve().parents[2] / "templates",
)


class _TraversableLoader(jinja2.BaseLoader):
    """Finds ``name`` ("Dockerfile.j2", "k8s/job.yaml.j2") under the first root that has it."""

    def __init__(self, roots: tuple[Traversable, ...]) -> None:
        self.roots = roots

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        parts = template.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise jinja2.TemplateNotFound(template)
        for root in self.roots:
            node = root
            for part in parts:
                node = node / part
            if node.is_file():
                filename = str(node) if isinstance(node, Path) else None
                return node.read_text(encoding="utf-8"), filename, lambda: True
        raise jinja2.TemplateNotFound(template)


def dockerquote(value: object) -> str:
    """A Dockerfile double-quoted word that reads back as ``str(value)``.

    Docker's lexer unescapes ``\\"``, ``\\$`` and ``\\\\`` inside double quotes and expands
    ``$VAR``; a newline cannot be written at all (it ends the instruction), so it becomes a space.
    """
    text = " ".join(str(value).splitlines())
    for char in ("\\", '"', "$"):
        text = text.replace(char, "\\" + char)
    return f'"{text}"'


def yamlstr(value: object) -> str:
    """A YAML double-quoted scalar of ``str(value)`` (a JSON string is one), with its
    characters as they are (jinja's ``tojson`` escapes ``&`` and ``<`` for HTML)."""
    return json.dumps(str(value), ensure_ascii=False)


def md_cell(value: object) -> str:
    """Text for one markdown table cell: ``|`` escaped (also inside code spans), one line."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


@functools.cache
def environment() -> jinja2.Environment:
    """The one environment: a missing variable is an error, never an empty string."""
    env = jinja2.Environment(
        loader=_TraversableLoader(_ROOTS),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # the outputs are markdown, Dockerfiles and YAML, never HTML
        autoescape=False,
    )
    env.filters["dockerquote"] = dockerquote
    env.filters["md_cell"] = md_cell
    env.filters["yamlstr"] = yamlstr
    return env


def render(name: str, **context: Any) -> str:
    """Render template ``name`` (a path under ``templates/``) with ``context``."""
    return environment().get_template(name).render(**context)
