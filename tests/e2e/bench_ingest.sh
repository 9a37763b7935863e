#!/usr/bin/env bash
# `medsearch bench ingest` end to end on a few images (the figures
# themselves are for docs/performance.md, never asserted): it runs, reports
# pure extraction and ingest with their ratio, and the PNGs it makes are
# what the figures claim: 1024x1024 8-bit grey, written like an X-ray export
# (row filters chosen per row, not all None; about 200 KB, not the 0.9 MB of
# noise), no two the same bytes; --noise makes heavier files; --images
# keeps and reuses them.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
PY=/usr/bin/python3
[ -r "$MODEL" ] && [ -d "$SHARED/data/kermany_pneumonia_224/images" ] ||
  { echo "skip: $MODEL or the Kermany images not found"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-bench-ingest.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

bench() {  # OUT DIR ARGS...
  local out=$1 dir=$2; shift 2
  "$BIN" bench ingest --model "$MODEL" --images "$dir" --rounds 1 --no-peer --no-pg --search-n 0 --json "$@" \
    >"$out" 2>"$T/err" || fail "bench ingest $*: $(tail -5 "$T/err")"
}
bench "$T/plain.json" "$T/png" --n 12
bench "$T/noisy.json" "$T/png4" --n 4 --noise 4
# a second run reuses the kept files (nothing is made again)
bench "$T/again.json" "$T/png" --n 12
grep -q "making" "$T/err" && fail "the kept PNGs were made again"

$PY - "$T" <<'EOF' || fail "bench ingest report or files are not as documented"
import glob, hashlib, json, struct, sys, zlib
d = sys.argv[1]
plain, noisy, again = (json.load(open(f"{d}/{n}.json")) for n in ("plain", "noisy", "again"))
for r in (plain, again):
    assert r["images"] == 12 and r["size"] == 1024, r
    assert r["pure_images_per_s"] > 0 and r["ingest_images_per_s"] > 0, r
    assert abs(r["ingest_vs_pure"] / (r["ingest_images_per_s"] / r["pure_images_per_s"]) - 1) < 1e-3, r
assert 50 < plain["mean_file_kb"] < 400, plain["mean_file_kb"]
assert noisy["mean_file_kb"] > 1.5 * plain["mean_file_kb"], (noisy["mean_file_kb"], plain["mean_file_kb"])
assert again["mean_file_kb"] == plain["mean_file_kb"]

def filters(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", path
    p, idat, hdr = 8, b"", None
    while p < len(b):
        n, = struct.unpack(">I", b[p:p + 4])
        kind, data = b[p + 4:p + 8], b[p + 8:p + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBB", data[:10])
        elif kind == b"IDAT":
            idat += data
        p += 12 + n
    w, h, depth, colour = hdr
    assert (w, h, depth, colour) == (1024, 1024, 8, 0), (path, hdr)
    raw = zlib.decompress(idat)
    return [raw[y * (w + 1)] for y in range(h)]

files = sorted(glob.glob(f"{d}/png/*.png"))
assert len(files) == 12, files
assert len({hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}) == 12, "two files are the same bytes"
for f in files:
    kinds = set(filters(f))
    assert kinds - {0}, f"{f}: every row unfiltered"
print(f"ok: 12 files, mean {plain['mean_file_kb']:.0f} KB (noise 4: {noisy['mean_file_kb']:.0f} KB), "
      f"ingest/pure {plain['ingest_vs_pure']:.2f}")
EOF
echo "ok: bench ingest runs and makes export-like PNGs"
