#!/usr/bin/env python3
"""imgstore-convert on the real-photo fixtures' list.csv with --resize 64x64 (and --channels 1)
gives, in the HDF5 store read with h5py, the pixels of Pillow's
    Image.open(f).convert("RGB" | "L").resize((64, 64), Image.BILINEAR)
for every file, in the list's order, with its label.

Tolerance: PNG files must match exactly (lossless decode, bit-exact resampler). JPEG files
go through libjpeg-turbo on both sides (Debian's Pillow links the same library with the same
defaults, islow IDCT and fancy upsampling), so they are expected exact too; a decoder
difference of at most JPEG_TOLERANCE grey levels after the resize is accepted, and the worst
difference and the lowest PSNR are printed."""
import csv
import math
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
from PIL import Image

CONVERT = os.environ.get("IMGSTORE_CONVERT") or os.path.join(
    os.environ.get("IMGSTORE_BUILD_DIR", "build"), "imgstore-convert")
SOURCE_DIR = os.environ.get("IMGSTORE_SOURCE_DIR", ".")
GENERATOR = os.path.join(SOURCE_DIR, "tests", "fixtures", "make_photo_fixtures.py")
SIZE = 64
JPEG_TOLERANCE = 1  # grey levels, max abs difference per pixel (JPEG sources only)
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def run(*args):
    r = subprocess.run([*map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")


def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(photos, out, channels):
    mode = "RGB" if channels == 3 else "L"
    with open(os.path.join(photos, "list.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    worst, lowest, checked = 0, math.inf, {"PNG": 0, "JPEG": 0}
    for split in sorted({r["split"] for r in rows}):
        part = [r for r in rows if r["split"] == split]
        with h5py.File(os.path.join(out, f"{split}.h5"), "r") as h5:
            images, labels = h5["images"][:], h5["labels"][:]
        check(images.shape == (len(part), SIZE, SIZE, channels),
              f"{split} {mode}: images {images.shape}, want {(len(part), SIZE, SIZE, channels)}")
        if images.shape[0] != len(part):
            continue
        for i, row in enumerate(part):
            path = os.path.join(photos, row["path"])
            check(int(labels[i]) == int(row["label"]), f"{row['path']}: label {labels[i]}")
            with Image.open(path) as im:
                kind = im.format  # told by content: a PNG named .JPEG is "PNG"
                ref = np.asarray(im.convert(mode).resize((SIZE, SIZE), Image.BILINEAR))
            got = images[i].reshape(ref.shape)
            diff = int(np.abs(got.astype(int) - ref).max())
            checked[kind] = checked.get(kind, 0) + 1
            if kind == "PNG":
                check(diff == 0, f"{row['path']} {mode}: PNG differs from Pillow by {diff}")
            else:
                worst, lowest = max(worst, diff), min(lowest, psnr(got, ref))
                check(diff <= JPEG_TOLERANCE,
                      f"{row['path']} {mode}: JPEG differs from Pillow by {diff}")
    check(checked["PNG"] > 0 and checked["JPEG"] > 0, f"{mode}: both kinds compared {checked}")
    print(f"{mode}: {checked} compared; JPEG max abs diff {worst}, lowest PSNR {lowest:.1f} dB")


def main():
    if not os.path.exists(CONVERT):
        sys.exit(f"imgstore-convert not built at {CONVERT}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(tmp, "photos")
        run(sys.executable, GENERATOR, "--size", "small", "--out", photos)
        for channels in (3, 1):
            out = os.path.join(tmp, f"out{channels}")
            run(CONVERT, "convert", os.path.join(photos, "list.csv"), "--resize", f"{SIZE}x{SIZE}",
                "--channels", channels, "--to", "hdf5", "--out", out, "--quiet")
            compare(photos, out, channels)
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("photo stores match Pillow's convert().resize(BILINEAR)")


if __name__ == "__main__":
    main()
