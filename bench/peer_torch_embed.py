#!/usr/bin/python3
"""PyTorch peer for `medsearch bench embed` (run with /usr/bin/python3: Debian's
python3-torch and torchvision are visible only to it).

  peer_torch_embed.py run (--arch resnet50|mobilenet_v2 | --onnx FILE)
                          [--batch 1,16] [--seconds S] [--threads 2] [--size 224]
      Times the model's forward with torch.jit.trace + torch.jit.freeze, no grad,
      on `threads` threads (set explicitly: torch starts with 1 here). Prints one line
      per batch size:
        peer batch=N median_ms=... images_per_s=... faults_per_forward=... iters=...
      --arch builds torchvision's own model, any of torchvision.models (random
      weights: weights do not change speed; classifier removed, pooled features out). --onnx rebuilds the ONNX graph
      op by op with torch.nn.functional, so the peer runs exactly the same network.

  peer_torch_embed.py serve (--arch A | --onnx FILE) [--batch 1,16] [--threads 2] [--size 224]
      The same models, kept loaded: prints "ready", then for each line "run N SECONDS"
      on stdin times batch N for SECONDS and prints
        peer batch=N median_ms=... images_per_s=... faults_per_forward=... iters=... times_ms=t1,t2,...
      so `medsearch bench embed` can interleave its own rounds with the peer's; "quit" ends.

  peer_torch_embed.py export-resnet50 OUT.onnx
      Writes a random-weight torchvision ResNet-50 v1.5 (classifier removed, 2048-d
      pooled output, BatchNorm folded, opset 13, symbolic batch) for our side.
"""
import argparse
import resource
import statistics
import sys
import time


def torchvision_model(arch):
    import torch
    import torchvision

    torch.manual_seed(0)
    build = getattr(torchvision.models, arch, None)
    if arch.startswith("_") or not callable(build):
        raise SystemExit(f"unknown --arch {arch}: not a torchvision.models model")
    m = build(weights=None, **({"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}))
    # the pooled feature: the classification layer removed (SqueezeNet's is a
    # convolution then the global pooling, kept)
    for head in ("fc", "classifier"):
        if hasattr(m, head) and not arch.startswith("squeezenet"):
            setattr(m, head, torch.nn.Identity())
    return m.eval()


def onnx_model(path):
    """An nn.Module that evaluates an ONNX graph of MedSearch's supported ops."""
    import numpy as np
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    proto = onnx.load(path)
    g = proto.graph
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = torch.from_numpy(numpy_helper.to_array(n.attribute[0].t).copy())
    inputs = [i.name for i in g.input if i.name not in consts]
    feature = next((p.value for p in proto.metadata_props if p.key == "medsearch.feature_output"),
                   g.output[0].name)

    def attrs(n):
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.names = {}
            for i, (k, v) in enumerate(consts.items()):
                self.register_buffer(f"c{i}", v)
                self.names[k] = f"c{i}"

        def forward(self, x):
            env = {inputs[0]: x}

            def get(name):
                return env[name] if name in env else getattr(self, self.names[name])

            for n in g.node:
                if n.op_type == "Constant":
                    continue
                a = attrs(n)
                ins = [get(i) if i else None for i in n.input]
                op = n.op_type
                if op == "Conv":
                    pads = list(a.get("pads", [0, 0, 0, 0]))
                    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                        raise SystemExit("peer: auto_pad is not rebuilt; use explicit pads")
                    xin, pad = ins[0], (pads[0], pads[1])
                    if pads[0] != pads[2] or pads[1] != pads[3]:
                        xin = F.pad(xin, (pads[1], pads[3], pads[0], pads[2]))
                        pad = (0, 0)
                    y = F.conv2d(xin, ins[1], ins[2] if len(ins) > 2 else None, tuple(a.get("strides", [1, 1])),
                                 pad, tuple(a.get("dilations", [1, 1])), a.get("group", 1))
                elif op == "BatchNormalization":
                    y = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], False, 0.0, a.get("epsilon", 1e-5))
                elif op == "Relu":
                    y = F.relu(ins[0])
                elif op == "Clip":
                    lo = float(ins[1].reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else a.get("min")
                    hi = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None else a.get("max")
                    y = torch.clamp(ins[0], lo, hi)
                elif op == "Sigmoid":
                    y = torch.sigmoid(ins[0])
                elif op == "Add":
                    y = ins[0] + ins[1]
                elif op == "Mul":
                    y = ins[0] * ins[1]
                elif op == "MaxPool":
                    p = list(a.get("pads", [0, 0, 0, 0]))
                    y = F.max_pool2d(F.pad(ins[0], (p[1], p[3], p[0], p[2]), value=float("-inf")),
                                     tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])), 0,
                                     tuple(a.get("dilations", [1, 1])), bool(a.get("ceil_mode", 0)))
                elif op == "AveragePool":
                    p = list(a.get("pads", [0, 0, 0, 0]))
                    y = F.avg_pool2d(ins[0], tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])),
                                     (p[0], p[1]), bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
                elif op == "GlobalAveragePool":
                    y = F.adaptive_avg_pool2d(ins[0], 1)
                elif op == "Flatten":
                    y = torch.flatten(ins[0], 1)
                elif op == "Reshape":
                    y = ins[0].reshape(ins[0].shape[0], -1)
                elif op == "Gemm":
                    w = ins[1] if a.get("transB", 0) else ins[1].t()
                    y = F.linear(ins[0], w * a.get("alpha", 1.0),
                                 ins[2] * a.get("beta", 1.0) if len(ins) > 2 and ins[2] is not None else None)
                elif op == "Concat":
                    y = torch.cat([i.reshape(-1) if i.dim() == 0 else i for i in ins], a["axis"])
                elif op in ("Identity", "Dropout"):
                    y = ins[0]
                elif op == "Sub":
                    y = ins[0] - ins[1]
                elif op == "Div":
                    y = ins[0] / ins[1]
                elif op == "HardSigmoid":
                    y = torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
                elif op == "HardSwish":
                    y = F.hardswish(ins[0])
                elif op == "Pad":
                    p = [int(v) for v in (ins[1] if len(ins) > 1 and ins[1] is not None else a["pads"])]
                    y = F.pad(ins[0], (p[3], p[7], p[2], p[6]))
                elif op == "ReduceMean":
                    y = ins[0].mean((2, 3), keepdim=bool(a.get("keepdims", 1)))
                elif op == "GlobalMaxPool":
                    y = F.adaptive_max_pool2d(ins[0], 1)
                elif op == "Shape":
                    y = torch.tensor(ins[0].shape, dtype=torch.int64)[a.get("start", 0):a.get("end", None)]
                elif op == "Gather":
                    y = torch.index_select(ins[0], a.get("axis", 0), ins[1].reshape(-1)).reshape(ins[1].shape)
                elif op == "Unsqueeze":
                    y = ins[0]
                    for ax in sorted(int(v) for v in (ins[1] if len(ins) > 1 else a["axes"])):
                        y = y.unsqueeze(ax)
                else:
                    raise SystemExit(f"peer: op {op} not rebuilt")
                env[n.output[0]] = y
                if n.output[0] == feature:
                    return y.flatten(1)
            return env[feature].flatten(1)

    return Net().eval()


