"""Entrypoint of the runtime images: find the model, go offline, exec the server.

Standard library only: the runtime image templates copy this file in as their entrypoint
(``hf2oci deploy dockerfile``), so it runs where hf2oci itself is not installed. ``RUNTIMES``
is the one list of the servers hf2oci deploys.

    python runtime.py llamacpp [EXTRA SERVER ARGS...]
    python runtime.py vllm [EXTRA SERVER ARGS...]

Settings (environment): MODEL_DIR (default /REPO, else /models), MODEL_FILE, LLAMA_QUANT
(preferred quantizations, comma-separated), SERVED_MODEL_NAME, HOST, PORT (8000), CTX_SIZE,
N_GPU_LAYERS, THREADS, CHAT_FORMAT (llama.cpp; by default the GGUF's own template, or for a GGUF
without one the format of its architecture, read from its header), GPUS
(vLLM tensor parallel size), LLAMA_SERVER / VLLM_BIN (the server command, for tests or custom
builds).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

DEFAULT_QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q4_K_S", "IQ4_XS", "BF16", "F16")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class RuntimeSetupError(Exception):
    """Nothing to serve, or settings that cannot work; the message is the whole story."""


def model_dir(env: Mapping[str, str]) -> Path:
    """MODEL_DIR, else /REPO (the model image's files), else /models (a copied volume)."""
    if env.get("MODEL_DIR"):
        folder = Path(env["MODEL_DIR"])
        # an image volume mounts the model image's root: its files are under REPO/
        if (folder / "REPO").is_dir() and not any(folder.glob("*.gguf")):
            folder = folder / "REPO"
    else:
        folder = next((p for p in (Path("/REPO"), Path("/models")) if p.is_dir()), Path("/REPO"))
    if not folder.is_dir() or not any(folder.iterdir()):
        raise RuntimeSetupError(f"no model found: {folder} is missing or empty (set MODEL_DIR)")
    return folder


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


def pick_gguf(
    folder: Path, *, quants: Sequence[str] = DEFAULT_QUANTS, model_file: str = ""
) -> Path:
    """The GGUF to serve: MODEL_FILE, else the largest of the first preferred quantization
    present, else the largest GGUF; projector files (mmproj) are never picked; a sharded model
    is served from its first shard."""
    if model_file:
        chosen = Path(model_file) if Path(model_file).is_absolute() else folder / model_file
        if not chosen.is_file():
            raise RuntimeSetupError(f"MODEL_FILE {model_file} not found under {folder}")
        return chosen
    candidates = []
    for p in sorted(folder.rglob("*")):
        name = p.relative_to(folder).as_posix()
        if not p.is_file() or not name.lower().endswith(".gguf") or "mmproj" in p.name.lower():
            continue
        shard = _SHARD.search(p.name)
        if shard and int(shard.group(1)) != 1:
            continue
        candidates.append((name, p))
    if not candidates:
        raise RuntimeSetupError(f"no .gguf file under {folder}")

    def size(p: Path) -> int:
        shard = _SHARD.search(p.name)
        if not shard:
            return p.stat().st_size
        stem = p.name[: shard.start()]
        return sum(q.stat().st_size for q in p.parent.glob(f"{stem}-*-of-{shard.group(2)}.gguf"))

    for quant in quants:
        matching = [p for name, p in candidates if has_quant(name, quant)]
        if matching:
            return max(matching, key=size)
    return max((p for _, p in candidates), key=size)


#: GGUF value types (gguf.md): fixed sizes in bytes; 8 is a string, 9 an array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: llama-cpp-python's chat format for a GGUF without a chat template, by general.architecture
CHAT_FORMATS = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "llama": "llama-3", "mistral": "mistral-instruct", "qwen2": "chatml", "qwen3": "chatml",
    "qwen2moe": "chatml", "phi3": "chatml", "granite": "chatml", "olmo": "chatml",
}  # fmt: skip


