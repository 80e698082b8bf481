"""File selection: include/exclude agree with huggingface_hub; presets on real-looking repos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects
from hypothesis import given
from hypothesis import strategies as st

import hf2oci
from hf2oci.errors import Hf2ociError, PresetError
from hf2oci.intake.filters import Selection, parse_preset, select

BERT = [
    ".gitattributes",
    "LICENSE",
    "README.md",
    "config.json",
    "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
    "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
    "coreml/fill-mask/float32_model.mlpackage/Manifest.json",
    "flax_model.msgpack",
    "model.onnx",
    "model.safetensors",
    "pytorch_model.bin",
    "rust_model.ot",
    "tf_model.h5",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
]

SHARDED = [
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model-00002-of-00002.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5.index.json",
    "onnx/config.json",
    "onnx/model.onnx",
    "onnx/model.onnx_data",
    "openvino/openvino_model.xml",
    "openvino/openvino_model.bin",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "training_args.bin",
]

DIFFUSERS = [
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/flax_model.msgpack",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_flax_model.msgpack",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.bin",
    "v1-5-pruned.ckpt",
    "v1-5-pruned-emaonly.safetensors",
]

THEBLOKE = [
    ".gitattributes",
    "LICENSE.txt",
    "Notice",
    "README.md",
    "config.json",
    "llama-2-7b-chat.Q2_K.gguf",
    "llama-2-7b-chat.Q3_K_L.gguf",
    "llama-2-7b-chat.Q4_K.gguf",
    "llama-2-7b-chat.Q4_K_M.gguf",
    "llama-2-7b-chat.Q4_K_S.gguf",
    "llama-2-7b-chat.Q5_K_M.gguf",
    "llama-2-7b-chat.Q8_0.gguf",
    "imatrix.dat",
]

SHARDED_GGUF = [
    "README.md",
    "params",
    "template.jinja",
    "BF16/Model-BF16-00001-of-00003.gguf",
    "BF16/Model-BF16-00002-of-00003.gguf",
    "BF16/Model-BF16-00003-of-00003.gguf",
    "Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf",
    "Q4_K_M/Model-Q4_K_M-00002-of-00002.gguf",
    "UD-IQ2_XXS/Model-UD-IQ2_XXS-00001-of-00001.gguf",
    "model-f16.gguf",
    "model.q8_0.gguf",
    "mmproj-F16.gguf",
    "imatrix_unsloth.gguf",
    "model.safetensors",
]


# ---- include / exclude --------------------------------------------------------------------

_segments = st.sampled_from(["a", "b", "dir", "x.json", "m.bin", "m.safetensors", ".hidden", "é"])
paths = st.lists(_segments, min_size=1, max_size=4).map("/".join)
_pattern_parts = st.sampled_from(
    ["*", "?", "a", "dir/", "dir", "/", ".json", "*.bin", "[ab]", "[!a]", "**", "m.", "\\", "é"]
)
patterns = st.lists(_pattern_parts, min_size=1, max_size=4).map("".join)


@given(
    st.lists(paths, max_size=12, unique=True),
    st.lists(patterns, max_size=3),
    st.lists(patterns, max_size=3),
)
def test_include_exclude_agree_with_huggingface_hub(
    files: list[str], include: list[str], exclude: list[str]
) -> None:
    expected = list(
        filter_repo_objects(
            files,
            # huggingface_hub reads an empty allow list as "nothing"; ours means "no filter"
            allow_patterns=include or None,
            ignore_patterns=exclude or None,
        )
    )
    assert _kept(files, include=include, exclude=exclude) == sorted(expected)


def test_include_exclude_examples() -> None:
    files = ["a.json", "data/x.json", "data/sub/y.json", "data/z.bin", "README.md"]
    assert _kept(files, include=["data/*.json"]) == ["data/sub/y.json", "data/x.json"]
    assert _kept(files, include=["data/"]) == [
        "data/sub/y.json",
        "data/x.json",
        "data/z.bin",
    ]
    assert _kept(files, exclude=["data/"]) == ["README.md", "a.json"]
    assert _kept(files, include=["*.json"], exclude=["*/sub/*"]) == [
        "a.json",
        "data/x.json",
    ]
    assert _kept(files, include=["*.JSON"]) == []  # case-sensitive, like the hub
    assert _kept(files) == sorted(files)


def test_selection_reports_what_was_dropped() -> None:
    got = select(["b", "a", "c.bin"], exclude=["*.bin"])
    assert got == Selection(kept=("a", "b"), dropped=("c.bin",), note=None)


# ---- presets ------------------------------------------------------------------------------


def test_safetensors_on_bert_drops_other_formats() -> None:
    got = select(BERT, preset="safetensors")
    assert got.kept == (
        ".gitattributes",
        "LICENSE",
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    )
    assert set(got.dropped) == set(BERT) - set(got.kept)
    assert got.note is None


def test_safetensors_keeps_its_index_and_drops_other_indexes_and_export_folders() -> None:
    kept = _kept(SHARDED, preset="safetensors")
    assert kept == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "original/params.json",
        "original/tokenizer.model",
    ]


def test_safetensors_on_a_diffusers_repo_keeps_subfolders() -> None:
    kept = _kept(DIFFUSERS, preset="safetensors")
    assert kept == [
        "README.md",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "v1-5-pruned-emaonly.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_safetensors_without_safetensors_keeps_everything_and_says_so() -> None:
    files = ["config.json", "pytorch_model.bin", "onnx/model.onnx"]
    got = select(files, preset="safetensors")
    assert got.kept == tuple(sorted(files)) and got.dropped == ()
    assert got.note is not None and "no .safetensors" in got.note


def test_include_exclude_apply_before_the_preset() -> None:
    # excluding the only safetensors leaves a repo without any: the preset keeps the rest
    got = select(BERT, exclude=["*.safetensors"], preset="safetensors")
    assert "pytorch_model.bin" in got.kept and "model.safetensors" in got.dropped
    assert got.note is not None
    kept = _kept(THEBLOKE, include=["*.gguf"], preset="gguf:Q8_0")
    assert kept == ["llama-2-7b-chat.Q8_0.gguf"]


@pytest.mark.parametrize(
    ("preset", "weights"),
    [
        ("gguf:Q4_K_M", ["llama-2-7b-chat.Q4_K_M.gguf"]),
        ("gguf:q4_k_m", ["llama-2-7b-chat.Q4_K_M.gguf"]),
        ("gguf:Q4_K", ["llama-2-7b-chat.Q4_K.gguf"]),
        ("gguf:Q8_0", ["llama-2-7b-chat.Q8_0.gguf"]),
    ],
)
def test_gguf_keeps_one_quant_and_the_small_files(preset: str, weights: list[str]) -> None:
    kept = _kept(THEBLOKE, preset=preset)
    small = [".gitattributes", "LICENSE.txt", "Notice", "README.md", "config.json"]
    assert kept == sorted(small + weights)


def test_gguf_sharded_quant_folders_and_token_boundaries() -> None:
    assert _kept(SHARDED_GGUF, preset="gguf:Q4_K_M") == [
        "Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/Model-Q4_K_M-00002-of-00002.gguf",
        "README.md",
        "params",
        "template.jinja",
    ]
    # F16 is not BF16; mmproj-F16 is an F16 GGUF too
    f16 = _kept(SHARDED_GGUF, preset="gguf:F16")
    assert [p for p in f16 if p.endswith(".gguf")] == ["mmproj-F16.gguf", "model-f16.gguf"]
    bf16 = _kept(SHARDED_GGUF, preset="gguf:bf16")
    assert [p for p in bf16 if p.endswith(".gguf")] == [
        "BF16/Model-BF16-00001-of-00003.gguf",
        "BF16/Model-BF16-00002-of-00003.gguf",
        "BF16/Model-BF16-00003-of-00003.gguf",
    ]
    assert "model.q8_0.gguf" in _kept(SHARDED_GGUF, preset="gguf:Q8_0")
    iq2 = _kept(SHARDED_GGUF, preset="gguf:IQ2_XXS")
    assert "UD-IQ2_XXS/Model-UD-IQ2_XXS-00001-of-00001.gguf" in iq2
    assert "model.safetensors" not in iq2


def test_gguf_quant_missing_names_the_available_ones() -> None:
    with pytest.raises(PresetError) as info:
        select(THEBLOKE, preset="gguf:Q6_K")
    assert str(info.value) == (
        "preset gguf:Q6_K matches no file; available: "
        "Q2_K, Q3_K_L, Q4_K, Q4_K_M, Q4_K_S, Q5_K_M, Q8_0"
    )
    with pytest.raises(PresetError, match="available: BF16, F16, IQ2_XXS, Q4_K_M, Q8_0"):
        select(SHARDED_GGUF, preset="gguf:Q4_K")
    # a partial quant name is not a match
    with pytest.raises(PresetError):
        select(["model-Q4_K_M.gguf"], preset="gguf:K_M")


def test_gguf_on_a_repo_without_gguf() -> None:
    with pytest.raises(PresetError, match=r"no \.gguf file"):
        select(BERT, preset="gguf:Q4_K_M")


@pytest.mark.parametrize("preset", [None, "none"])
def test_no_preset_keeps_everything(preset: str | None) -> None:
    assert _kept(BERT, preset=preset) == sorted(BERT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("safetensors", "safetensors"),
        ("gguf:q4_k_m", "gguf:Q4_K_M"),
        ("gguf:IQ2_XXS", "gguf:IQ2_XXS"),
        ("none", None),
        (None, None),
    ],
)
def test_parse_preset(text: str | None, expected: str | None) -> None:
    assert parse_preset(text) == expected


@pytest.mark.parametrize("text", ["gguf", "gguf:", "gguf:Q4-K", "GGUF:Q4_K_M", "fp16", ""])
def test_unknown_presets(text: str) -> None:
    with pytest.raises(PresetError) as info:
        select(BERT, preset=text)
    assert isinstance(info.value, Hf2ociError)
    assert "safetensors" in str(info.value) or "QUANT" in str(info.value)


def test_filters_do_not_import_huggingface_hub() -> None:
    code = "import sys, hf2oci.intake.filters; assert 'huggingface_hub' not in sys.modules"
    src = str(Path(hf2oci.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _kept(
    paths: list[str], *, include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (), preset: str | None = None,
) -> list[str]:  # fmt: skip
    return list(select(paths, include=include, exclude=exclude, preset=preset).kept)
