#!/usr/bin/env bash
# Regenerates the committed Python stubs in atari_trtis_demo/kserve/ from protos/.
#   scripts/generate_stubs.sh [OUTPUT_ROOT]     (default: the checkout itself)
# grpcio-tools runs from its own venv, .venv-protoc/ (made by ./setup.sh): installed
# into .venv it would upgrade setuptools and break `import chainer`. It is pinned to
# 1.81.1, whose gencode (protobuf 6.33.5) the runtime protobuf 6.33.x accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
[ -x .venv-protoc/bin/python ] || { echo "error: .venv-protoc/ missing: run ./setup.sh" >&2; exit 2; }
mkdir -p "$out/atari_trtis_demo/kserve"
.venv-protoc/bin/python -m grpc_tools.protoc -I protos --python_out="$out" \
  protos/atari_trtis_demo/kserve/kserve_v2.proto
.venv-protoc/bin/python -m grpc_tools.protoc -I protos --grpc_python_out="$out" \
  protos/atari_trtis_demo/kserve/grpc_service.proto