def frozen_models(args):
    import torch

    torch.set_num_threads(args.threads)
    model = onnx_model(args.onnx) if args.onnx else torchvision_model(args.arch)
    print(f"peer torch={torch.__version__} threads={torch.get_num_threads()} "
          f"model={'onnx:' + args.onnx if args.onnx else 'torchvision:' + args.arch} jit=trace+freeze", flush=True)
    out = {}
    with torch.no_grad():
        for b in [int(x) for x in args.batch.split(",")]:
            x = torch.rand(b, 3, args.size, args.size) * 4 - 2
            frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
            for _ in range(3):
                frozen(x)
            out[b] = (frozen, x)
    return out


def time_batch(frozen, x, seconds):
    import torch

    times = []
    with torch.no_grad():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            frozen(x)
            times.append(time.perf_counter() - t0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    b = x.shape[0]
    med = statistics.median(times)
    return (f"peer batch={b} median_ms={med * 1e3:.3f} images_per_s={b / med:.2f} "
            f"faults_per_forward={faults / len(times):.1f} iters={len(times)} "
            f"times_ms={','.join(f'{t * 1e3:.3f}' for t in times)}")


def cmd_run(args):
    models = frozen_models(args)
    for b, (frozen, x) in models.items():
        print(time_batch(frozen, x, args.seconds), flush=True)


def cmd_serve(args):
    models = frozen_models(args)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "run" and len(words) == 3 and int(words[1]) in models:
            frozen, x = models[int(words[1])]
            print(time_batch(frozen, x, float(words[2])), flush=True)
        else:
            print(f"peer error: cannot {line.strip()}", flush=True)


def cmd_export_resnet50(out):
    import torch

    torch.set_num_threads(2)
    m = torchvision_model("resnet50")
    torch.onnx.export(m, torch.zeros(1, 3, 224, 224), out, opset_version=13, input_names=["input"],
                      output_names=["features"], dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                      do_constant_folding=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "serve"):
        r = sub.add_parser(name)
        r.add_argument("--arch")
        r.add_argument("--onnx")
        r.add_argument("--batch", default="1,16")
        r.add_argument("--seconds", type=float, default=5.0)
        r.add_argument("--threads", type=int, default=2)
        r.add_argument("--size", type=int, default=224)
    e = sub.add_parser("export-resnet50")
    e.add_argument("out")
    args = p.parse_args()
    if args.cmd in ("run", "serve"):
        if bool(args.arch) == bool(args.onnx):
            p.error(f"{args.cmd} needs exactly one of --arch and --onnx")
        (cmd_run if args.cmd == "run" else cmd_serve)(args)
    else:
        cmd_export_resnet50(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
