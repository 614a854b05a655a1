#!/usr/bin/env bash
# Issue 16's GPU measurements, in one device call (a lent machine gives ~15 min of device time in
# all, one command at most 10 min): run benchmarks/gpu_prepare.sh here first, then
#   device run, carry [".gpu"], timeout_s 600, command: bash benchmarks/gpu_issue16.sh
# Steps, in order of value, each under its own time limit (the sum stays under 9.5 min):
#   e2e     the whole pipeline on 15k synthetic documents with the e5-large-shaped model
#           (bench_gpu_e2e.py: per-stage seconds and the 4.6M-passage extrapolation)
#   mining  torch exact neighbours vs usearch HNSW, torch k-means vs scikit-learn, at width 1024
#   forward e5 forward variants and length-packed batches vs fixed batch 512 (bench_embed_gpu.py)
# Logs and JSON files land in $OUT (the device tool brings them back; default /tmp/gpu16).
# SMOKE=1 runs every step at toy sizes with the tiny model, to try the script on a CPU (~5 min here).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD  # etl/ from this tree
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # a relative path still works after a cd
if [ "${SMOKE:-0}" != 1 ]; then  # the GPU machine's Python lacks these (benchmarks/gpu_prepare.sh)
    "$PY" -m pip install -q --no-index --no-deps .gpu/wheels/*.whl > "$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
fi
if [ "${SMOKE:-0}" = 1 ]; then
    ARCH=tiny DOCS=300 PASSAGES=4000 QUERIES=1000 DIM=64 FORWARD_N=200
else
    ARCH=large DOCS=15000 PASSAGES=200000 QUERIES=100000 DIM=1024 FORWARD_N=10000
fi
nvidia-smi -L || echo "no nvidia-smi: CPU run"
start=$SECONDS
step() {  # step NAME LIMIT_S CMD...: run CMD under a limit, log to $OUT/NAME.log, print its tail
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, started at +$((SECONDS - start))s)"
    (cd benchmarks && timeout "$limit" "$@") > "$OUT/$name.log" 2>&1
    echo "== $name rc=$? at +$((SECONDS - start))s"
    tail -n 30 "$OUT/$name.log"
}
MODEL=/tmp/e5$ARCH
step model 60 "$PY" bench_embed_gpu.py model --tokenizer ../.gpu/e5tok --out $MODEL --arch $ARCH
step e2e 330 "$PY" bench_gpu_e2e.py --docs $DOCS --model $MODEL/st --random-weights --json "$OUT/e2e.json"
step mining 70 "$PY" bench_torch_mining.py --passages $PASSAGES --queries $QUERIES --dim $DIM --out "$OUT/mining.json"
step forward 100 "$PY" bench_embed_gpu.py throughput --model $MODEL/st --n $FORWARD_N --batch-sizes 512 \
    --unsorted --repeats 1 --forwards fp16/auto fp16/sdpa bf16/sdpa --max-batch-tokens 65536 --out "$OUT/forward.json"
echo "all steps done at +$((SECONDS - start))s"
