#!/usr/bin/env bash
# One command on a fresh machine: install segloop with its test tools into ./.venv, then run
# the linters and the whole test suite (unit, integration, browser, scale-out on PostgreSQL). `.ci/run` calls this.
# Extra arguments are passed to pytest. The tests run on SEGLOOP_TEST_WORKERS pytest-xdist workers
# (default 2, the CI machine's cores; 0 runs them in this process, one after another). Most tests wait
# on a server, a browser or a PACS, so two workers take about two thirds to three quarters of the
# time of one (on 2 cores, pytest alone: 12.9-14.6 min in fresh-clone CI runs, against 19.6).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Real components for the integration tiers, from Debian's packages (idempotent, quiet):
# Orthanc + its DICOMweb plugin and dicom3tools (dciodvfy).
bash scripts/orthanc.sh install
# Debian's chromium and the playwright package for the browser tests (no browser download).
bash scripts/web.sh install-browser
# Debian's PostgreSQL for the scale-out tier (tests/scaleout starts its own private cluster).
bash scripts/postgres.sh install
. .venv/bin/activate
echo "== ruff"; ruff check src tests benchmarks
echo "== mypy"; mypy
echo "== pytest"
workers="${SEGLOOP_TEST_WORKERS:-2}"
exec python -m pytest -q -n "$workers" --dist loadscope "$@"
