#!/usr/bin/env bash
# One SLURM task of launch/slurm.sbatch: runs the trainer as JAX process
# SLURM_PROCID of SLURM_NTASKS, coordinated at COORDINATOR_ADDRESS (set by
# slurm.sbatch), on one GPU (PROCESS_PER=gpu) or all of its node's GPUs
# (PROCESS_PER=node). DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

PROG=slurm_task.sh

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

for name in SLURM_PROCID SLURM_NTASKS COORDINATOR_ADDRESS REPO_DIR CONFIG \
  WORKDIR; do
  [[ -n "${!name:-}" ]] || die "$name is not set (run through launch/slurm.sbatch)"
done
: "${PYTHON:=python3}"
: "${CONFIG_OVERRIDES:=}"
: "${PROCESS_PER:=gpu}"
: "${DRY_RUN:=0}"

# Inside srun, jax.distributed.initialize (JAX 0.10) gives each process the
# single local GPU number SLURM_LOCALID among those it sees. Right for one
# process per GPU when every task sees the node's GPUs; otherwise (one
# process per node, or a task already bound to its GPU) the trainer runs
# without SLURM_LOCALID and uses every GPU it sees.
gpus=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
fi
env_args=()
if [[ "$PROCESS_PER" == gpu && ${#gpus[@]} -ne 1 ]]; then
  local_id=${SLURM_LOCALID:-0}
  if [[ ${#gpus[@]} -gt 1 && "$local_id" -ge ${#gpus[@]} ]]; then
    die "task $SLURM_PROCID is local task $local_id but sees ${#gpus[@]} GPUs (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES): use --ntasks-per-node <= GPUs per node"
  fi
else
  env_args=(-u SLURM_LOCALID)
fi

read -r -a overrides <<<"$CONFIG_OVERRIDES"
for arg in "${overrides[@]}"; do
  [[ "$arg" == --config.* ]] ||
    die "CONFIG_OVERRIDES: '$arg' is not a --config.FIELD=VALUE argument"
  [[ "$arg" != --config.distributed.* ]] ||
    die "CONFIG_OVERRIDES: $arg is set by the launcher"
done

cmd=(env "${env_args[@]}" "$PYTHON" -m autoselect_jax.train
  --config "$CONFIG" --workdir "$WORKDIR"
  --config.distributed.initialize=yes
  "--config.distributed.coordinator_address=$COORDINATOR_ADDRESS"
  "--config.distributed.num_processes=$SLURM_NTASKS"
  "--config.distributed.process_id=$SLURM_PROCID"
  "${overrides[@]}")

cd "$REPO_DIR"
if [[ "$DRY_RUN" == 1 ]]; then
  printf '+ cd %q\n' "$REPO_DIR"
  printf '+'
  printf ' %q' "${cmd[@]}"
  printf '\n'
else
  exec "${cmd[@]}"
fi
