#!/usr/bin/env bash
# One entry for a fresh machine: makes ./.venv, installs what the command needs,
# then runs it. `./aoi.sh demo` runs the appliance on its embedded defaults;
# `./aoi.sh test` runs the test suite; `./aoi.sh <any aoi sub-command>` passes through.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
TORCH_PIN="torch==2.13.0"  # the CPU wheel; an unpinned torch pulls GBs of CUDA packages

die() { echo "aoi.sh: $*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "$PY not found: install Python 3.11 (apt-get install python3)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python >= 3.11 is needed, $PY is $("$PY" -V 2>&1)"

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv "$VENV"
    else
      die "python venv is missing: run 'sudo apt-get install python3-venv' and try again"
    fi
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

want=${1:-demo}
case "$want" in
  test) extras="torch,onnx,camera,plc,gui,dev" ;;
  *)    extras="torch,onnx,camera,plc,gui" ;;
esac
stamp="$VENV/.installed-$extras-$(sha1sum setup.cfg | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
  "$VENV/bin/python" -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi

if [ "$want" = test ]; then
  shift || true
  export QT_QPA_PLATFORM=offscreen
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
exec "$VENV/bin/aoi" "$@"
