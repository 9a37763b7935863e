#!/usr/bin/env bash
# The image formats a teacher or researcher brings besides PNG, JPEG, TIFF and
# DICOM, from a real X-ray, through every face:
#  - WebP (what a browser's "Save image as" gives on many sites): lossy,
#    lossless, with alpha, animated (its first frame) and gray; the model
#    input of each is exactly PIL's convert("L") of the file (both use
#    libwebp); an EXIF Orientation inside a WebP is not applied, as Chromium
#    does not apply it;
#  - JPEG 2000, as a JP2 file and as a bare codestream (some archives and
#    scanners write it): gray lossless and lossy, RGB, 16-bit; the model input
#    is exactly PIL's (both use OpenJPEG), a 16-bit one scaled by its maximum;
#    a 1024x1024 X-ray decoded one resolution level down for the 224 px
#    model input is still the same image to the model as its PNG;
#  - HEIC (what an iPhone saves) and AVIF, written by libheif's heif-enc:
#    lossy, lossless, gray, with alpha; the model input is exactly the gray
#    image of heif-convert's PNG; a file turned and mirrored by its irot and
#    imir properties (tests/tools/heif_rotate.py adds them, as a phone's
#    file has them) is turned once, as heif-convert and Chromium turn it,
#    and stored with its size as shown;
#  - GIF (old teaching files): palette, gray, animated (its first frame):
#    the model input is exactly PIL's;
#  - ingest stores each with its own MIME type and its size; search finds a
#    lossless copy at score 1; the API takes the bytes as image/webp or
#    image/jp2, serves the original back byte for byte with its type, and
#    renders a preview (the page shows JPEG 2000 through it).
# Uses tests/e2e/http/common.sh for the server and curl checks.
. "$(dirname "$0")/http/common.sh"
require_all
PY=/usr/bin/python3
"$PY" -c 'import numpy, PIL.features as f; assert f.check("webp") and f.check("jpg_2000")' 2>/dev/null ||
    skip "$PY lacks numpy or PIL with WebP and JPEG 2000 (Debian python3-numpy python3-pil)"
command -v heif-enc >/dev/null && command -v heif-convert >/dev/null ||
    skip "heif-enc or heif-convert not installed (Debian libheif-examples)"

