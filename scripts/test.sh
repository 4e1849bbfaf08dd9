#!/usr/bin/env bash
# Set up (first run only) and run everything CI runs: lint, format check, type check, tests.
# Extra arguments go to pytest, e.g. -k codec or -m "not broker".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
CODE="schemas transport splitnn planner broker edge_service device_agent serving testbed experiments runtime ares tests benchmarks"
echo "== ruff" && .venv/bin/ruff check $CODE && .venv/bin/ruff format --check $CODE
echo "== mypy" && .venv/bin/mypy $CODE
echo "== pytest"
status=0
.venv/bin/pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
