#!/usr/bin/python3
"""Small ONNX graphs, one per supported op and attribute variant, with expected outputs
computed independently by PyTorch (torch.nn.functional), for tests/unit/test_model_ops.c.

  make_op_models.py OUTDIR

Run with /usr/bin/python3 (Debian's python3-onnx, torch, numpy). Writes, per case NAME:
OUTDIR/NAME.onnx, OUTDIR/NAME.in.f32 (N x 3 x S x S) and OUTDIR/NAME.out.f32 (N x K), and
one line per case to OUTDIR/manifest.txt:

  ok NAME N S K OUT         the model must load with OUT named as the feature; its output must match
  error NAME CODE WORD...   loading must fail with MS_E<CODE> and a message holding each WORD
  error_named NAME OUT CODE WORD...   the same with tensor OUT named as the feature

MedSearch feeds [N, 3, S, S] images, so every graph starts from a 3-channel square input.
"""
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

N = 3
RNG = np.random.default_rng(1234)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


class Case:
    """Builds one graph and its PyTorch reference side by side."""

    def __init__(self, name, size=16, opset=13, grey=False, nhwc=False):
        """grey: the graph takes one channel; MedSearch is fed it three times.
        nhwc: the graph takes [N, H, W, C] and its first node transposes it to
        "input_nchw", the tensor the rest of the case reads; MedSearch, which
        folds that Transpose, is fed NCHW."""
        self.name, self.size, self.opset, self.channels = name, size, opset, 1 if grey else 3
        self.nodes, self.inits = [], []
        self.x = rand(N, self.channels, size, size, lo=-2, hi=2)
        self.env = {"input": torch.from_numpy(self.x)}
        self.nhwc, self.count = nhwc, 0
        if nhwc:
            self.env["input"] = torch.from_numpy(self.x).permute(0, 2, 3, 1)
            self.node("Transpose", ["input"], torch.from_numpy(self.x), out="input_nchw", name="to_nchw",
                      perm=[0, 3, 1, 2])
        if grey:
            self.x = np.repeat(self.x, 3, axis=1)

    def const(self, arr, name=None, dtype=None):
        name = name or f"c{len(self.inits)}"
        arr = np.asarray(arr, dtype=dtype or np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op, inputs, torch_value, out=None, name=None, **attrs):
        self.count += 1
        out = out or f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or f"{op.lower()}_{self.count}", **attrs))
        self.env[out] = torch_value
        return out

    def t(self, name):
        return self.env[name]

    # ---- building blocks with their reference
    def conv(self, x, cin, cout, k=3, stride=1, pads=(1, 1, 1, 1), dil=1, group=1, bias=True, auto_pad=None,
             kw=None):
        kh, kww = (k, kw or k)
        w = rand(cout, cin // group, kh, kww, lo=-0.5, hi=0.5)
        b = rand(cout, lo=-0.2, hi=0.2) if bias else None
        ins = [x, self.const(w)] + ([self.const(b)] if bias else [])
        attrs = dict(kernel_shape=[kh, kww], strides=[stride, stride] if isinstance(stride, int) else list(stride),
                     dilations=[dil, dil], group=group)
        xt = self.t(x)
        st = attrs["strides"]
        if auto_pad:
            attrs["auto_pad"] = auto_pad
            if auto_pad == "VALID":
                p = (0, 0, 0, 0)
            else:
                p = []
                for ax in range(2):
                    inn, kk = xt.shape[2 + ax], (attrs["kernel_shape"][ax] - 1) * dil + 1
                    o = -(-inn // st[ax])
                    tot = max((o - 1) * st[ax] + kk - inn, 0)
                    lo = tot // 2 if auto_pad == "SAME_UPPER" else tot - tot // 2
                    p.append((lo, tot - lo))
                p = (p[0][0], p[1][0], p[0][1], p[1][1])
        else:
            attrs["pads"] = list(pads)
            p = pads
        ref = F.conv2d(F.pad(xt, (p[1], p[3], p[0], p[2])), torch.from_numpy(w),
                       torch.from_numpy(b) if bias else None, tuple(st), 0, dil, group)
        return self.node("Conv", ins, ref, **attrs)

    def input_type(self):
        return getattr(self, "in_type", TensorProto.FLOAT)

    def input_dims(self):
        if self.nhwc:
            return ["batch", self.size, self.size, self.channels]
        return ["batch", self.channels, self.size, self.size]

    def write(self, outdir, out, manifest, opset_imports=None, graph_out=None):
        """out: the tensor the test names as the feature; the graph's output
        is graph_out when given (the feature then is an inner tensor)."""
        g = helper.make_graph(self.nodes, self.name,
                              [helper.make_tensor_value_info("input", self.input_type(), self.input_dims())],
                              [helper.make_tensor_value_info(graph_out or out, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=opset_imports or [helper.make_opsetid("", self.opset)])
        m.ir_version = 7
        onnx.save(m, os.path.join(outdir, self.name + ".onnx"))
        y = self.t(out).detach().numpy().astype(np.float32).reshape(N, -1)
        self.x.tofile(os.path.join(outdir, self.name + ".in.f32"))
        y.tofile(os.path.join(outdir, self.name + ".out.f32"))
        manifest.write(f"ok {self.name} {N} {self.size} {y.shape[1]} {out}\n")


def cases(outdir, mf):
    c = Case("conv_basic")
    c.write(outdir, c.conv("input", 3, 8), mf)

    c = Case("conv_nobias_stride2", size=17)
    c.write(outdir, c.conv("input", 3, 8, stride=2, bias=False), mf)

    c = Case("conv_grouped")
    x = c.conv("input", 3, 12, k=1, pads=(0, 0, 0, 0))
    c.write(outdir, c.conv(x, 12, 24, group=4), mf)

    c = Case("conv_depthwise_asym")
    x = c.conv("input", 3, 24, k=1, pads=(0, 0, 0, 0))
    c.write(outdir, c.conv(x, 24, 24, stride=2, pads=(0, 0, 1, 1), group=24), mf)

    c = Case("conv_dilated", size=20)
    x = c.conv("input", 3, 8, dil=2, pads=(2, 2, 2, 2))
    c.write(outdir, c.conv(x, 8, 8, stride=2, dil=3, pads=(1, 2, 3, 0)), mf)

    c = Case("conv_asym_rect", size=15)
    c.write(outdir, c.conv("input", 3, 6, k=3, kw=5, stride=(2, 1), pads=(2, 0, 1, 3)), mf)

    for ap in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        c = Case(f"conv_autopad_{ap.lower()}", size=15)
        x = c.conv("input", 3, 8, k=4, stride=2, auto_pad=ap)
        c.write(outdir, c.conv(x, 8, 8, k=3, stride=1, auto_pad=ap), mf)

    # BatchNormalization: folded after a Conv, and standalone (on the input; after a
    # Relu; after a Conv whose output is also read elsewhere)
    def bn(case, x, ch):
        s, b, mu, var = rand(ch, lo=0.5, hi=1.5), rand(ch), rand(ch), rand(ch, lo=0.5, hi=2)
        ref = F.batch_norm(case.t(x), torch.from_numpy(mu), torch.from_numpy(var), torch.from_numpy(s),
                           torch.from_numpy(b), False, 0.0, 1e-3)
        return case.node("BatchNormalization", [x, case.const(s), case.const(b), case.const(mu), case.const(var)],
                         ref, epsilon=1e-3)

    c = Case("bn_folded")
    c.write(outdir, bn(c, c.conv("input", 3, 8), 8), mf)
    c = Case("bn_on_input")
    c.write(outdir, bn(c, "input", 3), mf)
    c = Case("bn_after_relu")
    x = c.conv("input", 3, 20)
    x = c.node("Relu", [x], F.relu(c.t(x)))
    c.write(outdir, bn(c, x, 20), mf)
    c = Case("bn_shared_input")
    x = c.conv("input", 3, 8)
    y = bn(c, x, 8)
    c.write(outdir, c.node("Add", [x, y], c.t(x) + c.t(y)), mf)

    # pools
    c = Case("maxpool", size=17)
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("MaxPool", [x], F.max_pool2d(c.t(x), 3, 2, 1), kernel_shape=[3, 3], strides=[2, 2],
                           pads=[1, 1, 1, 1]), mf)
    c = Case("maxpool_ceil_dilated", size=16)
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("MaxPool", [x], F.max_pool2d(c.t(x), 2, 3, 0, 2, True), kernel_shape=[2, 2],
                           strides=[3, 3], dilations=[2, 2], ceil_mode=1), mf)
    c = Case("avgpool_include_pad", size=15)
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("AveragePool", [x], F.avg_pool2d(c.t(x), 3, 2, 1, False, True), kernel_shape=[3, 3],
                           strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), mf)
    c = Case("avgpool_exclude_pad_ceil", size=16)
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("AveragePool", [x], F.avg_pool2d(c.t(x), 3, 2, 1, True, False), kernel_shape=[3, 3],
                           strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), mf)

    # GAP, Flatten, Reshape, Gemm variants
    def head(case, flatten="Flatten"):
        x = case.conv("input", 3, 16)
        x = case.node("Relu", [x], F.relu(case.t(x)))
        g = case.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(case.t(x), 1))
        if flatten == "Flatten":
            return case.node("Flatten", [g], torch.flatten(case.t(g), 1), axis=1)
        shape = case.const(np.array([0, -1], dtype=np.int64), dtype=np.int64)
        return case.node("Reshape", [g, shape], case.t(g).reshape(N, -1))

    c = Case("gemm_transb")
    f = head(c)
    w, b = rand(10, 16), rand(10)
    c.write(outdir, c.node("Gemm", [f, c.const(w), c.const(b)], F.linear(c.t(f), torch.from_numpy(w), torch.from_numpy(b)),
                           transB=1), mf)
    c = Case("gemm_alpha_beta_reshape")
    f = head(c, "Reshape")
    w, b = rand(16, 7), rand(1)
    ref = 0.5 * c.t(f) @ torch.from_numpy(w) + 2.0 * torch.from_numpy(b)
    c.write(outdir, c.node("Gemm", [f, c.const(w), c.const(b)], ref, alpha=0.5, beta=2.0), mf)
    c = Case("gemm_relu_nobias")
    f = head(c)
    w = rand(5, 16)
    y = c.node("Gemm", [f, c.const(w)], F.linear(c.t(f), torch.from_numpy(w)), transB=1)
    c.write(outdir, c.node("Relu", [y], F.relu(c.t(y))), mf)

    # Concat on channels, 24 + 40 (not multiples of the 16-channel block)
    c = Case("concat")
    a = c.conv("input", 3, 24)
    b = c.conv("input", 3, 40, k=1, pads=(0, 0, 0, 0))
    x = c.node("Concat", [a, b], torch.cat([c.t(a), c.t(b)], 1), axis=1)
    c.write(outdir, c.conv(x, 64, 8), mf)
    c = Case("concat_three_negative_axis")
    a = c.conv("input", 3, 5)
    b = c.node("Relu", [a], F.relu(c.t(a)))
    c.write(outdir, c.node("Concat", [a, b, "input"], torch.cat([c.t(a), c.t(b), c.t("input")], 1), axis=-3), mf)

    # SiLU / swish: fused into the Conv, and standalone on the input
    c = Case("silu_conv")
    x = c.conv("input", 3, 24)
    s = c.node("Sigmoid", [x], torch.sigmoid(c.t(x)))
    y = c.node("Mul", [x, s], c.t(x) * c.t(s))
    c.write(outdir, c.conv(y, 24, 8), mf)
    c = Case("silu_input")
    s = c.node("Sigmoid", ["input"], torch.sigmoid(c.t("input")))
    c.write(outdir, c.node("Mul", [s, "input"], c.t(s) * c.t("input")), mf)
    c = Case("sigmoid_padded_channels")
    x = c.conv("input", 3, 24)
    s = c.node("Sigmoid", [x], torch.sigmoid(c.t(x)))
    c.write(outdir, c.conv(s, 24, 8), mf)

    # squeeze-excite: Mul of [N,C,H,W] by a [N,C,1,1] gate
    c = Case("squeeze_excite")
    x = c.conv("input", 3, 32)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    r = c.conv(g, 32, 8, k=1, pads=(0, 0, 0, 0))
    r = c.node("Relu", [r], F.relu(c.t(r)))
    e = c.conv(r, 8, 32, k=1, pads=(0, 0, 0, 0))
    gate = c.node("Sigmoid", [e], torch.sigmoid(c.t(e)))
    c.write(outdir, c.node("Mul", [x, gate], c.t(x) * c.t(gate)), mf)
    c = Case("mul_gate_first")
    x = c.conv("input", 3, 16)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    c.write(outdir, c.node("Mul", [g, x], c.t(g) * c.t(x)), mf)

    # Clip: attributes (opset 6), inputs with 0-d and [1] bounds, only a lower bound
    c = Case("clip_attrs_opset6", opset=6)
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("Clip", [x], torch.clamp(c.t(x), -0.3, 0.4), min=-0.3, max=0.4), mf)
    c = Case("clip_inputs_0d")
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("Clip", [x, c.const(np.float32(0.0)), c.const(np.float32(6.0))],
                           torch.clamp(c.t(x), 0, 6)), mf)
    c = Case("clip_inputs_shape1")
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("Clip", [x, c.const([-0.5]), c.const([0.25])], torch.clamp(c.t(x), -0.5, 0.25)), mf)
    c = Case("clip_min_only")
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("Clip", [x, c.const(np.float32(0.1)), ""], torch.clamp(c.t(x), min=0.1)), mf)
    c = Case("clip_constant_node")
    x = c.conv("input", 3, 8)
    c.nodes.append(helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(-0.2), "v")))
    c.nodes.append(helper.make_node("Constant", [], ["hi"], value_float=0.3))
    c.write(outdir, c.node("Clip", [x, "lo", "hi"], torch.clamp(c.t(x), -0.2, 0.3)), mf)

    # Add/Mul with constants, broadcast
    c = Case("add_mul_constants")
    x = c.conv("input", 3, 8)
    k = rand(8, 1, 1)
    y = c.node("Add", [x, c.const(k)], c.t(x) + torch.from_numpy(k))
    c.write(outdir, c.node("Mul", [c.const(np.float32(1.5)), y], 1.5 * c.t(y)), mf)
    c = Case("add_input_plus_conv_relu")
    x = c.conv("input", 3, 3)
    y = c.node("Add", ["input", x], c.t("input") + c.t(x))
    c.write(outdir, c.node("Relu", [y], F.relu(c.t(y))), mf)

    # residual sums fused into the Conv: residual dying there, residual still read
    # afterwards (copied), both inputs convs, and Add(conv(x), x)
    c = Case("residual_dies")
    x = c.conv("input", 3, 16)
    x = c.node("Relu", [x], F.relu(c.t(x)))
    y = c.conv(x, 16, 16)
    s = c.node("Add", [y, x], c.t(y) + c.t(x))
    c.write(outdir, c.node("Relu", [s], F.relu(c.t(s))), mf)
    c = Case("residual_still_read")
    x = c.conv("input", 3, 16)
    y = c.conv(x, 16, 16)
    s = c.node("Add", [x, y], c.t(x) + c.t(y))
    c.write(outdir, c.node("Add", [s, x], c.t(s) + c.t(x)), mf)
    c = Case("residual_two_convs")
    a = c.conv("input", 3, 16, stride=2)
    b = c.conv("input", 3, 16, k=1, stride=2, pads=(0, 0, 0, 0))
    s = c.node("Add", [a, b], c.t(a) + c.t(b))
    c.write(outdir, c.node("Relu", [s], F.relu(c.t(s))), mf)
    c = Case("residual_own_input")
    x = c.conv("input", 3, 16)
    y = c.conv(x, 16, 16)
    c.write(outdir, c.node("Add", [y, x], c.t(y) + c.t(x)), mf)

    # tensor encodings other exporters write: float_data / int32_data instead of
    # raw_data, and Constant nodes given by value_floats / value_ints / value_int
    c = Case("tensors_not_raw")
    w, b = rand(8, 3, 3, 3, lo=-0.5, hi=0.5), rand(8, lo=-0.2, hi=0.2)
    c.inits.append(helper.make_tensor("w_list", TensorProto.FLOAT, w.shape, w.flatten().tolist()))
    c.inits.append(helper.make_tensor("b_list", TensorProto.FLOAT, b.shape, b.flatten().tolist()))
    assert not c.inits[-1].raw_data and len(c.inits[-1].float_data) == 8
    x = c.node("Conv", ["input", "w_list", "b_list"],
               F.conv2d(c.t("input"), torch.from_numpy(w), torch.from_numpy(b), padding=1),
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c.nodes.append(helper.make_node("Constant", [], ["quarter"], value_floats=[0.25]))
    y = c.node("Add", [x, "quarter"], c.t(x) + 0.25)
    c.nodes.append(helper.make_node("Constant", [], ["twice"], value_float=2.0))
    y = c.node("Mul", [y, "twice"], 2.0 * c.t(y))
    g = c.node("GlobalAveragePool", [y], F.adaptive_avg_pool2d(c.t(y), 1))
    c.nodes.append(helper.make_node("Constant", [], ["flat"], value_ints=[0, -1]))
    c.write(outdir, c.node("Reshape", [g, "flat"], c.t(g).reshape(N, -1)), mf)

    c = Case("shape_index_int32")
    x = c.conv("input", 3, 16)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    c.nodes.append(helper.make_node("Shape", [g], ["shp"], name="shape"))
    c.inits.append(helper.make_tensor("zero32", TensorProto.INT32, [], [0]))
    assert not c.inits[-1].raw_data and len(c.inits[-1].int32_data) == 1
    c.nodes.append(helper.make_node("Gather", ["shp", "zero32"], ["b"], name="gather", axis=0))
    c.nodes.append(helper.make_node("Constant", [], ["ax0"], value_ints=[0]))
    c.nodes.append(helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq"))
    c.nodes.append(helper.make_node("Constant", [], ["minus1"], value_ints=[-1]))
    c.nodes.append(helper.make_node("Concat", ["b1", "minus1"], ["newshape"], name="cat", axis=0))
    c.write(outdir, c.node("Reshape", [g, "newshape"], c.t(g).reshape(N, -1)), mf)

    c = Case("shape_index_int32_raw")
    x = c.conv("input", 3, 16)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    c.nodes.append(helper.make_node("Shape", [g], ["shp"], name="shape"))
    c.const(np.array([1], dtype=np.int32), name="one32", dtype=np.int32)
    c.nodes.append(helper.make_node("Gather", ["shp", "one32"], ["ch"], name="gather", axis=0))
    c.nodes.append(helper.make_node("Constant", [], ["minus1"], value_ints=[-1]))
    c.nodes.append(helper.make_node("Concat", ["minus1", "ch"], ["newshape"], name="cat", axis=0))
    c.write(outdir, c.node("Reshape", [g, "newshape"], c.t(g).reshape(N, -1)), mf)

    c = Case("identity_chain")
    x = c.conv("input", 3, 8)
    i1 = c.node("Identity", [x], c.t(x))
    w = c.node("Identity", [c.const(rand(4, 8, 1, 1))], None)  # an Identity of a constant
    c.env[w] = torch.from_numpy(numpy_helper.to_array(c.inits[-1]))
    y = c.node("Conv", [i1, w], F.conv2d(c.t(i1), c.env[w]), kernel_shape=[1, 1])
    c.write(outdir, c.node("Identity", [y], c.t(y)), mf)

    # Pad: folded into the Conv or pool that reads it (inputs from opset 11,
    # attributes before, an axes input from opset 18)
    def pad(case, x, p, opset_attrs=False, axes=None):
        """p: (top, left, bottom, right) zero padding of H and W."""
        ref = F.pad(case.t(x), (p[1], p[3], p[0], p[2]))
        if opset_attrs:
            return case.node("Pad", [x], ref, mode="constant", pads=[0, 0, p[0], p[1], 0, 0, p[2], p[3]], value=0.0)
        if axes is not None:
            pads = case.const(np.array([p[0], p[1], p[2], p[3]], dtype=np.int64), dtype=np.int64)
            return case.node("Pad", [x, pads, "", case.const(np.array(axes, dtype=np.int64), dtype=np.int64)], ref)
        pads = case.const(np.array([0, 0, p[0], p[1], 0, 0, p[2], p[3]], dtype=np.int64), dtype=np.int64)
        return case.node("Pad", [x, pads, case.const(np.float32(0.0))], ref, mode="constant")

    c = Case("pad_conv", size=15)
    x = pad(c, c.conv("input", 3, 8), (1, 2, 2, 0))
    c.write(outdir, c.conv(x, 8, 8, pads=(0, 0, 0, 0)), mf)
    c = Case("pad_conv_attrs_opset2", size=15, opset=2)
    x = pad(c, "input", (2, 1, 0, 3), opset_attrs=True)
    c.write(outdir, c.conv(x, 3, 8, stride=2, pads=(1, 1, 1, 1)), mf)
    c = Case("pad_conv_axes_opset18", size=15, opset=18)
    x = pad(c, "input", (1, 0, 1, 2), axes=[-2, 3])
    c.write(outdir, c.conv(x, 3, 8, pads=(0, 0, 0, 0)), mf)
    c = Case("pad_zero_avgpool")  # what PyTorch exports for DenseNet's AvgPool2d(2, 2)
    x = c.conv("input", 3, 8)
    x = pad(c, x, (0, 0, 0, 0))
    c.write(outdir, c.node("AveragePool", [x], F.avg_pool2d(c.t(x), 2, 2), kernel_shape=[2, 2], strides=[2, 2]), mf)
    c = Case("pad_avgpool_counts_zeros", size=15)
    x = pad(c, c.conv("input", 3, 8), (1, 1, 2, 0))
    c.write(outdir, c.node("AveragePool", [x], F.avg_pool2d(c.t(x), 3, 2), kernel_shape=[3, 3], strides=[2, 2]), mf)
    c = Case("pad_maxpool_after_relu", size=15)
    x = c.conv("input", 3, 8)
    x = c.node("Relu", [x], F.relu(c.t(x)))
    x = pad(c, x, (1, 0, 1, 1))
    c.write(outdir, c.node("MaxPool", [x], F.max_pool2d(c.t(x), 3, 2, 1), kernel_shape=[3, 3], strides=[2, 2],
                           pads=[1, 1, 1, 1]), mf)

    c = Case("pad_maxpool_after_concat", size=15)  # a Concat of branches that cannot be negative
    a = c.node("Relu", [c.conv("input", 3, 4)], None)
    c.env[a] = F.relu(c.t(c.nodes[-1].input[0]))
    b = c.node("Sigmoid", [c.conv("input", 3, 4)], None)
    c.env[b] = torch.sigmoid(c.t(c.nodes[-1].input[0]))
    x = c.node("Concat", [a, b], torch.cat([c.t(a), c.t(b)], 1), axis=1)
    x = pad(c, x, (1, 1, 1, 1))
    c.write(outdir, c.node("MaxPool", [x], F.max_pool2d(c.t(x), 3, 2), kernel_shape=[3, 3], strides=[2, 2]), mf)

    # HardSigmoid and HardSwish: standalone, fused into a Conv, the HardSigmoid
    # x Mul pair PyTorch exports for Hardswish before opset 14, and the gate of
    # MobileNetV3's squeeze-excite
    c = Case("hardsigmoid_input")
    c.write(outdir, c.node("HardSigmoid", ["input"], torch.clamp(0.5 * c.t("input") + 0.4, 0, 1), alpha=0.5,
                           beta=0.4), mf)
    c = Case("hardsigmoid_conv_defaults")
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("HardSigmoid", [x], torch.clamp(0.2 * c.t(x) + 0.5, 0, 1)), mf)
    c = Case("hardswish_op_opset14", opset=14)
    x = c.conv("input", 3, 8)
    y = c.node("HardSwish", [x], F.hardswish(c.t(x)))
    c.write(outdir, c.conv(y, 8, 8), mf)
    c = Case("hardswish_input_opset14", opset=14)
    c.write(outdir, c.node("HardSwish", ["input"], F.hardswish(c.t("input"))), mf)
    c = Case("hardswish_pair")
    x = c.conv("input", 3, 24)
    h = c.node("HardSigmoid", [x], F.hardsigmoid(c.t(x)), alpha=1.0 / 6, beta=0.5)
    y = c.node("Mul", [x, h], c.t(x) * c.t(h))
    c.write(outdir, c.conv(y, 24, 8), mf)
    c = Case("hardsigmoid_other_times_x")  # not hard swish: alpha 0.2
    x = c.conv("input", 3, 8)
    h = c.node("HardSigmoid", [x], torch.clamp(0.2 * c.t(x) + 0.5, 0, 1))
    c.write(outdir, c.node("Mul", [h, x], c.t(h) * c.t(x)), mf)
    c = Case("squeeze_excite_hardsigmoid")
    x = c.conv("input", 3, 32)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    r = c.node("Relu", [c.conv(g, 32, 8, k=1, pads=(0, 0, 0, 0))], None)
    c.env[r] = F.relu(c.t(c.nodes[-1].input[0]))
    e = c.conv(r, 8, 32, k=1, pads=(0, 0, 0, 0))
    gate = c.node("HardSigmoid", [e], F.hardsigmoid(c.t(e)), alpha=1.0 / 6, beta=0.5)
    c.write(outdir, c.node("Mul", [x, gate], c.t(x) * c.t(gate)), mf)

    # LeakyRelu, Elu, Selu, Tanh, Softplus: fused into the Conv before them (the
    # Conv also feeding a second Conv after them), and standalone on the input,
    # with the ONNX defaults and with attributes given
    acts = [("LeakyRelu", {}, lambda v: F.leaky_relu(v, 0.01)),
            ("LeakyRelu", {"alpha": 0.2}, lambda v: F.leaky_relu(v, 0.2)),
            ("Elu", {}, lambda v: F.elu(v, 1.0)),
            ("Elu", {"alpha": 0.3}, lambda v: F.elu(v, 0.3)),
            ("Selu", {}, F.selu),
            ("Selu", {"alpha": 1.5, "gamma": 0.7}, lambda v: 0.7 * F.elu(v, 1.5)),
            ("Tanh", {}, torch.tanh),
            ("Softplus", {}, F.softplus)]
    for i, (op, attrs, fn) in enumerate(acts):
        tag = f"{op.lower()}_{'attrs' if attrs else 'defaults'}"
        c = Case(f"{tag}_conv")
        x = c.conv("input", 3, 24)
        y = c.node(op, [x], fn(c.t(x)), **attrs)
        c.write(outdir, c.conv(y, 24, 8), mf)
        c = Case(f"{tag}_input")
        c.write(outdir, c.node(op, ["input"], fn(c.t("input")), **attrs), mf)
    # Softplus is never negative: a zero Pad before a MaxPool folds into it
    c = Case("softplus_pad_maxpool")
    x = c.node("Softplus", [c.conv("input", 3, 8)], None)
    c.env[x] = F.softplus(c.t(c.nodes[-1].input[0]))
    pads = c.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), dtype=np.int64)
    p = c.node("Pad", [x, pads], F.pad(c.t(x), (1, 1, 1, 1)))
    c.write(outdir, c.node("MaxPool", [p], F.max_pool2d(c.t(p), 3, 2), kernel_shape=[3, 3], strides=[2, 2]), mf)

    # PRelu: a slope per channel as PyTorch exports nn.PReLU(C) ([C, 1, 1]),
    # [1, C, 1, 1], one slope ([1] and 0-d), and [C] on a flattened feature
    for shape, tag in (((8, 1, 1), "c11"), ((1, 8, 1, 1), "1c11"), ((1,), "scalar1"), ((), "scalar0")):
        c = Case(f"prelu_{tag}")
        x = c.conv("input", 3, 8)
        slope = rand(*shape, lo=-0.5, hi=0.8)
        y = c.node("PRelu", [x, c.const(slope)], F.prelu(c.t(x), torch.from_numpy(slope.reshape(-1))))
        c.write(outdir, c.conv(y, 8, 4), mf)
    c = Case("prelu_input_per_row", size=8)  # a slope per row of the image: [H, 1]
    slope = rand(8, 1, lo=-0.5, hi=0.5)
    xt = c.t("input")
    c.write(outdir, c.node("PRelu", ["input", c.const(slope)],
                           torch.where(xt >= 0, xt, xt * torch.from_numpy(slope))), mf)
    c = Case("prelu_flattened")
    x = c.node("GlobalAveragePool", [c.conv("input", 3, 16)], None)
    c.env[x] = F.adaptive_avg_pool2d(c.t(c.nodes[-1].input[0]), 1)
    f = c.node("Flatten", [x], torch.flatten(c.t(x), 1))
    slope = rand(16, lo=-0.5, hi=0.5)
    c.write(outdir, c.node("PRelu", [f, c.const(slope)], F.prelu(c.t(f), torch.from_numpy(slope))), mf)

    # an NHWC input transposed to NCHW first (Keras through tf2onnx,
    # x.permute(0, 3, 1, 2) in PyTorch): the Transpose is folded
    c = Case("nhwc_input", nhwc=True)
    x = c.node("Relu", [c.conv("input_nchw", 3, 8)], None)
    c.env[x] = F.relu(c.t(c.nodes[-1].input[0]))
    c.write(outdir, c.conv(x, 8, 4), mf)
    c = Case("nhwc_grey", nhwc=True, grey=True)
    c.write(outdir, c.conv("input_nchw", 1, 8), mf)
    c = Case("nhwc_two_transposes", nhwc=True)
    c.node("Transpose", ["input"], c.t("input_nchw"), out="input_nchw2", name="to_nchw2", perm=[0, 3, 1, 2])
    a, b = c.conv("input_nchw", 3, 8), c.conv("input_nchw2", 3, 8, k=1, pads=(0, 0, 0, 0))
    c.write(outdir, c.node("Add", [a, b], c.t(a) + c.t(b)), mf)

    # 16-bit float weights, widened to float32 at load: FLOAT16 in raw_data
    # with the Casts an fp16 conversion puts around the graph, FLOAT16 in
    # int32_data behind a FLOAT16 input, BFLOAT16 in int32_data and raw_data
    def tensor16(name, a, dtype, how):
        """a (float32 values exact in dtype) as a FLOAT16 or BFLOAT16 tensor: raw_data, or
        int32_data where onnx's helper writes each value's 16 bits."""
        kind = TensorProto.BFLOAT16 if dtype == "bf16" else TensorProto.FLOAT16
        if how == "int32":
            return helper.make_tensor(name, kind, a.shape, a.flatten().tolist())
        bits = (np.frombuffer(a.tobytes(), np.uint32) >> 16).astype(np.uint16) if dtype == "bf16" \
            else a.astype(np.float16)
        return helper.make_tensor(name, kind, a.shape, bits.tobytes(), raw=True)

    def conv16(case, x, cin, cout, dtype, how):
        """A Conv whose weights and bias are 16-bit floats (a bfloat16 bias always in raw_data)."""
        w = rand(cout, cin, 3, 3, lo=-0.5, hi=0.5)
        b = rand(cout, lo=-0.2, hi=0.2)
        if dtype == "bf16":  # bfloat16: the top 16 bits of each float32
            w, b = ((np.frombuffer(a.tobytes(), np.uint32) & 0xFFFF0000).view(np.float32).reshape(a.shape)
                    for a in (w, b))
        else:
            w, b = w.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        tw = tensor16(f"w{case.count}", w, dtype, how)
        tb = tensor16(f"b{case.count}", b, dtype, "raw" if dtype == "bf16" else how)
        case.inits += [tw, tb]
        ref = F.conv2d(case.t(x), torch.from_numpy(w), torch.from_numpy(b), padding=1)
        return case.node("Conv", [x, tw.name, tb.name], ref, kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    c = Case("fp16_weights_casts")
    x = c.node("Cast", ["input"], c.t("input"), to=TensorProto.FLOAT16)
    x = c.node("Relu", [conv16(c, x, 3, 8, "fp16", "raw")], None)
    c.env[x] = F.relu(c.t(c.nodes[-1].input[0]))
    y = conv16(c, x, 8, 4, "fp16", "raw")
    c.write(outdir, c.node("Cast", [y], c.t(y), to=TensorProto.FLOAT), mf)
    c = Case("fp16_input_int32_data")
    c.in_type = TensorProto.FLOAT16
    c.write(outdir, conv16(c, "input", 3, 8, "fp16", "int32"), mf)
    for how in ("int32", "raw"):
        c = Case(f"bf16_weights_{how}")
        c.write(outdir, conv16(c, "input", 3, 8, "bf16", how), mf)

    # LRN across channels (GoogLeNet and AlexNet as the ONNX model zoo has
    # them): against the ONNX definition computed in float64, which torch's
    # local_response_norm equals for odd sizes; after Relu and MaxPool, with a
    # zero Pad before a MaxPool after it (LRN keeps the sign), and on the
    # signed input
    def lrn_ref(v, size, alpha, beta, bias):
        v = v.double()
        sq = F.pad(v * v, (0, 0, 0, 0, (size - 1) // 2, size // 2)).unfold(1, size, 1).sum(-1)
        return (v / (bias + alpha / size * sq) ** beta).float()
    c = Case("lrn_relu_maxpool", size=17)
    x = c.node("Relu", [c.conv("input", 3, 12)], None)
    c.env[x] = F.relu(c.t(c.nodes[-1].input[0]))
    x = c.node("MaxPool", [x], F.max_pool2d(c.t(x), 3, 2, 1), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = c.node("LRN", [x], lrn_ref(c.t(x), 5, 0.5, 0.75, 1.0), size=5, alpha=0.5)
    x = pad(c, x, (1, 1, 1, 1))
    c.write(outdir, c.node("MaxPool", [x], F.max_pool2d(c.t(x), 3, 2), kernel_shape=[3, 3], strides=[2, 2]), mf)
    c = Case("lrn_input_attrs")
    c.write(outdir, c.node("LRN", ["input"], lrn_ref(c.t("input"), 3, 0.2, 0.6, 2.0), size=3, alpha=0.2, beta=0.6,
                           bias=2.0), mf)

    # Sub and Div: the normalisation some exporters put in the graph, and
    # between activations
    c = Case("sub_div_normalise")
    mean, std = rand(3, 1, 1), rand(3, 1, 1, lo=0.2, hi=0.5)
    x = c.node("Sub", ["input", c.const(mean)], c.t("input") - torch.from_numpy(mean))
    x = c.node("Div", [x, c.const(std)], c.t(x) / torch.from_numpy(std))
    c.write(outdir, c.conv(x, 3, 8), mf)
    c = Case("sub_div_activations")
    a = c.conv("input", 3, 8)
    b = c.conv("input", 3, 8, k=1, pads=(0, 0, 0, 0))
    d = c.node("Sub", [a, b], c.t(a) - c.t(b))
    s = c.node("Sigmoid", [b], torch.sigmoid(c.t(b)))
    s1 = c.node("Add", [s, c.const(np.float32(1.0))], c.t(s) + 1.0)
    q = c.node("Div", [d, s1], c.t(d) / c.t(s1))
    c.write(outdir, c.node("Relu", [q], F.relu(c.t(q))), mf)
    c = Case("div_by_gate")  # Div of [N,C,H,W] by a [N,C,1,1] activation
    x = c.conv("input", 3, 16)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    g = c.node("Sigmoid", [g], torch.sigmoid(c.t(g)))
    c.write(outdir, c.node("Div", [x, g], c.t(x) / c.t(g)), mf)

    # global pools: ReduceMean over H and W (axes as attribute or input, with
    # and without keepdims), GlobalMaxPool; Dropout in inference
    c = Case("reducemean_keepdims0_gemm")
    x = c.node("Relu", [c.conv("input", 3, 16)], None)
    c.env[x] = F.relu(c.t(c.nodes[-1].input[0]))
    m = c.node("ReduceMean", [x], c.t(x).mean((2, 3)), axes=[2, 3], keepdims=0)
    w = rand(6, 16)
    c.write(outdir, c.node("Gemm", [m, c.const(w)], F.linear(c.t(m), torch.from_numpy(w)), transB=1), mf)
    c = Case("reducemean_keepdims_negative_axes")
    x = c.conv("input", 3, 16)
    m = c.node("ReduceMean", [x], c.t(x).mean((2, 3), keepdim=True), axes=[-1, -2])
    c.write(outdir, c.node("Flatten", [m], torch.flatten(c.t(m), 1), axis=1), mf)
    c = Case("reducemean_axes_input_opset18", opset=18)
    x = c.conv("input", 3, 16)
    c.write(outdir, c.node("ReduceMean", [x, c.const(np.array([2, 3], dtype=np.int64), dtype=np.int64)],
                           c.t(x).mean((2, 3)), keepdims=0), mf)
    c = Case("globalmaxpool")
    x = c.conv("input", 3, 24)
    g = c.node("GlobalMaxPool", [x], F.adaptive_max_pool2d(c.t(x), 1))
    c.write(outdir, c.node("Flatten", [g], torch.flatten(c.t(g), 1), axis=1), mf)
    c = Case("dropout_opset10_mask_unused", opset=10)
    x = c.conv("input", 3, 8)
    c.nodes.append(helper.make_node("Dropout", [x], ["d", "mask"], name="drop", ratio=0.5))
    c.env["d"] = c.t(x)
    c.write(outdir, c.conv("d", 8, 4), mf)
    c = Case("dropout_opset13_ratio_input")
    x = c.conv("input", 3, 8)
    c.write(outdir, c.node("Dropout", [x, c.const(np.float32(0.3))], c.t(x)), mf)

    # a model of one grey channel (as torchxrayvision's): MedSearch feeds three
    # identical channels and spreads the first Convs' weights over them
    c = Case("grey_conv", grey=True)
    c.write(outdir, c.conv("input", 1, 8, stride=2), mf)
    c = Case("grey_two_convs", grey=True)
    a = c.conv("input", 1, 8)
    b = c.conv("input", 1, 8, k=1, pads=(0, 0, 0, 0))
    c.write(outdir, c.node("Add", [a, b], c.t(a) + c.t(b)), mf)

    # x.view(x.size(0), -1) exported with a dynamic batch: Shape, Gather,
    # Unsqueeze and Concat compute the Reshape's shape, folded at load
    def view_head(case, unsqueeze_attr=False, shape_slice=False):
        x = case.node("Relu", [case.conv("input", 3, 16)], None)
        case.env[x] = F.relu(case.t(case.nodes[-1].input[0]))
        g = case.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(case.t(x), 1))
        nodes = case.nodes
        if shape_slice:  # opset 15: Shape(start=0, end=1) is already [batch]
            nodes.append(helper.make_node("Shape", [g], ["shp"], name="shape", start=0, end=1))
            first = "shp"
        else:
            nodes.append(helper.make_node("Shape", [g], ["shp"], name="shape"))
            nodes.append(helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.int64(0), "z")))
            nodes.append(helper.make_node("Gather", ["shp", "zero"], ["b"], name="gather", axis=0))
            if unsqueeze_attr:
                nodes.append(helper.make_node("Unsqueeze", ["b"], ["b1"], name="unsq", axes=[0]))
            else:
                axes = case.const(np.array([0], dtype=np.int64), dtype=np.int64)
                nodes.append(helper.make_node("Unsqueeze", ["b", axes], ["b1"], name="unsq"))
            first = "b1"
        minus1 = case.const(np.array([-1], dtype=np.int64), dtype=np.int64)
        nodes.append(helper.make_node("Concat", [first, minus1], ["newshape"], name="cat", axis=0))
        return case.node("Reshape", [g, "newshape"], case.t(g).reshape(N, -1))

    c = Case("reshape_view_dynamic_batch")
    c.write(outdir, view_head(c), mf)
    c = Case("reshape_view_unsqueeze_attr_opset11", opset=11)
    c.write(outdir, view_head(c, unsqueeze_attr=True), mf)
    c = Case("reshape_view_shape_slice_opset15", opset=15)
    c.write(outdir, view_head(c, shape_slice=True), mf)

    # Squeeze after a global pool: x.squeeze(-1).squeeze(-1) (axes as inputs),
    # squeeze(3).squeeze(2) before opset 13 (attributes), x.squeeze() (no axes)
    def squeeze_head(case, axes_lists, attrs=False):
        x = case.conv("input", 3, 16)
        y = case.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(case.t(x), 1))
        for axes in axes_lists:
            ref = case.t(y)
            for a in sorted(axes or [2, 3], reverse=True):
                ref = ref.squeeze(a)
            if attrs:
                y = case.node("Squeeze", [y], ref, axes=axes)
            elif axes is None:
                y = case.node("Squeeze", [y], ref)
            else:
                y = case.node("Squeeze", [y, case.const(np.array(axes, dtype=np.int64), dtype=np.int64)], ref)
        return y

    c = Case("squeeze_twice_axes_input")
    c.write(outdir, squeeze_head(c, [[-1], [-1]]), mf)
    c = Case("squeeze_axes_attr_opset11", opset=11)
    c.write(outdir, squeeze_head(c, [[3], [2]], attrs=True), mf)
    c = Case("squeeze_no_axes")
    c.write(outdir, squeeze_head(c, [None]), mf)

    # Channels-last blocks (ConvNeXt) and what PyTorch exports them to before
    # opset 17/20: GELU as Erf, LayerNorm as ReduceMean, Sub, Pow, ReduceMean,
    # Add, Sqrt, Div, nn.Linear on the channels as MatMul, all between
    # Transposes. MedSearch rewrites them (rewrite.c) and lifts the region to NCHW.
    def gelu_chain(case, x, form="torch"):
        xt = case.t(x)
        if form == "rsqrt2":
            s = case.node("Mul", [x, case.const(np.float32(1 / np.sqrt(2)))], xt / np.sqrt(2))
        else:
            s = case.node("Div", [x, case.const(np.float32(np.sqrt(2)))], xt / np.sqrt(2))
        e = case.node("Erf", [s], torch.erf(case.t(s)))
        a = case.node("Add", [e, case.const(np.float32(1))], case.t(e) + 1)
        if form == "half_first":
            h = case.node("Mul", [case.const(np.float32(0.5)), x], xt * 0.5)
            return case.node("Mul", [h, a], F.gelu(xt))
        m = case.node("Mul", [x, a], xt * case.t(a))
        return case.node("Mul", [m, case.const(np.float32(0.5))], F.gelu(xt))

    def layer_norm_chain(case, x, axis, eps=1e-6, square="Pow", affine=True, weight_first=False):
        xt = case.t(x)
        dim = xt.dim() - 1 if axis in (-1, 3) else axis
        mean = xt.mean(dim, keepdim=True)
        m1 = case.node("ReduceMean", [x], mean, axes=[axis], keepdims=1)
        d = case.node("Sub", [x, m1], xt - mean)
        if square == "Pow":
            p = case.node("Pow", [d, case.const(np.float32(2))], case.t(d) ** 2)
        else:
            p = case.node("Mul", [d, d], case.t(d) ** 2)
        var = case.t(p).mean(dim, keepdim=True)
        m2 = case.node("ReduceMean", [p], var, axes=[axis], keepdims=1)
        ad = case.node("Add", [m2, case.const(np.float32(eps))], var + eps)
        sq = case.node("Sqrt", [ad], torch.sqrt(case.t(ad)))
        y = case.node("Div", [d, sq], case.t(d) / case.t(sq))
        if not affine:
            return y
        ch = xt.shape[dim]
        shape = (ch,) if dim == xt.dim() - 1 else (ch, 1, 1)
        w, b = rand(*shape, lo=0.5, hi=1.5), rand(*shape, lo=-0.3, hi=0.3)
        yt = case.t(y) * torch.from_numpy(w)
        y = case.node("Mul", [case.const(w), y] if weight_first else [y, case.const(w)], yt)
        return case.node("Add", [y, case.const(b)], yt + torch.from_numpy(b))

    def to_last(case, x):
        return case.node("Transpose", [x], case.t(x).permute(0, 2, 3, 1), perm=[0, 2, 3, 1])

    def to_first(case, x):
        return case.node("Transpose", [x], case.t(x).permute(0, 3, 1, 2), perm=[0, 3, 1, 2])

    def linear_last(case, x, cin, cout, bias_first=True):
        w, b = rand(cin, cout, lo=-0.4, hi=0.4), rand(cout, lo=-0.2, hi=0.2)
        mm = case.node("MatMul", [x, case.const(w)], case.t(x) @ torch.from_numpy(w))
        ins = [case.const(b), mm] if bias_first else [mm, case.const(b)]
        return case.node("Add", ins, case.t(mm) + torch.from_numpy(b))

    c = Case("gelu_erf_after_conv")
    c.write(outdir, gelu_chain(c, c.conv("input", 3, 8)), mf)
    c = Case("gelu_half_first_rsqrt2")
    x = c.conv("input", 3, 8)
    c.write(outdir, gelu_chain(c, gelu_chain(c, x, "half_first"), "rsqrt2"), mf)
    c = Case("gelu_op_opset20", opset=20)
    x = c.conv("input", 3, 8)
    x = c.node("Gelu", [x], F.gelu(c.t(x)))
    c.write(outdir, c.node("Gelu", [x], F.gelu(c.t(x), approximate="tanh"), approximate="tanh"), mf)

    c = Case("layernorm_channels_first")  # ConvNeXt's own LayerNorm, written for NCHW
    x = c.conv("input", 3, 8)
    c.write(outdir, layer_norm_chain(c, x, 1, weight_first=True), mf)
    c = Case("layernorm_channels_first_plain")
    x = c.conv("input", 3, 8)
    c.write(outdir, layer_norm_chain(c, x, 1, eps=1e-5, square="Mul", affine=False), mf)
    # a tensor a rewrite would fold away, named as the feature, stays as the file
    # computes it: here the normalised map before the layer's weight and bias
    c = Case("layernorm_named_before_affine")
    y = layer_norm_chain(c, c.conv("input", 3, 8), 1, affine=False)
    w, b = rand(8, 1, 1, lo=0.5, hi=1.5), rand(8, 1, 1, lo=-0.3, hi=0.3)
    m = c.node("Mul", [y, c.const(w)], c.t(y) * torch.from_numpy(w))
    a = c.node("Add", [m, c.const(b)], c.t(m) + torch.from_numpy(b))
    c.write(outdir, y, mf, graph_out=a)

    def convnext_block(case, x, ch, square="Pow"):
        dw = case.conv(x, ch, ch, k=7, pads=(3, 3, 3, 3), group=ch)
        t = to_last(case, dw)
        t = layer_norm_chain(case, t, -1, square=square)
        t = linear_last(case, t, ch, 4 * ch)
        t = gelu_chain(case, t)
        t = linear_last(case, t, 4 * ch, ch, bias_first=False)
        t = to_first(case, t)
        scale = rand(ch, 1, 1, lo=0.2, hi=1.0)
        t = case.node("Mul", [case.const(scale), t], torch.from_numpy(scale) * case.t(t))
        return case.node("Add", [t, x], case.t(t) + case.t(x))

    c = Case("convnext_block", size=14)
    x = c.conv("input", 3, 8, k=2, stride=2, pads=(0, 0, 0, 0))
    x = convnext_block(c, x, 8)
    x = convnext_block(c, x, 8, square="Mul")
    c.write(outdir, c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1)), mf)

    c = Case("convnext_downsample_head")  # LayerNorm2d before a strided Conv; the head's LayerNorm on the pooled map
    x = c.conv("input", 3, 8)
    t = to_first(c, layer_norm_chain(c, to_last(c, x), 3))
    x = c.conv(t, 8, 16, k=2, stride=2, pads=(0, 0, 0, 0))
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    t = to_first(c, layer_norm_chain(c, to_last(c, g), -1, affine=False))
    c.write(outdir, c.node("Flatten", [t], torch.flatten(c.t(t), 1), axis=1), mf)

    c = Case("layernorm_pooled_vector")  # ConvNeXt's original head: norm(x.mean([-2, -1]))
    x = c.conv("input", 3, 8)
    v = c.node("ReduceMean", [x], c.t(x).mean((2, 3)), axes=[-2, -1], keepdims=0)
    c.write(outdir, layer_norm_chain(c, v, -1), mf)
    c = Case("layernorm_op_vector_axis1", opset=17)  # on [N, C], axis 1 is the channels
    x = c.conv("input", 3, 8)
    g = c.node("GlobalAveragePool", [x], F.adaptive_avg_pool2d(c.t(x), 1))
    f = c.node("Flatten", [g], torch.flatten(c.t(g), 1), axis=1)
    w, b = rand(8, lo=0.5, hi=1.5), rand(8, lo=-0.3, hi=0.3)
    y = F.layer_norm(c.t(f), (8,), torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    c.write(outdir, c.node("LayerNormalization", [f, c.const(w), c.const(b)], y, axis=1), mf)

    # one channel of an activation: torchvision's Inception v3 and GoogLeNet with
    # ImageNet weights rescale each input channel, torch.unsqueeze(x[:, k], 1) * s + b,
    # exported as Gather of a scalar index on axis 1 then Unsqueeze; x[:, k:k+1]-like
    # indexing with a one-value index list keeps the axis
    def channel_of(case, x, k, keep=False, unsqueeze_input=True):
        xt = case.t(x)
        if keep:
            return case.node("Gather", [x, case.const(np.array([k], dtype=np.int64), dtype=np.int64)],
                             xt[:, [k]], axis=1)
        g = case.node("Gather", [x, case.const(np.array(k, dtype=np.int64), dtype=np.int64)], xt[:, k], axis=1)
        if unsqueeze_input:
            return case.node("Unsqueeze", [g, case.const(np.array([1], dtype=np.int64), dtype=np.int64)],
                             xt[:, k:k + 1] if k != -1 else xt[:, -1:])
        return case.node("Unsqueeze", [g], xt[:, k:k + 1] if k != -1 else xt[:, -1:], axes=[1])

    c = Case("gather_channels_rescale")
    parts = []
    for k, (s_, b_) in enumerate([(0.458, -0.03), (0.448, -0.088), (0.45, -0.188)]):
        ch = channel_of(c, "input", k)
        ch = c.node("Mul", [ch, c.const(np.float32(s_))], c.t(ch) * s_)
        parts.append(c.node("Add", [ch, c.const(np.float32(b_))], c.t(ch) + b_))
    x = c.node("Concat", parts, torch.cat([c.t(p) for p in parts], 1), axis=1)
    c.write(outdir, c.conv(x, 3, 8), mf)
    c = Case("gather_channel_variants", opset=11)  # Unsqueeze axes as an attribute; a negative index; a kept axis
    x = c.conv("input", 3, 6)
    parts = [channel_of(c, x, -1, unsqueeze_input=False), channel_of(c, x, 2, keep=True)]
    c.write(outdir, c.node("Concat", parts, torch.cat([c.t(p) for p in parts], 1), axis=1), mf)

    c = Case("layernorm_op_opset17", opset=17)
    x = to_last(c, c.conv("input", 3, 8))
    w, b = rand(8, lo=0.5, hi=1.5), rand(8, lo=-0.3, hi=0.3)
    y = F.layer_norm(c.t(x), (8,), torch.from_numpy(w), torch.from_numpy(b), 1e-6)
    x = c.node("LayerNormalization", [x, c.const(w), c.const(b)], y, axis=-1, epsilon=1e-6)
    x = c.node("Relu", [x], F.relu(c.t(x)))  # and an activation inside the region
    x = c.node("Mul", [x, c.const(np.float32(1.5))], c.t(x) * 1.5)  # and a scalar
    w2 = rand(8, lo=0.5, hi=1.5)
    y = F.layer_norm(c.t(x), (8,), torch.from_numpy(w2), None, 1e-5)
    x = c.node("LayerNormalization", [x, c.const(w2)], y)  # defaults: axis -1, epsilon 1e-5, no bias
    c.write(outdir, to_first(c, x), mf)

    # errors at load time
    def refused(name, build, code, words, opset=13, grey=False, nhwc=False):
        case = Case(name, opset=opset, grey=grey, nhwc=nhwc)
        out = build(case)
        case.env.setdefault(out, torch.zeros(N, 1))
        write_error(case, outdir, out, mf, code, words)

    def refused_named(name, build, graph_out, code, words):
        """As refused, with the tensor build returns named as the feature and
        graph_out the graph's output."""
        case = Case(name)
        out = build(case)
        write_error(case, outdir, out, mf, code, words, graph_out=graph_out, named=True)

    def pad_node(case, x, pads, mode=None, value=None, name="pd"):
        ins = [x, case.const(np.array(pads, dtype=np.int64), dtype=np.int64)]
        if value is not None:
            ins.append(case.const(np.float32(value)))
        attrs = {"mode": mode} if mode else {}
        case.nodes.append(helper.make_node("Pad", ins, ["padded"], name=name, **attrs))
        return "padded"

    def conv_after(case, x, ch=3):
        case.nodes.append(helper.make_node("Conv", [x, case.const(rand(4, ch, 3, 3))], ["y"], name="cv",
                                           kernel_shape=[3, 3]))
        return "y"

    refused("pad_reflect", lambda c: conv_after(c, pad_node(c, "input", [0, 0, 1, 1, 0, 0, 1, 1], "reflect")),
            "UNSUPPORTED", ["reflect", "pd"])
    refused("pad_channels", lambda c: conv_after(c, pad_node(c, "input", [0, 1, 0, 0, 0, 0, 0, 0]), 4),
            "UNSUPPORTED", ["height", "pd"])
    refused("pad_value_one", lambda c: conv_after(c, pad_node(c, "input", [0, 0, 1, 1, 0, 0, 1, 1], value=1.0)),
            "UNSUPPORTED", ["zero", "pd"])
    refused("pad_negative", lambda c: conv_after(c, pad_node(c, "input", [0, 0, -1, 0, 0, 0, 0, 0])),
            "UNSUPPORTED", ["negative", "pd"])

    def pad_maxpool_signed(c):
        x = pad_node(c, "input", [0, 0, 1, 1, 0, 0, 1, 1])
        c.nodes.append(helper.make_node("MaxPool", [x], ["y"], name="mp", kernel_shape=[3, 3]))
        return "y"
    refused("pad_maxpool_signed", pad_maxpool_signed, "UNSUPPORTED", ["MaxPool", "negative", "pd"])

    def pad_maxpool_concat_signed(c):  # one branch of the Concat may be negative
        c.nodes.append(helper.make_node("Conv", ["input", c.const(rand(4, 3, 3, 3))], ["y"], name="cv",
                                        kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        c.nodes.append(helper.make_node("Relu", ["y"], ["r"], name="re"))
        c.nodes.append(helper.make_node("Concat", ["r", "input"], ["cat"], name="cat", axis=1))
        x = pad_node(c, "cat", [0, 0, 1, 1, 0, 0, 1, 1])
        c.nodes.append(helper.make_node("MaxPool", [x], ["mp_out"], name="mp", kernel_shape=[3, 3]))
        return "mp_out"
    refused("pad_maxpool_concat_signed", pad_maxpool_concat_signed, "UNSUPPORTED", ["MaxPool", "negative", "pd"])

    def pad_two_readers(c):
        x = pad_node(c, "input", [0, 0, 1, 1, 0, 0, 1, 1])
        c.nodes.append(helper.make_node("Conv", [x, c.const(rand(4, 3, 3, 3))], ["a"], name="c1", kernel_shape=[3, 3]))
        c.nodes.append(helper.make_node("Conv", [x, c.const(rand(4, 3, 3, 3))], ["b"], name="c2", kernel_shape=[3, 3]))
        c.nodes.append(helper.make_node("Add", ["a", "b"], ["y"], name="sum"))
        return "y"
    refused("pad_two_readers", pad_two_readers, "UNSUPPORTED", ["more than one", "pd"])

    def sub_constant_first(c):
        c.nodes.append(helper.make_node("Sub", [c.const(rand(3, 1, 1)), "input"], ["y"], name="neg"))
        return "y"
    refused("sub_constant_first", sub_constant_first, "UNSUPPORTED", ["first operand", "neg"])

    def reducemean_channels(c):
        c.nodes.append(helper.make_node("ReduceMean", ["input"], ["y"], name="rm", axes=[1], keepdims=0))
        return "y"
    refused("reducemean_channels", reducemean_channels, "UNSUPPORTED", ["height and width", "rm"])

    def dropout_training(c):
        c.nodes.append(helper.make_node("Dropout", ["input", c.const(np.float32(0.5)), "train"], ["y"], name="dr"))
        return "y"
    refused("dropout_training_mode", dropout_training, "UNSUPPORTED", ["training_mode", "dr"])

    def grey_relu(c):
        c.nodes.append(helper.make_node("Relu", ["input"], ["y"], name="r0"))
        return "y"
    refused("grey_input_not_conv", grey_relu, "UNSUPPORTED", ["one grey channel", "r0"], grey=True)

    def grey_shared_weights(c):
        w = c.const(rand(4, 1, 3, 3))
        c.nodes.append(helper.make_node("Conv", ["input", w], ["a"], name="c1", kernel_shape=[3, 3]))
        c.nodes.append(helper.make_node("Conv", ["input", w], ["b"], name="c2", kernel_shape=[3, 3]))
        c.nodes.append(helper.make_node("Add", ["a", "b"], ["y"], name="sum"))
        return "y"
    refused("grey_shared_weights", grey_shared_weights, "UNSUPPORTED", ["one-channel", "shares"], grey=True)

    def gather_activation(c):  # two channels: not one channel (G_CHANNEL), not shape arithmetic
        idx = c.const(np.array([0, 2], dtype=np.int64), dtype=np.int64)
        c.nodes.append(helper.make_node("Gather", ["input", idx], ["y"], name="gth", axis=1))
        return "y"
    refused("gather_activation", gather_activation, "UNSUPPORTED", ["shapes", "gth"])

    def reshape_batch_last(c):
        c.nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"))
        c.nodes.append(helper.make_node("Shape", ["g"], ["shp"], name="shape", start=0, end=1))
        c.nodes.append(helper.make_node("Concat", [c.const(np.array([-1], dtype=np.int64), dtype=np.int64), "shp"],
                                        ["ns"], name="cat", axis=0))
        c.nodes.append(helper.make_node("Reshape", ["g", "ns"], ["y"], name="rs"))
        return "y"
    refused("reshape_batch_last", reshape_batch_last, "UNSUPPORTED", ["batch", "rs"], opset=15)

    def squeeze_batch(c):
        c.nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"))
        c.nodes.append(helper.make_node("Squeeze", ["g", c.const(np.array([0, 2, 3], dtype=np.int64),
                                                                 dtype=np.int64)], ["y"], name="sq"))
        return "y"
    refused("squeeze_batch", squeeze_batch, "UNSUPPORTED", ["batch", "sq"])

    def squeeze_channels(c):
        c.nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"))
        c.nodes.append(helper.make_node("Squeeze", ["g", c.const(np.array([1], dtype=np.int64), dtype=np.int64)],
                                        ["y"], name="sq"))
        return "y"
    refused("squeeze_channels", squeeze_channels, "FORMAT", ["size 1", "sq"])

    def reshape_no_shape(c):  # found by fuzz_onnx: an omitted shape input was read as tensor -1
        c.nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"))
        c.nodes.append(helper.make_node("Reshape", ["g", ""], ["y"], name="rs"))
        return "y"
    refused("reshape_no_shape", reshape_no_shape, "FORMAT", ["shape", "rs"])

    # attributes a model exported for training, or a corrupt file, carries
    def bn_node(case, **attrs):
        ins = ["input"] + [case.const(np.ones(3, np.float32)) for _ in range(4)]
        case.nodes.append(helper.make_node("BatchNormalization", ins, ["y"], name="bn", **attrs))
        return "y"
    refused("bn_training_mode", lambda c: bn_node(c, training_mode=1), "UNSUPPORTED", ["training mode", "bn"],
            opset=14)
    refused("bn_epsilon_negative", lambda c: bn_node(c, epsilon=-1.0), "FORMAT", ["epsilon", "bn"])
    refused("bn_epsilon_nan", lambda c: bn_node(c, epsilon=float("nan")), "FORMAT", ["epsilon", "NaN"])
    refused("bn_epsilon_string", lambda c: bn_node(c, epsilon="tiny"), "FORMAT", ["epsilon", "float"])

    def conv_attrs(case, **attrs):
        case.nodes.append(helper.make_node("Conv", ["input", case.const(rand(4, 3, 3, 3))], ["y"], name="cv",
                                           **attrs))
        return "y"
    refused("conv_auto_pad_unknown", lambda c: conv_attrs(c, auto_pad="SAME_MIDDLE"), "FORMAT",
            ["auto_pad", "SAME_MIDDLE", "cv"])
    refused("conv_auto_pad_int", lambda c: conv_attrs(c, auto_pad=1), "FORMAT", ["auto_pad", "string", "cv"])
    refused("conv_stride_zero", lambda c: conv_attrs(c, strides=[0, 1]), "FORMAT", ["strides", "range", "cv"])
    refused("conv_group_float", lambda c: conv_attrs(c, group=1.5), "FORMAT", ["group", "integer", "cv"])
    refused("conv_group_huge", lambda c: conv_attrs(c, group=1 << 40), "FORMAT", ["group", "range", "cv"])

    def maxpool_no_kernel(case):
        case.nodes.append(helper.make_node("MaxPool", ["input"], ["y"], name="mp"))
        return "y"
    refused("maxpool_no_kernel", maxpool_no_kernel, "FORMAT", ["kernel_shape", "mp"])

    def dropout_not_test(case):
        case.nodes.append(helper.make_node("Dropout", ["input"], ["y"], name="dr", is_test=0))
        return "y"
    refused("dropout_is_test_0", dropout_not_test, "UNSUPPORTED", ["is_test", "dr"], opset=6)

    def constant_string(case):
        case.nodes.append(helper.make_node("Constant", [], ["k"], name="kc", value_string="abc"))
        case.nodes.append(helper.make_node("Add", ["input", "k"], ["y"], name="add"))
        return "y"
    refused("constant_string", constant_string, "UNSUPPORTED", ["Constant", "kc"])

    def double_weights(case):
        w = case.const(rand(4, 3, 3, 3).astype(np.float64), dtype=np.float64)
        case.nodes.append(helper.make_node("Conv", ["input", w], ["y"], name="cv"))
        return "y"
    refused("weights_double", double_weights, "UNSUPPORTED", ["DOUBLE"])

    def weights_short(case):
        t = helper.make_tensor("w_short", TensorProto.FLOAT, [4, 3, 3, 3], rand(108).tolist())
        del t.float_data[100:]  # onnx's helper refuses to write it short; a corrupt file is
        case.inits.append(t)
        case.nodes.append(helper.make_node("Conv", ["input", "w_short"], ["y"], name="cv"))
        return "y"
    refused("weights_fewer_than_shape", weights_short, "FORMAT", ["w_short", "108", "100"])

    def prelu_slope(case, slope):
        case.nodes.append(helper.make_node("PRelu", ["input", slope], ["y"], name="pr"))
        return "y"
    refused("prelu_slope_activation", lambda c: prelu_slope(c, "input"), "UNSUPPORTED",
            ["PRelu", "float constant", "pr"])
    refused("prelu_slope_shape", lambda c: prelu_slope(c, c.const(rand(2, 1, 1))), "FORMAT",
            ["PRelu", "broadcast", "pr"])
    refused("prelu_slope_rank5", lambda c: prelu_slope(c, c.const(rand(1, 1, 3, 1, 1))), "FORMAT",
            ["PRelu", "broadcast", "pr"])

    def act_attr(case, op, **attrs):
        case.nodes.append(helper.make_node(op, ["input"], ["y"], name="act", **attrs))
        return "y"
    refused("leakyrelu_alpha_inf", lambda c: act_attr(c, "LeakyRelu", alpha=float("inf")), "FORMAT",
            ["alpha", "finite", "act"])
    refused("selu_gamma_nan", lambda c: act_attr(c, "Selu", gamma=float("nan")), "FORMAT", ["gamma", "NaN", "act"])
    refused("elu_alpha_string", lambda c: act_attr(c, "Elu", alpha="one"), "FORMAT", ["alpha", "float", "act"])

    def nhwc_read_raw(case):  # the NHWC input is also read untransposed
        case.nodes.append(helper.make_node("Mul", ["input", case.const(np.float32(2.0))], ["raw2"], name="scale"))
        return "raw2"
    refused("nhwc_read_raw", nhwc_read_raw, "UNSUPPORTED", ["to_nchw", "NHWC", "scale"], nhwc=True)

    def transpose_after(case, x, perm, name="tp"):
        case.nodes.append(helper.make_node("Transpose", [x], ["tp_out"], name=name, perm=perm))
        return "tp_out"
    refused("transpose_input_other_perm", lambda c: transpose_after(c, "input", [0, 2, 3, 1]), "UNSUPPORTED",
            ["Transpose", "tp", "NHWC"])
    refused("transpose_activation", lambda c: transpose_after(c, conv_after(c, "input"), [0, 2, 3, 1]),
            "UNSUPPORTED", ["Transpose", "tp", "channels-last"])

    # what the channels-last rewrites do not take: the graph stays as it is and
    # the first op MedSearch does not run is named
    def region_softmax(case):  # an op that is not per channel inside the region
        x = transpose_after(case, conv_after(case, "input"), [0, 2, 3, 1], name="into")
        case.nodes.append(helper.make_node("Softmax", [x], ["sm"], name="sm", axis=-1))
        case.nodes.append(helper.make_node("Transpose", ["sm"], ["back"], name="out_of", perm=[0, 3, 1, 2]))
        return "back"
    refused("region_softmax", region_softmax, "UNSUPPORTED", ["Transpose", "into", "channels-last"])

    def region_mixes_nchw(case):  # an op reading a channels-last and an NCHW tensor
        y = conv_after(case, "input")
        x = transpose_after(case, y, [0, 2, 3, 1], name="into")
        case.nodes.append(helper.make_node("Add", [x, y], ["mixed"], name="mix"))
        case.nodes.append(helper.make_node("Transpose", ["mixed"], ["back"], name="out_of", perm=[0, 3, 1, 2]))
        return "back"
    refused("region_mixes_nchw", region_mixes_nchw, "UNSUPPORTED", ["Transpose", "into", "channels-last"])

    def region_matmul_activations(case):  # MatMul of two activations: not a 1x1 convolution
        x = transpose_after(case, conv_after(case, "input"), [0, 2, 3, 1], name="into")
        case.nodes.append(helper.make_node("MatMul", [x, x], ["mm"], name="mm"))
        case.nodes.append(helper.make_node("Transpose", ["mm"], ["back"], name="out_of", perm=[0, 3, 1, 2]))
        return "back"
    refused("region_matmul_activations", region_matmul_activations, "UNSUPPORTED", ["Transpose", "into"])

    def region_channel_constant(case):  # a constant varying along height: not per channel
        x = transpose_after(case, conv_after(case, "input"), [0, 2, 3, 1], name="into")
        case.nodes.append(helper.make_node("Mul", [x, case.const(rand(14, 1, 4))], ["m"], name="m"))
        case.nodes.append(helper.make_node("Transpose", ["m"], ["back"], name="out_of", perm=[0, 3, 1, 2]))
        return "back"
    refused("region_height_constant", region_channel_constant, "UNSUPPORTED", ["Transpose", "into"])

    def erf_alone(case):
        case.nodes.append(helper.make_node("Erf", [conv_after(case, "input")], ["e"], name="erf1"))
        return "e"
    refused("erf_alone", erf_alone, "UNSUPPORTED", ["Erf", "erf1", "GELU"])

    def layernorm_op_axis1(case):  # over C, H and W together, as ONNX defines axis 1
        w = case.const(rand(4, 14, 14))
        case.nodes.append(helper.make_node("LayerNormalization", [conv_after(case, "input"), w], ["ln"], name="ln1",
                                           axis=1))
        return "ln"
    refused("layernorm_op_axis1", layernorm_op_axis1, "UNSUPPORTED", ["LayerNormalization", "ln1", "channels"],
            opset=17)

    def gather_channel_out_of_range(case):
        case.nodes.append(helper.make_node("Gather", ["input", case.const(np.array([3], dtype=np.int64),
                                                                          dtype=np.int64)], ["ch"], name="g3", axis=1))
        return conv_after(case, "ch", 1)
    refused("gather_channel_out_of_range", gather_channel_out_of_range, "FORMAT", ["g3", "index 3", "3 channels"])

    def gather_channel_no_unsqueeze(case):  # a scalar index leaves [N, H, W], which MedSearch does not run
        case.nodes.append(helper.make_node("Gather", ["input", case.const(np.array(0, dtype=np.int64),
                                                                          dtype=np.int64)], ["ch"], name="g0", axis=1))
        case.nodes.append(helper.make_node("Relu", ["ch"], ["r"], name="r"))
        return "r"
    refused("gather_channel_no_unsqueeze", gather_channel_no_unsqueeze, "UNSUPPORTED", ["g0", "Gather"])

    def layernorm_op_axis2(case):  # height and width: never the channels
        w = case.const(rand(14, 14))
        case.nodes.append(helper.make_node("LayerNormalization", [conv_after(case, "input"), w], ["ln"], name="ln2",
                                           axis=2))
        return "ln"
    refused("layernorm_op_axis2", layernorm_op_axis2, "UNSUPPORTED", ["LayerNormalization", "ln2", "[N, C]"],
            opset=17)

    def layernorm_last_axis_nchw(case):  # the decomposition over W of an NCHW map
        x = conv_after(case, "input")
        case.env[x] = torch.zeros(N, 4, 14, 14)
        return layer_norm_chain(case, x, -1, affine=False)
    refused("layernorm_last_axis_nchw", layernorm_last_axis_nchw, "UNSUPPORTED", ["LayerNormalization", "channels"])

    def region_tensor_named(case):  # channels-last: MedSearch cannot give it in the file's layout
        x = transpose_after(case, conv_after(case, "input"), [0, 2, 3, 1], name="into")
        case.nodes.append(helper.make_node("Relu", [x], ["r"], name="r"))
        case.nodes.append(helper.make_node("Transpose", ["r"], ["back"], name="out_of", perm=[0, 3, 1, 2]))
        return "r"
    refused_named("region_tensor_named", region_tensor_named, "back", "UNSUPPORTED", ["Transpose", "into"])

    def erf_named(case):  # the Erf of a GELU, named: the GELU is not rewritten and Erf does not run
        x = conv_after(case, "input")
        nodes = [("Div", [x, case.const(np.float32(np.sqrt(2)))], "s"), ("Erf", ["s"], "e"),
                 ("Add", ["e", case.const(np.float32(1))], "a"), ("Mul", [x, "a"], "m"),
                 ("Mul", ["m", case.const(np.float32(0.5))], "gelu")]
        for op, ins, out in nodes:
            case.nodes.append(helper.make_node(op, ins, [out], name=out + "_node"))
        return "e"
    refused_named("gelu_erf_named", erf_named, "gelu", "UNSUPPORTED", ["Erf", "e_node"])

    def gelu_bad_approximate(case):
        case.nodes.append(helper.make_node("Gelu", [conv_after(case, "input")], ["g"], name="g1", approximate="fast"))
        return "g"
    refused("gelu_bad_approximate", gelu_bad_approximate, "FORMAT", ["approximate", "g1"], opset=20)
    refused("transpose_perm_repeated", lambda c: transpose_after(c, "input", [0, 3, 3, 2]), "FORMAT",
            ["perm", "permutation", "tp"])
    def nhwc_five_channels(case):
        case.channels = 5
        return conv_after(case, "input_nchw", 5)
    refused("nhwc_five_channels", nhwc_five_channels, "UNSUPPORTED", ["5 channels", "NHWC"], nhwc=True)

    def cast_to_int(case):
        x = conv_after(case, "input")
        case.nodes.append(helper.make_node("Cast", [x], ["as_int"], name="to_int", to=TensorProto.INT64))
        return "as_int"
    refused("cast_to_int64", cast_to_int, "UNSUPPORTED", ["Cast", "to_int", "float type"])

    def fp16_short(case):
        t = helper.make_tensor("w16", TensorProto.FLOAT16, [4, 3, 3, 3], np.zeros(108, np.float16).tobytes(), raw=True)
        t.raw_data = t.raw_data[:200]  # onnx's helper refuses to write it short; a corrupt file is
        case.inits.append(t)
        case.nodes.append(helper.make_node("Conv", ["input", "w16"], ["y"], name="cv", kernel_shape=[3, 3]))
        return "y"
    refused("fp16_weights_short", fp16_short, "FORMAT", ["w16", "108", "16-bit"])

    refused("lrn_no_size", lambda c: act_attr(c, "LRN"), "FORMAT", ["LRN", "size", "act"])
    refused("lrn_even_size", lambda c: act_attr(c, "LRN", size=4), "UNSUPPORTED", ["LRN", "odd", "act"])
    refused("lrn_bias_zero", lambda c: act_attr(c, "LRN", size=3, bias=0.0), "UNSUPPORTED", ["LRN", "bias", "act"])

    # ops MedSearch does not run are refused only when the feature needs them
    c = Case("softmax_after_feature_ignored")
    f = head(c)
    c.nodes.append(helper.make_node("Softmax", [f], ["probs"], name="sm", axis=1))
    # an unsupported op without inputs, also not needed
    c.nodes.append(helper.make_node("RandomNormal", [], ["noise"], name="rn", shape=[1, 4]))
    c.write(outdir, f, mf)
    c = Case("unsupported_lstm")
    x = c.conv("input", 3, 4)
    w, r = c.const(rand(1, 16, 4)), c.const(rand(1, 16, 4))
    c.nodes.append(helper.make_node("LSTM", [x, w, r], ["y"], name="my_lstm", hidden_size=4))
    c.env["y"] = torch.zeros(N, 1)
    write_error(c, outdir, "y", mf, "UNSUPPORTED", ["LSTM", "my_lstm", "depends"])
    c = Case("unsupported_domain")
    c.nodes.append(helper.make_node("FusedConv", ["input"], ["y"], name="fc1", domain="com.microsoft"))
    c.env["y"] = torch.zeros(N, 1)
    write_error(c, outdir, "y", mf, "UNSUPPORTED", ["com.microsoft.FusedConv", "fc1"],
                [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    c = Case("gemm_transa")
    f = head(c)
    c.nodes.append(helper.make_node("Gemm", [f, c.const(rand(16, 4))], ["y"], name="g", transA=1))
    c.env["y"] = torch.zeros(N, 1)
    write_error(c, outdir, "y", mf, "UNSUPPORTED", ["transA", "g"])
    c = Case("concat_spatial")
    c.nodes.append(helper.make_node("Concat", ["input", "input"], ["y"], name="cat", axis=2))
    c.env["y"] = torch.zeros(N, 1)
    write_error(c, outdir, "y", mf, "UNSUPPORTED", ["axis", "cat"])


def write_error(case, outdir, out, mf, code, words, opsets=None, graph_out=None, named=False):
    """named: the test names `out` as the feature (graph_out is the graph's output)."""
    g = helper.make_graph(case.nodes, case.name,
                          [helper.make_tensor_value_info("input", case.input_type(), case.input_dims())],
                          [helper.make_tensor_value_info(graph_out or out, TensorProto.FLOAT, None)], case.inits)
    m = helper.make_model(g, opset_imports=opsets or [helper.make_opsetid("", case.opset)])
    m.ir_version = 7
    onnx.save(m, os.path.join(outdir, case.name + ".onnx"))
    if named:
        mf.write(f"error_named {case.name} {out} {code} {' '.join(words)}\n")
    else:
        mf.write(f"error {case.name} {code} {' '.join(words)}\n")


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    torch.set_num_threads(2)
    os.makedirs(argv[1], exist_ok=True)
    with open(os.path.join(argv[1], "manifest.txt"), "w") as mf:
        cases(argv[1], mf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
