#!/usr/bin/env bash
# Starts one worker's share of a run, detached, and returns at once; run by launch/tpu.py on all
# workers (from the code dir):
#   bash launch/run_worker.sh NAME WORKDIR VENV_DIR -- python -m sml_jax.main ARGS...
# The run lives in tmux session NAME (nohup if tmux is missing), logs to ~/sml_jax_logs/NAME.log,
# and when it ends the log is copied to WORKDIR/logs/<hostname>.log (gcloud storage for gs://).
# Environment (SML_JAX_DISTRIBUTED, SML_JAX_DATA, ...) passes through to the run.
set -euo pipefail
NAME=${1:?usage: run_worker.sh NAME WORKDIR VENV_DIR -- COMMAND...}
WORKDIR=${2:?}
VENV=${3:?}
shift 3
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "run_worker.sh: no command after --" >&2; exit 2; }
LOGDIR="$HOME/sml_jax_logs"
LOG="$LOGDIR/$NAME.log"
mkdir -p "$LOGDIR"
HOST=$(hostname)
case "$WORKDIR" in
  *://*) COPY="gcloud storage cp $(printf %q "$LOG") $(printf %q "$WORKDIR/logs/$HOST.log")" ;;
  *) COPY="mkdir -p $(printf %q "$WORKDIR/logs") && cp $(printf %q "$LOG") $(printf %q "$WORKDIR/logs/$HOST.log")" ;;
esac
# `python` is the venv's; the run's exit status is logged before the copy.
RUN="cd $(printf %q "$PWD") && export PATH=$(printf %q "$VENV/bin"):\$PATH && { $(printf '%q ' "$@") ; } >>$(printf %q "$LOG") 2>&1; echo \"[run_worker] exit status \$? at \$(date)\" >>$(printf %q "$LOG"); $COPY"
echo "[run_worker] $HOST: starting at $(date)" >>"$LOG"
if command -v tmux >/dev/null 2>&1; then
  if tmux has-session -t "$NAME" 2>/dev/null; then
    echo "[run_worker] $HOST: tmux session '$NAME' exists (a run is still going?); attach with" \
         "'tmux attach -t $NAME' or end it with 'tmux kill-session -t $NAME' first" >&2
    exit 1
  fi
  tmux new-session -d -s "$NAME" "bash -c $(printf %q "$RUN")"
  echo "[run_worker] $HOST: running in tmux session '$NAME', log $LOG"
else
  nohup bash -c "$RUN" >/dev/null 2>&1 &
  echo "[run_worker] $HOST: running under nohup (pid $!), log $LOG"
fi
