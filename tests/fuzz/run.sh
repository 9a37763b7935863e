#!/usr/bin/env bash
# Bounded fuzzing of every tests/fuzz/fuzz_*.c (`make fuzz`).
#
# Each target defines LLVMFuzzerTestOneInput (and optionally
# LLVMFuzzerInitialize). It is built with clang -fsanitize=fuzzer,address,undefined
# against the sources of its family (fuzz_FAMILY[_more].c, as the unit tests'
# deps_FAMILY in the Makefile), given a small seed corpus generated under
# $BUILD/fuzz/, and run for $FUZZ_SECONDS seconds. Crashes are written to
# $BUILD/fuzz/crash-<target>-*; reproduce one with: $BUILD/fuzz/<target> FILE
# A target's scratch files (fuzz_file.h's fuzz_scratch_dir) go under
# $BUILD/fuzz/tmp-<target>, emptied before each run: a target removes them at
# a normal exit, and what a crash leaves stays there, not in /tmp.
#
# Usage: tests/fuzz/run.sh [TARGET...]     (default: all; TARGET like fuzz_image)
# Environment: BUILD (default build), FUZZ_SECONDS (default 60), CLANG (default clang).
# Exits 0 when every target ran clean, 1 when one failed. Without clang or
# its libFuzzer runtime (Debian: libclang-rt-14-dev) it prints a "skip:" line
# and exits $FUZZ_SKIP_STATUS (default 0, so `make fuzz` does not fail; the
# test runner's convention, 77, when set so).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CLANG=${CLANG:-clang}
FUZZ_SKIP_STATUS=${FUZZ_SKIP_STATUS:-0}
out=$BUILD/fuzz
mkdir -p "$out"

# ---- can we fuzz at all? ----
if ! command -v "$CLANG" >/dev/null 2>&1; then
  echo "skip: $CLANG not found; fuzzing needs clang with libFuzzer (Debian: clang libclang-rt-14-dev)"
  exit "$FUZZ_SKIP_STATUS"
fi
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
  >"$out/probe.c"
if ! "$CLANG" -fsanitize=fuzzer,address,undefined "$out/probe.c" -o "$out/probe" 2>"$out/probe.log"; then
  echo "skip: $CLANG cannot link libFuzzer (install libclang-rt-14-dev); see $out/probe.log"
  exit "$FUZZ_SKIP_STATUS"
fi

# the libraries the Makefile links, from its PKGS line
PKGS=$(sed -n 's/^PKGS *:= *//p' Makefile)
# shellcheck disable=SC2086
PKG_CFLAGS=$(pkg-config --cflags $PKGS 2>/dev/null)
# shellcheck disable=SC2086
PKG_LIBS="$(pkg-config --libs $PKGS 2>/dev/null) -ldnnl -lpthread -lm"

# ---- which sources a target links (mirrors deps_FAMILY in the Makefile) ----
family_dirs() {
  case $1 in
    image) echo "image util" ;;
    onnx | model) echo "model image util gen" ;;
    index) echo "index util" ;;
    store) echo "store util" ;;
    eval) echo "eval util" ;;
    util) echo "util" ;;
    *) echo "all" ;;
  esac
}

sources_for() {
  local dirs d files=()
  dirs=$(family_dirs "$1")
  if [ "$dirs" = all ]; then
    make -s "$BUILD/gen/onnx.pb-c.c" "$BUILD/gen/web_assets.c" >&2 || return 1
    while IFS= read -r f; do files+=("$f"); done < <(find src -name '*.c' ! -path src/main.c | sort)
    files+=("$BUILD/gen/onnx.pb-c.c" "$BUILD/gen/web_assets.c")
  else
    for d in $dirs; do
      if [ "$d" = gen ]; then
        make -s "$BUILD/gen/onnx.pb-c.c" >&2 || return 1
        files+=("$BUILD/gen/onnx.pb-c.c")
      else
        while IFS= read -r f; do files+=("$f"); done < <(find "src/$d" -name '*.c' | sort)
      fi
    done
  fi
  printf '%s\n' "${files[@]}"
}

