#!/usr/bin/env bash
# Installs an ARES service (the device agent or the edge) under systemd, idempotently:
#   1. a virtual environment in /opt/ares/venv with torch from the board's own source:
#        Raspberry Pi (64-bit OS): the CPU build, from PyTorch's CPU index;
#        Jetson: NVIDIA's wheel for its JetPack and Python (--torch-wheel or --torch-index),
#                or the CPU build with --cpu-torch (the agent trains on the CPU anyway);
#        other hosts: the CPU build (x86_64: never PyPI's multi-GB CUDA build), or --torch-index;
#   2. this project into that environment;
#   3. /etc/ares/<role>.toml from the client config `ares broker init` wrote, its MQTT password
#      moved into /etc/ares/credentials/ (a systemd credential), TLS files where it names them;
#   4. the unit /etc/systemd/system/ares-<role>.service, then `systemctl enable --now`
#      (a restart when anything changed while it was running).
# Running it again changes only what differs. --dry-run prints what it would do, changing nothing.
#
#   sudo deploy/install.sh --role device --config broker/clients/pi-1.toml --ca broker/certs/ca.crt
#   sudo deploy/install.sh --role edge --config broker/clients/edge.toml
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=$(cd "$HERE/.." && pwd)
PREFIX=/opt/ares          # the units run /opt/ares/venv/bin/ares
ROLE="" CONFIG="" CA="" CERT="" KEY="" BOARD=auto PYTHON=""
TORCH_WHEEL="" TORCH_INDEX="" CPU_TORCH=0 DRY_RUN=0 START=1
CPU_INDEX=https://download.pytorch.org/whl/cpu

usage() {
  cat <<EOF
usage: install.sh --role edge|device [--config FILE] [options]
  --config FILE        the service's TOML config (required the first time), e.g. the client
                       config written by 'ares broker init' / 'ares broker add-device'
  --ca FILE            the broker's CA certificate, installed where mqtt.ca_file says
  --cert FILE          a client certificate (mqtt.cert_file); --key FILE its key (a credential)
  --board auto|pi|jetson|generic   which torch to install (auto: /proc/device-tree/model)
  --torch-wheel URL|FILE           install this torch wheel (Jetson: NVIDIA's, for your JetPack)
  --torch-index URL                take torch from this pip index instead
  --cpu-torch          on a Jetson: the CPU build from PyTorch's CPU index
  --python PATH        Python >= 3.11 for the virtual environment (default: the newest found)
  --no-start           enable the unit but do not start or restart it
  --dry-run            print what would be done; change nothing
EOF
}

say() { echo "install: $*" >&2; }
die() { say "$*"; exit 2; }

# Every command that changes the system goes through here: --dry-run only prints it.
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE=${2:?}; shift ;;
    --config) CONFIG=${2:?}; shift ;;
    --ca) CA=${2:?}; shift ;;
    --cert) CERT=${2:?}; shift ;;
    --key) KEY=${2:?}; shift ;;
    --board) BOARD=${2:?}; shift ;;
    --torch-wheel) TORCH_WHEEL=${2:?}; shift ;;
    --torch-index) TORCH_INDEX=${2:?}; shift ;;
    --cpu-torch) CPU_TORCH=1 ;;
    --python) PYTHON=${2:?}; shift ;;
    --no-start) START=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

case "$ROLE" in edge|device) ;; *) usage >&2; die "--role must be edge or device" ;; esac
UNIT=ares-$ROLE.service
VENV=$PREFIX/venv
ETC_CONFIG=/etc/ares/$ROLE.toml
[ "$DRY_RUN" = 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (or with --dry-run)"
[ -f "$HERE/$UNIT" ] || die "$HERE/$UNIT is missing: run the script from a checkout"
if [ -z "$CONFIG" ] && [ ! -f "$ETC_CONFIG" ]; then
  die "--config is needed: $ETC_CONFIG does not exist yet"
fi
for file in "$CONFIG" "$CA" "$CERT" "$KEY"; do
  [ -z "$file" ] || [ -r "$file" ] || die "cannot read $file"
done

detect_board() {
  local model=""
  [ -r /proc/device-tree/model ] && model=$(tr -d '\0' </proc/device-tree/model)
  case "$model" in
    *"Raspberry Pi"*) echo pi ;;
    *Jetson*|*NVIDIA*) echo jetson ;;
    *) if [ -e /etc/nv_tegra_release ]; then echo jetson; else echo generic; fi ;;
  esac
}

find_python() {
  local candidate
  for candidate in ${PYTHON:-python3.13 python3.12 python3.11 python3}; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  die "no Python >= 3.11 found (give one with --python; on JetPack, e.g. the deadsnakes PPA)"
}

