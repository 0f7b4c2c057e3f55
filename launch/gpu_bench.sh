#!/usr/bin/env bash
# Every GPU measurement of the speed section in one command: the prefill and
# TTFT benchmark at 224, 448 and 896 px (full PaliGemma-3B depth, bfloat16,
# batch 1 and 8), dense against blocked attention at 896 px (the full
# encoder and the Scorer, `benchmarks.attention_blocks`), a narrow Scorer,
# serving throughput at 896 px, then the test files that exercise the
# attention, the deployed pipeline and the benchmark on the GPU.
#
#   launch/gpu_bench.sh OUT_DIR            # every step
#   STEPS="b224 b896" launch/gpu_bench.sh OUT_DIR   # some steps only
#   DRY_RUN=1 launch/gpu_bench.sh OUT_DIR  # print the commands
#
# Not yet run on a GPU: the step times are unknown. A machine lent for ten
# minutes per command should take it in two calls, STEPS="b224 b448 b896"
# and then STEPS="ab896_b1 ab896_b8 b896_narrow tp896 tests", each bounded by
# STEP_TIMEOUT.
#
# Each step writes OUT_DIR/<step>.json (rewritten after every batch, so a step
# cut short by STEP_TIMEOUT still leaves its measurements) and appends its
# table to OUT_DIR/gpu_bench.log. A failing step is logged and the next one
# runs; the exit status is the number of failed steps.
set -uo pipefail

out=${1:?usage: launch/gpu_bench.sh OUT_DIR}
: "${PYTHON:=python3}"
: "${STEP_TIMEOUT:=180}"   # Seconds per step.
: "${REPEATS:=10}"
: "${DECODE_TOKENS:=16}"
: "${STEPS:=b224 b448 b896 ab896_b1 ab896_b8 b896_narrow tp896 tests}"
: "${DRY_RUN:=0}"

[[ $DRY_RUN == 1 ]] || mkdir -p "$out"
log="$out/gpu_bench.log"
failed=0

# One step: a name, then the command's arguments.
step() {
  local name=$1
  shift
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
    return 0
  fi
  echo "== $name: $*" | tee -a "$log"
  local start=$SECONDS
  if ! timeout "$STEP_TIMEOUT" "$@" >>"$log" 2>&1; then
    echo "!! $name failed or timed out after $((SECONDS - start)) s" | tee -a "$log"
    failed=$((failed + 1))
  else
    echo "   $name took $((SECONDS - start)) s" | tee -a "$log"
  fi
}

bench() {
  local name=$1
  shift
  step "$name" "$PYTHON" -m autoselect_jax.bench --dtype bfloat16 \
    --repeats "$REPEATS" --decode-tokens "$DECODE_TOKENS" "$@" \
    --out "$out/$name.json"
}

export PYTHONUNBUFFERED=1
if [[ $DRY_RUN != 1 ]]; then
  "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())' | tee -a "$log"
fi

bench b224 --variant paligemma-3b-224 --k 64,128,192 --batch 1,8
bench b448 --variant paligemma-3b-448 --k 128,256 --batch 1,8
bench b896 --variant paligemma-3b-896 --k 512,1024 --batch 1,8
for b in 1 8; do
  step "ab896_b$b" "$PYTHON" -m autoselect_jax.benchmarks.attention_blocks \
    --variant paligemma-3b-896 --vision-layers 27 --chunks 0,256,512,1024 \
    --batch "$b" --dtype bfloat16 --repeats "$REPEATS" --out "$out/ab896_b$b.json"
done
bench b896_narrow --variant paligemma-3b-896 --k 512 --batch 1,8 --scorer-width 256
step tp896 "$PYTHON" -m autoselect_jax.bench --throughput --dtype bfloat16 \
  --variant paligemma-3b-896 --k 512 --batch 1,8,32 --new-tokens 64 --max-batch-compiles 4 \
  --repeats 3 --out "$out/tp896.json"
step tests "$PYTHON" -m pytest -q -x -n 0 -p no:cacheprovider \
  tests/test_attention.py tests/test_pipeline.py tests/test_bench.py

echo "failed steps: $failed"
[[ $DRY_RUN == 1 ]] || echo "failed steps: $failed" >>"$log"
exit "$failed"
