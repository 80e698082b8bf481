"""Small GGUF files written from scratch for the tests (gguf.md, version 3): a tiny LLaVA-style
vision projector (``mmproj``) that llama.cpp loads beside a text model of a given width."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_ALIGN = 32


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: object) -> bytes:
    """A typed GGUF value: bool, uint32, float32, string, or an array of float32."""
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return struct.pack("<II", 4, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        return struct.pack("<IIQ", 9, 6, len(value)) + struct.pack(f"<{len(value)}f", *value)
    raise TypeError(f"no GGUF type for {value!r}")


def write_gguf(path: Path, kv: dict[str, object], tensors: dict[str, np.ndarray]) -> Path:
    """A GGUF file of ``kv`` and float32 ``tensors`` (numpy shapes, outermost first: GGUF
    lists dimensions innermost first)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    head += b"".join(_string(k) + _value(v) for k, v in kv.items())
    infos, blobs, offset = b"", [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        dims = tuple(reversed(array.shape))
        infos += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, offset)
        pad = -len(data) % _ALIGN
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    body = head + infos
    body += b"\0" * (-len(body) % _ALIGN)
    path.write_bytes(body + b"".join(blobs))
    return path


def tiny_mmproj(path: Path, text_width: int, seed: int = 0) -> Path:
    """A LLaVA-style (``mlp``) vision projector of one small layer, random weights, whose
    output is ``text_width`` wide: llama.cpp's mtmd loads it beside a text model that wide
    (what it would see of an image is noise, which is all a test of loading needs)."""
    rng = np.random.default_rng(seed)
    width, ff, image, patch = 32, 64, 32, 16
    positions = (image // patch) ** 2 + 1

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.02

    kv: dict[str, object] = {
        "general.architecture": "clip",
        "general.name": "tiny-mmproj",
        "clip.has_vision_encoder": True,
        "clip.projector_type": "mlp",
        "clip.use_gelu": True,
        "clip.vision.image_size": image,
        "clip.vision.patch_size": patch,
        "clip.vision.embedding_length": width,
        "clip.vision.feed_forward_length": ff,
        "clip.vision.block_count": 1,
        "clip.vision.projection_dim": text_width,
        "clip.vision.attention.head_count": 2,
        "clip.vision.attention.layer_norm_epsilon": 1e-6,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
    }
    ones = np.ones(width, np.float32)
    tensors = {
        "v.class_embd": w(width),
        "v.patch_embd.weight": w(width, 3, patch, patch),
        "v.position_embd.weight": w(positions, width),
        "v.pre_ln.weight": ones, "v.pre_ln.bias": w(width),
        "v.blk.0.attn_q.weight": w(width, width), "v.blk.0.attn_q.bias": w(width),
        "v.blk.0.attn_k.weight": w(width, width), "v.blk.0.attn_k.bias": w(width),
        "v.blk.0.attn_v.weight": w(width, width), "v.blk.0.attn_v.bias": w(width),
        "v.blk.0.attn_out.weight": w(width, width), "v.blk.0.attn_out.bias": w(width),
        "v.blk.0.ln1.weight": ones, "v.blk.0.ln1.bias": w(width),
        "v.blk.0.ln2.weight": ones, "v.blk.0.ln2.bias": w(width),
        "v.blk.0.ffn_up.weight": w(ff, width), "v.blk.0.ffn_up.bias": w(ff),
        "v.blk.0.ffn_down.weight": w(width, ff), "v.blk.0.ffn_down.bias": w(width),
        "mm.0.weight": w(text_width, width), "mm.0.bias": w(text_width),
        "mm.2.weight": w(text_width, text_width), "mm.2.bias": w(text_width),
    }  # fmt: skip
    return write_gguf(path, kv, tensors)
