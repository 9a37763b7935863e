#!/usr/bin/env bash
# DICOM end to end, against pydicom:
#  - every case of tests/tools/dicom_cases.py (each native syntax, 12- and
#    16-bit, signed, rescale, the three window functions, a VOI LUT,
#    MONOCHROME1, pixel padding, RGB, RLE, JPEG Baseline grey and colour,
#    two frames) and
#    the square files of shared/data/dicom: `medsearch embed --dump-input`
#    at the image's own size gives exactly the gray levels worked out in
#    Python from pydicom's decoding;
#  - JPEG Lossless written by dcmtk's dcmcjpeg (every predictor, 8, 12 and
#    16 bits, signed, colour, a point transform) gives the gray levels of
#    the uncompressed file (of dcmdjpeg's decompression for the point
#    transform, which drops bits);
#  - 12-bit JPEG Extended written by dcmcjpeg (five cases at two qualities,
#    and the shared radiograph) gives the gray levels of dcmdjpeg's
#    decompression within one level (integer against float inverse DCT);
#    their frames as standalone .jpg files too (lossless colour, 12-bit);
#    GDCM's 16-bit DCT JPEG is refused by name;
#  - JPEG 2000 and JPEG-LS written by GDCM's gdcmconv: lossless ones give
#    the gray levels of the uncompressed file, lossy ones those of GDCM's
#    own decompression;
#  - Deflated Explicit VR Little Endian written by dcmconv +td (every
#    native case of dicom_cases.py, and the shared radiograph) gives the
#    gray levels of the uncompressed file; a file that names the deflated
#    syntax without being deflated is refused as corrupt;
#  - data sets without the Part 10 wrapper (dcmconv -F, implicit and
#    explicit VR; a file without its preamble) give the same gray levels
#    and are ingested from a folder by content;
#  - ingest takes DICOM files from a folder (by content, any file name),
#    skips a DICOMDIR and a structured report beside them by name,
#    fills patient, sex, age, view and study date from the file where the
#    labels file says nothing, keeps what it says, and stores modality and
#    body part as key/values; the original bytes come back as stored;
#  - the JPEG and the uncompressed copy of the same radiograph find each
#    other with a score of 1; a file cut short, and one that names the
#    deflated syntax without being deflated, are refused saying why.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
DCM=$SHARED/data/dicom
PY=/usr/bin/python3
[ -r "$MODEL" ] && [ -d "$DCM" ] || { echo "skip: $MODEL or $DCM not found"; exit 77; }
"$PY" -c 'import pydicom, numpy, PIL' 2>/dev/null || { echo "skip: $PY lacks pydicom, numpy or PIL (Debian python3-pydicom python3-numpy python3-pil)"; exit 77; }
command -v dcmcjpeg >/dev/null && command -v dcmdjpeg >/dev/null || { echo "skip: dcmtk's dcmcjpeg and dcmdjpeg not installed (Debian dcmtk)"; exit 77; }
command -v gdcmconv >/dev/null || { echo "skip: GDCM's gdcmconv not installed (Debian libgdcm-tools)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-dicom.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# same_gray NAME DCM GRAY SIZE [NEAR]: MedSearch's gray levels of DCM (SIZE x
# SIZE) must equal the uint8 file GRAY exactly; with NEAR, each within one
# gray level and at most 2 % of them off by one (a lossy DCT frame, whose
# reference decoder rounds its integer inverse DCT differently).
same_gray() {
    local name=$1 dcm=$2 gray=$3 size=$4 near=${5:-}
    if ! "$BIN" embed --model "$MODEL" --input-size "$size" --mean 0 --scale 1 \
        --dump-input "$T/$name.in" "$dcm" >/dev/null 2>"$T/$name.err"; then
        fail "$name: embed failed: $(cat "$T/$name.err")"
        return
    fi
    "$PY" - "$T/$name.in" "$gray" "$size" "$name" "$near" <<'EOF' || fail "$name: pixels differ"
import sys
import numpy as np
got = np.fromfile(sys.argv[1], dtype="<f4")
want = np.fromfile(sys.argv[2], dtype=np.uint8).astype(np.float32)
n = int(sys.argv[3]) ** 2
near = sys.argv[5] == "near"
assert got.size == 3 * n, got.size
for c in range(3):
    d = np.abs(got[c * n:(c + 1) * n] - want)
    off = int((d > 0).sum())
    if d.max() > (1 if near else 0) or off > (0.02 * n if near else 0):
        print(f"{sys.argv[4]}: channel {c}: {off} of {n} pixels differ, largest by {d.max()}")
        sys.exit(1)
how = f"within 1 gray level of the reference ({off} off by one)" if near else "equal the reference"
print(f"ok: {sys.argv[4]}: {n} pixels {how} (range {int(want.min())}..{int(want.max())})")
EOF
}

# reference_gray RAW GRAY: the gray levels of the uncompressed DICOM RAW by
# the pipeline written in Python over pydicom's decoding.
reference_gray() {
    "$PY" -c 'import sys, pydicom
sys.path.insert(0, "tests/tools")
import dicom_cases
dicom_cases.expected_gray(pydicom.dcmread(sys.argv[1])).tofile(sys.argv[2])' "$1" "$2"
}

echo "== cases written by pydicom"
"$PY" tests/tools/dicom_cases.py "$T/cases" "$DCM" || { echo "FAIL: dicom_cases.py"; exit 1; }
n=0
while IFS=$'\t' read -r name rows cols; do
    [ "$rows" = "$cols" ] || continue
    same_gray "$name" "$T/cases/$name.dcm" "$T/cases/$name.gray" "$rows"
    n=$((n + 1))
done <"$T/cases/cases.tsv"
[ "$n" -ge 18 ] || fail "only $n cases ran"

echo "== JPEG Lossless written by dcmtk: the same gray levels as the uncompressed files"
for src in mono16_explicit window_linear mono1_range mono8 voi_lut; do
    for sv in 1 2 3 4 5 6 7; do
        dcmcjpeg +el +sv "$sv" "$T/cases/$src.dcm" "$T/jl_${src}_$sv.dcm" 2>"$T/jl.err" ||
            { fail "dcmcjpeg $src sv $sv: $(cat "$T/jl.err")"; continue; }
        same_gray "jpeg_lossless_${src}_sv$sv" "$T/jl_${src}_$sv.dcm" "$T/cases/$src.gray" 48
    done
done
dcmcjpeg +e1 "$T/cases/rgb.dcm" "$T/jl_rgb.dcm" && same_gray jpeg_lossless_rgb "$T/jl_rgb.dcm" "$T/cases/rgb.gray" 48
dcmcjpeg +e1 "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/jl_siim.dcm" &&
    same_gray jpeg_lossless_siim "$T/jl_siim.dcm" "$T/cases/shared_siim_cxr_pa_uncompressed_evrle.gray" 1024

echo "== data sets without the Part 10 wrapper (dcmconv -F): the same gray levels, found by content"
mkdir -p "$T/bare"
for src in mono16_explicit window_linear mono1_range mono8 rgb; do
    for ts in ti te; do
        dcmconv -F +$ts "$T/cases/$src.dcm" "$T/bare/${src}_$ts" 2>"$T/bare.err" ||
            { fail "dcmconv -F +$ts $src: $(cat "$T/bare.err")"; continue; }
        head -c 4 "$T/bare/${src}_$ts" | od -An -tx1 | grep -q "08 00" || fail "${src}_$ts does not start with group 0008"
        same_gray "bare_${src}_$ts" "$T/bare/${src}_$ts" "$T/cases/$src.gray" 48
    done
done
dcmconv -F +ti "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/bare/siim_ti" &&
    same_gray bare_siim_ti "$T/bare/siim_ti" "$T/cases/shared_siim_cxr_pa_uncompressed_evrle.gray" 1024
# the meta group at byte 0: a Part 10 file without its preamble and "DICM"
tail -c +133 "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" >"$T/bare/siim_meta"
same_gray bare_siim_meta "$T/bare/siim_meta" "$T/cases/shared_siim_cxr_pa_uncompressed_evrle.gray" 1024
rc=0
"$BIN" ingest "$T/bare" --db "$T/bare.db" --model "$MODEL" >"$T/bare.out" 2>"$T/bare.err" || rc=$?
[ $rc -eq 0 ] && grep -q "ingested 12, skipped 0 .*failed 0" "$T/bare.out" ||
    fail "ingest of bare data sets: exit $rc, $(cat "$T/bare.out" "$T/bare.err")"
"$BIN" search "$T/bare/siim_meta" --db "$T/bare.db" --model "$MODEL" -k 2 --qe 0 --json >"$T/bare.json" 2>/dev/null
"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; assert {x["original_name"] for x in r}=={"siim_ti","siim_meta"} and r[1]["score"]>0.9999 and r[0]["patient_id"]=="16d7f894-55d7-4d95-8957-d18987f0e981", r' \
    "$T/bare.json" || fail "the two bare copies of the radiograph: $(head -c 400 "$T/bare.json")"

echo "== 12-bit JPEG Extended written by dcmtk: within a gray level of dcmdjpeg's decompression"
for src in mono16_explicit window_linear window_sigmoid mono1_range voi_lut; do
    for q in 90 100; do
        f=je_${src}_q$q
        dcmcjpeg +ee +q "$q" "$T/cases/$src.dcm" "$T/$f.dcm" 2>"$T/je.err" && dcmdjpeg "$T/$f.dcm" "$T/${f}_raw.dcm" &&
            reference_gray "$T/${f}_raw.dcm" "$T/$f.gray" || { fail "dcmcjpeg +ee $src: $(cat "$T/je.err")"; continue; }
        "$PY" -c 'import sys, pydicom; assert pydicom.dcmread(sys.argv[1]).BitsStored == 12' "$T/$f.dcm" ||
            fail "$f: dcmcjpeg did not write 12-bit samples, the check proves nothing"
        same_gray "jpeg12_${src}_q$q" "$T/$f.dcm" "$T/$f.gray" 48 near
    done
done
# The shared radiograph as 12-bit JPEG (its 8-bit values in 12-bit samples).
dcmcjpeg +ee +bt "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/je_siim.dcm" &&
    dcmdjpeg "$T/je_siim.dcm" "$T/je_siim_raw.dcm" && reference_gray "$T/je_siim_raw.dcm" "$T/je_siim.gray" &&
    same_gray jpeg12_siim "$T/je_siim.dcm" "$T/je_siim.gray" 1024 near || fail "12-bit JPEG of the shared radiograph"
# The same codecs in standalone .jpg files (the frames taken out of the
# DICOM files): a lossless colour JPEG gives the luma of the RGB original
# exactly; a 12-bit one dcmdjpeg's samples scaled by their maximum (as a
# 16-bit PNG is), within a gray level.
"$PY" - "$T/jl_rgb.dcm" "$T/je_mono16_explicit_q90.dcm" "$T/je_mono16_explicit_q90_raw.dcm" "$T" <<'EOF' ||
import sys
import numpy as np
import pydicom
from pydicom.encaps import generate_pixel_data_frame
def frame_to(dcm, out):
    open(out, "wb").write(next(generate_pixel_data_frame(pydicom.dcmread(dcm).PixelData)))
frame_to(sys.argv[1], sys.argv[4] + "/lossless_rgb.jpg")
frame_to(sys.argv[2], sys.argv[4] + "/jpeg12.jpg")
v = pydicom.dcmread(sys.argv[3]).pixel_array.astype(np.float32)
gain = np.float32(255.0 / v.max())
np.minimum(255, np.floor(v * gain + np.float32(0.5))).astype(np.uint8).tofile(sys.argv[4] + "/jpeg12_file.gray")
EOF
    fail "could not take the frames out"
same_gray lossless_rgb_file "$T/lossless_rgb.jpg" "$T/cases/rgb.gray" 48
same_gray jpeg12_file "$T/jpeg12.jpg" "$T/jpeg12_file.gray" 48 near
# GDCM's experimental lossy JPEG of 12-bit data has 16-bit DCT samples,
# which T.81 does not define (dcmdjpeg refuses them too): refused by name.
gdcmconv --jpeg --lossy -q 90 "$T/cases/mono16_explicit.dcm" "$T/je16.dcm" >/dev/null 2>&1
rc=0
"$BIN" embed --model "$MODEL" "$T/je16.dcm" >/dev/null 2>"$T/je16.err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "16-bit sequential DCT JPEG is not supported" "$T/je16.err" ||
    fail "16-bit DCT JPEG: exit $rc, $(cat "$T/je16.err")"

echo "== JPEG 2000 and JPEG-LS written by GDCM: lossless ones equal the uncompressed files"
for src in mono16_explicit window_linear mono1_range mono8 voi_lut rgb mono16_bigendian; do
    for codec in j2k jpegls; do
        gdcmconv "--$codec" "$T/cases/$src.dcm" "$T/${codec}_$src.dcm" 2>"$T/gdcm.err" ||
            { fail "gdcmconv --$codec $src: $(cat "$T/gdcm.err")"; continue; }
        same_gray "${codec}_$src" "$T/${codec}_$src.dcm" "$T/cases/$src.gray" 48
    done
done
for codec in j2k jpegls; do
    gdcmconv "--$codec" "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/${codec}_siim.dcm" &&
        same_gray "${codec}_siim" "$T/${codec}_siim.dcm" "$T/cases/shared_siim_cxr_pa_uncompressed_evrle.gray" 1024
done
# At the model's 224 px a large JPEG 2000 frame is decoded a resolution level
# or two down, as a large JPEG file is decoded at a reduced scale: the
# prepared input stays within about a gray level of the full decode's.
"$BIN" embed --model "$MODEL" --mean 0 --scale 1 --dump-input "$T/j2k224.in" "$T/j2k_siim.dcm" >/dev/null &&
    "$BIN" embed --model "$MODEL" --mean 0 --scale 1 --dump-input "$T/raw224.in" "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" >/dev/null &&
    "$PY" -c 'import sys, numpy as np
a = np.fromfile(sys.argv[1], "<f4"); b = np.fromfile(sys.argv[2], "<f4")
d = np.abs(a - b)
print("ok: JPEG 2000 decoded reduced for 224 px: mean |difference| %.2f, largest %.0f gray levels" % (d.mean(), d.max()))
sys.exit(0 if 0 < d.mean() < 1.5 else 1)' "$T/j2k224.in" "$T/raw224.in" || fail "reduced JPEG 2000 decode strays from the full one"

# Lossy ones: the gray levels of GDCM's own decompression of the same file.
gdcmconv --j2k --lossy -q 25 "$T/cases/mono16_explicit.dcm" "$T/j2k_lossy.dcm" >/dev/null 2>&1 &&
    gdcmconv --jpegls --lossy -e 2 "$T/cases/mono16_explicit.dcm" "$T/jpegls_lossy.dcm" >/dev/null 2>&1 ||
    fail "gdcmconv lossy"
for f in j2k_lossy jpegls_lossy; do
    gdcmconv --raw "$T/$f.dcm" "$T/${f}_raw.dcm" && reference_gray "$T/${f}_raw.dcm" "$T/$f.gray" &&
        same_gray "$f" "$T/$f.dcm" "$T/$f.gray" 48
    cmp -s "$T/$f.gray" "$T/cases/mono16_explicit.gray" && fail "$f: the lossy file is not lossy, the check proves nothing"
done

# A point transform drops low bits: compare with dcmtk's own decompression.
dcmcjpeg +el +sv 5 +pt 3 "$T/cases/mono16_explicit.dcm" "$T/jl_pt.dcm" && dcmdjpeg "$T/jl_pt.dcm" "$T/jl_pt_raw.dcm" &&
    reference_gray "$T/jl_pt_raw.dcm" "$T/jl_pt.gray" &&
    same_gray jpeg_lossless_point_transform "$T/jl_pt.dcm" "$T/jl_pt.gray" 48

echo "== Deflated Explicit VR Little Endian written by dcmtk: the gray levels of the uncompressed files"
n=0
while IFS=$'\t' read -r name rows cols; do
    [ "$rows" = "$cols" ] || continue
    case $name in rle* | jpeg*) continue ;; esac # encapsulated pixels are not deflated
    dcmconv +td "$T/cases/$name.dcm" "$T/deflated_$name.dcm" 2>/dev/null || continue
    same_gray "deflated_$name" "$T/deflated_$name.dcm" "$T/cases/$name.gray" "$rows"
    n=$((n + 1))
