"""Which repo files go into the image: include/exclude globs, then a preset; pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from hf2oci.errors import PresetError
from hf2oci.gguf import KNOWN_QUANT, has_quant

PRESET_HELP = "safetensors, gguf:QUANT (e.g. gguf:Q4_K_M) or none"

#: files that hold weights (lower case); a preset keeps only one format of them
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".keras",
    ".pb",
    ".msgpack",
    ".ot",
    ".tflite",
    ".onnx",
    ".onnx_data",
    ".onnx.data",
    ".mlmodel",
    ".gguf",
    ".ggml",
)
#: folders that hold an export to another runtime, dropped whole by the safetensors preset
FORMAT_DIRS = frozenset({"onnx", "openvino", "coreml", "tf", "flax", "tflite"})

_QUANT = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Selection:
    """The outcome of the filters: files kept and dropped (both sorted), and a note for users."""

    kept: tuple[str, ...]
    dropped: tuple[str, ...]
    note: str | None = None


def parse_preset(text: str | None) -> str | None:
    """The canonical form of a preset (``gguf:q4_k_m`` → ``gguf:Q4_K_M``); None for none.

    Raises PresetError, listing the valid presets, for anything else.
    """
    if text is None or text == "none":
        return None
    if text == "safetensors":
        return text
    if text.startswith("gguf:"):
        quant = text.removeprefix("gguf:")
        if _QUANT.fullmatch(quant):
            return f"gguf:{quant.upper()}"
        raise PresetError(
            f"invalid preset {text!r}: write gguf:QUANT with QUANT like Q4_K_M, Q8_0 or F16"
        )
    raise PresetError(f"unknown preset {text!r}: valid presets are {PRESET_HELP}")


def match_patterns(
    paths: Iterable[str], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """Paths kept by globs that mean what huggingface_hub's allow/ignore_patterns mean.

    ``fnmatchcase`` (so ``*`` crosses ``/``), ``\\`` read as ``/``, and a pattern ending in
    ``/`` matches everything under that folder. No include pattern means keep everything.
    """
    allow = [_pattern(p) for p in include]
    ignore = [_pattern(p) for p in exclude]
    kept = []
    for path in paths:
        key = path.replace("\\", "/")
        if allow and not any(fnmatchcase(key, p) for p in allow):
            continue
        if any(fnmatchcase(key, p) for p in ignore):
            continue
        kept.append(path)
    return kept


def _pattern(pattern: str) -> str:
    pattern = pattern.replace("\\", "/")
    return pattern + "*" if pattern.endswith("/") else pattern


def select(
    paths: Sequence[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    preset: str | None = None,
) -> Selection:
    """Apply include/exclude, then the preset. PresetError if the preset is unknown or matches
    no file (e.g. a quant the repo doesn't have)."""
    canonical = parse_preset(preset)
    matched = match_patterns(paths, include=include, exclude=exclude)
    note = None
    if canonical == "safetensors":
        kept, note = _safetensors(matched)
    elif canonical is not None:
        kept = _gguf(matched, canonical)
    else:
        kept = matched
    keep = set(kept)
    return Selection(
        kept=tuple(sorted(keep)),
        dropped=tuple(sorted(p for p in set(paths) if p not in keep)),
        note=note,
    )


def _is_weight(path: str) -> bool:
    """Weights in any format, and the index files of sharded weights."""
    return path.lower().removesuffix(".index.json").endswith(WEIGHT_SUFFIXES)


def _is_safetensors(path: str) -> bool:
    lower = path.lower()
    return lower.endswith((".safetensors", ".safetensors.index.json"))


def _in_format_dir(path: str) -> bool:
    folders = path.lower().split("/")[:-1]
    return any(f in FORMAT_DIRS or f.endswith(".mlpackage") for f in folders)


def _safetensors(paths: list[str]) -> tuple[list[str], str | None]:
    if not any(p.lower().endswith(".safetensors") for p in paths):
        return paths, "no .safetensors file: preset safetensors kept every file"
    kept = [p for p in paths if not _in_format_dir(p) and (_is_safetensors(p) or not _is_weight(p))]
    return kept, None


def _gguf(paths: list[str], preset: str) -> list[str]:
    quant = preset.removeprefix("gguf:")
    ggufs = [p for p in paths if p.lower().endswith(".gguf")]
    wanted = [p for p in ggufs if has_quant(p, quant)]
    if not wanted:
        if not ggufs:
            raise PresetError(f"preset {preset} matches no file: the repo has no .gguf file")
        found = sorted({m.group(1).upper() for p in ggufs for m in KNOWN_QUANT.finditer(p)})
        available = ", ".join(found) if found else "none recognised in " + ", ".join(ggufs[:5])
        raise PresetError(f"preset {preset} matches no file; available: {available}")
    # an importance matrix only matters for making quants, not for running one
    others = [
        p for p in paths if not _is_weight(p) and "imatrix" not in p.rsplit("/", 1)[-1].lower()
    ]
    return wanted + others
