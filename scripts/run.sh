#!/usr/bin/env bash
# `make run [DIR=folder]`: the main job on a fresh machine. make has built
# ./medsearch; this opens (or creates) the embedded SQLite collection, ingests
# DIR when given (with its labels.csv or Data_Entry_2017.csv when present),
# then serves the web page and the API on 127.0.0.1 and prints the URL.
#
#   scripts/run.sh [DIR] [serve options...]
#   environment: MEDSEARCH_MODEL (the ONNX model; or pass --model M after DIR),
#                MEDSEARCH_DB (default ./medsearch.db), MEDSEARCH_LISTEN
#                (default 127.0.0.1:8080), MEDSEARCH_TOKEN (enables HTTP ingest/delete)
# Without a model, medsearch itself says exactly how to get ResNet-50 as ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=./medsearch
DB=${MEDSEARCH_DB:-medsearch.db}
LISTEN=${MEDSEARCH_LISTEN:-127.0.0.1:8080}
DIR=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    DIR=$1
    shift
fi
[ -x "$BIN" ] || { echo "run: $BIN is not built; run 'make' first" >&2; exit 3; }

# --model M may come among the serve options; ingest needs it too.
MODEL_ARGS=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --model) MODEL_ARGS=(--model "${args[i + 1]:-}");;
        --model=*) MODEL_ARGS=("${args[i]}");;
    esac
done

if [ -n "$DIR" ]; then
    [ -d "$DIR" ] || { echo "run: $DIR is not a folder" >&2; exit 2; }
    LABELS=()
    for f in "$DIR/labels.csv" "$DIR/Data_Entry_2017.csv" "$DIR/../labels.csv"; do
        if [ -f "$f" ]; then
            LABELS=(--labels "$f")
            break
        fi
    done
    echo "run: ingesting $DIR into $DB${LABELS[1]:+ with labels from ${LABELS[1]}}"
    "$BIN" ingest "$DIR" --db "$DB" "${MODEL_ARGS[@]}" "${LABELS[@]}" || {
        rc=$?
        # 1: some files failed (reported above), the rest is in: serve anyway.
        [ "$rc" -eq 1 ] || exit "$rc"
    }
elif [ ! -e "$DB" ]; then
    echo "run: no collection at $DB yet; it starts empty (give DIR=folder to ingest X-rays)"
fi

echo "run: serving $DB on http://$LISTEN/ (Ctrl-C to stop)"
exec "$BIN" serve --db "$DB" --listen "$LISTEN" "$@"