# ---- seed corpora: small valid inputs, generated, never copied from shared/ ----
PY=/usr/bin/python3

seeds_image() {
  local dir=$1
  # Always: a hand-built 2x2 gray PNG (stdlib zlib) and bare magic numbers.
  if [ -x "$PY" ]; then
    "$PY" - "$dir" <<'EOF'
import struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
raw = b"".join(b"\0" + bytes([x * 60 + y for x in range(2)]) for y in range(2))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1] + "/gray2x2.png", "wb").write(png)
EOF
    # With PIL: every accepted variant, small.
    "$PY" - "$dir" <<'EOF' 2>/dev/null || true
import sys
from PIL import Image
d = sys.argv[1]
g = Image.linear_gradient("L").resize((24, 16))
g.save(d + "/gray.png")
g.convert("LA").save(d + "/gray_alpha.png")
g.convert("RGB").save(d + "/rgb.png")
g.convert("RGBA").save(d + "/rgba.png")
g.convert("P").save(d + "/palette.png")
g.convert("I;16").save(d + "/gray16.png")
g.save(d + "/gray.jpg", quality=80)
g.convert("RGB").save(d + "/rgb.jpg", quality=80)
g.convert("RGB").save(d + "/progressive.jpg", quality=80, progressive=True)
g.save(d + "/gray.tif")
g.convert("I;16").save(d + "/gray16.tif")
g.save(d + "/gray_lzw.tif", compression="tiff_lzw")
g.convert("RGB").save(d + "/rgb.tif")
g.convert("RGB").convert("P").save(d + "/palette.tif")
ex = Image.Exif()
ex[0x0112] = 6
g.save(d + "/exif_orientation.jpg", quality=80, exif=ex.tobytes())
g.save(d + "/orientation.tif", tiffinfo={274: 8})
g.save(d + "/exif_orientation.png", exif=ex.tobytes())
g.convert("RGB").save(d + "/lossy.webp", quality=80)
g.convert("RGB").save(d + "/lossless.webp", lossless=True)
g.convert("RGBA").save(d + "/alpha.webp", quality=80)
g.convert("RGB").save(d + "/anim.webp", save_all=True, append_images=[g.convert("RGB").rotate(90)], duration=50)
g.save(d + "/gray.jp2")
g.save(d + "/gray_lossy.jp2", quality_mode="rates", quality_layers=[20])
g.convert("RGB").save(d + "/rgb.j2k")
g.convert("I;16").save(d + "/gray16.jp2")
g.save(d + "/gray.gif")
g.convert("RGB").quantize(64).save(d + "/anim.gif", save_all=True, append_images=[g.convert("RGB").quantize(32).rotate(90)])
EOF
  fi
  # With pydicom: DICOM files of every layout and transfer syntax MedSearch reads.
  if "$PY" tests/tools/dicom_cases.py "$dir/dicom" >/dev/null 2>&1; then
    for f in "$dir"/dicom/*.dcm; do mv "$f" "$dir/$(basename "$f")"; done
    # and with dcmtk, JPEG Lossless (predictor 6, and 1 with a point
    # transform) and 12-bit JPEG Extended
    if command -v dcmcjpeg >/dev/null 2>&1; then
      dcmcjpeg +el +sv 6 "$dir/mono16_explicit.dcm" "$dir/jpeg_lossless_sv6.dcm" 2>/dev/null || true
      dcmcjpeg +el +sv 1 +pt 2 "$dir/mono8.dcm" "$dir/jpeg_lossless_pt.dcm" 2>/dev/null || true
      dcmcjpeg +ee "$dir/mono16_explicit.dcm" "$dir/jpeg12.dcm" 2>/dev/null || true
      dcmcjpeg +ee +q 100 "$dir/voi_lut.dcm" "$dir/jpeg12_q100.dcm" 2>/dev/null || true
      # data sets without the Part 10 wrapper, implicit and explicit VR
      dcmconv -F +ti "$dir/mono8.dcm" "$dir/bare_implicit" 2>/dev/null || true
      dcmconv -F +te "$dir/mono16_explicit.dcm" "$dir/bare_explicit" 2>/dev/null || true
      # deflated data sets (Deflated Explicit VR Little Endian)
      dcmconv +td "$dir/voi_lut.dcm" "$dir/deflated_voi_lut.dcm" 2>/dev/null || true
      dcmconv +td "$dir/rgb.dcm" "$dir/deflated_rgb.dcm" 2>/dev/null || true
      # their frames as standalone .jpg files (lossless and 12-bit JPEG)
      "$PY" - "$dir" <<'EOF' 2>/dev/null || true
import sys, pydicom
from pydicom.encaps import generate_pixel_data_frame
for name in ("jpeg_lossless_sv6", "jpeg12"):
    ds = pydicom.dcmread(f"{sys.argv[1]}/{name}.dcm")
    open(f"{sys.argv[1]}/{name}_frame.jpg", "wb").write(next(generate_pixel_data_frame(ds.PixelData)))
EOF
    fi
    # and with GDCM, JPEG 2000 and JPEG-LS
    if command -v gdcmconv >/dev/null 2>&1; then
      gdcmconv --j2k "$dir/mono16_explicit.dcm" "$dir/j2k.dcm" 2>/dev/null || true
      gdcmconv --jpegls "$dir/mono16_explicit.dcm" "$dir/jpegls.dcm" 2>/dev/null || true
      gdcmconv --j2k "$dir/rgb.dcm" "$dir/j2k_rgb.dcm" 2>/dev/null || true
    fi
  fi
  rm -rf "$dir/dicom"
  # With libheif's encoder: HEIC and AVIF, one turned by an irot property
  if command -v heif-enc >/dev/null 2>&1 && [ -f "$dir/rgb.png" ]; then
    heif-enc -q 60 "$dir/rgb.png" -o "$dir/rgb.heic" >/dev/null 2>&1 || true
    heif-enc -q 60 "$dir/rgba.png" -o "$dir/rgba.avif" >/dev/null 2>&1 || true
    heif-enc -L "$dir/gray.png" -o "$dir/gray.heic" >/dev/null 2>&1 || true
    "$PY" tests/tools/heif_rotate.py "$dir/gray.heic" "$dir/turned.heic" 1 --mirror 0 2>/dev/null || true
  fi
  printf '\x89PNG\r\n\x1a\n' >"$dir/magic.png"
  printf '\xff\xd8\xff\xe0' >"$dir/magic.jpg"
  printf 'II*\0\x08\0\0\0' >"$dir/magic.tif"
}

seeds_onnx() {
  local dir=$1
  # Eight tiny conv nets when Debian's python3-onnx is there; else libFuzzer starts empty.
  "$PY" - "$dir" <<'EOF' 2>/dev/null || true
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
w = numpy_helper.from_array(np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32), "w")
b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["feature"])]
g = helper.make_graph(nodes, "tiny",
                      [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4, 1, 1])], [w, b])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/tiny.onnx")
# the ops whose inputs are read at shape time: Pad (pads, value), ReduceMean, Sub/Div,
# and the shape arithmetic of x.view(x.size(0), -1)
k = lambda a, n, t=np.float32: numpy_helper.from_array(np.array(a, dtype=t), n)
nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]),
         helper.make_node("Div", ["s", "std"], ["d"]),
         helper.make_node("Pad", ["d", "pads", "zero"], ["p"]),
         helper.make_node("Conv", ["p", "w"], ["c"]),
         helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1.0 / 6, beta=0.5),
         helper.make_node("Mul", ["c", "h"], ["m"]),
         helper.make_node("ReduceMean", ["m"], ["r"], axes=[2, 3], keepdims=1),
         helper.make_node("Shape", ["r"], ["shp"]),
         helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
         helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
         helper.make_node("Concat", ["b1", "minus1"], ["newshape"], axis=0),
         helper.make_node("Reshape", ["r", "newshape"], ["feature"])]
inits = [w, k([[[0.5]], [[0.4]], [[0.3]]], "mean"), k([[[0.2]], [[0.25]], [[0.3]]], "std"),
         k([0, 0, 1, 1, 0, 0, 1, 1], "pads", np.int64), k(0.0, "zero"), k(0, "i0", np.int64),
         k([0], "ax0", np.int64), k([-1], "minus1", np.int64)]
g = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/ops.onnx")
# the activations with attributes and PRelu's slope, and a Concat whose sign decides
# whether a Pad folds into the MaxPool after it and whether --pool auto is GeM
nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c", "slope"], ["p"]),
         helper.make_node("LeakyRelu", ["p"], ["l"], alpha=0.1),
         helper.make_node("Elu", ["l"], ["e"], alpha=0.5),
         helper.make_node("Selu", ["e"], ["s"], alpha=1.5, gamma=0.7),
         helper.make_node("Tanh", ["s"], ["t"]),
         helper.make_node("Softplus", ["t"], ["sp"]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Concat", ["sp", "r"], ["cat"], axis=1),
         helper.make_node("Pad", ["cat", "pads"], ["pd"]),
         helper.make_node("MaxPool", ["pd"], ["mp"], kernel_shape=[3, 3]),
         helper.make_node("GlobalAveragePool", ["mp"], ["g"]),
         helper.make_node("Flatten", ["g"], ["feature"])]
inits = [w, k([[[0.1]], [[-0.2]], [[0.3]], [[0.0]]], "slope"), k([0, 0, 1, 1, 0, 0, 1, 1], "pads", np.int64)]
g = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 8])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/acts.onnx")
# a channels-last input whose Transpose to NCHW is folded
nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["feature"])]
g = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 3])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4, 1, 1])], [w])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/nhwc.onnx")
# a Keras-style classifier head (MatMul, Add, Softmax) that the default feature leaves out
nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("MatMul", ["f", "hw"], ["mm"]),
         helper.make_node("Add", ["mm", "hb"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
inits = [w, k(np.ones((4, 2)), "hw"), k([0.5, -0.5], "hb")]
g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/head.onnx")
# a classifier of two dense layers with a hard swish and a Dropout between them (MobileNetV3's)
nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "h1", "b1"], ["h"], transB=1),
         helper.make_node("HardSigmoid", ["h"], ["hs"], alpha=1.0 / 6, beta=0.5),
         helper.make_node("Mul", ["h", "hs"], ["a"]),
         helper.make_node("Dropout", ["a"], ["d"]),
         helper.make_node("Gemm", ["d", "h2", "b2"], ["logits"], transB=1)]
inits = [w, k(np.ones((6, 4)), "h1"), k(np.zeros(6), "b1"), k(np.ones((2, 6)), "h2"), k([0.5, -0.5], "b2")]
g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/mlp.onnx")
# a ConvNeXt block as PyTorch exports it at opset 13: the channels-last region between two
# Transposes, its LayerNorm as ReduceMean, Sub, Pow, Sqrt, Div, its Linears as MatMul, GELU as Erf
nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
         helper.make_node("ReduceMean", ["t"], ["m"], axes=[-1]),
         helper.make_node("Sub", ["t", "m"], ["d"]),
         helper.make_node("Pow", ["d", "two"], ["p"]),
         helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
         helper.make_node("Add", ["v", "eps"], ["ve"]),
         helper.make_node("Sqrt", ["ve"], ["s"]),
         helper.make_node("Div", ["d", "s"], ["n"]),
         helper.make_node("Mul", ["n", "gamma"], ["nw"]),
         helper.make_node("Add", ["nw", "beta"], ["nb"]),
         helper.make_node("MatMul", ["nb", "w1"], ["h"]),
         helper.make_node("Add", ["b1", "h"], ["hb"]),
         helper.make_node("Div", ["hb", "sqrt2"], ["hs"]),
         helper.make_node("Erf", ["hs"], ["e"]),
         helper.make_node("Add", ["e", "one"], ["e1"]),
         helper.make_node("Mul", ["hb", "e1"], ["g0"]),
         helper.make_node("Mul", ["g0", "half"], ["g"]),
         helper.make_node("MatMul", ["g", "w2"], ["o"]),
         helper.make_node("Transpose", ["o"], ["back"], perm=[0, 3, 1, 2]),
         helper.make_node("Add", ["back", "c"], ["res"]),
         helper.make_node("GlobalAveragePool", ["res"], ["feature"])]
inits = [w, k(2.0, "two"), k(1e-6, "eps"), k(np.ones(4), "gamma"), k(np.zeros(4), "beta"),
         k(np.ones((4, 8)) / 8, "w1"), k(np.zeros(8), "b1"), k(np.sqrt(2.0), "sqrt2"), k(1.0, "one"),
         k(0.5, "half"), k(np.ones((8, 4)) / 4, "w2")]
g = helper.make_graph(nodes, "convnext", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4, 1, 1])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/convnext.onnx")
# each input channel taken, rescaled and put back, as Inception v3's transform_input exports
nodes, parts = [], []
for c in range(3):
    nodes += [helper.make_node("Gather", ["input", f"i{c}"], [f"g{c}"], axis=1),
              helper.make_node("Unsqueeze", [f"g{c}", "ax1"], [f"u{c}"]),
              helper.make_node("Mul", [f"u{c}", "half"], [f"m{c}"])]
    parts.append(f"m{c}")
nodes += [helper.make_node("Concat", parts, ["cat"], axis=1),
          helper.make_node("Conv", ["cat", "w"], ["c"], pads=[1, 1, 1, 1]),
          helper.make_node("GlobalAveragePool", ["c"], ["feature"])]
inits = [w, k([1], "ax1", np.int64), k(0.5, "half")] + [k(c, f"i{c}", np.int64) for c in range(3)]
g = helper.make_graph(nodes, "channels", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4, 1, 1])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1] + "/channels.onnx")
EOF
}

seeds_store() {
  local dir=$1 i=0 e
  for e in 'labels:Effusion|Mass sex:F age:40-60' 'labels:"No Finding"' 'labels:effusion+mass view:PA|AP' \
    'patient:p1 -patient:p2' 'site=A study="x y"' 'age:-60 age:45-' 'labels:"a\"b" labels:"%_"'; do
    printf '%s' "$e" >"$dir/filter$((i += 1))"
  done
}

seeds_cli() {
  local dir=$1
  cat >"$dir/generic.csv" <<'CSV'
image,labels,patient_id,age,sex,view,study_date,site
a.png,Effusion|Mass,p1,45,F,PA,2017-01-31,A
"images/b.png","No Finding",p2,058Y,male,ap,,"x, ""y"""
c.jpg,,p3,,,,,
CSV
  printf '\xef\xbb\xbfImage Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\r\n00000001_000.png,Cardiomegaly|Emphysema,0,1,57,M,PA\r\n' \
    >"$dir/nih.csv"
  printf '\xef\xbb\xbfimage;labels;patient_id;age\r\na.png;"Effusion;x|Mass";p1;58,5\r\n' >"$dir/semicolon.csv"
  printf 'Image Index\tFinding Labels\tPatient ID\tPatient Age\n00000001_000.png\tNo Finding\t1\t57\n' >"$dir/tabs.tsv"
  printf 'image;labels;patient_id\r\na.png;\xc9panchement;M\xfcller \x80\x81\r\n' >"$dir/cp1252.csv"
  printf 'Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\nC/train/patient00002/study1/view2_lateral.jpg,Male,83,Lateral,,,-1.0,1.0\n' \
    >"$dir/chexpert.csv"
  printf '\xff\xfei\0m\0a\0g\0e\0\t\0l\0a\0b\0e\0l\0s\0\n\0a\0\t\0>\xd8\x7b\xde\n\0' >"$dir/utf16le.txt"
  printf 'subject_id,study_id,Cardiomegaly,Edema,No Finding\n10000032,50414267,1.0,-1.0,\n10000764,5x,,,1.0\n' \
    >"$dir/mimic.csv"
  printf 'dicom_id,subject_id,study_id,ViewPosition,StudyDate,Rows\n02aa804e-bd,10000032,50414267,PA,21800506,3056\n' \
    >"$dir/mimic_metadata.csv"
  # gzip-compressed, as MIMIC-CXR ships its CSVs
  if [ -x "$PY" ]; then
    "$PY" -c 'import gzip, sys; open(sys.argv[2], "wb").write(gzip.compress(open(sys.argv[1], "rb").read()))' \
      "$dir/mimic.csv" "$dir/mimic.csv.gz" 2>/dev/null || true
  fi
}

# A target whose source calls fuzz_write_seeds_if_asked (fuzz_file.h)
# writes its own seeds (valid inputs only its code can make: index files,
# edits aimed by column name, requests) into that folder and exits; the
# others get their family's.
make_seeds() {
  local family=$1 dir=$2 bin=$3 src=$4
  rm -rf "$dir"
  mkdir -p "$dir"
  if grep -q fuzz_write_seeds_if_asked "$src"; then
    FUZZ_WRITE_SEEDS="$dir" "$bin" >/dev/null 2>&1 || true
    return
  fi
  case $family in
    image) seeds_image "$dir" ;;
    onnx | model) seeds_onnx "$dir" ;;
    store) seeds_store "$dir" ;;
    cli) seeds_cli "$dir" ;;
  esac
}

# ---- build and run ----
if [ $# -gt 0 ]; then
  targets=()
  for t in "$@"; do targets+=("tests/fuzz/${t%.c}.c"); done
else
  targets=(tests/fuzz/fuzz_*.c)
fi
[ -e "${targets[0]}" ] || { echo "skip: no tests/fuzz/fuzz_*.c targets"; exit "$FUZZ_SKIP_STATUS"; }

echo "fuzz: ${#targets[@]} target(s), $FUZZ_SECONDS s each, $($CLANG --version | head -n1)"
failed=()
for src in "${targets[@]}"; do
  name=$(basename "$src" .c)
  family=$(echo "$name" | cut -d_ -f2)
  bin=$out/$name
  log=$out/$name.log
  mapfile -t srcs < <(sources_for "$family") || { echo "FAIL  $name (its sources could not be prepared)"; failed+=("$name"); continue; }
  # shellcheck disable=SC2086
  if ! "$CLANG" -std=c17 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
      -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
      -Isrc -I"$BUILD/gen" $PKG_CFLAGS -o "$bin" "$src" "${srcs[@]}" $PKG_LIBS >"$log" 2>&1; then
    echo "FAIL  $name (build; see $log)"
    tail -n 20 "$log" | sed 's/^/    | /'
    failed+=("$name")
    continue
  fi
  scratch=$out/tmp-$name
  rm -rf "$scratch"
  mkdir -p "$scratch"
  scratch=$(cd "$scratch" && pwd)
  corpus=$out/corpus_$name
  TMPDIR=$scratch make_seeds "$family" "$corpus" "$bin" "$src"
  t0=$SECONDS
  TMPDIR=$scratch ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$out/crash-$name-" "$corpus" >>"$log" 2>&1
  rc=$?
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  if [ $rc -eq 0 ]; then
    printf 'PASS  %-24s %4ds  %s runs, corpus %s files\n' "$name" $((SECONDS - t0)) "${execs:-?}" \
      "$(find "$corpus" -type f | wc -l)"
  else
    echo "FAIL  $name (exit $rc; see $log and $out/crash-$name-*)"
    grep -m3 -E 'ERROR|SUMMARY|deadly|timeout' "$log" | sed 's/^/    | /'
    failed+=("$name")
  fi
done

[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failed: ${failed[*]}"; exit 1; }
echo "fuzz: all ${#targets[@]} target(s) clean"
