"""Which GGUF a quant tag names in a repo, as the hub and llama.cpp choose it (a split model by
its first part, a projector beside it), and what a repo page's "use it here" lines say of its
GGUF and ONNX files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: what ``latest`` (no tag) means: the first of these quants a file name carries, else the
#: first model GGUF (the hub's and llama.cpp's order)
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
#: GGUF files that are not a model to load but one beside it
_SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_QUANT_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
#: the hub's answers when no file fits (RamaLama and Ollama show them as they are)
NOT_GGUF = "Repository is not GGUF or is not compatible with llama.cpp"
NO_TAG = 'The specified tag is not available in the repository. Please use another tag or "latest"'


@dataclass(frozen=True)
class GgufChoice:
    """The GGUF a quant tag names in a repo: its (first) file, and a projector beside it."""

    model: str
    mmproj: str | None = None


def is_model_gguf(path: str) -> bool:
    """A ``.gguf`` that is a model, not a projector, an importance matrix or a draft head."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(s in name for s in _SIDECARS)


def _split(path: str) -> tuple[str, int, int]:
    """``(name without .gguf and split suffix, part, parts)`` of a GGUF path."""
    stem = path.removesuffix(".gguf")
    m = _SPLIT.match(stem)
    return (m[1], int(m[2]), int(m[3])) if m else (stem, 1, 1)


def quant_bits(path: str) -> int:
    """The bits a file name's quant tag says (``Q4_K_M`` → 4, ``F16`` → 16; 0: none)."""
    m = _QUANT_TAG.search(_split(path)[0])
    digits = re.search(r"[0-9]+", m[1]) if m else None
    return int(digits[0]) if digits else 0


def choose_gguf(paths: Sequence[str], tag: str) -> GgufChoice | None:
    """The GGUF that ``tag`` names among ``paths`` (the hub's listing order), as the hub and
    llama.cpp choose it: the tag matched case-insensitively against file names (``<tag>.`` or
    ``<tag>-``), a split model by its first part; ``latest`` (or no tag) is Q4_K_M, then Q8_0,
    then the first model GGUF. None when nothing fits."""
    models = [p for p in paths if is_model_gguf(p) and _split(p)[1] == 1]
    latest = tag.lower() in ("", "latest")
    for quant in DEFAULT_QUANTS if latest else (tag,):
        pattern = re.compile(re.escape(quant) + r"[.-]", re.IGNORECASE)
        found = next((p for p in models if pattern.search(p)), None)
        if found is not None:
            return GgufChoice(found, best_mmproj(paths, found))
    if latest and models:
        return GgufChoice(models[0], best_mmproj(paths, models[0]))
    return None


def best_mmproj(paths: Iterable[str], model: str) -> str | None:
    """The projector for ``model``, as llama.cpp picks it: an ``mmproj`` GGUF in the model's
    folder or one above it, the deepest first, then the nearest in quant bits."""
    folder = model.split("/")[:-1]
    bits = quant_bits(model)
    best: tuple[int, int] | None = None
    found = None
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if not name.endswith(".gguf") or "mmproj" not in name:
            continue
        parent = p.split("/")[:-1]
        if parent != folder[: len(parent)]:
            continue
        rank = (-len(parent), abs(quant_bits(p) - bits))
        if best is None or rank < best:
            best, found = rank, p
    return found


def quant_tag(path: str) -> str:
    """A GGUF file name's quant tag, as ``-hf ORG/REPO:TAG`` names it (``""``: none)."""
    m = _QUANT_TAG.search(_split(path)[0].rsplit("/", 1)[-1])
    return m[1].upper() if m else ""


@dataclass(frozen=True)
class Usage:
    """What a repo page's "use it here" lines need to know of a repo's files."""

    #: the quant tag llama.cpp and RamaLama take by default (None: no GGUF; "": untagged)
    gguf_tag: str | None
    #: ONNX weights that transformers.js loads
    onnx: bool


def usage(paths: Sequence[str]) -> Usage:
    choice = choose_gguf(sorted(paths), "latest")
    onnx = any(p.endswith(".onnx") for p in paths)
    return Usage(quant_tag(choice.model) if choice is not None else None, onnx)
