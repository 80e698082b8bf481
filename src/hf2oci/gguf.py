"""GGUF files: quantization names and header metadata (standard library only).

The one rule for which quantization a file is (``preset=gguf:QUANT`` in the mirror, LLAMA_QUANT
in the runtime image) and the header reader for ModelPack's config and the llama.cpp server's
chat format. The runtime images copy this file beside their entrypoint, as ``hf2oci_gguf.py``.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

#: quantization names as llama.cpp and the usual uploaders write them
KNOWN_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q|TQ)\d+(?:_[A-Za-z0-9]+)*|BF16|FP?16|FP?32|MXFP4(?:_MOE)?)(?=[-./]|$)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=64)
def _quant_pattern(quant: str) -> re.Pattern[str]:
    # delimited on both sides, so Q4_K never matches Q4_K_M and F16 never matches BF16
    return re.compile(rf"(?:^|(?<=[-._/])){re.escape(quant)}(?=[-./]|$)", re.IGNORECASE)


def has_quant(path: str, quant: str) -> bool:
    """Whether a file name is of quantization ``quant``: the one rule for ``preset=gguf:QUANT``
    (what the mirror keeps) and ``LLAMA_QUANT`` (what the server picks)."""
    # a match that starts inside a longer quant name (K_M in Q4_K_M) is no match
    inside = [m.span(1) for m in KNOWN_QUANT.finditer(path)]
    return any(
        not any(start < m.start() < end for start, end in inside)
        for m in _quant_pattern(quant).finditer(path)
    )


#: GGUF value types (gguf.md): fixed sizes in bytes; 8 is a string, 9 an array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip

#: ``general.file_type`` (llama.cpp's ``llama_ftype``) as the quantization it names
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip


class GgufArray:
    """An array value of a GGUF header, by its length only (its items are skipped)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __repr__(self) -> str:
        return f"[{self.count} items]"


def gguf_metadata(source: Path | BinaryIO, keys: Sequence[str]) -> dict[str, object]:
    """The string and number values of ``keys`` in a GGUF file's header (arrays skipped), read
    with the standard library from a path or a seekable file; {} for a file that is not GGUF.
    Reading stops once every key is found."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            return gguf_metadata(f, keys)
    wanted: set[str] = set(keys)
    found: dict[str, object] = {}
    for key, value in gguf_items(source, wanted):
        if key in wanted and not isinstance(value, GgufArray):
            found[key] = value
        if wanted <= found.keys():
            break
    return found


def gguf_header(f: BinaryIO, limit: int = 512) -> tuple[int, int, dict[str, object]] | None:
    """(version, tensor count, the first ``limit`` key/values) of a GGUF header, arrays by their
    length; None for a file that is not GGUF. A header cut short gives what it holds."""
    try:
        if f.read(4) != b"GGUF":
            return None
        version, tensors, _count = struct.unpack("<IQQ", f.read(20))
        f.seek(0)
    except (OSError, struct.error):
        return None
    values: dict[str, object] = {}
    for key, value in gguf_items(f, None):
        values[key] = value
        if len(values) >= limit:
            break
    return version, tensors, values


def gguf_items(f: BinaryIO, wanted: set[str] | None) -> Iterator[tuple[str, object]]:
    """Each key of a GGUF header with its value (strings and numbers; arrays as GgufArray):
    every key when ``wanted`` is None, else only those keys' values are read (others yield as
    None). Stops quietly at the end of what can be read."""

    def read(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def string() -> str:
        (n,) = struct.unpack("<Q", read(8))
        if n > 1 << 20:
            raise EOFError  # no header string is a MiB long: not a GGUF
        return read(n).decode("utf-8", "replace")

    def skip(kind: int) -> None:
        if kind == 8:
            (n,) = struct.unpack("<Q", read(8))
            f.seek(n, 1)
        elif kind == 9:
            inner, count = struct.unpack("<IQ", read(12))
            if inner in _GGUF_SIZES:
                f.seek(_GGUF_SIZES[inner] * count, 1)
            else:
                for _ in range(count):
                    skip(inner)
        else:
            f.seek(_GGUF_SIZES[kind], 1)

    try:
        if read(4) != b"GGUF":
            return
        _version, _tensors, count = struct.unpack("<IQQ", read(20))
        for _ in range(count):
            key = string()
            (kind,) = struct.unpack("<I", read(4))
            value: object = None
            if wanted is not None and key not in wanted:
                skip(kind)
            elif kind == 8:
                value = string()
            elif kind == 9:
                _inner, n = struct.unpack("<IQ", read(12))
                f.seek(-12, 1)
                skip(kind)
                value = GgufArray(n)
            else:
                value = struct.unpack(_GGUF_FORMATS[kind], read(_GGUF_SIZES[kind]))[0]
            yield key, value
    except (EOFError, KeyError, OSError, struct.error, ValueError):
        return
