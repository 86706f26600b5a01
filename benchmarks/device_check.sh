#!/usr/bin/env bash
# Every GPU measurement of issues 3 and 4 in one short run on a bare GPU machine (torch + transformers only:
# no Ray, Prefect, MLflow or datasets there). Prepare the pretraining bundle here first (about 15 s, 6.6 MiB):
#
#   .venv/bin/python benchmarks/pretrain_throughput.py --d-model 768 --d-ff 2048 --layers 12 --heads 12 \
#       --batch 64 --inputs-length 512 --vocab-size 32000 --max-documents 20000 --export-bundle bench-bundles/t5-base
#
# then run this script there with the bundle carried (the device tool's carry=["bench-bundles"]):
#
#   bash benchmarks/device_check.sh bench-bundles/t5-base pretrain   # <= 7.5 min: eager + compiled training steps
#   bash benchmarks/device_check.sh bench-bundles/t5-base sd         # <= 9.2 min: SD fast path + batched SD
#
# (two device calls, each under the 10-minute limit of one call; "all" runs both). Output: $OUT/*.md
# (default ./device-results/; on the device tool use OUT=$OUT so the files come back).
#
# On a CPU, SMOKE=1 runs the same commands at toy sizes and without torch.compile (compiling on a CPU takes
# minutes); tests/benchmarks/test_device_scripts.py does that with Prefect, Ray, MLflow, datasets, pandas,
# pyarrow and pydantic made unimportable, as on the device.
# Each command has its own time limit, so one slow part cannot eat the others' budget.
set -u
BUNDLE=${1:?usage: device_check.sh BUNDLE_DIR [pretrain|sd|all]}
PART=${2:-all}
OUT=${OUT:-device-results}
mkdir -p "$OUT"
PY=${PY:-python}
if [ "${SMOKE:-0}" = 1 ]; then
  DEV="--device cpu"; PT="--steps 2 --warmup 1"; SHAPE="--d-model 32 --d-ff 64 --heads 4 --target-layers 2"
  SD="--prompt-len 8 --max-new-tokens 6 --prompts 1 --repeats 1 --warmup 0 --vocab 64"; PEAK=""
  XL="$SHAPE --draft-layers 1"; BATCHES="1 2"; FAST=""; SDB="$SD"
else
  DEV="--device cuda"; PT="--steps 10 --warmup 3"; PEAK="--peak-tflops ${PEAK_TFLOPS:-989}"
  # T5-XL-shaped target (d_model 2048, 24+24 layers) with a 2-layer draft of its own first layers
  XL="--d-model 2048 --d-ff 5120 --heads 32 --target-layers 24 --draft-layers 2"
  SD="--prompt-len 512 --max-new-tokens 64 --prompts 2 --repeats 2 --warmup 1 --vocab 32128"; BATCHES="4 16"
  # batched: 16 prompts decoded at every B (B = 1 is sd_engine's table), shorter outputs to fit the limit
  SDB="--prompt-len 512 --max-new-tokens 32 --repeats 1 --warmup 1 --vocab 32128"
  FAST="--fast-path"
fi
BF16=$([ "${SMOKE:-0}" = 1 ] && echo "" || echo "--bf16")
DTYPE=$([ "${SMOKE:-0}" = 1 ] && echo "" || echo "--dtype bfloat16")
status=0
run() {  # run NAME LIMIT_S COMMAND...: output to $OUT/NAME.md; a failure is reported and the others still run
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"; local rc=$?
  tail -n 12 "$OUT/$name.md"
  [ $rc = 0 ] || { echo "!! $name failed (exit $rc); see $OUT/$name.err"; tail -n 5 "$OUT/$name.err"; status=1; }
}
if [ "$PART" = pretrain ] || [ "$PART" = all ]; then
  run pretrain_eager 150 $PY benchmarks/pretrain_throughput.py --bundle "$BUNDLE" $DEV $BF16 $PT $PEAK
  [ -n "$FAST" ] && run pretrain_compiled 300 $PY benchmarks/pretrain_throughput.py --bundle "$BUNDLE" $DEV $BF16 \
    --compile $PT $PEAK
fi
if [ "$PART" = sd ] || [ "$PART" = all ]; then
  run sd_engine 400 $PY benchmarks/sd_engine.py $DEV $DTYPE $FAST $XL $SD
  run sd_batched 150 $PY benchmarks/sd_batched.py --batches $BATCHES --rounds 1 $DEV $DTYPE $XL $SDB
fi
exit $status
