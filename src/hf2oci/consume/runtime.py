"""Entrypoint of the runtime images: find the model, go offline, exec the server.

Standard library and ``gguf`` only: the runtime image templates copy this file in as their
entrypoint, with ``gguf.py`` beside it (``hf2oci deploy dockerfile``), so it runs where hf2oci
itself is not installed. ``RUNTIMES``
is the one list of the servers hf2oci deploys.

    python runtime.py llamacpp [EXTRA SERVER ARGS...]
    python runtime.py vllm [EXTRA SERVER ARGS...]

Settings (environment): MODEL_DIR (default /REPO, else /models; for vLLM also an ``s3://`` URL
of ``hf2oci serve --s3-port``, streamed with ``--load-format runai_streamer``), MODEL_FILE,
LLAMA_QUANT (preferred quantizations, comma-separated), SERVED_MODEL_NAME, HOST, PORT (8000),
CTX_SIZE, N_GPU_LAYERS, THREADS, CHAT_FORMAT (llama.cpp; by default the GGUF's own template, or
for a GGUF without one the format of its architecture, read from its header), GPUS (vLLM tensor
parallel size), LLAMA_SERVER / VLLM_BIN (the server command, for tests or custom builds).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

try:  # in a runtime image this file is entrypoint.py, beside gguf.py copied as hf2oci_gguf.py
    from hf2oci_gguf import gguf_metadata, has_quant  # type: ignore[import-not-found]
except ImportError:
    from hf2oci.gguf import gguf_metadata, has_quant

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


#: llama-cpp-python's chat format for a GGUF without a chat template, by general.architecture
CHAT_FORMATS = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "llama": "llama-3", "mistral": "mistral-instruct", "qwen2": "chatml", "qwen3": "chatml",
    "qwen2moe": "chatml", "phi3": "chatml", "granite": "chatml", "olmo": "chatml",
}  # fmt: skip


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
    source = env.get("MODEL_DIR", "")
    if source.startswith("s3://"):  # hf2oci serve's S3 face: the weights stream, no copy
        model, name = source, env.get("SERVED_MODEL_NAME") or source
        if "--load-format" not in extra:
            extra = ["--load-format", "runai_streamer", *extra]
    else:
        folder = model_dir(env)
        if not (folder / "config.json").is_file():
            why = "not a transformers model for vLLM"
            raise RuntimeSetupError(f"{folder} has no config.json: {why}")
        model, name = str(folder), served_name(env, folder)
    cmd = [
        *shlex.split(env.get("VLLM_BIN") or "vllm"),
        "serve",
        model,
        "--served-model-name",
        name,
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
