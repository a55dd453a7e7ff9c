#!/usr/bin/env bash
# Installs the locked environment on one TPU VM worker; run by launch/tpu.py on every worker:
#   bash sml_jax/launch/setup_worker.sh VENV_DIR LIBTPU_REQUIREMENT
# Python 3.12 venv (deadsnakes if the image lacks 3.12), every pin of requirements/lock.txt with
# --no-deps (no resolver backtracking, same versions as CI), then the libtpu of
# requirements/tpu.txt (the one the locked jax's [tpu] extra pins). Idempotent: the venv is rebuilt only when the lock file changes. bubblewrap for the code
# sandbox.
set -euo pipefail
VENV=${1:?usage: setup_worker.sh VENV_DIR LIBTPU_REQUIREMENT}
LIBTPU=${2:?usage: setup_worker.sh VENV_DIR LIBTPU_REQUIREMENT}
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# On a fresh VM unattended-upgrades holds the dpkg lock for minutes after boot: wait for it
# (apt >= 1.9.11) instead of failing.
APT=(sudo apt-get -o DPkg::Lock::Timeout=900)
STAMP="$VENV/.lock-$(sha256sum requirements/lock.txt | cut -c1-16)-$(echo "$LIBTPU" | sha256sum | cut -c1-8)"
if [ ! -f "$STAMP" ]; then
  PY=$(command -v python3.12 || true)
  if [ -z "$PY" ]; then
    "${APT[@]}" update -qq
    "${APT[@]}" install -y -qq software-properties-common
    sudo add-apt-repository -y ppa:deadsnakes/ppa
    "${APT[@]}" update -qq
    "${APT[@]}" install -y -qq python3.12 python3.12-venv
    PY=$(command -v python3.12)
  fi
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q --no-deps -r requirements/lock.txt
  "$VENV/bin/pip" install -q --no-deps "$LIBTPU"
  touch "$STAMP"
fi
command -v bwrap >/dev/null 2>&1 || "${APT[@]}" install -y -qq bubblewrap
command -v tmux >/dev/null 2>&1 || "${APT[@]}" install -y -qq tmux || true
echo "[setup_worker] $(hostname): $("$VENV/bin/python" --version), $("$VENV/bin/pip" show jax libtpu 2>/dev/null | grep -E '^(Name|Version)' | paste -sd' ')"
