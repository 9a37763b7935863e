#!/usr/bin/python3
"""DICOM files written by pydicom, and the 8-bit gray image MedSearch must
make of each, worked out here independently of the C code.

    dicom_cases.py OUTDIR [SHARED_DICOM_DIR]

Writes OUTDIR/NAME.dcm and OUTDIR/NAME.gray (rows x cols uint8, row-major)
for every case, and OUTDIR/cases.tsv (name, rows, cols). With
SHARED_DICOM_DIR, the square .dcm files there get a .gray too (written
as shared_NAME).

The pixels come from pydicom's own decoders (native, RLE, and JPEG through
Pillow); the display pipeline below follows PS3.3 C.11 and
docs/image.md ("DICOM"): rescale, then the first window (LINEAR,
LINEAR_EXACT, SIGMOID) or the VOI LUT, or else the frame's value range
(padding left out), rounded half up, MONOCHROME1 inverted, padding black;
colour to Rec.601 luma in PIL's fixed point. Needs Debian's python3-pydicom, python3-numpy, python3-pil.
"""
import io
import math
import os
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEGBaseline8Bit,
                         RLELossless, generate_uid)
from PIL import Image


# ---- the expected gray image ----

def first_number(v):
    if v is None:
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        v = v[0]
    return float(v)


def round_half_up(y):
    return np.clip(np.floor(y + 0.5), 0, 255)


def window(ds, m):
    c = first_number(ds.get("WindowCenter"))
    w = first_number(ds.get("WindowWidth"))
    if c is None or w is None:
        return None
    fn = str(ds.get("VOILUTFunction", "LINEAR")).strip() or "LINEAR"
    if fn == "SIGMOID":
        return None if w <= 0 else 255.0 / (1.0 + np.exp(-4.0 * (m - c) / w))
    if fn == "LINEAR_EXACT":
        if w <= 0:
            return None
        y = (m - c) / w * 255.0 + 127.5
        return np.where(m <= c - w / 2, 0.0, np.where(m > c + w / 2, 255.0, y))
    if w < 1:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        y = ((m - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.zeros_like(m)
    return np.where(m <= c - 0.5 - (w - 1) / 2, 0.0, np.where(m > c - 0.5 + (w - 1) / 2, 255.0, y))


def voi_lut(ds, m):
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    entries, first, bits = item.LUTDescriptor
    entries = entries or 65536
    data = np.frombuffer(item["LUTData"].value if isinstance(item["LUTData"].value, bytes)
                         else np.asarray(item.LUTData, dtype="<u2").tobytes(), dtype="<u2")[:entries]
    idx = np.clip(np.floor(m) - first, 0, entries - 1).astype(np.int64)
    top = float((1 << bits) - 1)
    return np.minimum(data[idx].astype(np.float64), top) * 255.0 / top


def jpeg_as_rgb(ds):
    """A colour JPEG frame as libjpeg converts it to RGB (pydicom keeps
    YBR_FULL_422 data in YCbCr)."""
    frame = next(pydicom.encaps.generate_pixel_data_frame(ds.PixelData, int(ds.get("NumberOfFrames", 1))))
    return np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))


def padding_mask(ds, v):
    """The pixels whose stored value is Pixel Padding Value (up to Pixel
    Padding Range Limit): outside the image, PS3.3 C.7.5.1.1.2."""
    p = ds.get("PixelPaddingValue")
    if p is None:
        return np.zeros(v.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit", p)
    return (v >= min(p, limit)) & (v <= max(p, limit))


def expected_gray(ds):
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1)) > 1:
        arr = arr[0]
    photo = str(ds.PhotometricInterpretation)
    if ds.SamplesPerPixel == 3 and ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
        arr = jpeg_as_rgb(ds)
    if ds.SamplesPerPixel == 3:
        a = arr.astype(np.uint32)
        if photo == "YBR_FULL":
            return a[..., 0].astype(np.uint8)
        return ((19595 * a[..., 0] + 38470 * a[..., 1] + 7471 * a[..., 2] + 32768) >> 16).astype(np.uint8)
    v = arr.astype(np.float64)
    pad = padding_mask(ds, v)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    m = v * slope + intercept
    y = window(ds, m)
    if y is None:
        y = voi_lut(ds, m)
    if y is None:
        plain8 = ds.BitsStored == 8 and ds.PixelRepresentation == 0 and slope == 1.0 and intercept == 0.0
        if plain8:
            y = v
        else:
            image = m[~pad] if (~pad).any() else np.zeros(1)
            lo, hi = image.min(), image.max()
            y = (m - lo) * 255.0 / (hi - lo) if hi > lo else np.zeros_like(m)
    g = round_half_up(y).astype(np.uint8)
    g = (255 - g) if photo == "MONOCHROME1" else g
    g[pad] = 0
    return g


