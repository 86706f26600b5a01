#!/usr/bin/env bash
# What benchmarks/device_check.sh needs on the GPU machine, prepared here (13 s, about 20 MiB under
# bench-bundles/, git-ignored; the device call carries it):
#   bench-bundles/t5-base   the pretraining bundle at T5-base shapes (corpus rows, tokenizer, config; 6.7 MiB)
#   bench-bundles/wheels    the transformers wheel requirements.txt pins (the device image has an older one)
set -eu
case "${1:-}" in -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -f bench-bundles/t5-base/config.json ]; then
  $PY benchmarks/pretrain_throughput.py --d-model 768 --d-ff 2048 --layers 12 --heads 12 --batch 64 \
    --inputs-length 512 --vocab-size 32000 --max-documents 20000 --export-bundle bench-bundles/t5-base
fi
version=$(sed -n 's/^transformers==\([^ ]*\).*/\1/p' requirements.txt)
rm -rf bench-bundles/wheels && mkdir -p bench-bundles/wheels
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d bench-bundles/wheels "transformers==$version"
du -sh bench-bundles/t5-base bench-bundles/wheels
