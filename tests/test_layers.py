"""Imports point down: each module of src/hf2oci imports only from its own layer or the ones
below it, as docs/development.md draws them (function-local and type-only imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
#: from the top down; a module outside these packages is on the ground
LAYERS = ["__main__", "cli", "airgap", "consume", "pack", "intake", "record", "trust", "oci"]
GROUND = len(LAYERS)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "hf2oci":
        return None
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else GROUND


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of an hf2oci module in ``path``, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("hf2oci")]


def _module(path: Path) -> str:
    return ".".join(path.with_suffix("").relative_to(SRC).parts).removesuffix(".__init__")


def test_every_import_points_down() -> None:
    upward = []
    for path in sorted((SRC / "hf2oci").rglob("*.py")):
        mine = _layer(_module(path))
        assert mine is not None
        for line, name in _imports(path):
            theirs = _layer(name.rsplit(".", 1)[0] if name.count(".") > 1 else name)
            if theirs is not None and theirs < mine:
                upward.append(f"{path.relative_to(SRC)}:{line}: imports {name}")
    assert upward == []


def test_the_rule_catches_an_import_that_points_up(tmp_path: Path) -> None:
    """The check itself: a ground module importing the oci package is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hf2oci.oci.image import Image\n")
    ((line, name),) = _imports(bad)
    assert (line, _layer(name.rsplit(".", 1)[0])) == (2, LAYERS.index("oci"))
    assert _layer("hf2oci.naming") == GROUND > LAYERS.index("oci")


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_each_layer_is_named_in_the_development_guide(layer: str) -> None:
    guide = (SRC.parent / "docs" / "development.md").read_text()
    assert f"`{layer}/`" in guide
