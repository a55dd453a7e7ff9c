#!/usr/bin/env bash
# Creates the project venv from the full lock (every transitive pin, installed with --no-deps so
# pip never backtracks), then installs the project itself in editable mode.
set -euo pipefail
VENV=${1:-.venv}
find_python() {
  for cand in python3.12 "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.12.1/bin/python3.12")"; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  for d in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -x "$d" ] && { echo "$d"; return 0; }
  done
  return 1
}
PY=$(find_python) || { echo "error: Python 3.12 not found (install it, e.g. 'pyenv install 3.12')" >&2; exit 1; }
echo "[make_venv] creating $VENV with $PY (takes ~3 min the first time)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip 2> >(grep -v "is ignored: it is neither a file" >&2)
"$VENV/bin/pip" install -q --no-deps -r requirements/lock.txt 2> >(grep -v "is ignored: it is neither a file" >&2)
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
echo "[make_venv] done: $("$VENV/bin/python" --version)"
