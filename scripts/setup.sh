#!/usr/bin/env bash
# Sets up what the project needs on a fresh machine, idempotently:
#   - Mosquitto, from the system package manager when it is missing;
#   - a virtual environment in .venv with torch's CPU build and this project (--dev: test tools).
# Never pulls a multi-GB CUDA build of torch: the CPU build is installed first, explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=""
[ "${1:-}" = "--dev" ] && EXTRAS="[dev]"
PYTHON=${PYTHON:-python3}
VENV=${ARES_VENV:-.venv}
TORCH_VERSION=${ARES_TORCH_VERSION:-2.13.0}

say() { echo "setup: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"  # -n: never prompt (CI has no stdin)
  else say "need root to run: $*"; return 1
  fi
}

install_mosquitto() {
  if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then return; fi
  say "installing Mosquitto"
  if command -v apt-get >/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  elif command -v dnf >/dev/null; then as_root dnf install -y mosquitto
  elif command -v brew >/dev/null; then brew install mosquitto
  else
    say "cannot install Mosquitto here: install it with your package manager, or set ARES_MOSQUITTO"
    exit 1
  fi
}

check_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)"
    exit 1
  fi
}

install_torch() {
  if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then return; fi
  say "installing torch (CPU build)"
  if "$VENV/bin/pip" install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
    # This machine holds the wheel (pip's find-links); now fetch only its dependencies.
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  elif [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    # PyPI's Linux x86_64 torch is the multi-GB CUDA build: take the CPU-only index instead.
    "$VENV/bin/pip" install -q --retries 2 --timeout 30 "torch>=2.2" \
      --index-url https://download.pytorch.org/whl/cpu
  else
    "$VENV/bin/pip" install -q "torch>=2.2"  # macOS and ARM boards: PyPI's build is CPU-only
  fi
}

install_project() {
  local stamp="$VENV/.ares-installed$EXTRAS"
  local digest
  digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then return; fi
  say "installing the project$EXTRAS"
  "$VENV/bin/pip" install -q -e ".$EXTRAS"
  echo "$digest" >"$stamp"
}

install_mosquitto
check_python
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
install_torch
install_project
