#!/usr/bin/env bash
# Every GPU measurement of issue 37 in one call of at most 9 minutes on a bare GPU machine (torch and transformers
# there; no Ray, Prefect, MLflow or datasets). Prepare here once (13 s; bench-bundles/ is git-ignored):
#
#   bash benchmarks/device_prepare.sh      # T5-base pretraining bundle (6.7 MiB) + this project's transformers wheel
#
# then run it there with bench-bundles carried, in ONE device call (the machine is given back 30 s after a call):
#
#   device run: command="OUT=$OUT bash benchmarks/device_check.sh", carry=["bench-bundles"], timeout_s=580
#
# Parts, in this order, each with its own time limit so one slow part cannot eat the others' (and all of them
# under DEADLINE seconds, default 540):
#   ceilings           20 s  the card's measured bf16 matrix-product TFLOP/s and copy bandwidth (device_ceilings.py)
#   pretrain_eager     60 s  T5-base step, batch 64 x (512 + 114), bf16: plain HF loop, ours SC, ours hybrid
#   sd_t5             200 s  SD engine, T5-XL-shaped pair, eager and static-cache compiled, vs generate and HF assisted
#                            (the eager path's table and verdicts print before the compiled path starts compiling)
#   pretrain_compiled 130 s  the same three loops under torch.compile (in that order: plain and ours SC first)
#   sd_causal          90 s  the same SD table for a decoder-only pair of SmolLM2-135M's shape (random weights: the
#                            packaged model is 270 MB in bf16, over the 64 MiB a call carries)
#   sd_batched         40 s  batched SD at B = 4 and 16 vs batched generate (T5-XL-shaped pair)
# A second argument runs the named parts only: `device_check.sh BUNDLE "sd_causal sd_batched"`.
# Every script prints each row as soon as it is measured and ends with "verdict:" lines against the issue's
# targets, so a part stopped by its limit keeps its rows. Output: $OUT/<part>.md (+ .err), $OUT/env.md.
#
# On a CPU, SMOKE=1 runs the same commands at toy sizes, without torch.compile and without installing the wheel
# (pretrain_compiled then times the eager loops again);
# tests/benchmarks/test_device_scripts.py does that with Prefect, Ray, MLflow, datasets, pandas, pyarrow and
# pydantic made unimportable, as on the device.
set -u
case "${1:-}" in -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
BUNDLE=${1:-bench-bundles/t5-base}
PARTS=${2:-ceilings pretrain_eager sd_t5 pretrain_compiled sd_causal sd_batched}
OUT=${OUT:-device-results}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
SMOKE=${SMOKE:-0}
WHEELS=$(dirname "$BUNDLE")/wheels
if [ "$SMOKE" != 1 ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  # the transformers this project pins (requirements.txt), so the engine runs on the code it was tested with
  # (no dependencies installed: the image's huggingface-hub, tokenizers and safetensors; if the pinned version does
  # not import beside them, the image's own transformers is used and env.md says which one ran)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} $PY -c "import transformers" \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
    || echo "!! the pinned transformers wheel did not install or import; using the image's"
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  $PY benchmarks/device_env.py 2>&1
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version \
    --format=csv,noheader
} | tee "$OUT/env.md"

if [ "$SMOKE" = 1 ]; then
  DEV="--device cpu"; PT="--steps 2 --warmup 1"; PTC="$PT"; PEAK=""; BF16=""; DTYPE=""; FAST=""; COMPILE=""
  XL="--d-model 32 --d-ff 64 --heads 4 --target-layers 2 --draft-layers 1"
  SD="--prompt-len 8 --max-new-tokens 6 --prompts 1 --repeats 1 --warmup 0 --vocab 64"
  LLM="--arch llama --d-model 32 --d-ff 64 --heads 4 --kv-heads 2 --target-layers 2 --draft-layers 1"
  SDL="$SD"; BATCHES="1 2"; SDB="$SD"; CEIL="--size 128 --copy-gib 0.01 --repeats 2"
else
  DEV="--device cuda"; PT="--steps 8 --warmup 2"; PTC="--steps 6 --warmup 2"; PEAK="--peak-tflops ${PEAK_TFLOPS:-989}"
  BF16="--bf16"; DTYPE="--dtype bfloat16"; FAST="--fast-path"; COMPILE="--compile"
  # T5-XL-shaped target (d_model 2048, 24+24 layers) with a 2-layer draft of its own first layers
  XL="--d-model 2048 --d-ff 5120 --heads 32 --target-layers 24 --draft-layers 2"
  SD="--prompt-len 512 --max-new-tokens 64 --prompts 2 --repeats 1 --warmup 1 --vocab 32128"
  # SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key/value heads, vocabulary 49,152); 4-layer draft
  LLM="--arch llama --d-model 576 --d-ff 1536 --heads 9 --kv-heads 3 --target-layers 30 --draft-layers 4"
  SDL="--prompt-len 256 --max-new-tokens 64 --prompts 2 --repeats 2 --warmup 1 --vocab 49152"
  # batched: 16 prompts decoded at every B (B = 1 is sd_t5's table), shorter outputs to fit the limit
  BATCHES="4 16"; SDB="--prompt-len 512 --max-new-tokens 32 --repeats 1 --warmup 1 --vocab 32128"; CEIL="$PEAK"
fi
status=0
run() {  # run NAME LIMIT_S COMMAND...: output to $OUT/NAME.md; a failure is reported and the others still run
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "!! $name skipped: ${left}s left of DEADLINE=${DEADLINE}s"; status=1; return; fi
  echo "== $name (limit ${limit}s, ${SECONDS}s in): $*"
  timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"; local rc=$?
  grep -v "^timed " "$OUT/$name.md" | tail -n 16
  [ $rc = 0 ] || { echo "!! $name failed (exit $rc; 124 = its time limit); see $OUT/$name.err"; tail -n 5 "$OUT/$name.err"
                   status=1; }
}
run ceilings 20 $PY benchmarks/device_ceilings.py $CEIL
run pretrain_eager 60 $PY benchmarks/pretrain_throughput.py --bundle "$BUNDLE" $DEV $BF16 $PT $PEAK
run sd_t5 200 $PY benchmarks/sd_engine.py $DEV $DTYPE $FAST $XL $SD
run pretrain_compiled 130 $PY benchmarks/pretrain_throughput.py --bundle "$BUNDLE" $DEV $BF16 $COMPILE $PTC $PEAK
run sd_causal 90 $PY benchmarks/sd_engine.py $DEV $DTYPE $FAST $LLM $SDL
run sd_batched 40 $PY benchmarks/sd_batched.py --batches $BATCHES --rounds 1 $DEV $DTYPE $XL $SDB
echo "== done in ${SECONDS}s (DEADLINE ${DEADLINE}s); files in $OUT"
exit $status