def gguf_metadata(source: Path | BinaryIO, keys: Sequence[str]) -> dict[str, object]:
    """The string and number values of ``keys`` in a GGUF file's header (arrays skipped), read
    with the standard library from a path or a seekable file; {} for a file that is not GGUF.
    Reading stops once every key is found."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            return gguf_metadata(f, keys)
    return _gguf_metadata(source, keys)


def _gguf_metadata(f: BinaryIO, keys: Sequence[str]) -> dict[str, object]:
    import struct

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


def chat_format(gguf: Path, env: Mapping[str, str]) -> str | None:
    """CHAT_FORMAT when set; else, for a GGUF without ``tokenizer.chat_template`` (the server
    would answer chats with nothing), the format its architecture uses; None: the template's."""
    if env.get("CHAT_FORMAT"):
        return env["CHAT_FORMAT"]
    meta = gguf_metadata(gguf, ("general.architecture", "tokenizer.chat_template"))
    if meta.get("tokenizer.chat_template"):
        return None
    arch = str(meta.get("general.architecture", ""))
    chosen = CHAT_FORMATS.get(arch)
    if chosen:
        print(f"{gguf.name} has no chat template: using chat format {chosen!r} for {arch}"
              " (set CHAT_FORMAT to choose another)", file=sys.stderr)  # fmt: skip
    return chosen


def served_name(env: Mapping[str, str], folder: Path) -> str:
    return env.get("SERVED_MODEL_NAME") or folder.name


def llamacpp_command(env: Mapping[str, str], extra: Sequence[str]) -> list[str]:
    folder = model_dir(env)
    quants = [q.strip() for q in env.get("LLAMA_QUANT", "").split(",") if q.strip()]
    gguf = pick_gguf(folder, quants=quants or DEFAULT_QUANTS, model_file=env.get("MODEL_FILE", ""))
    server = shlex.split(env.get("LLAMA_SERVER") or f"{sys.executable} -m llama_cpp.server")
    cmd = [
        *server,
        "--model",
        str(gguf),
        "--model_alias",
        served_name(env, folder),
        "--host",
        env.get("HOST", "0.0.0.0"),
        "--port",
        env.get("PORT", "8000"),
    ]
    for var, flag in (
        ("CTX_SIZE", "--n_ctx"),
        ("N_GPU_LAYERS", "--n_gpu_layers"),
        ("THREADS", "--n_threads"),
    ):
        if env.get(var):
            cmd += [flag, env[var]]
    chosen = None if "--chat_format" in extra else chat_format(gguf, env)
    if chosen:
        cmd += ["--chat_format", chosen]
    return cmd + list(extra)


def vllm_command(env: Mapping[str, str], extra: Sequence[str]) -> list[str]:
    folder = model_dir(env)
    if not (folder / "config.json").is_file():
        raise RuntimeSetupError(f"{folder} has no config.json: not a transformers model for vLLM")
    cmd = [
        *shlex.split(env.get("VLLM_BIN") or "vllm"),
        "serve",
        str(folder),
        "--served-model-name",
        served_name(env, folder),
        "--host",
        env.get("HOST", "0.0.0.0"),
        "--port",
        env.get("PORT", "8000"),
    ]
    for var, flag in (("CTX_SIZE", "--max-model-len"), ("GPUS", "--tensor-parallel-size")):
        if env.get(var):
            cmd += [flag, env[var]]
    return cmd + list(extra)


@dataclass(frozen=True)
class Runtime:
    """A model server hf2oci can deploy, and what each deployment form needs of it."""

    name: str
    #: the server's command line, from the environment and extra arguments
    command: Callable[[Mapping[str, str], Sequence[str]], list[str]]
    #: a path that answers 200 once the model is loaded (readiness probes)
    health_path: str
    #: the server image `deploy dockerfile` builds, when none is named
    default_image: str
    #: memory request and limit for Kubernetes
    default_memory: str
    #: what it serves: "gguf" (one file) or "transformers" (a folder with config.json)
    model_format: str


#: the one list of runtimes: the entrypoint, `hf2oci deploy` and the templates read it
RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("llamacpp", llamacpp_command, "/v1/models", "hf2oci/llamacpp-server:latest",
                "4Gi", "gguf"),
        Runtime("vllm", vllm_command, "/health", "hf2oci/vllm-server:latest", "16Gi",
                "transformers"),
    )
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in RUNTIMES:
        print(f"usage: runtime.py {'|'.join(RUNTIMES)} [server args...]", file=sys.stderr)
        return 2
    env = {**os.environ, **OFFLINE}
    try:
        cmd = RUNTIMES[args[0]].command(env, args[1:])
    except RuntimeSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("serving: " + shlex.join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
