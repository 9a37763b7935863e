#!/usr/bin/env bash
# EXIF and TIFF orientation. A phone's photo of a film is often stored
# sideways with an Orientation tag, and browsers and viewers show it turned
# upright; MedSearch turns it the same way before anything else:
#  - the model input of a JPEG (EXIF), a TIFF (tag 274) and a PNG (eXIf) of
#    each orientation 1-8 is exactly the gray image PIL's
#    ImageOps.exif_transpose gives (for TIFF, of the same pixels: Pillow's
#    TIFF decoder has already turned the image it returns);
#  - one non-square picture stored eight ways (each file holding the grid
#    its orientation turns back into the picture) is stored eight times with
#    the picture's width and height, each thumbnail showing it upright;
#  - and the eight are one image to the model: searching with one finds the
#    other seven with a score of 1.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
PY=/usr/bin/python3
[ -r "$MODEL" ] || { echo "skip: $MODEL not found"; exit 77; }
"$PY" -c 'import numpy, PIL' 2>/dev/null || { echo "skip: $PY lacks numpy or PIL (Debian python3-numpy python3-pil)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-orientation.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$PY" - "$T" <<'EOF' || { echo "FAIL: writing the test images"; exit 1; }
import sys
import numpy as np
from PIL import Image, ImageOps
t = sys.argv[1]

def picture(w, h):
    a = (np.arange(w * h).reshape(h, w) * 7 % 251).astype(np.uint8)
    a[: h // 4, : w // 8] = 255  # a mark in one corner: no turn leaves it in place
    return Image.fromarray(a, "L")

def turned(im, o):
    im = im.copy()
    im.getexif()[0x0112] = o
    return ImageOps.exif_transpose(im)

# Each orientation of one 32x32 grid: what exif_transpose shows.
base = picture(32, 32)
for o in range(1, 9):
    ex = Image.Exif()
    ex[0x0112] = o
    base.save(f"{t}/sq_j{o}.jpg", quality=100, exif=ex.tobytes())
    base.save(f"{t}/sq_t{o}.tif", tiffinfo={274: o})
    base.save(f"{t}/sq_p{o}.png", exif=ex.tobytes())
    np.asarray(ImageOps.exif_transpose(Image.open(f"{t}/sq_j{o}.jpg")).convert("L")).tofile(f"{t}/sq_j{o}.gray")
    np.asarray(ImageOps.exif_transpose(Image.open(f"{t}/sq_p{o}.png")).convert("L")).tofile(f"{t}/sq_p{o}.gray")
    np.asarray(turned(base, o)).tofile(f"{t}/sq_t{o}.gray")

# One upright 40x24 picture stored eight ways: each file holds the grid that
# its orientation turns back into the picture.
upright = picture(40, 24)
np.asarray(upright).tofile(f"{t}/upright.gray")
ops = [None] + [getattr(Image.Transpose, n) for n in
                ("FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "ROTATE_90", "ROTATE_180", "ROTATE_270", "TRANSPOSE", "TRANSVERSE")]
for o in range(1, 9):
    grids = [upright if op is None else upright.transpose(op) for op in ops]
    stored = next(g for g in grids if np.array_equal(np.asarray(turned(g, o)), np.asarray(upright)))
    stored.save(f"{t}/wide_t{o}.tif", tiffinfo={274: o})
EOF

echo "== the model input of each orientation, JPEG, TIFF and PNG"
for kind in j t p; do
    ext=$(case $kind in j) echo jpg ;; t) echo tif ;; *) echo png ;; esac)
    for o in 1 2 3 4 5 6 7 8; do
        f=sq_$kind$o
        "$BIN" embed --model "$MODEL" --input-size 32 --mean 0 --scale 1 --dump-input "$T/$f.in" "$T/$f.$ext" \
            >/dev/null 2>"$T/$f.err" || { fail "$f: embed: $(cat "$T/$f.err")"; continue; }
        "$PY" -c 'import sys, numpy as np
got = np.fromfile(sys.argv[1], "<f4")[:1024]
want = np.fromfile(sys.argv[2], np.uint8).astype(np.float32)
d = np.abs(got - want).max()
print(f"ok: {sys.argv[3]}: equal to exif_transpose" if d == 0 else f"FAIL: {sys.argv[3]}: differs by up to {d}")
sys.exit(int(d != 0))' "$T/$f.in" "$T/$f.gray" "$f.$ext" || fails=$((fails + 1))
    done
done

echo "== one 40x24 picture stored eight ways: its size and thumbnail as shown"
mkdir -p "$T/wide"
cp "$T"/wide_t*.tif "$T/wide/"
"$BIN" ingest "$T/wide" --db "$T/w.db" --model "$MODEL" -q >/dev/null 2>"$T/w.err" || fail "ingest: $(cat "$T/w.err")"
"$PY" - "$T/w.db" "$T/upright.gray" <<'EOF' || fail "stored sizes or thumbnails"
import io, sqlite3, sys
import numpy as np
from PIL import Image
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT original_name, width, height, data FROM images JOIN thumbnails ON image_id = id ORDER BY 1").fetchall()
upright = np.fromfile(sys.argv[2], np.uint8).reshape(24, 40).astype(int)
assert len(rows) == 8, len(rows)
for name, w, h, thumb in rows:
    th = Image.open(io.BytesIO(thumb))
    assert (w, h) == (40, 24) and th.size == (40, 24), (name, w, h, th.size)  # under the thumbnail size: whole
    d = np.abs(np.asarray(th.convert("L")).astype(int) - upright).mean()
    assert d < 8, (name, d)  # a JPEG of the upright picture (a turned one differs by 60 and more)
    print(f"ok: {name}: stored {w}x{h}, thumbnail {th.size[0]}x{th.size[1]} of the upright picture (mean difference {d:.1f})")
EOF

echo "== the eight TIFFs are one image to the model"
"$BIN" search "$T/wide/wide_t1.tif" --db "$T/w.db" --model "$MODEL" -k 8 --qe 0 --json >"$T/s.json" 2>"$T/s.err" ||
    fail "search: $(cat "$T/s.err")"
"$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))["results"]
assert len(r) == 8 and min(x["score"] for x in r) > 0.9999, [(x["original_name"], x["score"]) for x in r]
print("ok: all eight found with a score of 1")' "$T/s.json" || fail "the eight orientations are not one image"

[ $fails -eq 0 ] && echo "all orientation checks passed"
[ $fails -eq 0 ]