done <"$T/cases/cases.tsv"
[ "$n" -ge 5 ] || fail "only $n cases could be deflated by dcmconv"
echo "deflated: $n cases"
dcmconv +td "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/deflated.dcm" || fail "dcmconv +td"
"$BIN" embed --model "$MODEL" --dump-input "$T/inflated.in" "$T/deflated.dcm" >/dev/null 2>"$T/df.err" &&
    "$BIN" embed --model "$MODEL" --dump-input "$T/plain.in" "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" >/dev/null 2>&1 &&
    cmp -s "$T/inflated.in" "$T/plain.in" || fail "the deflated radiograph: $(cat "$T/df.err")"
[ "$(stat -c %s "$T/deflated.dcm")" -lt 700000 ] || fail "dcmconv +td did not deflate the radiograph"

echo "== refused, saying why"
LC_ALL=C sed 's/1\.2\.840\.10008\.1\.2\.4\.50/1.2.840.10008.1.2.1.99/' "$DCM/siim_cxr_pa_jpegbaseline.dcm" >"$T/fake_deflated.dcm"
rc=0
"$BIN" embed --model "$MODEL" "$T/fake_deflated.dcm" >/dev/null 2>"$T/ll.err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "DICOM is corrupt: its deflated data set does not inflate" "$T/ll.err" ||
    fail "a data set that names the deflated syntax without being deflated: exit $rc, $(cat "$T/ll.err")"
