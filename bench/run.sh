#!/usr/bin/env bash
# `make bench`: every benchmark, ours against its peer in the same run.
# Figures are medians; the machine's state is printed first because shared
# machines are noisy (compare ratios, not absolute numbers, across runs).
#   QUICK=1 make bench      smaller sizes (minutes instead of an hour)
#   BENCH=embed make bench  only one of: decode embed index ingest serve
set -u
cd "$(dirname "$0")/.."
BIN=${MEDSEARCH_BIN:-./medsearch}
SHARED=${MEDSEARCH_SHARED:-$(cd .. && pwd)/shared}
export MEDSEARCH_SHARED=$SHARED
MOBILENET=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
out=bench/out; mkdir -p "$out"
quick=${QUICK:-0}
only=${BENCH:-}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ), $($BIN --version)"

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
step() { echo; echo "== $*"; "$@" 2>&1 | tee -a "$out/bench.log"; }

if want decode; then
  step "$BIN" bench decode
fi
if want embed; then
  [ -f "$MOBILENET" ] && step "$BIN" bench embed --model "$MOBILENET" --batch 1,16
  step "$BIN" bench embed --batch 1,16            # random-weight ResNet-50 made with python3-torch
fi
if want index; then
  if [ "$quick" = 1 ]; then
    step "$BIN" bench index --n 20000 --dim 1280 --peers
  else
    step "$BIN" bench index --n 100000 --dim 1280 --peers
    step "$BIN" bench index --n 112120 --dim 2048 --peers
  fi
fi
if want ingest; then
  if [ "$quick" = 1 ]; then
    step "$BIN" bench ingest --n 100 --search-n 20000
  else
    step "$BIN" bench ingest
  fi
fi
if want serve; then
  db=$(mktemp -d)/bench.db
  if [ -f "$MOBILENET" ] && [ -d "$SHARED/data/nih_cxr14_64px" ]; then
    "$BIN" ingest --db "$db" --model "$MOBILENET" --labels "$SHARED/data/nih_cxr14_64px/labels.csv" \
      "$SHARED/data/nih_cxr14_64px/images" >/dev/null 2>&1
    step "$BIN" bench serve --db "$db" --model "$MOBILENET"
  else
    echo "skip: bench serve needs $MOBILENET and $SHARED/data"
  fi
  rm -rf "$(dirname "$db")"
fi
echo; echo "== all output also in $out/bench.log"
