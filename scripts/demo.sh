#!/usr/bin/env bash
# Set up (first run only) and run the one-machine demo: broker, edge service, devices.
# Extra arguments go to `ares demo`, e.g. --devices 5 --rounds 20 --report report.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ares demo "$@"
