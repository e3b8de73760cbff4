#!/usr/bin/env python3
"""The loader's crop transforms (src/codecs/crop_transform) against torchvision 0.14 on PIL
images, on the real-photo fixture set (tests/fixtures/make_photo_fixtures.py --size small):

- eval: Resize(S * 256 // 224) + CenterCrop(S); and a crop RandomResizedCrop.get_params picks,
  through F.resized_crop(..., antialias=True). The decoded ("raw") path must be within 1 level of
  torchvision everywhere (it is Pillow's resampler; only float box coordinates differ); the
  fused JPEG path (DCT-scaled decode of the payload) is reported as PSNR and must stay above
  FUSED_PSNR_MIN dB on every image.
- RandomResizedCrop's sampler: the RNG streams differ (splitmix64 vs torch), so the
  distributions of area fraction, log aspect ratio, position and the fallback rate are
  compared with two-sample Kolmogorov-Smirnov statistics over many draws.
"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

SOURCE = os.environ.get("IMGSTORE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.environ.get("IMGSTORE_CODEC_TOOL") or os.path.join(
    os.environ.get("IMGSTORE_BUILD_DIR", "build"), "tests", "imgstore-codec-tool")
GENERATOR = os.path.join(SOURCE, "tests", "fixtures", "make_photo_fixtures.py")
RAW_MAX_DIFF = 1          # levels, decoded path vs torchvision
RAW_PSNR_MIN = 50.0       # dB, decoded path vs torchvision, every image
FUSED_PSNR_MIN = 28.0     # dB, fused JPEG path vs torchvision, every image
FUSED_MEAN_PSNR_MIN = 36.0
KS_MAX = 0.035            # two-sample KS statistic, 10000 draws each (p < 1e-4 at 0.035)
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def tool(*args):
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"codec tool {args}: {r.stderr}")
    return r.stdout


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def cxx(path, mode, size, tmp, rect=None):
    out = os.path.join(tmp, "out.raw")
    tool("transform", path, mode, size, out, *(rect if rect else ["eval"]))
    return np.fromfile(out, np.uint8).reshape(size, size, 3)


def photos(root):
    """Train/val images of the fixture, without the odd flavour files (16-bit, alpha...)."""
    index = json.load(open(os.path.join(root, "fixture_index.json")))
    flavours = set(index["flavours"].values())
    with open(os.path.join(root, "list.csv"), newline="", encoding="utf-8") as f:
        rows = [r["path"] for r in csv.DictReader(f)]
    out = []
    for rel in rows:
        path = os.path.join(root, rel)
        if rel in flavours:
            continue
        w, h = Image.open(path).size
        if min(w, h) >= 16:
            out.append(path)
    return out


def compare(paths, tmp):
    torch.manual_seed(3)
    stats = {}
    for k, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        is_jpeg = open(path, "rb").read(2) == b"\xff\xd8"
        for size in ((64, 112, 224)[k % 3],):  # one size per image: the test stays short
            want = np.asarray(T.CenterCrop(size)(T.Resize(size * 256 // 224)(img)))
            cases = [("eval", None, want)]
            # A crop torchvision's RandomResizedCrop would pick.
            y, x, ch, cw = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
            crop = np.asarray(F.resized_crop(img, y, x, ch, cw, [size, size],
                                             T.InterpolationMode.BILINEAR, antialias=True))
            cases.append(("rect", [x, y, cw, ch], crop))
            for name, rect, ref in cases:
                raw = cxx(path, "raw", size, tmp, rect)
                diff = int(np.abs(raw.astype(int) - ref).max())
                stats.setdefault(("raw", name, size), []).append(psnr(raw, ref))
                check(diff <= RAW_MAX_DIFF, f"{path} {name} {size}: raw max diff {diff}")
                if is_jpeg:
                    fused = cxx(path, "fused", size, tmp, rect)
                    stats.setdefault(("fused", name, size), []).append(psnr(fused, ref))
    for (mode, name, size), v in sorted(stats.items()):
        v = np.array(v)
        print(f"{mode:5s} {name:4s} S={size:3d}: {len(v)} images, PSNR min {v.min():.1f} "
              f"median {np.median(v):.1f} mean {v.mean():.1f} dB")
        bound = RAW_PSNR_MIN if mode == "raw" else FUSED_PSNR_MIN
        check(v.min() >= bound, f"{mode} {name} {size}: min PSNR {v.min():.1f} < {bound}")
        if mode == "fused":
            check(v.mean() >= FUSED_MEAN_PSNR_MIN,
                  f"fused {name} {size}: mean PSNR {v.mean():.1f} < {FUSED_MEAN_PSNR_MIN}")


def ks(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                               - np.searchsorted(b, grid, side="right") / len(b))))


def sampler_stats(h, w, n):
    ours = np.loadtxt(tool("rrc-plan", h, w, 224, 9, 0, n).splitlines(), dtype=np.int64)
    torch.manual_seed(0)
    img = torch.empty(1, h, w)
    rrc = T.RandomResizedCrop(224)
    theirs = []
    for _ in range(n):
        i, j, ch, cw = rrc.get_params(img, rrc.scale, rrc.ratio)
        theirs.append((j, i, cw, ch))
    theirs = np.array(theirs, dtype=np.int64)

    def features(a):
        x, y, cw, ch = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        return {"area": cw * ch / (w * h), "log_ratio": np.log(cw / ch),
                "x": (x + cw / 2) / w, "y": (y + ch / 2) / h}
    fo, ft = features(ours[:, :4]), features(theirs)
    for k in fo:
        d = ks(fo[k], ft[k])
        print(f"sampler {h}x{w} {k:9s}: KS {d:.4f}")
        check(d <= KS_MAX, f"sampler {h}x{w} {k}: KS {d:.4f} > {KS_MAX}")
    # torchvision's fallback crop is fixed for the size: how often it comes out (a random crop
    # landing exactly on it is negligible) against the C++ fallback flag.
    fb = ours[ours[:, 4] == 1]
    if len(fb):
        rate_theirs = float(np.mean(np.all(theirs == fb[0, :4], axis=1)))
        rate_ours = float(ours[:, 4].mean())
        print(f"sampler {h}x{w} fallback rate: C++ {rate_ours:.4f}, torchvision {rate_theirs:.4f}")
        check(abs(rate_ours - rate_theirs) <= 0.01,
              f"sampler {h}x{w}: fallback rate {rate_ours:.4f} vs {rate_theirs:.4f}")
    return ours


def main():
    n = 10000
    sampler_stats(480, 640, n)
    ours = sampler_stats(60, 400, n)  # wide: many tries fail, some fall back
    check(ours[:, 4].mean() > 0.01, "60x400 never fell back")
    with tempfile.TemporaryDirectory(prefix="imgstore-crop-") as tmp:
        root = os.path.join(tmp, "fx")
        subprocess.run([sys.executable, GENERATOR, "--out", root, "--size", "small"], check=True,
                       capture_output=True)
        paths = photos(root)
        print(f"{len(paths)} fixture photos")
        check(len(paths) >= 100, f"only {len(paths)} fixture photos")
        compare(paths, tmp)
    if failures:
        print(f"{len(failures)} failures")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
