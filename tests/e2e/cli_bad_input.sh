#!/usr/bin/env bash
# Bad input to the collection commands, each a clear message and nothing
# half-written: corrupt images in a folder, a labels CSV with missing columns
# or bad rows, an unreachable PostgreSQL, a read-only database file, a full
# disk (a small tmpfs, or a file size limit where mounting is not allowed).
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
NIH=$SHARED/data/nih_cxr14_64px
[ -r "$MODEL" ] && [ -r "$NIH/labels.csv" ] || { echo "skip: $MODEL or $NIH not found"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-bad.XXXXXX")
MNT=""
cleanup() {
  [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
  chattr -i "$T"/ro/*.db 2>/dev/null
  chmod -R u+w "$T" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
export MEDSEARCH_MODEL=$MODEL
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
count() { "$BIN" info --db "$1" --json 2>/dev/null | sed -n 's/.*"images": \([0-9]*\).*/\1/p'; }

echo "== the command line itself"
rc=0; "$BIN" >/dev/null 2>"$T/u.err" || rc=$?
[ $rc -eq 2 ] && grep -q "usage: medsearch COMMAND" "$T/u.err" || fail "no command: exit $rc, $(head -2 "$T/u.err")"
rc=0; "$BIN" frobnicate >/dev/null 2>"$T/u.err" || rc=$?
[ $rc -eq 2 ] && grep -q "unknown command 'frobnicate'" "$T/u.err" || fail "unknown command: exit $rc"
"$BIN" --help >"$T/help.out" || fail "--help must exit 0"
for c in ingest search serve embed eval bench info check delete export reembed center qe; do
  grep -q "^  $c " "$T/help.out" || fail "--help does not list $c"
  "$BIN" $c --help >/dev/null 2>&1 || fail "$c --help must exit 0"
done
grep -q "bench embed|index|ingest|serve|decode" "$T/help.out" || fail "--help does not list every benchmark"
"$BIN" --version | grep -Eq '^medsearch [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"

echo "== corrupt images in a folder"
mkdir -p "$T/mixed/sub"
cp "$NIH/images/00000001_000.png" "$NIH/images/00000002_000.png" "$T/mixed/"
cp "$NIH/images/00000003_000.png" "$T/mixed/sub/"
head -c 400 "$NIH/images/00000004_000.png" >"$T/mixed/truncated.png"
{ printf '\x89PNG\r\n\x1a\n'; head -c 3000 /dev/urandom; } >"$T/mixed/junk.png"
printf '\xff\xd8\xff\xe0 not really a jpeg' >"$T/mixed/sub/fake.jpg"
echo "notes" >"$T/mixed/notes.txt"
"$BIN" ingest "$T/mixed" --db "$T/m.db" >"$T/m.out" 2>"$T/m.err"
rc=$?
[ $rc -eq 1 ] || fail "a folder with corrupt images must exit 1, got $rc"
for f in truncated.png junk.png sub/fake.jpg; do
  grep -q "fail: $T/mixed/$f: ." "$T/m.err" || fail "$f not reported with a reason"
done
grep -q "skip: $T/mixed/notes.txt: not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM" "$T/m.err" || fail "notes.txt not reported"
grep -q "ingested 3, skipped 1 .*, failed 3" "$T/m.out" || fail "summary: $(cat "$T/m.out")"
[ "$(count "$T/m.db")" = 3 ] || fail "3 good images should be stored"
"$BIN" check --db "$T/m.db" >/dev/null 2>&1 || fail "check after corrupt images"

mkfifo "$T/fifo"
timeout 60 "$BIN" ingest "$T/fifo" --db "$T/m.db" >/dev/null 2>"$T/fifo.err"
[ $? -eq 1 ] || fail "a FIFO argument must fail (exit 1), not block"
grep -q "not a regular file" "$T/fifo.err" || fail "FIFO not reported"

echo "== what a folder can hold besides images: odd names, links, FIFOs, deep paths"
# Old archives name files in Latin-1; a link may point nowhere; a FIFO in a
# folder must not block; a deep path may exceed what the store keeps (1024
# bytes). Every image goes in, and every file that is not one is said.
mkdir -p "$T/odd/sub"
LATIN=$(printf 'R\xf6ntgen_\xe9.png')
NIH_PNG=$(ls "$NIH/images" | sort | sed -n 5,7p)
set -- $NIH_PNG
cp "$NIH/images/$1" "$T/odd/$LATIN"
ln -s "$T/nowhere.png" "$T/odd/broken.png"
ln -s "$NIH/images/$2" "$T/odd/linked.png"
ln -s .. "$T/odd/sub/up"
mkfifo "$T/odd/sub/pipe.png"
deep=$T/odd
for i in 1 2 3 4 5 6; do deep=$deep/$(printf '\xc3\xa9%.0s' $(seq 1 100)); done
mkdir -p "$deep" && cp "$NIH/images/$3" "$deep/last.png"
FFFD=$(printf '\xef\xbf\xbd')
ELLIPSIS=$(printf '\xe2\x80\xa6')
rc=0
timeout 120 "$BIN" ingest "$T/odd" --db "$T/o.db" --json >"$T/o.json" 2>"$T/o.err" || rc=$?
[ $rc -eq 1 ] || fail "a folder with a broken link must exit 1, got $rc"
grep -aq "fail: $T/odd/broken.png: broken symbolic link (No such file or directory)" "$T/o.err" || fail "broken link not said: $(cat "$T/o.err")"
grep -aq "skip: $T/odd/sub/pipe.png: not a regular file (a FIFO, socket or device)" "$T/o.err" || fail "FIFO in a folder not said"
grep -aq "note: $T/odd/R?ntgen_?.png: the file name is not UTF-8: stored as 'R${FFFD}ntgen_$FFFD.png'" "$T/o.err" ||
  fail "Latin-1 name not said: $(cat "$T/o.err")"
grep -aq "note: .*/last.png: the path is longer than 1024 bytes: stored as '$ELLIPSIS' and its last 1020 bytes" "$T/o.err" ||
  fail "deep path not said"
/usr/bin/python3 - "$T/o.json" <<'PY' || fail "ingest --json: $(cat "$T/o.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert (d["ingested"], d["skipped_not_images"], d["failed"]) == (3, 1, 1), d
assert [e["file"] for e in d["errors"]] == [sys.argv[1].rsplit("/", 1)[0] + "/odd/broken.png"], d["errors"]
PY
"$BIN" export --vectors --db "$T/o.db" --out "$T/o" >/dev/null 2>&1 || fail "export of the odd folder"
/usr/bin/python3 - "$T/o.csv" <<'PY' || fail "names stored"
import csv, sys
names = sorted(r["original_name"] for r in csv.DictReader(open(sys.argv[1], encoding="utf-8")))
rel = ("/".join(["\u00e9" * 100] * 6) + "/last.png").encode()  # 1214 bytes
tail = rel[-1021:]
while tail[0] & 0xC0 == 0x80:  # the whole characters of the last 1021 bytes
    tail = tail[1:]
assert names == ["R\ufffdntgen_\ufffd.png", "linked.png", "\u2026" + tail.decode()], names
assert len(names[2].encode()) == 1023, len(names[2].encode())
PY
# A path that is not UTF-8 in a JSON report: kept, with U+FFFD, not dropped.
"$BIN" search "$T/odd/$LATIN" --db "$T/o.db" -k 1 --json >"$T/s.json" 2>"$T/s.err" || fail "search by a Latin-1 path: $(cat "$T/s.err")"
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["query"].endswith("/R\ufffdntgen_\ufffd.png") and d["results"][0]["original_name"]=="R\ufffdntgen_\ufffd.png", d' \
  "$T/s.json" || fail "search --json with a Latin-1 path: $(head -c 300 "$T/s.json")"
"$BIN" embed "$T/odd/$LATIN" "$T/odd/broken.png" --json >"$T/e.json" 2>/dev/null
/usr/bin/python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["vectors"]; assert v[0]["image"].endswith("/R\ufffdntgen_\ufffd.png") and len(v[0]["vector"])==1280 and v[1]["image"].endswith("/broken.png") and "error" in v[1], v' \
  "$T/e.json" || fail "embed --json with a Latin-1 path: $(head -c 300 "$T/e.json")"
cp "$T/o.db" "$T/$LATIN.db"
"$BIN" info --db "$T/$LATIN.db" --json >"$T/i.json" 2>"$T/i.err" || fail "info of a Latin-1 db path: $(cat "$T/i.err")"
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["db"].endswith("/R\ufffdntgen_\ufffd.png.db") and d["images"]==3, d' \
  "$T/i.json" || fail "info --json with a Latin-1 db path: $(cat "$T/i.json")"

echo "== labels CSV: missing columns, bad rows"
printf 'image,patient_id\nimages/00000001_000.png,1\n' >"$T/nolabels.csv"
"$BIN" ingest "$T/mixed" --labels "$T/nolabels.csv" --db "$T/n.db" >/dev/null 2>"$T/n.err"
[ $? -eq 2 ] || fail "a CSV without its labels column must exit 2"
grep -q "missing required column 'labels'" "$T/n.err" || fail "missing column not named: $(cat "$T/n.err")"
[ ! -e "$T/n.db" ] || fail "a refused CSV must not create the collection"
printf 'Image Index,Patient ID\n00000001_000.png,1\n' >"$T/nih.csv"
"$BIN" ingest "$T/mixed" --labels "$T/nih.csv" --db "$T/n.db" >/dev/null 2>"$T/n.err"
grep -q "missing required column 'Finding Labels'" "$T/n.err" || fail "NIH missing column not named"
{
  echo "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
  echo "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA"
  echo "00000002_000.png,No Finding,0,2,eighty,M,PA"
  echo "00000003_000.png,Hernia|Mass,0,3,81"
} >"$T/rows.csv"
"$BIN" ingest "$T/mixed" --labels "$T/rows.csv" --db "$T/r.db" >/dev/null 2>"$T/r.err"
grep -q "line 3: the age is not a number; row skipped" "$T/r.err" || fail "bad age row not reported by line"
grep -q "line 4: 5 fields where the header has 7; row skipped" "$T/r.err" || fail "short row not reported by line"
"$BIN" search "$T/mixed/00000001_000.png" --db "$T/r.db" -k 1 --json >"$T/r.json"
grep -q '"age": 58' "$T/r.json" && grep -q '"Cardiomegaly"' "$T/r.json" || fail "good row's metadata missing"
# A labels "file" that is a folder or a FIFO is refused at once (a FIFO
# would otherwise block the read), before any collection is made.
mkdir "$T/labels-dir"
mkfifo "$T/labels-fifo"
for l in labels-dir labels-fifo; do
  rc=0
  timeout 30 "$BIN" ingest "$T/mixed" --labels "$T/$l" --db "$T/l.db" >/dev/null 2>"$T/l.err" || rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "--labels $l: exit $rc"
  grep -q "$T/$l: not a regular file" "$T/l.err" || fail "--labels $l: unclear: $(cat "$T/l.err")"
  [ ! -e "$T/l.db" ] || fail "--labels $l created the collection"
done
# More than 256 extra columns: the first 256 are kept, with a note.
{
  printf 'image,labels,patient_id'
  for i in $(seq 1 300); do printf ',c%d' "$i"; done
  printf '\n00000001_000.png,Mass,1'
  for i in $(seq 1 300); do printf ',v%d' "$i"; done
  printf '\n'
} >"$T/wide.csv"
"$BIN" ingest "$T/mixed/00000001_000.png" --labels "$T/wide.csv" --db "$T/w.db" >/dev/null 2>"$T/w.err" ||
  fail "ingest with 300 extra columns: $(cat "$T/w.err")"
grep -q "only the first 256 extra columns are kept" "$T/w.err" || fail "no note on the extra columns: $(cat "$T/w.err")"
"$BIN" search "$T/mixed/00000001_000.png" --db "$T/w.db" -k 1 --json >"$T/w.json"
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["results"][0]["extra"]; assert len(e)==256 and e["c1"]=="v1" and e["c256"]=="v256" and "c257" not in e, len(e)' \
  "$T/w.json" || fail "the first 256 extra columns are not what was kept"

# A spreadsheet's "CSV" with ';' (the comma is the decimal mark there), CRLF and a BOM.
printf '\xef\xbb\xbfimage;labels;patient_id;age;site\r\n00000001_000.png;"Mass|Effusion";7;58,5;ward 4, east\r\n' >"$T/semi.csv"
"$BIN" ingest "$T/mixed/00000001_000.png" --labels "$T/semi.csv" --db "$T/semi.db" >/dev/null 2>"$T/semi.err" ||
  fail "ingest with a ';' labels file: $(cat "$T/semi.err")"
grep -q "semi.csv: 1 rows (MedSearch labels.csv format, separated by ';')" "$T/semi.err" || fail "separator not said: $(cat "$T/semi.err")"
"$BIN" search "$T/mixed/00000001_000.png" --db "$T/semi.db" -k 1 --json >"$T/semi.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; assert sorted(r["labels"])==["Effusion","Mass"] and r["patient_id"]=="7" and r["age"]==58 and r["extra"]=={"site":"ward 4, east"}, r' \
  "$T/semi.json" || fail "the ';' row's metadata: $(cat "$T/semi.json")"

# Excel's "CSV" on Windows (Windows-1252) and its "Unicode Text" (UTF-16
# with a byte-order mark, tabs), written by Python's own codecs.
/usr/bin/python3 - "$T" <<'PY'
import sys
t = sys.argv[1]
rows = "image;labels;patient_id;site\r\n00000001_000.png;\u00c9panchement|Mass;M\u00fcller;5 \u20ac \u2019x\r\n"
open(t + "/cp1252.csv", "wb").write(rows.encode("cp1252"))
open(t + "/utf16.txt", "wb").write(rows.replace(";", "\t").encode("utf-16"))
PY
for f in cp1252.csv:Windows-1252:"separated by ';'" utf16.txt:UTF-16LE:"separated by tabs"; do
  IFS=: read -r name enc sep <<<"$f"
  sep=${sep//\"/}
  "$BIN" ingest "$T/mixed/00000001_000.png" --labels "$T/$name" --db "$T/$name.db" >/dev/null 2>"$T/enc.err" ||
    fail "ingest with $name: $(cat "$T/enc.err")"
  grep -q "$name: 1 rows (MedSearch labels.csv format, $sep, read as $enc)" "$T/enc.err" ||
    fail "$name: encoding not said: $(cat "$T/enc.err")"
  "$BIN" search "$T/mixed/00000001_000.png" --db "$T/$name.db" -k 1 --json >"$T/enc.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; assert sorted(r["labels"])==["Mass","\u00c9panchement"] and r["patient_id"]=="M\u00fcller" and r["extra"]=={"site":"5 \u20ac \u2019x"}, r' \
    "$T/enc.json" || fail "$name: the row's text: $(cat "$T/enc.json")"
done

# CheXpert's train.csv: paths from the folder above the CSV's, observations
# as columns, the patient in the path.
CX=$T/cx/CheXpert-v1.0-small
mkdir -p "$CX/train/patient00007/study1" "$CX/train/patient00009/study2"
set -- $(ls "$NIH/images" | sort | sed -n 8,10p)
cp "$NIH/images/$1" "$CX/train/patient00007/study1/view1_frontal.jpg"
cp "$NIH/images/$2" "$CX/train/patient00007/study1/view2_lateral.jpg"
cp "$NIH/images/$3" "$CX/train/patient00009/study2/view1_frontal.jpg"
{
  echo "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
  echo "CheXpert-v1.0-small/train/patient00007/study1/view1_frontal.jpg,Female,68,Frontal,AP,,,1.0,,,-1.0,,,,,1.0,,,"
  echo "CheXpert-v1.0-small/train/patient00007/study1/view2_lateral.jpg,Female,68,Lateral,,,,1.0,,,,,,,,,,,"
  echo "CheXpert-v1.0-small/train/patient00009/study2/view1_frontal.jpg,Male,54,Frontal,PA,1.0,,,,,,,,,,,,,"
} >"$CX/train.csv"
"$BIN" ingest "$CX/train" --labels "$CX/train.csv" --db "$T/cx.db" >"$T/cx.out" 2>"$T/cx.err" ||
  fail "ingest with CheXpert's train.csv: $(cat "$T/cx.err")"
grep -q "train.csv: 3 rows (CheXpert format)" "$T/cx.err" || fail "CheXpert not named: $(cat "$T/cx.err")"
grep -q "ingested 3," "$T/cx.out" && ! grep -q "no row" "$T/cx.err" || fail "CheXpert rows not matched: $(cat "$T/cx.out" "$T/cx.err")"
"$BIN" export --vectors --db "$T/cx.db" --out "$T/cx" >/dev/null 2>&1 || fail "export of the CheXpert collection"
python3 - "$T/cx.csv" <<'PY' || fail "CheXpert metadata: $(cat "$T/cx.csv")"
import csv, sys
rows = {r["original_name"]: r for r in csv.DictReader(open(sys.argv[1]))}
a = rows["patient00007/study1/view1_frontal.jpg"]
assert (a["patient_id"], a["sex"], a["age"], a["view"]) == ("patient00007", "F", "68", "AP"), a
assert sorted(a["labels"].split("|")) == ["Cardiomegaly", "Pleural Effusion"] and a["extra"] == "uncertain_findings=Edema", a
b = rows["patient00007/study1/view2_lateral.jpg"]
assert (b["patient_id"], b["view"], b["labels"]) == ("patient00007", "LATERAL", "Cardiomegaly"), b
c = rows["patient00009/study2/view1_frontal.jpg"]
assert (c["patient_id"], c["sex"], c["view"], c["labels"]) == ("patient00009", "M", "PA", "No Finding"), c
PY

# MIMIC-CXR-JPG: labels per study in mimic-cxr-2.0.0-chexpert.csv.gz, views
# and dates per image in the metadata file beside it, both gzip-compressed
# as MIMIC ships them.
MX=$T/mimic
S1=$MX/files/p10/p10000032/s50414267
S2=$MX/files/p10/p10000764/s57375967
mkdir -p "$S1" "$S2"
set -- $(ls "$NIH/images" | sort | sed -n 11,13p)
cp "$NIH/images/$1" "$S1/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
cp "$NIH/images/$2" "$S1/174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg"
cp "$NIH/images/$3" "$S2/096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.jpg"
python3 - "$MX" <<'PY' || fail "writing MIMIC's CSVs"
import gzip, sys
obs = ("Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,"
       "Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices")
with gzip.open(sys.argv[1] + "/mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as f:
    f.write("subject_id,study_id," + obs + "\n")
    f.write("10000032,50414267,,,,,,,,,1.0,,,,,\n")
    f.write("10000764,57375967,,,1.0,,,,,,,,,-1.0,,\n")
with gzip.open(sys.argv[1] + "/mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
    f.write("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
            "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning\n")
    f.write("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,"
            "21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n")
    f.write("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,"
            "21800506,213014.531,CHEST (PA AND LAT),lateral,Erect\n")
PY
"$BIN" ingest "$MX/files" --labels "$MX/mimic-cxr-2.0.0-chexpert.csv.gz" --db "$T/mx.db" >"$T/mx.out" 2>"$T/mx.err" ||
  fail "ingest with MIMIC-CXR's labels: $(cat "$T/mx.err")"
grep -q "chexpert.csv.gz: 4 rows (MIMIC-CXR format, gzip, joined with mimic-cxr-2.0.0-metadata.csv.gz)" "$T/mx.err" ||
  fail "MIMIC-CXR not named: $(cat "$T/mx.err")"
grep -q "ingested 3," "$T/mx.out" && ! grep -q "no row" "$T/mx.err" || fail "MIMIC-CXR rows not matched: $(cat "$T/mx.out" "$T/mx.err")"
"$BIN" export --vectors --db "$T/mx.db" --out "$T/mx" >/dev/null 2>&1 || fail "export of the MIMIC-CXR collection"
python3 - "$T/mx.csv" <<'PY' || fail "MIMIC-CXR metadata: $(cat "$T/mx.csv")"
import csv, sys
rows = {r["original_name"].rsplit("/", 1)[-1][:8]: r for r in csv.DictReader(open(sys.argv[1]))}
a = rows["02aa804e"]
assert (a["patient_id"], a["view"], a["study_date"], a["labels"], a["extra"]) == ("10000032", "PA", "2180-05-06", "No Finding", ""), a
b = rows["174413ec"]
assert (b["patient_id"], b["view"], b["labels"]) == ("10000032", "LATERAL", "No Finding"), b
c = rows["096052b7"]  # not in the metadata: its study's row alone
assert (c["patient_id"], c["view"], c["labels"], c["extra"]) == ("10000764", "", "Consolidation", "uncertain_findings=Pneumonia"), c
PY

echo "== filters that are refused"
for f in 'age:30-40 age:50|age is given twice' '-sex:F|only patient can be negated' '-labels:Mass|only patient can be negated'; do
  rc=0
  "$BIN" search "$T/mixed/00000001_000.png" --db "$T/r.db" --filter "${f%%|*}" >/dev/null 2>"$T/f.err" || rc=$?
  [ $rc -eq 2 ] && grep -q "${f#*|}" "$T/f.err" || fail "filter '${f%%|*}': exit $rc, $(cat "$T/f.err")"
done

echo "== unreachable PostgreSQL"
start=$SECONDS
"$BIN" ingest "$T/mixed" --db "postgresql://medsearch@127.0.0.1:1/nothing" >/dev/null 2>"$T/pg.err"
rc=$?
[ $rc -eq 3 ] || fail "an unreachable PostgreSQL must exit 3, got $rc"
grep -qi "127.0.0.1" "$T/pg.err" || fail "the message should name the server: $(cat "$T/pg.err")"
[ $((SECONDS - start)) -lt 30 ] || fail "giving up on PostgreSQL took too long"

echo "== read-only database file"
mkdir -p "$T/ro"
"$BIN" ingest "$T/mixed/00000001_000.png" --db "$T/ro/ro.db" -q >/dev/null 2>&1 || fail "seeding ro.db"
if [ "$(id -u)" -eq 0 ]; then
  chattr +i "$T/ro/ro.db" 2>/dev/null || { echo "note: chattr unavailable, read-only case skipped"; ro=0; }
  ro=${ro:-1}
else
  chmod a-w "$T/ro/ro.db" "$T/ro"
  ro=1
fi
if [ "$ro" = 1 ]; then
  "$BIN" ingest "$T/mixed" --db "$T/ro/ro.db" >/dev/null 2>"$T/ro.err"
  rc=$?
  [ $rc -ne 0 ] || fail "ingest into a read-only database must fail"
  grep -qi "read-only\|readonly\|permission" "$T/ro.err" || fail "read-only not said: $(cat "$T/ro.err")"
  chattr -i "$T/ro/ro.db" 2>/dev/null
  chmod u+w "$T/ro/ro.db" "$T/ro"
  [ "$(count "$T/ro/ro.db")" = 1 ] || fail "the read-only collection changed"
  "$BIN" check --db "$T/ro/ro.db" >/dev/null 2>&1 || fail "check after the read-only attempt"
fi

echo "== full disk"
mkdir -p "$T/full"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=2m tmpfs "$T/full" 2>/dev/null; then
  MNT=$T/full
  "$BIN" ingest "$NIH" --db "$T/full/f.db" >"$T/full.out" 2>"$T/full.err"
  rc=$?
else
  echo "note: no tmpfs mount here; a 2 MB file size limit stands in for a full disk"
  (trap '' XFSZ; ulimit -f 2048; exec "$BIN" ingest "$NIH" --db "$T/full/f.db" >"$T/full.out" 2>"$T/full.err")
  rc=$?
fi
[ $rc -ne 0 ] || fail "ingest onto a full disk must fail"
grep -qi "full\|space\|too large\|I/O" "$T/full.err" || fail "full disk not said: $(tail -3 "$T/full.err")"
cp "$T"/full/f.db* "$T/" 2>/dev/null
[ -n "$MNT" ] && { umount "$MNT"; MNT=""; }
n=$(count "$T/f.db")
echo "stored before the disk filled: $n"
"$BIN" check --db "$T/f.db" >"$T/fcheck.out" 2>&1 || fail "check after a full disk: $(cat "$T/fcheck.out")"
"$BIN" ingest "$NIH" --db "$T/f.db" -q >/dev/null 2>&1 || fail "resuming after the full disk"
[ "$(count "$T/f.db")" = 750 ] || fail "resumed collection should hold 750"

[ $fails -eq 0 ] && echo "all passed"
[ $fails -eq 0 ]