head -c 2000 "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" >"$T/cut.dcm"
rc=0
"$BIN" embed --model "$MODEL" "$T/cut.dcm" >/dev/null 2>"$T/cut.err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "DICOM is truncated: its Pixel Data holds 1048576 bytes" "$T/cut.err" ||
    fail "truncated DICOM: exit $rc, $(cat "$T/cut.err")"

echo "== ingest: metadata from the files, the labels file first"
mkdir -p "$T/in/sub"
cp "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/in/IM0001"       # no extension, as archives name them
cp "$DCM/ct_abdomen_bigendian_not_cxr.dcm" "$T/in/sub/ct.dcm"
cp "$T/cases/mono16_explicit.dcm" "$T/in/synthetic.dcm"
# Beside the images, as CD and PACS exports have them: a DICOMDIR (dcmtk's
# dcmmkdir) and a structured report (pydicom); both are skipped, not failed.
mkdir "$T/cd" && cp "$DCM/siim_cxr_pa_uncompressed_evrle.dcm" "$T/cd/IM0001" &&
    (cd "$T/cd" && dcmmkdir +I IM0001 >/dev/null 2>&1) && cp "$T/cd/DICOMDIR" "$T/in/DICOMDIR" ||
    fail "dcmmkdir could not write a DICOMDIR"
