#!/usr/bin/python3
"""Reference side of tests/e2e/model_zoo.sh: CNN topologies users bring, exported
from torchvision with random weights, run by PyTorch on the inputs MedSearch prepared.

Run with /usr/bin/python3 (Debian's python3-torch, torchvision, onnx, PIL).

  torchvision_zoo.py export DIR NAME...
        builds each torchvision model NAME with seeded random weights and realistic
        BatchNorm statistics (make_resnet50.py's calibration, unperturbed), its
        classification layer removed where the pooled feature is what search uses,
        exports it to DIR/NAME.onnx the way users do (torch.onnx.export, opset 13,
        dynamic batch), saves the weights to DIR/NAME.pt and prints one line
        "NAME op1,op2,..." with the ONNX ops of the file.
  torchvision_zoo.py forward DIR NAME IN N S OUT
        runs DIR/NAME.pt in float64 on N prepared images (float32 N x 3 x S x S,
        from `medsearch embed --dump-input`; a one-channel model gets the first)
        and writes the N x K outputs as float32.
  torchvision_zoo.py compare GOT WANT N TOL
        exits 1 unless the two N-row float32 files agree within TOL times the
        largest absolute reference value; prints the error either way.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# What each topology brings (checked by the test against the exported ops):
HEADS = {
    # the DenseNet-121 chest X-ray models are built on: standalone BatchNorm,
    # Concat, AveragePool behind a zero Pad
    "densenet121": "classifier",
    # HardSwish (HardSigmoid x Mul at opset 13), HardSigmoid squeeze-excite gates
    "mobilenet_v3_small": "classifier",
    # ReduceMean over height and width as its global pooling
    "mnasnet0_5": "classifier",
    # SiLU (Sigmoid x Mul), squeeze-excite
    "efficientnet_b0": "classifier",
    # grouped convolutions, squeeze-excite with ReLU
    "regnet_y_400mf": "fc",
    # Concat of parallel branches, ceil-mode MaxPool; its classifier is a Conv
    # then a global average pool, kept
    "squeezenet1_1": None,
    # Inception branches, ceil-mode pools
    "googlenet": "fc",
    # DenseNet-121 taking one grey channel, as torchxrayvision's chest X-ray models do
    "densenet121_grey": "classifier",
    # ResNet-18 flattened by x.view(x.size(0), -1), as much hand-written code does:
    # with a dynamic batch, Shape, Gather, Unsqueeze and Concat compute the shape
    "resnet18_view": "fc",
    # ... and one squeezed by x.squeeze(-1).squeeze(-1): two Squeeze nodes
    "resnet18_squeeze": "fc",
    # ResNet-18 with its ReLUs swapped for the activations of other CNN
    # families (PReLU per channel and shared, LeakyReLU, ELU, SELU, Softplus, Tanh)
    "resnet18_acts": "fc",
    # ResNet-18 taking channels-last images [N, H, W, 3], permuted to NCHW first
    # (how Keras models come through tf2onnx): a Transpose on the input
    "resnet18_nhwc": "fc",
    # ResNet-18 pooled by nn.AvgPool2d(7), as older code and TF-slim's 7x7
    # AvgPool do: an AveragePool whose kernel covers the 7x7 map at 224
    "resnet18_avgpool7": "fc",
    # ResNet-18 with its ImageNet classifier kept (fc, 1000 logits), as users
    # export whole classifiers: the head is left out of the default feature
    "resnet18_classifier": None,
    # MobileNetV3-Small whole: its classifier is two dense layers (Linear,
    # Hardswish, Dropout, Linear), all left out of the default feature
    "mobilenet_v3_small_classifier": None,
    # ConvNeXt-Tiny whole: channels-last blocks between Transposes (LayerNorm
    # as ReduceMean, Sub, Pow, Sqrt, Div at opset 13; Linear as MatMul; GELU
    # as Erf), a LayerNorm of the pooled vector before its classifier
    "convnext_tiny": None,
    # ConvNeXt-Tiny with its head's LayerNorm on the flattened vector, as the
    # original ConvNeXt code has it (norm(x.mean([-2, -1]))): a layer norm of [N, C]
    "convnext_tiny_flatnorm": None,
    # GoogLeNet as torchvision builds it for its ImageNet weights (transform_input):
    # each input channel rescaled first, as Gather, Unsqueeze, Mul, Add, Concat
    "googlenet_ti": "fc",
    # a torchxrayvision-style chest X-ray classifier: DenseNet-121 on one grey
    # channel, 18 findings, its sigmoid scores calibrated by op_norm (thresholds,
    # boolean masks: NonZero, ScatterND and shape arithmetic MedSearch does not run)
    "densenet121_xrv_grey": None,
}



def channels(name):
    return 1 if name.endswith("_grey") else 3


def nhwc(name):
    return name.endswith("_nhwc")


# One seed for every model; with it each export is well conditioned: PyTorch's
# float32 output is within 1e-5 of its float64 output (some other seeds give
# EfficientNet activations in the hundreds and a float32 error of 2e-4).
SEED = 11


def build(name, seed):
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name.startswith("googlenet") else {}
    if name.endswith("_ti"):
        kwargs["transform_input"] = True
    base = name.replace("_grey", "").replace("_view", "").replace("_squeeze", "").replace("_acts", "").replace("_nhwc", "").replace("_avgpool7", "").replace("_classifier", "").replace("_flatnorm", "")
    base = base[:-len("_ti")] if base.endswith("_ti") else base
    base = base.replace("_xrv", "")
    model = getattr(torchvision.models, base)(weights=None, **kwargs)
    if channels(name) == 1:
        model.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    if name.endswith("_view"):
        class View(torch.nn.Module):
            def forward(self, x):
                return x.view(x.size(0), -1)
        model.avgpool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), View())
    if name.endswith("_squeeze"):
        class Squeeze(torch.nn.Module):
            def forward(self, x):
                return x.squeeze(-1).squeeze(-1)
        model.avgpool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), Squeeze())
    if name.endswith("_avgpool7"):
        model.avgpool = torch.nn.AvgPool2d(7)
    if name.endswith("_acts"):
        nn = torch.nn
        model.relu = nn.PReLU(64)
        with torch.no_grad():  # a different slope per channel, some negative
            model.relu.weight.uniform_(-0.3, 0.6)
        swaps = [(model.layer1, lambda: nn.LeakyReLU(0.1)), (model.layer2, lambda: nn.ELU(0.5)),
                 (model.layer3[0], None, nn.SELU()), (model.layer3[1], None, nn.Softplus()),
                 (model.layer4[0], None, nn.Tanh()), (model.layer4[1], None, nn.PReLU(1, init=0.3))]
        for swap in swaps:
            if len(swap) == 2:
                for block in swap[0]:
                    block.relu = swap[1]()
            else:
                swap[0].relu = swap[2]
    if name.endswith("_flatnorm"):
        model.classifier = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.LayerNorm(768, eps=1e-6),
                                               torch.nn.Linear(768, 1000))
    if base.startswith("convnext"):
        # torchvision starts layer scales at 1e-6 and LayerNorms at the identity,
        # which would leave every block's own computation out of the comparison
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("layer_scale"):
                    p.uniform_(0.2, 1.0)
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
    if "_xrv" in name:
        model = ChestXrayClassifier(model)
    head = HEADS[name]
    if head:
        setattr(model, head, torch.nn.Identity())
    if nhwc(name):
        class ChannelsLast(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x.permute(0, 3, 1, 2))
        model = ChannelsLast(model)
    return model


def op_norm(outputs, op_threshs):
    """torchxrayvision's calibration of sigmoid scores against per-finding thresholds."""
    import torch
    op_threshs = op_threshs.expand(outputs.shape[0], -1)
    outputs_new = torch.zeros(outputs.shape, device=outputs.device)
    mask_leq = outputs < op_threshs
    outputs_new[mask_leq] = outputs[mask_leq] / (op_threshs[mask_leq] * 2)
    outputs_new[~mask_leq] = 1.0 - ((1.0 - outputs[~mask_leq]) / ((1 - op_threshs[~mask_leq]) * 2))
    return outputs_new


