#!/usr/bin/env bash
# Installs segloop into ./.venv on a fresh machine.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh test     plus the test tools
# torch is installed first, pinned to the CPU build 2.13.0: a plain `pip install torch`
# would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
if [ "$extra" = "test" ]; then
  python -m pip install --quiet -e ".[test]"
  # MONAI Label's Python client for tests/compat, without its server's dependencies (see pyproject.toml)
  python -m pip install --quiet --no-deps "monailabel==0.8.5"
else
  python -m pip install --quiet -e .
fi
# The browser app: npm ci + vite build into web/dist (skipped when up to date).
bash scripts/web.sh build
echo "segloop installed in $(pwd)/.venv"