"$PY" - "$T/in/sub/report" <<'EOF' || fail "pydicom could not write a structured report"
import sys
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
meta = FileMetaDataset()
meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
meta.MediaStorageSOPInstanceUID = generate_uid()
meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds = Dataset()
ds.file_meta = meta
ds.SOPClassUID = meta.MediaStorageSOPClassUID
ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
ds.Modality = "SR"
ds.PatientID = "P-7"
ds.save_as(sys.argv[1], write_like_original=False)
EOF
cat >"$T/in/labels.csv" <<'EOF'
image,labels,patient_id,age,sex,view,study_date
sub/ct.dcm,Not CXR,,,F,,
synthetic.dcm,No Finding,P-7,33,,LL,2020-02-02
EOF
"$BIN" ingest "$T/in" --labels "$T/in/labels.csv" --db "$T/c.db" --model "$MODEL" >"$T/ingest.out" 2>"$T/ingest.err" ||
    fail "ingest failed: $(cat "$T/ingest.err")"
grep -q "ingested 3, skipped 3 (0 already stored, 3 not images), failed 0" "$T/ingest.out" &&
    grep -q "skip: .*DICOMDIR: DICOM file is a DICOMDIR" "$T/ingest.err" &&
    grep -q "skip: .*report: DICOM file is a structured report (SOP class 1.2.840.10008.5.1.4.1.1.88.11)" "$T/ingest.err" ||
    fail "the DICOMDIR and the report are not skipped by name: $(cat "$T/ingest.out" "$T/ingest.err")"