[ "$BOARD" = auto ] && BOARD=$(detect_board)
ARCH=$(uname -m)
case "$BOARD" in
  pi)
    # PyTorch publishes no 32-bit ARM builds: the Pi needs the 64-bit Raspberry Pi OS.
    [ "$ARCH" = aarch64 ] || die "a Raspberry Pi needs a 64-bit OS (aarch64) for torch, not $ARCH"
    ;;
  jetson)
    if [ -z "$TORCH_WHEEL$TORCH_INDEX" ] && [ "$CPU_TORCH" = 0 ]; then
      die "on a Jetson give NVIDIA's torch wheel for your JetPack and Python (--torch-wheel" \
        "URL|FILE, or --torch-index URL), or --cpu-torch for the CPU build: see deploy/README.md"
    fi
    ;;
  generic) ;;
  *) die "--board must be auto, pi, jetson or generic" ;;
esac
PY=$(find_python)
say "role $ROLE, board $BOARD ($ARCH), $("$PY" --version) at $PY, prefix $PREFIX"

# --- 1. the virtual environment and torch --------------------------------------------------------

[ -x "$VENV/bin/python" ] || run "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

install_torch() {
  if [ -n "$TORCH_WHEEL" ]; then
    run "${PIP[@]}" install "$TORCH_WHEEL"
  elif [ -n "$TORCH_INDEX" ]; then
    run "${PIP[@]}" install torch --index-url "$TORCH_INDEX"
  else
    # The CPU index holds CPU builds only: no variant with CUDA can be picked by mistake.
    run "${PIP[@]}" install torch --index-url "$CPU_INDEX"
  fi
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  say "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') is installed"
else
  install_torch
fi
if [ "$DRY_RUN" = 0 ] && [ "$BOARD" = pi ] &&
  ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
  die "the torch in $VENV is a CUDA build; a Raspberry Pi needs the CPU build"
fi

# --- 2. the project ------------------------------------------------------------------------------

# A digest of what gets installed, so an unchanged checkout is not rebuilt.
source_digest() {
  (cd "$SOURCE" && find pyproject.toml schemas transport splitnn planner broker edge_service device_agent \
    testbed experiments runtime serving ares -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

STAMP=$VENV/.ares-source
DIGEST=$(source_digest)
CHANGED=0
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DIGEST" ]; then
  say "the project in $VENV is up to date"
else
  WHEELS=/tmp/ares-wheels
  if [ "$DRY_RUN" = 0 ]; then
    WHEELS=$(mktemp -d)
    trap 'rm -rf "$WHEELS"' EXIT
  fi
  run "${PIP[@]}" wheel --no-deps -w "$WHEELS" "$SOURCE"
  # Replace the project itself, then add whatever dependency is missing; torch, installed
  # above, satisfies the project's requirement and is left alone.
  run "${PIP[@]}" install --no-deps --force-reinstall "$WHEELS"/ares_split-*.whl
  run "${PIP[@]}" install "$WHEELS"/ares_split-*.whl
  if [ "$DRY_RUN" = 1 ]; then echo "+ echo $DIGEST > $STAMP"; else echo "$DIGEST" >"$STAMP"; fi
  CHANGED=1
fi

# --- 3. the config, its credential and TLS files ----------------------------------------------------

if [ -n "$CONFIG" ]; then
  ARGS=(--role "$ROLE" --config "$CONFIG")
  [ -z "$CA" ] || ARGS+=(--ca "$CA")
  [ -z "$CERT" ] || ARGS+=(--cert "$CERT")
  [ -z "$KEY" ] || ARGS+=(--key "$KEY")
  [ "$DRY_RUN" = 0 ] || ARGS+=(--dry-run)
  REPORT=$("$PY" "$HERE/install_config.py" "${ARGS[@]}") || die "the config was not installed"
  echo "$REPORT" >&2
  grep -qE '^(changed|would change) ' <<<"$REPORT" && CHANGED=1
fi

# The settings as the unit will see them, checked now: a bad config fails here, clearly, rather
# than in a restart loop.
if [ "$DRY_RUN" = 0 ]; then
  ARES_CONFIG=$ETC_CONFIG ARES_MQTT__PASSWORD_FILE=/etc/ares/credentials/$ROLE-mqtt-password \
    "$VENV/bin/ares" config show "$ROLE" >/dev/null || die "$ETC_CONFIG: invalid settings (above)"
fi

# --- 4. the unit ---------------------------------------------------------------------------------

TARGET=/etc/systemd/system/$UNIT
if cmp -s "$HERE/$UNIT" "$TARGET"; then
  say "$TARGET is up to date"
else
  run install -m 0644 "$HERE/$UNIT" "$TARGET"
  CHANGED=1
fi
if [ "$CHANGED" = 1 ]; then
  run systemctl daemon-reload
fi
if [ "$START" = 0 ]; then
  run systemctl enable "$UNIT"
  say "done: enabled, not started (systemctl start $UNIT)"
  exit 0
fi
WAS_ACTIVE=0
systemctl is-active --quiet "$UNIT" 2>/dev/null && WAS_ACTIVE=1
run systemctl enable --now "$UNIT"
# enable --now leaves a running service as it is: restart it onto what changed.
if [ "$CHANGED" = 1 ] && [ "$WAS_ACTIVE" = 1 ]; then
  run systemctl restart "$UNIT"
fi
say "done: systemctl status $UNIT; journalctl -u $UNIT -f"
