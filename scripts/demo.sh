#!/usr/bin/env bash
# One command on a fresh machine: install segloop into ./.venv and run `segloop demo`.
# Extra arguments are passed to `segloop demo` (e.g. --dataset PATH, --data DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/segloop demo "$@"