# ---- writing cases ----

def new_dataset(syntax, rows, cols, samples=1, photo="MONOCHROME2", bits=8, stored=None, signed=0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = syntax != ExplicitVRBigEndian
    ds.is_implicit_VR = syntax == ImplicitVRLittleEndian
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photo
    ds.BitsAllocated = bits
    ds.BitsStored = stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = signed
    if samples == 3:
        ds.PlanarConfiguration = 0
    return ds


def radiograph(rows, cols, lo, hi, seed):
    """A smooth chest-like picture with noise, values in [lo, hi]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = np.sin(x / cols * math.pi) * np.cos((y / rows - 0.5) * math.pi)
    base += 0.15 * rng.standard_normal((rows, cols))
    base = (base - base.min()) / (base.max() - base.min())
    return np.round(lo + base * (hi - lo))


def save(ds, out, name, cases):
    path = os.path.join(out, name + ".dcm")
    ds.save_as(path, write_like_original=False)
    back = pydicom.dcmread(path)  # the expectation comes from the file as written
    g = expected_gray(back)
    g.tofile(os.path.join(out, name + ".gray"))
    cases.append((name, g.shape[0], g.shape[1]))


def jpeg_bytes(arr, mode):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_cases(out):
    cases = []
    n = 48
    # 12 bits in 16, each native syntax
    for syntax, tag in ((ImplicitVRLittleEndian, "implicit"), (ExplicitVRLittleEndian, "explicit"),
                        (ExplicitVRBigEndian, "bigendian")):
        ds = new_dataset(syntax, n, n, bits=16, stored=12)
        ds.PixelData = radiograph(n, n, 37, 4000, 1).astype("<u2" if syntax != ExplicitVRBigEndian else ">u2").tobytes()
        save(ds, out, "mono16_" + tag, cases)

    # signed CT-like values, rescale and each window function, MONOCHROME1
    for fn in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        ds = new_dataset(ExplicitVRLittleEndian, n, n, bits=16, stored=16, signed=1)
        ds.PixelData = radiograph(n, n, -2000, 3000, 2).astype("<i2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-100"
        ds.WindowCenter, ds.WindowWidth = ["250", "40"], ["1400", "80"]
        ds.VOILUTFunction = fn
        save(ds, out, "window_" + fn.lower(), cases)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, photo="MONOCHROME1", bits=16, stored=10)
    ds.PixelData = radiograph(n, n, 0, 1023, 3).astype("<u2").tobytes()
    save(ds, out, "mono1_range", cases)

    # Pixel Padding Value: a MONOCHROME1 CR padded with 4095 around the
    # collimated field, no window (the range leaves the padding out); and
    # signed MONOCHROME1 values with a padding range under a window (which
    # would show the padding white)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, photo="MONOCHROME1", bits=16, stored=12)
    img = radiograph(n, n, 100, 3000, 12)
    img[:, :6] = 4095
    img[-5:, :] = 4095
    ds.PixelData = img.astype("<u2").tobytes()
    ds.add_new(0x00280120, "US", 4095)
    save(ds, out, "padding_range", cases)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, photo="MONOCHROME1", bits=16, stored=16, signed=1)
    img = radiograph(n, n, -1000, 3000, 13)
    img[:4, :] = -2000
    img[:, -7:] = -1950
    ds.PixelData = img.astype("<i2").tobytes()
    ds.add_new(0x00280120, "SS", -1900)
    ds.add_new(0x00280121, "SS", -2048)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.WindowCenter, ds.WindowWidth = "0", "2000"
    save(ds, out, "padding_window", cases)

    # a VOI LUT and no window
    ds = new_dataset(ExplicitVRLittleEndian, n, n, bits=16, stored=12)
    ds.PixelData = radiograph(n, n, 0, 4095, 4).astype("<u2").tobytes()
    item = Dataset()
    item.LUTDescriptor = [3000, 500, 12]
    lut = np.round(4095 * (np.linspace(0, 1, 3000) ** 0.6)).astype("<u2")
    item.add_new(0x00283006, "OW", lut.tobytes())
    ds.VOILUTSequence = Sequence([item])
    save(ds, out, "voi_lut", cases)

    # 8-bit: as stored; RGB interleaved; RLE of 16-bit and of RGB
    ds = new_dataset(ExplicitVRLittleEndian, n, n)
    ds.PixelData = radiograph(n, n, 10, 240, 5).astype(np.uint8).tobytes()
    save(ds, out, "mono8", cases)
    rgb = np.stack([radiograph(n, n, 0, 255, s) for s in (6, 7, 8)], axis=-1).astype(np.uint8)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, samples=3, photo="RGB")
    ds.PixelData = rgb.tobytes()
    save(ds, out, "rgb", cases)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, bits=16, stored=14)
    ds.compress(RLELossless, radiograph(n, n, 0, 16383, 9).astype("<u2"), encoding_plugin="pydicom")
    save(ds, out, "rle16", cases)
    ds = new_dataset(ExplicitVRLittleEndian, n, n, samples=3, photo="RGB")
    ds.compress(RLELossless, rgb, encoding_plugin="pydicom")
    save(ds, out, "rle_rgb", cases)

    # JPEG Baseline: grey with a window, colour, and two frames (with and
    # without a Basic Offset Table)
    grey = radiograph(n, n, 0, 255, 10).astype(np.uint8)
    ds = new_dataset(JPEGBaseline8Bit, n, n)
    ds.PixelData = encapsulate([jpeg_bytes(grey, "L")])
    ds.WindowCenter, ds.WindowWidth = "100", "120"
    save(ds, out, "jpeg_window", cases)
    ds = new_dataset(JPEGBaseline8Bit, n, n, samples=3, photo="YBR_FULL_422")
    ds.PixelData = encapsulate([jpeg_bytes(rgb, "RGB")])
    save(ds, out, "jpeg_colour", cases)
    other = radiograph(n, n, 0, 255, 11).astype(np.uint8)
    for bot in (True, False):
        ds = new_dataset(JPEGBaseline8Bit, n, n, photo="MONOCHROME1")
        ds.NumberOfFrames = 2
        ds.PixelData = encapsulate([jpeg_bytes(grey, "L"), jpeg_bytes(other, "L")], has_bot=bot)
        save(ds, out, "jpeg_frames_" + ("bot" if bot else "nobot"), cases)

    with open(os.path.join(out, "cases.tsv"), "w") as f:
        for name, rows, cols in cases:
            f.write(f"{name}\t{rows}\t{cols}\n")
    return cases


def shared_cases(out, shared):
    rows = []
    for name in sorted(os.listdir(shared)):
        if not name.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(os.path.join(shared, name))
        if ds.Rows != ds.Columns:
            continue
        g = expected_gray(ds)
        base = "shared_" + name[:-4]
        g.tofile(os.path.join(out, base + ".gray"))
        os.symlink(os.path.abspath(os.path.join(shared, name)), os.path.join(out, base + ".dcm"))
        rows.append((base, g.shape[0], g.shape[1]))
    with open(os.path.join(out, "cases.tsv"), "a") as f:
        for name, r, c in rows:
            f.write(f"{name}\t{r}\t{c}\n")


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    write_cases(sys.argv[1])
    if len(sys.argv) > 2:
        shared_cases(sys.argv[1], sys.argv[2])
