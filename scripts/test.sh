#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (as root), then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in dockerd:docker.io docker-registry:docker-registry skopeo:skopeo umoci:umoci \
            git:git tar:tar docker-compose:docker-compose; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sh || need_apt+=(busybox-static)
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
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
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python once into $WHEELS (several minutes)..."
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" wheel -q --no-deps -w "$WHEELS" llama-cpp-python
fi
"$VENV/bin/pip" install -q --find-links "$WHEELS" -e '.[test]'

"$VENV/bin/ruff" check src tests
exec "$VENV/bin/python" -m pytest "$@"
