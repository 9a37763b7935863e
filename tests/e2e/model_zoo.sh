#!/usr/bin/env bash
# CNN topologies users bring, end to end against PyTorch: torchvision's
# DenseNet-121 (also taking one grey channel, as torchxrayvision's models do),
# MobileNetV3-Small, MNASNet, EfficientNet-B0, RegNetY, SqueezeNet, GoogLeNet
# and ResNet-18s flattened by x.view(x.size(0), -1) (its shape computed by
# Shape, Gather, Unsqueeze, Concat), by x.squeeze(-1).squeeze(-1), and with
# its ReLUs swapped for PReLU, LeakyReLU, ELU, SELU, Softplus and Tanh, and
# one taking channels-last images (a Transpose to NCHW first), and one pooled
# by a 7x7 AveragePool instead of a global pool, and one with its classifier
# (whose head the default feature leaves out), with
# seeded random weights, exported to ONNX as users export them
# (tests/tools/torchvision_zoo.py). For each, `medsearch embed --raw` of
# four images in one batch must match PyTorch run on the very inputs MedSearch
# prepared (--dump-input) within 1e-4 of the largest value, and each image alone
# must give its batch row. Where the feature is a global average pool, `--pool
# avg` (pooled by MedSearch from the map feeding it) must equal the graph's own
# output, and --pool auto (a new collection's default) must be GeM's, except
# on a map that may be negative (the swapped ResNet-18 ends in a PReLU): there
# it keeps the graph's own average. Skips
# when /usr/bin/python3 lacks torch, torchvision or onnx.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
TOOL=$ROOT/tests/tools/torchvision_zoo.py
"$PY" -c "import torch, torchvision, onnx, PIL, numpy" 2>/dev/null ||
    { echo "skip: $PY lacks torch, torchvision, onnx, PIL or numpy (Debian python3-torch, python3-torchvision, python3-onnx)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-zoo.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

MODELS="densenet121 densenet121_grey mobilenet_v3_small mnasnet0_5 efficientnet_b0 regnet_y_400mf squeezenet1_1 googlenet googlenet_ti resnet18_view resnet18_squeeze resnet18_acts resnet18_nhwc resnet18_avgpool7"
echo "== export: $MODELS"
"$PY" "$TOOL" export "$T" $MODELS >"$T/ops.txt" 2>"$T/export.err" || { cat "$T/export.err"; echo "FAIL: export"; exit 1; }
cat "$T/ops.txt"
# the exports must really contain what each model is here for
need_ops() { grep -q "^$1 .*$2" "$T/ops.txt" || fail "$1's export lacks $2 (torch exports differently now?)"; }
need_ops densenet121 Pad
need_ops densenet121 BatchNormalization
need_ops mobilenet_v3_small HardSigmoid
need_ops mnasnet0_5 ReduceMean
need_ops efficientnet_b0 Sigmoid
need_ops resnet18_view Shape
need_ops resnet18_squeeze Squeeze
for op in PRelu LeakyRelu Elu Selu Softplus Tanh; do need_ops resnet18_acts $op; done
need_ops resnet18_nhwc Transpose
need_ops resnet18_avgpool7 AveragePool

# random grey images: exact size, down-scaled, up-scaled, non-square
"$PY" - "$T" <<'EOF' || { echo "FAIL: images"; exit 1; }
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(5)
for i, (w, h) in enumerate([(224, 224), (300, 260), (97, 120), (180, 240)]):
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(f"{sys.argv[1]}/img{i}.png")
EOF
IMGS=("$T/img0.png" "$T/img1.png" "$T/img2.png" "$T/img3.png")

for m in $MODELS; do
    echo "== $m"
    M=$T/$m.onnx
    if ! "$BIN" embed --model "$M" --raw -b 4 -o "$T/$m.got" --dump-input "$T/$m.in" "${IMGS[@]}" >/dev/null 2>"$T/$m.err"; then
        fail "$m: embed failed: $(cat "$T/$m.err")"
        continue
    fi
    "$PY" "$TOOL" forward "$T" "$m" "$T/$m.in" 4 224 "$T/$m.want" 2>/dev/null || { fail "$m: PyTorch forward"; continue; }
    "$PY" "$TOOL" compare "$T/$m.got" "$T/$m.want" 4 1e-4 || fail "$m: MedSearch differs from PyTorch"
    # each image alone gives its row of the batch
    for i in 0 3; do
        "$BIN" embed --model "$M" --raw -o "$T/$m.one" "${IMGS[$i]}" >/dev/null 2>&1 || { fail "$m: embed of one image"; continue; }
        "$PY" - "$T/$m.one" "$T/$m.got" "$i" <<'EOF' || fail "$m: image $i alone differs from its batch row"
import sys
import numpy as np
one = np.fromfile(sys.argv[1], dtype=np.float32)
row = np.fromfile(sys.argv[2], dtype=np.float32).reshape(4, -1)[int(sys.argv[3])]
assert np.abs(one - row).max() <= 1e-5 * np.abs(row).max(), np.abs(one - row).max()
EOF
    done
    # every one of these ends in a global pooling of a map, which similarity maps split
    # (SqueezeNet's last map is 13 x 13 at 224: it has no stride-32 stage)
    grid="7 x 7"
    [ "$m" = squeezenet1_1 ] && grid="13 x 13"
    for pool in auto output; do
        "$BIN" info --model "$M" --pool $pool 2>&1 | grep -q "^maps        similarity maps (explain) on a $grid grid" ||
            fail "$m: info --pool $pool does not offer similarity maps on a $grid grid: $("$BIN" info --model "$M" --pool $pool 2>&1 | grep '^maps')"
    done
    # the graph's own global average pool against MedSearch's pooling of its input map
    if [ "$m" != squeezenet1_1 ]; then
        "$BIN" embed --model "$M" --raw --pool avg -b 4 -o "$T/$m.avg" "${IMGS[@]}" >/dev/null 2>"$T/$m.err" ||
            fail "$m: --pool avg failed: $(cat "$T/$m.err")"
        "$PY" "$TOOL" compare "$T/$m.avg" "$T/$m.got" 4 1e-5 >/dev/null || fail "$m: --pool avg differs from the graph's pooling"
        "$BIN" embed --model "$M" --pool gem -o "$T/$m.gem" "${IMGS[0]}" >/dev/null 2>"$T/$m.err" ||
            fail "$m: --pool gem failed: $(cat "$T/$m.err")"
        # --pool auto (a new collection's default) pools a model ending in a global average pool by GeM,
        # unless the map may be negative: then the graph's own average
        "$BIN" embed --model "$M" --pool auto -o "$T/$m.auto" "${IMGS[0]}" >/dev/null 2>"$T/$m.err" ||
            fail "$m: embed --pool auto failed: $(cat "$T/$m.err")"
        if [ "$m" = resnet18_acts ]; then
            "$BIN" embed --model "$M" -o "$T/$m.own" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed failed"
            cmp -s "$T/$m.auto" "$T/$m.own" || fail "$m: --pool auto is not the graph's average on a signed map"
            cmp -s "$T/$m.auto" "$T/$m.gem" && fail "$m: --pool auto is GeM on a signed map"
        else
            cmp -s "$T/$m.auto" "$T/$m.gem" || fail "$m: --pool auto is not GeM"
        fi
    fi
done

echo "== a 7x7 AveragePool is a global pool only where it covers the map"
M=$T/resnet18_avgpool7.onnx
"$BIN" info --model "$M" 2>&1 | grep -q "pooling gem3 of" || fail "avgpool7 at 224 is not GeM by default"
"$BIN" info --model "$M" --input-size 256 2>&1 | grep -q "pooling output" ||
    fail "avgpool7 at 256 (an 8x8 map) is not left to the graph's own pool"
"$BIN" embed --model "$M" --input-size 256 --pool gem "${IMGS[0]}" >/dev/null 2>"$T/err" &&
    fail "--pool gem accepted where the AveragePool does not cover the map"
grep -q "7x7 kernel, not the whole map" "$T/err" || fail "message for a partial AveragePool: $(cat "$T/err")"

# export_and_check_logits NAME: exports the whole classifier NAME to $T/NAME.onnx and
# checks that --output naming its logits gives PyTorch's, for the four images in one batch
export_and_check_logits() {
    local m=$1
    "$PY" "$TOOL" export "$T" "$m" >/dev/null 2>"$T/export.err" || { cat "$T/export.err"; fail "export $m"; }
    if "$BIN" embed --model "$T/$m.onnx" --raw --output features -b 4 -o "$T/$m.logits" --dump-input "$T/$m.in" \
        "${IMGS[@]}" >/dev/null 2>"$T/err"; then
        "$PY" "$TOOL" forward "$T" "$m" "$T/$m.in" 4 224 "$T/$m.want" 2>/dev/null || fail "$m: PyTorch forward"
        "$PY" "$TOOL" compare "$T/$m.logits" "$T/$m.want" 4 1e-4 || fail "$m: --output features differs from PyTorch's logits"
    else
        fail "$m: embed --output features: $(cat "$T/err")"
    fi
}

echo "== a classifier head after the global pool is left out of the default feature"
# name, pooled values, the head's first dense layer and its layers
for spec in "resnet18_classifier 512 /fc/Gemm 1 dense layer" \
    "mobilenet_v3_small_classifier 576 /classifier/classifier.0/Gemm 2 dense layers"; do
    read -r m dim layer head <<<"$spec"
    export_and_check_logits "$m"
    M=$T/$m.onnx
    "$BIN" embed --model "$M" --raw -o "$T/cls.default" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed"
    "$BIN" embed --model "$M" --raw --pool avg -o "$T/cls.avg" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed --pool avg"
    [ "$(stat -c %s "$T/cls.default" 2>/dev/null)" = $((dim * 4)) ] ||
        fail "$m: the default feature is not the $dim-d pooled vector"
    "$PY" "$TOOL" compare "$T/cls.avg" "$T/cls.default" 1 1e-5 >/dev/null || fail "$m: the default feature is not the graph's pool"
    "$BIN" embed --model "$M" --pool auto -o "$T/cls.auto" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed --pool auto"
    "$BIN" embed --model "$M" --pool gem -o "$T/cls.gem" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed --pool gem"
    cmp -s "$T/cls.auto" "$T/cls.gem" || fail "$m: --pool auto is not GeM of the map behind the head"
    "$BIN" info --model "$M" 2>&1 | grep -q "classifier head of $head from '$layer'.*left out" ||
        fail "$m: info does not say the head of $head is left out"
done

echo "== ConvNeXt: channels-last blocks run in NCHW, the head's LayerNorm kept in the feature"
m=convnext_tiny
export_and_check_logits "$m"
M=$T/$m.onnx
"$BIN" info --model "$M" >"$T/info" 2>&1 || fail "info on $m"
grep -q "feature     /classifier/classifier.1/Flatten_output_0, 768 values, pooling output" "$T/info" ||
    fail "$m: the default feature is not the normalised pooled vector: $(grep -A1 '^feature' "$T/info")"
grep -q "head of 1 dense layer from '/classifier/classifier.2/Gemm'" "$T/info" || fail "$m: info does not name the head left out"
grep -q "^maps        none: the feature is not a global pooling" "$T/info" ||
    fail "$m: a feature normalised after its pool offers similarity maps: $(grep '^maps' "$T/info")"
grep -q "Transpose 46" "$T/info" || fail "$m: info does not count the file's Transposes: $(grep ops "$T/info")"
grep -q "rewritten   18 GELU from Erf, 23 layer norms from their formula, 46 Transposes and 36 MatMuls" "$T/info" ||
    fail "$m: info does not say what was rewritten: $(grep rewritten "$T/info")"
grep -Eq "1[0-9] activations" "$T/info" || fail "$m: GELU is not fused into the 1x1 convolutions: $(grep compiled "$T/info")"
"$BIN" embed --model "$M" --raw -o "$T/cx.default" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed"
"$BIN" embed --model "$M" --raw --output /classifier/classifier.1/Flatten_output_0 -o "$T/cx.named" "${IMGS[0]}" \
    >/dev/null 2>&1 || fail "$m: embed --output the normalised pooled vector"
cmp -s "$T/cx.default" "$T/cx.named" || fail "$m: the default feature is not the normalised pooled vector"
m=convnext_tiny_flatnorm # its head normalises the flattened [N, 768] vector
export_and_check_logits "$m"
"$BIN" info --model "$T/$m.onnx" >"$T/info" 2>&1 || fail "info on $m"
grep -q "768 values, pooling output" "$T/info" && grep -q "head of 1 dense layer from '/classifier/classifier.2/Gemm'" \
    "$T/info" || fail "$m: the default feature is not the normalised pooled vector: $(grep -A1 '^feature' "$T/info")"

echo "== a chest X-ray classifier whose scores are post-processed by ops MedSearch does not run"
m=densenet121_xrv_grey # torchxrayvision's op_norm: NonZero, ScatterND, shape arithmetic
"$PY" "$TOOL" export "$T" "$m" >/dev/null 2>"$T/export.err" || { cat "$T/export.err"; fail "export $m"; }
M=$T/$m.onnx
"$BIN" info --model "$M" >"$T/info" 2>&1 || fail "$m: refused: $(cat "$T/info")"
grep -q "1024 values, pooling gem3 of" "$T/info" && grep -q "head of 1 dense layer from '/classifier/Gemm'" "$T/info" ||
    fail "$m: the default feature is not the pooled vector behind the head: $(grep -A1 '^feature' "$T/info")"
pooled=$(sed -n 's/^feature     \([^,]*\), .*/\1/p' "$T/info")
"$BIN" embed --model "$M" --raw --pool avg -o "$T/xrv.avg" "${IMGS[0]}" >/dev/null 2>&1 || fail "$m: embed --pool avg"
"$BIN" embed --model "$M" --raw --output "$pooled" -o "$T/xrv.pooled" "${IMGS[0]}" >/dev/null 2>"$T/err" ||
    fail "$m: --output $pooled (its shape arithmetic after the head must not stop it): $(cat "$T/err")"
"$PY" "$TOOL" compare "$T/xrv.avg" "$T/xrv.pooled" 1 1e-5 >/dev/null || fail "$m: --pool avg is not the graph's pool"
"$BIN" embed --model "$M" --output features "${IMGS[0]}" >/dev/null 2>"$T/err" &&
    fail "$m: its post-processed scores were computed"
grep -q "does not support" "$T/err" || fail "$m: message for the scores: $(cat "$T/err")"

echo "== a model of one grey channel"
"$BIN" info --model "$T/densenet121_grey.onnx" >"$T/info" 2>&1 || fail "info on densenet121_grey"
grep -q "one channel" "$T/info" || fail "info does not say the model takes one channel: $(grep preprocess "$T/info")"
grep -q "mean 114.495,114.495,114.495" "$T/info" || fail "grey default mean: $(grep mean "$T/info")"
"$BIN" embed --model "$T/densenet121_grey.onnx" --mean 120,110,100 "${IMGS[0]}" >/dev/null 2>"$T/err" &&
    fail "three different means accepted for a one-channel model"
grep -q "one grey channel" "$T/err" || fail "message for three means: $(cat "$T/err")"
"$BIN" embed --model "$T/densenet121_grey.onnx" --mean 127.5 --scale 0.0157 "${IMGS[0]}" >/dev/null 2>"$T/err" ||
    fail "one mean and scale refused: $(cat "$T/err")"

echo "== info names what was run"
"$BIN" info --model "$T/mobilenet_v3_small.onnx" >"$T/info" 2>&1 || fail "info on mobilenet_v3_small"
grep -q "HardSigmoid" "$T/info" || fail "info does not count HardSigmoid: $(cat "$T/info")"
grep -Eq "[1-9][0-9]* swish" "$T/info" || fail "info: no hard swish fused in mobilenet_v3_small: $(grep compiled "$T/info")"
"$BIN" info --model "$T/mnasnet0_5.onnx" 2>&1 | grep -q "ReduceMean 1" || fail "info does not count ReduceMean"
"$BIN" info --model "$T/resnet18_acts.onnx" >"$T/info" 2>&1 || fail "info on resnet18_acts"
grep -q "PRelu 3" "$T/info" || fail "info does not count PRelu: $(grep ops "$T/info")"
grep -q "not GeM.*may be negative" "$T/info" || fail "info does not say why --pool auto is not GeM: $(cat "$T/info")"
"$BIN" info --model "$T/resnet18_nhwc.onnx" 2>&1 | grep -q "NHWC in the file" || fail "info does not say the input was NHWC"
"$BIN" info --model "$T/googlenet.onnx" 2>&1 | grep -q "pooling gem3" || fail "googlenet (a Concat of ReLU branches) is not GeM"

[ "$fails" -eq 0 ] && echo "model zoo: all passed" || { echo "model zoo: $fails failure(s)"; exit 1; }
