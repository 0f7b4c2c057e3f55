#!/usr/bin/env bash
# Local multi-process launcher: N CPU processes of the trainer on this
# machine, coordinated over 127.0.0.1 (autoselect_jax/launch/local.py).
#
#   launch/local.sh --num-processes 2 [--devices-per-process D] [--port P] \
#     [--log-dir DIR] -- --config configs/demo.py --workdir /tmp/demo_2proc
#
# PYTHON picks the interpreter (default python3); DRY_RUN=1 prints each
# process's command instead of running it.
set -euo pipefail

: "${PYTHON:=python3}"
: "${DRY_RUN:=0}"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then
  exec "$PYTHON" -m autoselect_jax.launch.local --help
fi
extra=()
case "$DRY_RUN" in
  0) ;;
  1) extra=(--dry-run) ;;
  *)
    echo "local.sh: error: DRY_RUN must be 0 or 1, got '$DRY_RUN'" >&2
    exit 1
    ;;
esac
exec "$PYTHON" -m autoselect_jax.launch.local "${extra[@]}" "$@"
