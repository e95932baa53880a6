#!/usr/bin/env bash
# Builds .venv/ in this checkout and installs everything: training, conversion,
# serving, playing and the tests. Needs only Python 3.11 and the package index.
#   ./setup.sh            everything
#   ./setup.sh --client   only what src/app.py needs (no Chainer)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "error: Python 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt "$@"; }

if [ "${1:-}" = "--client" ]; then
  pip -r requirements_client.txt
  pip --no-deps -e .
  .venv/bin/python -c 'import atari_trtis_demo.core.envs, grpc, pygame, aiohttp' && echo "client environment ready in .venv/"
  exit 0
fi

# Chainer 7.8.1 has no wheel and its setup.py needs pkg_resources: build it against
# the old setuptools in the venv itself, not in an isolated build environment.
pip 'setuptools<70' wheel 'numpy<2'
pip --no-build-isolation chainer==7.8.1
pip -r requirements_server.txt -r requirements_client.txt -r requirements_dev.txt
# onnx-chainer's metadata asks for chainer<7 and an onnx that does not build today.
pip --no-deps onnx-chainer==1.6.0
pip --no-build-isolation --no-deps -e .
# grpcio-tools, for scripts/generate_stubs.sh and the test that the committed stubs
# match protos/, lives in its own venv: in .venv it would break `import chainer`.
[ -x .venv-protoc/bin/python ] || "$PYTHON" -m venv .venv-protoc
.venv-protoc/bin/python -m pip install --disable-pip-version-check -q -r requirements_protoc.txt
# Debian's chromium for the tests of the --web page (root or passwordless sudo; else those tests skip, saying why).
scripts/install_browser.sh || echo "note: the browser tests of the --web page will be skipped (see the line above)"
.venv/bin/python -c 'import atari_trtis_demo.train.agent, onnx_chainer, ale_py, onnxruntime, pygame, tritonclient.grpc' \
  && echo "environment ready in .venv/"