"$BIN" export --vectors --db "$T/c.db" --format csv -o "$T/export" >/dev/null 2>&1 || fail "export failed"
"$PY" - "$T/export.csv" <<'EOF' || fail "stored metadata wrong"
import csv, sys
rows = {r["original_name"].split("/")[-1]: r for r in csv.DictReader(open(sys.argv[1]))}
assert set(rows) == {"IM0001", "ct.dcm", "synthetic.dcm"}, rows.keys()
siim = rows["IM0001"]
# all from the DICOM header
assert siim["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981", siim
assert (siim["sex"], siim["age"], siim["view"], siim["study_date"]) == ("M", "62", "PA", "1901-01-01"), siim
assert "modality=CR" in siim["extra"] and "body_part=CHEST" in siim["extra"], siim["extra"]
ct = rows["ct.dcm"]
# the labels file's sex wins; the rest comes from the file
assert ct["sex"] == "F" and ct["patient_id"] == "1690377420" and ct["study_date"] == "2013-01-09", ct
assert "modality=CT" in ct["extra"] and "body_part=ABDOMEN" in ct["extra"], ct["extra"]
syn = rows["synthetic.dcm"]
assert (syn["patient_id"], syn["age"], syn["view"], syn["study_date"]) == ("P-7", "33", "LL", "2020-02-02"), syn
assert "modality=DX" in syn["extra"], syn["extra"]
print("ok: metadata of 3 DICOM files")
EOF
"$BIN" search "$DCM/siim_cxr_pa_jpegbaseline.dcm" --db "$T/c.db" --model "$MODEL" -k 1 --qe 0 --json >"$T/s.json" 2>"$T/s.err" ||
    fail "search with a DICOM query failed: $(cat "$T/s.err")"
"$PY" - "$T/s.json" <<'EOF' || fail "the JPEG copy does not find the uncompressed one"
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
assert r["original_name"].endswith("IM0001") and r["score"] > 0.99999, r
print("ok: JPEG query finds its uncompressed copy, score", r["score"])
EOF
"$BIN" search --filter "modality=CT" "$DCM/siim_cxr_pa_jpegbaseline.dcm" --db "$T/c.db" --model "$MODEL" --json >"$T/f.json" 2>/dev/null ||
    fail "filter on modality failed"
"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; assert [x["original_name"].split("/")[-1] for x in r]==["ct.dcm"], r' "$T/f.json" ||
    fail "modality=CT filter"

if [ "$fails" -gt 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all DICOM checks passed"
