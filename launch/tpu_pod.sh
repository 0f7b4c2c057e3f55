#!/usr/bin/env bash
# Cloud TPU pod (TPU VMs) launcher: create the pod, install the project on
# every worker, run the trainer on all workers, follow it, delete the pod.
#
#   PROJECT=my-proj WORKDIR=gs://my-bucket/run1 launch/tpu_pod.sh create
#   PROJECT=my-proj WORKDIR=gs://my-bucket/run1 launch/tpu_pod.sh setup
#   PROJECT=my-proj WORKDIR=gs://my-bucket/run1 \
#     CONFIG_OVERRIDES="--config.model.checkpoint=... --config.data.train_path=..." \
#     launch/tpu_pod.sh train
#   PROJECT=my-proj WORKER=3 launch/tpu_pod.sh logs
#   PROJECT=my-proj launch/tpu_pod.sh delete
#
# DRY_RUN=1 prints every command (gcloud, tar) instead of running it.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")

# Settings (environment variables) and their defaults.
: "${PROJECT:=}"                          # GCP project (required).
: "${ZONE:=us-west4-a}"                   # Zone with the accelerator type.
: "${TPU_NAME:=autoselect}"               # TPU VM (node) name.
: "${ACCELERATOR_TYPE:=v5litepod-16}"     # e.g. v5litepod-16, v4-32, v6e-16.
: "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}"  # TPU software version.
: "${SPOT:=0}"                            # 1: Spot VMs (preemptible).
: "${QUEUED:=0}"                          # 1: create via a queued resource.
: "${QUEUED_RESOURCE_ID:=${TPU_NAME}-qr}" # Queued resource name (QUEUED=1).
: "${REPO_SOURCE:=$repo_root}"            # Git URL, or local path to copy.
: "${REPO_REF:=}"                         # Branch/tag for a git URL.
: "${REMOTE_DIR:=autoselect_jax}"         # Checkout on each worker (from ~).
: "${PYTHON_VERSION:=3.11}"               # Python of the workers' venv.
: "${JAX_TPU:=jax[tpu]}"                  # pip requirement for JAX on TPU.
: "${EXTRA_PIP:=gcsfs}"                   # More pip requirements (gcsfs:
                                          # the trainer's gs:// workdir).
: "${CONFIG:=$repo_root/configs/paligemma.py}"  # Local config, copied.
: "${WORKDIR:=}"                          # gs://... (required by train).
: "${CONFIG_OVERRIDES:=}"                 # Extra --config.FIELD=VALUE args.
: "${WORKER:=0}"                          # Worker index for logs (or all).
: "${LOG_LINES:=100}"                     # Lines logs shows first.
: "${FOLLOW:=1}"                          # 1: logs keeps following.
: "${DRY_RUN:=0}"                         # 1: print commands, run nothing.

PROG=$(basename "$0")
SRC_TARBALL=autoselect_src.tar.gz          # Local sources, in the workers' ~.