def ChestXrayClassifier(densenet):
    import torch
    import torch.nn.functional as F

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = densenet.features
            self.classifier = torch.nn.Linear(1024, 18)
            self.register_buffer("op_threshs", torch.rand(18) * 0.8 + 0.1)

        def forward(self, x):
            f = self.features(x)
            out = F.adaptive_avg_pool2d(F.relu(f), (1, 1)).view(f.size(0), -1)
            return op_norm(torch.sigmoid(self.classifier(out)), self.op_threshs)
    return Classifier()


def cmd_export(d, names):
    import onnx
    import torch
    from make_resnet50 import calibrate

    torch.set_num_threads(2)
    for name in names:
        model = build(name, SEED)
        # measured statistics, not perturbed ones: perturbed, EfficientNet becomes so
        # ill-conditioned that PyTorch's own float32 and float64 outputs differ by 1e-2
        calibrate(model.inner if nhwc(name) else model, SEED, perturb=False, channels=channels(name))
        torch.save(model.state_dict(), os.path.join(d, name + ".pt"))
        path = os.path.join(d, name + ".onnx")
        shape = (1, 224, 224, channels(name)) if nhwc(name) else (1, channels(name), 224, 224)
        torch.onnx.export(model, torch.zeros(*shape), path, opset_version=13,
                          input_names=["input"], output_names=["features"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}})
        ops = sorted({n.op_type for n in onnx.load(path).graph.node})
        print(name, ",".join(ops))


def cmd_forward(d, name, inp, n, s, out):
    import torch

    torch.set_num_threads(2)
    model = build(name, 0)
    model.load_state_dict(torch.load(os.path.join(d, name + ".pt")))
    model.eval()
    x = torch.from_numpy(np.fromfile(inp, dtype=np.float32).reshape(n, 3, s, s))
    if channels(name) == 1:  # MedSearch feeds the grey channel three times
        x = x[:, :1]
    if nhwc(name):  # MedSearch feeds NCHW, having folded the model's Transpose
        x = x.permute(0, 2, 3, 1)
    with torch.no_grad():  # in float64: the reference, not another float32 rounding
        y = model.double()(x.double()).reshape(n, -1).numpy().astype(np.float32)
    y.tofile(out)


def cmd_compare(got, want, n, tol):
    g = np.fromfile(got, dtype=np.float32).reshape(n, -1)
    w = np.fromfile(want, dtype=np.float32).reshape(n, -1)
    if g.shape != w.shape:
        print(f"shapes differ: {g.shape} against {w.shape}")
        return 1
    scale = float(np.abs(w).max())
    err = float(np.abs(g - w).max()) / scale if scale > 0 else float(np.abs(g - w).max())
    print(f"{g.shape[1]}-d, max error {err:.2e} of the largest value ({scale:.3g})")
    return 0 if err <= tol and np.isfinite(g).all() else 1


def main(argv):
    if len(argv) >= 3 and argv[1] == "export":
        cmd_export(argv[2], argv[3:])
        return 0
    if len(argv) == 8 and argv[1] == "forward":
        cmd_forward(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]), argv[7])
        return 0
    if len(argv) == 6 and argv[1] == "compare":
        return cmd_compare(argv[2], argv[3], int(argv[4]), float(argv[5]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
