#!/usr/bin/python3
"""Reference side of the ResNet-50 end-to-end test (tests/unit/test_model_resnet.c).

Run with /usr/bin/python3: Debian's python3-torch, torchvision, onnx and PIL are
visible only to it.

  make_resnet50.py export DIR      a random-weight torchvision ResNet-50 v1.5, classifier
                                   removed (2048-d pooled output), with non-trivial BatchNorm
                                   statistics, exported to ONNX opset 13 twice:
                                     DIR/resnet50_folded.onnx  BatchNorm folded by the exporter,
                                                               no medsearch.* metadata
                                     DIR/resnet50_bn.onnx      BatchNormalization nodes kept,
                                                               ImageNet medsearch.* metadata
                                   plus random-pixel PNGs DIR/img*.png, their preparation with
                                   PIL following the image module's documented steps
                                   (DIR/pil_prepared.f32) and DIR/state.pt (the weights).
  make_resnet50.py forward DIR IN N OUT
                                   runs the same PyTorch model on N prepared NCHW images read
                                   from IN (float32) and writes N x 2048 float32 to OUT.
"""
import os
import sys

import numpy as np


def build_model(seed):
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)  # v1.5: stride 2 in the 3x3 conv
    model.fc = torch.nn.Identity()
    return model


def calibrate(model, seed, perturb=True, channels=3):
    """Gives every BatchNorm realistic running statistics (one training-mode pass over
    random images, so activations stay finite through 50 layers), then, with perturb,
    perturbs them so that folding them into the convolutions is really exercised.
    (tests/tools/torchvision_zoo.py calibrates without: perturbed, some networks,
    EfficientNet among them, become too ill-conditioned to compare in float32.)"""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, channels, 224, 224, generator=gen))
        for m in model.modules():
            if perturb and isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=gen))
    model.eval()


def export(model, path, keep_bn, metadata):
    import onnx
    import torch

    kwargs = dict(do_constant_folding=not keep_bn)
    if keep_bn:
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE  # model is in eval mode: BN nodes stay
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), path, opset_version=13,
                      input_names=["input"], output_names=["features"],
                      dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, **kwargs)
    m = onnx.load(path)
    ops = {n.op_type for n in m.graph.node}
    if keep_bn != ("BatchNormalization" in ops):
        raise SystemExit(f"export of {path}: BatchNormalization present = {not keep_bn}, unexpected")
    for k, v in metadata.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, path)


# The image module's documented preparation, with PIL: grey (Rec.601 luma, what PIL's
# convert("L") computes), whole-image Lanczos resize (no crop), 3 channels, normalise.
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def prepare(path, size):
    from PIL import Image

    im = Image.open(path)
    im = im.convert("L").resize((size, size), Image.LANCZOS)
    g = np.asarray(im, dtype=np.float32)
    return np.stack([(g - MEAN[c]) * np.float32(1.0 / STD[c]) for c in range(3)])


def write_images(d, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    # (width, height, mode): exact size, down-scaled, up-scaled, RGB-stored grey, 16-bit
    shapes = [(224, 224, "L"), (300, 260, "L"), (97, 120, "L"), (256, 256, "RGB")]
    names = []
    for i, (w, h, mode) in enumerate(shapes):
        if mode == "RGB":
            px = rng.integers(0, 256, (h, w, 1), dtype=np.uint8).repeat(3, axis=2)
        else:
            px = rng.integers(0, 256, (h, w), dtype=np.uint8)
        name = f"img{i}.png"
        Image.fromarray(px, mode).save(os.path.join(d, name))
        names.append(name)
    return names


def cmd_export(d, seed=7):
    import torch

    torch.set_num_threads(2)
    model = build_model(seed)
    calibrate(model, seed)
    torch.save(model.state_dict(), os.path.join(d, "state.pt"))
    export(model, os.path.join(d, "resnet50_folded.onnx"), keep_bn=False, metadata={})
    export(model, os.path.join(d, "resnet50_bn.onnx"), keep_bn=True,
           metadata={"medsearch.input_size": "224", "medsearch.color": "rgb",
                     "medsearch.mean": "123.675,116.28,103.53", "medsearch.std": "58.395,57.12,57.375",
                     "medsearch.feature_output": "features"})
    names = write_images(d, seed)
    prep = np.stack([prepare(os.path.join(d, n), 224) for n in names]).astype(np.float32)
    prep.tofile(os.path.join(d, "pil_prepared.f32"))
    with open(os.path.join(d, "images.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


def cmd_forward(d, inp, n, out):
    import torch

    torch.set_num_threads(2)
    model = build_model(7)
    model.load_state_dict(torch.load(os.path.join(d, "state.pt")))
    model.eval()
    x = torch.from_numpy(np.fromfile(inp, dtype=np.float32).reshape(n, 3, 224, 224))
    with torch.no_grad():
        y = model(x).numpy().astype(np.float32)
    if not np.isfinite(y).all() or np.abs(y).max() == 0:
        raise SystemExit("reference features are not finite or all zero")
    y.tofile(out)


def main(argv):
    if len(argv) >= 3 and argv[1] == "export":
        cmd_export(argv[2])
    elif len(argv) == 6 and argv[1] == "forward":
        cmd_forward(argv[2], argv[3], int(argv[4]), argv[5])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