SRC=$DATA/nih_cxr14_64px/images/$(ls "$DATA/nih_cxr14_64px/images" | sort | head -n 1)
BIG=$DATA/nih_cxr14_fullres/images/00000001_000.png
mkdir -p "$WORK/in"
"$PY" - "$SRC" "$WORK/in" "$BIG" <<'EOF' || { echo "FAIL: writing the test images"; exit 1; }
import sys
import numpy as np
from PIL import Image
src, out, big = sys.argv[1], sys.argv[2], sys.argv[3]
gray = Image.open(src).convert("L").resize((64, 64))
a = np.asarray(gray)
# colour that is not gray, so the luma weights matter
rgb = Image.fromarray(np.dstack([a, (a // 2 + 60).astype(np.uint8), (255 - a)]), "RGB")
alpha = Image.fromarray(((np.arange(64 * 64).reshape(64, 64) * 13) % 256).astype(np.uint8), "L")
rgba = rgb.copy()
rgba.putalpha(alpha)
gray.save(f"{out}/xray.png")
rgb.save(f"{out}/lossy.webp", quality=85)
gray.convert("RGB").save(f"{out}/lossless.webp", lossless=True)
rgba.save(f"{out}/alpha.webp", lossless=True)
rgba.save(f"{out}/alpha_lossy.webp", quality=70)
gray.save(f"{out}/gray.webp", quality=95)
rgb.save(f"{out}/anim.webp", save_all=True, append_images=[rgb.transpose(Image.Transpose.ROTATE_180)], duration=100)
# a 40x24 picture with EXIF Orientation 6: browsers show it as stored
ex = Image.Exif()
ex[0x0112] = 6
wide = gray.resize((40, 24))
wide.save(f"{out}/turned.webp", lossless=True, exif=ex.tobytes())
for name in ("lossy", "lossless", "alpha", "alpha_lossy", "gray", "anim"):
    np.asarray(Image.open(f"{out}/{name}.webp").convert("L")).tofile(f"{out}/{name}.gray")
# JPEG 2000 by OpenJPEG (PIL chooses JP2 or a bare codestream by the name)
gray.save(f"{out}/j_lossless.jp2")
gray.save(f"{out}/j_lossy.jp2", quality_mode="rates", quality_layers=[12])
gray.save(f"{out}/j_code.j2k")
rgb.save(f"{out}/j_rgb.jp2")
Image.fromarray(a.astype(np.uint16) * 16 + 5, "I;16").save(f"{out}/j_16.jp2")
for name in ("j_lossless", "j_lossy", "j_rgb"):
    np.asarray(Image.open(f"{out}/{name}.jp2").convert("L")).tofile(f"{out}/{name}.gray")
np.asarray(Image.open(f"{out}/j_code.j2k").convert("L")).tofile(f"{out}/j_code.gray")
v = np.asarray(Image.open(f"{out}/j_16.jp2"), dtype=np.uint16).astype(np.float32)
assert (v == a.astype(np.float32) * 16 + 5).all()  # lossless, 16 bits
# v * (255 / max) + 0.5, truncated, in single precision as MedSearch computes it
np.floor(v * np.float32(255.0 / v.max()) + np.float32(0.5)).astype(np.uint8).tofile(f"{out}/j_16.gray")
Image.open(big).convert("L").save(f"{out}/../big.jp2")
rgb.quantize(200).save(f"{out}/palette.gif")
gray.save(f"{out}/gray.gif")
rgb.quantize(200).save(f"{out}/anim.gif", save_all=True, append_images=[rgb.quantize(100).rotate(90)], duration=100)
for name in ("palette", "gray", "anim"):
    np.asarray(Image.open(f"{out}/{name}.gif").convert("L")).tofile(f"{out}/{name}_gif.gray")
rgba.save(f"{out}/../h_alpha.png")
gray.save(f"{out}/../h_gray.png")
rgb.save(f"{out}/../h_rgb.png")
# 32 x 32 with a mark in one corner: no turn or mirror leaves it in place
sq = (np.arange(32 * 32).reshape(32, 32) * 7 % 251).astype(np.uint8)
sq[:8, :4] = 255
Image.fromarray(sq, "L").save(f"{out}/../h_sq.png")
Image.fromarray(sq[:, :24].copy(), "L").save(f"{out}/../h_wide.png")  # 24 wide, 32 high
EOF
# HEIC and AVIF by libheif's own encoder; turned ones by heif_rotate.py
heif() { heif-enc "$@" >/dev/null 2>>"$WORK/heif.err" || { echo "FAIL: heif-enc $*: $(cat "$WORK/heif.err")"; exit 1; }; }
heif -q 80 "$WORK/h_rgb.png" -o "$WORK/in/h_lossy.heic"
heif -L "$WORK/h_gray.png" -o "$WORK/in/h_lossless.heic"
heif -q 80 "$WORK/h_alpha.png" -o "$WORK/in/h_alpha.heic"
heif -q 80 "$WORK/h_rgb.png" -o "$WORK/in/h_lossy.avif"
heif -L "$WORK/h_gray.png" -o "$WORK/in/h_lossless.avif"
heif -L "$WORK/h_sq.png" -o "$WORK/h_sq.heic"
heif -L "$WORK/h_sq.png" -o "$WORK/h_sq.avif"
heif -L "$WORK/h_wide.png" -o "$WORK/h_wide.heic"
"$PY" tests/tools/heif_rotate.py "$WORK/h_sq.heic" "$WORK/in/h_turned.heic" 1 --mirror 1 &&
    "$PY" tests/tools/heif_rotate.py "$WORK/h_sq.avif" "$WORK/in/h_turned.avif" 3 &&
    "$PY" tests/tools/heif_rotate.py "$WORK/h_wide.heic" "$WORK/in/h_wide_turned.heic" 1 ||
    { echo "FAIL: heif_rotate.py"; exit 1; }
for f in h_lossy.heic h_lossless.heic h_alpha.heic h_lossy.avif h_lossless.avif h_turned.heic h_turned.avif; do
    heif-convert "$WORK/in/$f" "$WORK/$f.png" >/dev/null 2>&1 || { echo "FAIL: heif-convert $f"; exit 1; }
    "$PY" -c 'import sys, numpy as np; from PIL import Image
np.asarray(Image.open(sys.argv[1]).convert("L")).tofile(sys.argv[2])' "$WORK/$f.png" "$WORK/in/${f%.*}_${f##*.}.gray"
done
"$PY" -c 'import sys, numpy as np; from PIL import Image
a, b = (np.asarray(Image.open(f).convert("L")) for f in sys.argv[1:3])
assert a.shape == b.shape and np.abs(a.astype(int) - b).max() > 100, "heif_rotate.py turned nothing"' \
    "$WORK/h_sq.png" "$WORK/h_turned.heic.png" || { echo "FAIL: the turned HEIC is not turned"; exit 1; }

echo "== the model input of each WebP, JPEG 2000, HEIC, AVIF and GIF is the reference's gray image"
for file in lossy.webp lossless.webp alpha.webp alpha_lossy.webp gray.webp anim.webp \
    j_lossless.jp2 j_lossy.jp2 j_code.j2k j_rgb.jp2 j_16.jp2 \
    h_lossy.heic h_lossless.heic h_alpha.heic h_lossy.avif h_lossless.avif h_turned.heic h_turned.avif \
    palette.gif gray.gif anim.gif; do
    f=${file%.*}
    case $file in h_* | *.gif) f=${file%.*}_${file##*.} ;; esac
    side=64
    case $file in h_turned.*) side=32 ;; esac
    "$MEDSEARCH_BIN" embed --model "$MODEL" --input-size $side --mean 0 --scale 1 --dump-input "$WORK/$f.in" \
        "$WORK/in/$file" >/dev/null 2>"$WORK/$f.err" || { bad "$file: embed: $(cat "$WORK/$f.err")"; continue; }
    "$PY" -c 'import sys, numpy as np
want = np.fromfile(sys.argv[2], np.uint8).astype(np.float32)
got = np.fromfile(sys.argv[1], "<f4")[:want.size]
d = np.abs(got - want).max()
print(f"ok: {sys.argv[3]}: equal to the reference" if d == 0 else f"FAIL: {sys.argv[3]}: differs by up to {d}")
sys.exit(int(d != 0))' "$WORK/$f.in" "$WORK/in/$f.gray" "$file" || fail=1
done

echo "== ingest: each stored with its type and size, the turned WebP as stored"
"$MEDSEARCH_BIN" ingest "$WORK/in" --db "$WORK/c.db" --model "$MODEL" >"$WORK/ingest.out" 2>"$WORK/ingest.err" ||
    bad "ingest: $(cat "$WORK/ingest.err")"
"$PY" - "$WORK/c.db" <<'EOF' && ok "stored MIME types and sizes" || bad "stored MIME types and sizes"
import sqlite3, sys
rows = dict((n, (m, w, h)) for n, m, w, h in sqlite3.connect(sys.argv[1]).execute(
    "SELECT original_name, mime, width, height FROM images"))
names = {"lossy", "lossless", "alpha", "alpha_lossy", "gray", "anim", "turned"}
want = {f"{n}.webp": ("image/webp", 40 if n == "turned" else 64, 24 if n == "turned" else 64) for n in names}
want["xray.png"] = ("image/png", 64, 64)
want.update({f"j_{n}.jp2": ("image/jp2", 64, 64) for n in ("lossless", "lossy", "rgb", "16")})
want["j_code.j2k"] = ("image/j2c", 64, 64)
want.update({f"h_{n}.heic": ("image/heic", 64, 64) for n in ("lossy", "lossless", "alpha")})
want.update({f"h_{n}.avif": ("image/avif", 64, 64) for n in ("lossy", "lossless")})
want.update({"h_turned.heic": ("image/heic", 32, 32), "h_turned.avif": ("image/avif", 32, 32)})
want["h_wide_turned.heic"] = ("image/heic", 32, 24)
want.update({f"{n}.gif": ("image/gif", 64, 64) for n in ("palette", "gray", "anim")})  # 24 x 32 stored, a quarter turn: shown 32 x 24
got = {n.rsplit("/", 1)[-1]: v for n, v in rows.items()}
assert got == want, (got, want)
EOF

echo "== search: the lossless WebP, JPEG 2000, HEIC, AVIF and gray GIF files and their PNG are one image"
"$MEDSEARCH_BIN" search "$WORK/in/lossless.webp" --db "$WORK/c.db" --model "$MODEL" -k 7 --qe 0 --json \
    >"$WORK/s.json" 2>"$WORK/s.err" || bad "search: $(cat "$WORK/s.err")"
"$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))["results"]
names = sorted(x["original_name"].rsplit("/", 1)[-1] for x in r)
assert names == ["gray.gif", "h_lossless.avif", "h_lossless.heic", "j_code.j2k", "j_lossless.jp2", "lossless.webp",
                 "xray.png"], names
assert min(x["score"] for x in r) > 0.9999, r' "$WORK/s.json" &&
    ok "lossless.webp finds itself, xray.png and the lossless JPEG 2000, HEIC, AVIF and GIF copies at score 1" || bad "search results: $(head -c 400 "$WORK/s.json")"

echo "== a 1024x1024 JPEG 2000, decoded one level down (512x512), is its PNG to the model"
mkdir -p "$WORK/big"
cp "$BIG" "$WORK/big/"
mv "$WORK/big.jp2" "$WORK/big/"
"$MEDSEARCH_BIN" ingest "$WORK/big" --db "$WORK/big.db" --model "$MODEL" -q >/dev/null 2>"$WORK/big.err" ||
    bad "ingest: $(cat "$WORK/big.err")"
"$MEDSEARCH_BIN" search "$BIG" --db "$WORK/big.db" --model "$MODEL" -k 2 --qe 0 --json >"$WORK/b.json" 2>"$WORK/b.err" ||
    bad "search: $(cat "$WORK/b.err")"
"$PY" -c 'import json, sys
r = {x["original_name"].rsplit("/", 1)[-1]: x["score"] for x in json.load(open(sys.argv[1]))["results"]}
assert r["big.jp2"] > 0.99, r
print("ok: the PNG finds the JPEG 2000 copy at %.4f" % r["big.jp2"])' "$WORK/b.json" || bad "big.jp2: $(head -c 300 "$WORK/b.json")"

echo "== the API"
# search_and_fetch TYPE QUERY STORED MIME: a search with QUERY's bytes sent as
# TYPE finds it at score 1, and the stored file STORED comes back byte for
# byte as MIME.
search_and_fetch() {
    local type=$1 query=$2 stored=$3 mime=$4 id
    expect 200 "POST /api/search with the bytes as $type" -H "Content-Type: $type" --data-binary "@$query" \
        "$URL/api/search?k=8&qe=0"
    check "its first result has score 1" 'd["results"][0]["score"] > 0.9999'
    id=$(json "[x['id'] for x in d['results'] if x['original_name'].rsplit('/', 1)[-1] == '$(basename "$stored")'][0]")
    expect 200 "GET the stored $(basename "$stored")" "$URL/api/images/$id"
    [ "$(header Content-Type)" = "$mime" ] && ok "served as $mime" || bad "served as $(header Content-Type)"
    cmp -s "$B" "$stored" && ok "the original's bytes" || bad "served bytes differ from the file"
    ID=$id
}
start_server
search_and_fetch image/webp "$WORK/in/lossless.webp" "$WORK/in/lossless.webp" image/webp
expect 200 "POST /api/preview of a WebP (multipart)" -F "image=@$WORK/in/alpha.webp" "$URL/api/preview?size=32"
[ "$(png_size)" = 32x32 ] && ok "a 32x32 PNG preview" || bad "preview is $(png_size)"
search_and_fetch image/jp2 "$WORK/in/j_lossless.jp2" "$WORK/in/j_code.j2k" image/j2c
expect 200 "GET its preview, as the page shows a stored JPEG 2000" "$URL/api/images/$ID/preview?size=48"
[ "$(png_size)" = 48x48 ] && ok "a 48x48 PNG preview" || bad "preview is $(png_size)"
search_and_fetch image/heic "$WORK/in/h_lossless.heic" "$WORK/in/h_lossless.avif" image/avif
expect 200 "POST /api/preview of a turned HEIC (raw)" -H 'Content-Type: image/heic' \
    --data-binary "@$WORK/in/h_wide_turned.heic" "$URL/api/preview?size=64"
[ "$(png_size)" = 32x24 ] && ok "a 32x24 PNG preview (never enlarged): turned, as shown" || bad "preview is $(png_size)"
stop_server
finish
