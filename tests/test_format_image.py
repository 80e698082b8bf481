"""The image format's layer annotations (pure)."""

from __future__ import annotations

from hf2oci.labels import CONTENT_KEY
from hf2oci.pack.formats.image import layer_annotations


def test_content_key_depends_on_paths_and_hashes_only() -> None:
    a = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "a" * 64})
    b = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "a" * 64})
    c = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "b" * 64})
    d = layer_annotations(["x.safetensors"], {"x.safetensors": "sha256:" + "a" * 64})
    assert a == b and a[CONTENT_KEY] != c[CONTENT_KEY] != d[CONTENT_KEY]
    assert a["org.opencontainers.image.title"] == "w.safetensors"
    assert layer_annotations(["w"], {}) == {}  # files changed by a hook: no key
