#!/usr/bin/env bash
# `make valgrind`: runs the release binary's main paths under valgrind memcheck
# (definite leaks and invalid accesses fail). oneDNN's JIT code is opaque to
# valgrind, so the model path runs with a small model; it takes minutes.
set -eu
cd "$(dirname "$0")/.."
SHARED=${MEDSEARCH_SHARED:-$(cd .. && pwd)/shared}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
[ -f "$MODEL" ] || { echo "skip: $MODEL absent"; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# The first 8 rows of the labels file: three patients share a finding with
# another patient, so eval has queries to score.
mkdir "$tmp/imgs"
sed -n 2,9p "$SHARED/data/nih_cxr14_64px/labels.csv" | cut -d, -f1 | xargs -I{} cp "$SHARED/data/nih_cxr14_64px/{}" "$tmp/imgs/"
vg="valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite --quiet"
$vg ./medsearch ingest --db "$tmp/c.db" --model "$MODEL" --labels "$SHARED/data/nih_cxr14_64px/labels.csv" "$tmp/imgs"
q=$(ls "$tmp"/imgs/*.png | head -1)
$vg ./medsearch search --db "$tmp/c.db" --model "$MODEL" -k 3 "$q"
$vg ./medsearch qe 2 --db "$tmp/c.db"
$vg ./medsearch search --db "$tmp/c.db" --model "$MODEL" -k 3 --json "$q" >/dev/null
$vg ./medsearch search --db "$tmp/c.db" --model "$MODEL" -k 3 --region 10%,5,50%,40 "$q"
$vg ./medsearch search --db "$tmp/c.db" --model "$MODEL" -k 3 --region 0,0,25%,25% --id 2 --json >/dev/null
$vg ./medsearch explain --db "$tmp/c.db" --model "$MODEL" "$q" --with 3 --region 10%,5,50%,40 >/dev/null
$vg ./medsearch explain --db "$tmp/c.db" --model "$MODEL" --id 2 --with 4 --json --overlay "$tmp/ov" >/dev/null
$vg ./medsearch eval --db "$tmp/c.db" --rule any --tune --apply -q
$vg ./medsearch eval --db "$tmp/c.db" --model "$MODEL" --rule any --tune --vectors --apply -q
$vg ./medsearch check --db "$tmp/c.db"
$vg ./medsearch info --db "$tmp/c.db"
$vg ./medsearch copy --db "$tmp/c.db" --to "$tmp/copy.db" -q
$vg ./medsearch duplicates --db "$tmp/c.db" --min-correlation 0.5 --json >/dev/null || [ $? -eq 1 ]
# Metadata edits: the CLI's, and a labels file applied to images stored already.
$vg ./medsearch meta 1 --db "$tmp/c.db" 'labels+=Nodule|Mass' 'labels-=Effusion' age=44 extra.site=w4 'extra-=follow_up'
$vg ./medsearch meta 1 --db "$tmp/c.db" --json >/dev/null
$vg ./medsearch meta --filter 'labels:Nodule' --db "$tmp/c.db" 'labels-=nodule' 'labels+=Lung nodule' >/dev/null
$vg ./medsearch meta --filter 'labels:"Lung nodule"' --db "$tmp/c.db" --json >/dev/null
$vg ./medsearch ingest --db "$tmp/c.db" --model "$MODEL" --labels "$SHARED/data/nih_cxr14_64px/labels.csv" \
    --update-metadata -q "$tmp/imgs"
# WebP, JPEG 2000, GIF, HEIC and AVIF of one X-ray (PIL writes the first
# three; libheif's heif-enc, where installed, the other two)
mkdir "$tmp/formats"
/usr/bin/python3 - "$q" "$tmp/formats" <<'EOF'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("L")
for ext in ("webp", "jp2", "j2k", "gif", "png"):
    im.save(f"{sys.argv[2]}/x.{ext}")
EOF
command -v heif-enc >/dev/null && heif-enc -q 80 "$tmp/formats/x.png" -o "$tmp/formats/x.heic" >/dev/null &&
    heif-enc -q 80 "$tmp/formats/x.png" -o "$tmp/formats/x.avif" >/dev/null
$vg ./medsearch ingest --db "$tmp/f.db" --model "$MODEL" "$tmp/formats"
# DICOM: the shared files (JPEG Baseline, uncompressed little and big
# endian), and where dcmtk and GDCM are installed the same radiograph as
# JPEG Lossless, 12-bit JPEG, JPEG 2000 and JPEG-LS.
mkdir "$tmp/dicom"
cp "$SHARED"/data/dicom/*.dcm "$tmp/dicom/"
src=$SHARED/data/dicom/siim_cxr_pa_uncompressed_evrle.dcm
command -v dcmcjpeg >/dev/null && dcmcjpeg +e1 "$src" "$tmp/dicom/jpeg_lossless.dcm" &&
    dcmcjpeg +ee +bt "$src" "$tmp/dicom/jpeg12.dcm"
command -v gdcmconv >/dev/null && gdcmconv --j2k "$src" "$tmp/dicom/j2k.dcm" && gdcmconv --jpegls "$src" "$tmp/dicom/jpegls.dcm"
# The lossless and 12-bit frames as standalone .jpg files too (with pydicom),
# and a DICOMDIR beside them, which ingest skips as not an image.
if [ -f "$tmp/dicom/jpeg12.dcm" ] && /usr/bin/python3 -c 'import pydicom' 2>/dev/null; then
    /usr/bin/python3 - "$tmp/dicom" <<'EOF'
import sys, pydicom
from pydicom.encaps import generate_pixel_data_frame
for name in ("jpeg_lossless", "jpeg12"):
    ds = pydicom.dcmread(f"{sys.argv[1]}/{name}.dcm")
    open(f"{sys.argv[1]}/{name}_frame.jpg", "wb").write(next(generate_pixel_data_frame(ds.PixelData)))
EOF
fi
command -v dcmmkdir >/dev/null && mkdir "$tmp/cd" && cp "$src" "$tmp/cd/IM0001" &&
    (cd "$tmp/cd" && dcmmkdir +I IM0001 >/dev/null 2>&1) && cp "$tmp/cd/DICOMDIR" "$tmp/dicom/DICOMDIR"
$vg ./medsearch ingest --db "$tmp/d.db" --model "$MODEL" "$tmp/dicom"
$vg ./medsearch search --db "$tmp/d.db" --model "$MODEL" -k 3 "$SHARED/data/dicom/siim_cxr_pa_jpegbaseline.dcm" >/dev/null
echo "valgrind: clean"
