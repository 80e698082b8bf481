"""Layer grouping and content keys (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hf2oci.formats.image import MAX_REPO_LAYERS, group_files, layer_annotations, split_files
from hf2oci.labels import CONTENT_KEY

MiB = 1 << 20


def test_small_files_share_a_layer_and_large_files_get_their_own() -> None:
    sized = [
        ("b.safetensors", 5 * MiB),
        ("config.json", 10),
        ("a.safetensors", 3 * MiB),
        ("tok.json", 2000),
    ]
    assert group_files(sized) == [
        ("config.json", "tok.json"),
        ("a.safetensors",),
        ("b.safetensors",),
    ]


@given(st.integers(min_value=0, max_value=400), st.booleans())
def test_many_shards_stay_under_the_layer_limit(n: int, with_small: bool) -> None:
    sized = [(f"model-{i:05d}.safetensors", MiB + i) for i in range(n)]
    if with_small:
        sized.append(("config.json", 10))
    groups = group_files(sized)
    assert len(groups) <= MAX_REPO_LAYERS
    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(p for p, _ in sized)  # every file exactly once
    assert groups == group_files(list(reversed(sized)))  # order of input does not matter
    small, _ = split_files(sized)
    assert (["config.json"] if with_small else []) == list(small)


def test_content_key_depends_on_paths_and_hashes_only() -> None:
    a = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "a" * 64})
    b = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "a" * 64})
    c = layer_annotations(["w.safetensors"], {"w.safetensors": "sha256:" + "b" * 64})
    d = layer_annotations(["x.safetensors"], {"x.safetensors": "sha256:" + "a" * 64})
    assert a == b and a[CONTENT_KEY] != c[CONTENT_KEY] != d[CONTENT_KEY]
    assert a["org.opencontainers.image.title"] == "w.safetensors"
    assert layer_annotations(["w"], {}) == {}  # files changed by a hook: no key
