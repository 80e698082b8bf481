"""GGUF files: quantization names and header metadata (standard library only).

The one rule for which quantization a file is (``preset=gguf:QUANT`` in the mirror, LLAMA_QUANT
in the runtime image) and the header reader for ModelPack's config and the llama.cpp server's
chat format. The runtime images copy this file beside their entrypoint, as ``hf2oci_gguf.py``.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Sequence
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


def gguf_metadata(source: Path | BinaryIO, keys: Sequence[str]) -> dict[str, object]:
    """The string and number values of ``keys`` in a GGUF file's header (arrays skipped), read
    with the standard library from a path or a seekable file; {} for a file that is not GGUF.
    Reading stops once every key is found."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            return gguf_metadata(f, keys)
    return _gguf_metadata(source, keys)


def _gguf_metadata(f: BinaryIO, keys: Sequence[str]) -> dict[str, object]:
    wanted: set[str] = set(keys)
    found: dict[str, object] = {}

    def read(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def string() -> str:
        (n,) = struct.unpack("<Q", read(8))
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
            return {}
        _version, _tensors, count = struct.unpack("<IQQ", read(20))
        for _ in range(count):
            key = string()
            (kind,) = struct.unpack("<I", read(4))
            if key in wanted and kind == 8:
                found[key] = string()
            elif key in wanted and kind in (4, 5, 10, 11):
                fmt = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[kind]
                found[key] = struct.unpack(fmt, read(_GGUF_SIZES[kind]))[0]
            else:
                skip(kind)
            if wanted <= found.keys():
                break
    except (EOFError, KeyError, struct.error):
        pass
    return found