usage() {
  cat <<EOF
Usage: [VAR=VALUE ...] $PROG COMMAND

Commands:
  create   create the TPU VMs (queued resource with QUEUED=1, Spot with SPOT=1)
  setup    copy or clone the project on every worker, install it + $JAX_TPU
           + $EXTRA_PIP in a Python $PYTHON_VERSION venv, check that JAX sees the TPU chips
  train    copy CONFIG to every worker and start the trainer on all of them
           in the background (log: ~/$REMOTE_DIR/train.log on each worker)
  stop     stop the trainer on every worker
  logs     show worker WORKER's log (FOLLOW=1 keeps following)
  status   describe the TPU (or the queued resource)
  delete   delete the TPU (or the queued resource and its TPU)
  help     this text

Settings (environment variables, current value):
  PROJECT=$PROJECT (required)
  ZONE=$ZONE  TPU_NAME=$TPU_NAME
  ACCELERATOR_TYPE=$ACCELERATOR_TYPE  RUNTIME_VERSION=$RUNTIME_VERSION
  SPOT=$SPOT  QUEUED=$QUEUED  QUEUED_RESOURCE_ID=$QUEUED_RESOURCE_ID
  REPO_SOURCE=$REPO_SOURCE  REPO_REF=$REPO_REF
  REMOTE_DIR=$REMOTE_DIR  PYTHON_VERSION=$PYTHON_VERSION  JAX_TPU=$JAX_TPU
  EXTRA_PIP=$EXTRA_PIP
  CONFIG=$CONFIG
  WORKDIR=$WORKDIR (gs://..., required by train)
  CONFIG_OVERRIDES=$CONFIG_OVERRIDES
  WORKER=$WORKER  LOG_LINES=$LOG_LINES  FOLLOW=$FOLLOW  DRY_RUN=$DRY_RUN

The workers read model.checkpoint and data.train_path themselves: give paths
that exist on every worker (CONFIG_OVERRIDES). A re-run of train resumes from
the latest checkpoint in WORKDIR.
EOF
}

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

note() {  # A message after a command that really ran (not with DRY_RUN=1).
  if [[ "$DRY_RUN" == 0 ]]; then
    echo "$PROG: $*" >&2
  fi
}

require() {  # require VAR...: each must be non-empty.
  local name
  for name in "$@"; do
    [[ -n "${!name}" ]] || die "$name is not set (export $name=..., see '$PROG help')"
  done
}

check_flag() {  # check_flag VAR: must be 0 or 1.
  [[ "${!1}" == 0 || "${!1}" == 1 ]] || die "$1 must be 0 or 1, got '${!1}'"
}

quote() {  # An argument as the shell would need it (bare when safe).
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf '%s' "${1@Q}"
  fi
}

run() {  # run CMD ARGS...: runs it, or prints it with DRY_RUN=1.
  if [[ "$DRY_RUN" == 1 ]]; then
    local arg line="+"
    for arg in "$@"; do
      line+=" $(quote "$arg")"
    done
    echo "$line"
  else
    "$@"
  fi
}

is_git_url() {
  [[ "$REPO_SOURCE" =~ ^(https?|ssh|git)://|^git@|\.git$ ]]
}

TARGET=()  # --zone and --project, set by main.

tpu_ssh() {  # tpu_ssh WORKER REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--worker=$1" \
    "${TARGET[@]}" "--command=$2"
}

tpu_scp() {  # tpu_scp LOCAL_PATH REMOTE_PATH: to every worker.
  run gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" --worker=all \
    "${TARGET[@]}"
}

cmd_create() {
  local extra=()
  if [[ "$SPOT" == 1 ]]; then
    extra+=(--spot)
  fi
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE_ID" \
      "--node-id=$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" \
      "--runtime-version=$RUNTIME_VERSION" "${TARGET[@]}" "${extra[@]}"
    note "queued; '$PROG status' shows when it is ACTIVE"
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" \
      "${TARGET[@]}" "${extra[@]}"
  fi
}

steps() {  # steps STEP...: one remote shell line, "; "-separated.
  local line=$1 step
  shift
  for step in "$@"; do
    line+="; $step"
  done
  printf '%s' "$line"
}

cmd_setup() {
  local dir fetch
  dir=$(printf '%q' "$REMOTE_DIR")
  if is_git_url; then
    local url ref=HEAD branch=""
    url=$(printf '%q' "$REPO_SOURCE")
    if [[ -n "$REPO_REF" ]]; then
      ref=$(printf '%q' "$REPO_REF")
      branch="--branch $ref "
    fi
    fetch="if [ -d $dir/.git ]; then"
    fetch+=" git -C $dir fetch --depth 1 origin $ref"
    fetch+=" && git -C $dir checkout --force FETCH_HEAD;"
    fetch+=" else git clone --depth 1 $branch$url $dir; fi"
  else
    git -C "$REPO_SOURCE" rev-parse --git-dir >/dev/null 2>&1 ||
      die "REPO_SOURCE=$REPO_SOURCE is neither a git URL nor a local git checkout"
    local src tarball
    src=$(printf '%q' "$REPO_SOURCE")
    tarball="${TMPDIR:-/tmp}/$SRC_TARBALL"
    # Tracked and untracked-but-not-ignored files: the working tree as is.
    run bash -c "git -C $src ls-files -z --cached --others --exclude-standard \
| tar -C $src --null -T - -czf $(printf '%q' "$tarball")"
    tpu_scp "$tarball" "$SRC_TARBALL"
    fetch="mkdir -p $dir && tar -xzf $SRC_TARBALL -C $dir && rm $SRC_TARBALL"
  fi
  # uv brings its own Python when the image's is older than the project's.
  local pip_uv uv venv package=$dir check extra_pip="" req pip_reqs
  read -ra pip_reqs <<< "$EXTRA_PIP"
  for req in "${pip_reqs[@]}"; do extra_pip+="$(printf '%q' "$req") "; done
  pip_uv="python3 -m pip install --user --quiet uv"
  # shellcheck disable=SC2016  # $HOME expands on the worker.
  uv='"$HOME/.local/bin/uv"'
  venv="$dir/.venv"
  [[ "$REMOTE_DIR" == /* ]] || package="./$dir"
  check="import jax; print(f\"worker {jax.process_index()}:"
  check+=" {jax.device_count()} TPU devices\")"
  tpu_ssh all "$(steps "set -e" "$fetch" \
    "($pip_uv || $pip_uv --break-system-packages)" \
    "$uv venv --allow-existing --python $(printf '%q' "$PYTHON_VERSION") $venv" \
    "$uv pip install --python $venv/bin/python -r $dir/requirements.txt \
-e $package $(printf '%q' "$JAX_TPU") $extra_pip" \
    "$venv/bin/python -c '$check'")"
}

cmd_train() {
  require WORKDIR
  [[ "$WORKDIR" == gs://* ]] ||
    die "WORKDIR must be a gs:// path that every worker can write, got '$WORKDIR'"
  [[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG: no such file"
  local dir config overrides=() arg train running
  dir=$(printf '%q' "$REMOTE_DIR")
  config="configs/$(basename "$CONFIG")"
  # The TPU runtime tells each worker the coordinator and its process id.
  train=".venv/bin/python -m autoselect_jax.train"
  train+=" --config $(printf '%q' "$config") --workdir $(printf '%q' "$WORKDIR")"
  train+=" --config.distributed.initialize=yes"
  read -r -a overrides <<<"$CONFIG_OVERRIDES"
  for arg in "${overrides[@]}"; do
    [[ "$arg" == --config.* ]] ||
      die "CONFIG_OVERRIDES: '$arg' is not a --config.FIELD=VALUE argument"
    [[ "$arg" != --config.distributed.* ]] ||
      die "CONFIG_OVERRIDES: $arg is set by $PROG"
    train+=" $(printf '%q' "$arg")"
  done
  # shellcheck disable=SC2016  # Expands on the worker.
  running='[ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null'
  tpu_scp "$CONFIG" "$REMOTE_DIR/$config"
  tpu_ssh all "$(steps "cd $dir && if $running; then echo \"worker \$(hostname):\
 already training (pid \$(cat train.pid)); run stop first\" >&2; exit 1; fi" \
    "nohup env PYTHONUNBUFFERED=1 $train > train.log 2>&1 < /dev/null \
& echo \$! > train.pid")"
  note "started on all workers; '$PROG logs' follows worker $WORKER"
}

cmd_stop() {
  local dir
  dir=$(printf '%q' "$REMOTE_DIR")
  tpu_ssh all "cd $dir && if [ -f train.pid ]; then\
 kill \"\$(cat train.pid)\" 2>/dev/null || true; rm -f train.pid; fi"
}

cmd_logs() {
  [[ "$WORKER" =~ ^([0-9]+|all)$ ]] ||
    die "WORKER must be a worker index or 'all', got '$WORKER'"
  [[ "$LOG_LINES" =~ ^[0-9]+$ ]] ||
    die "LOG_LINES must be a number, got '$LOG_LINES'"
  local follow=""
  if [[ "$FOLLOW" == 1 ]]; then
    follow=" -F"
  fi
  tpu_ssh "$WORKER" \
    "tail -n $LOG_LINES$follow $(printf '%q' "$REMOTE_DIR")/train.log"
}

cmd_status() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" \
      "${TARGET[@]}"
  else
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${TARGET[@]}"
  fi
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" \
      --force --quiet "${TARGET[@]}"
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --quiet "${TARGET[@]}"
  fi
}

main() {
  local command=${1:-}
  case "$command" in
    help | -h | --help)
      usage
      return 0
      ;;
    create | setup | train | stop | logs | status | delete) ;;
    "")
      usage >&2
      die "no command given"
      ;;
    *)
      usage >&2
      die "unknown command '$command'"
      ;;
  esac
  [[ $# -le 1 ]] || die "unexpected arguments after '$command': ${*:2} (settings are environment variables)"
  require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION REMOTE_DIR
  check_flag SPOT
  check_flag QUEUED
  check_flag FOLLOW
  check_flag DRY_RUN
  TARGET=("--zone=$ZONE" "--project=$PROJECT")
  if [[ "$DRY_RUN" == 0 ]] && ! command -v gcloud >/dev/null; then
    die "gcloud not found: install the Google Cloud CLI (or DRY_RUN=1)"
  fi
  "cmd_$command"
}

main "$@"
