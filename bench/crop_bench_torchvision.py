#!/usr/bin/python3
"""torchvision's side of imgstore-crop-bench: per image on one thread (one process, no
DataLoader), Image.open + convert("RGB") + RandomResizedCrop(S) + RandomHorizontalFlip on the
same JPEG files, at S = 224, 112, 64. Prints images/s; compare with imgstore-crop-bench's
"fused" and "full" columns (same files, same machine, same run).

    crop_bench_torchvision.py [--dir DIR] [--seconds S]
"""
import argparse
import io
import os
import time

import torch
import torchvision.transforms as T
from PIL import Image


def load_jpegs(root):
    out = []
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            if not data.startswith(b"\xff\xd8"):
                continue
            try:
                Image.open(io.BytesIO(data)).convert("RGB")
            except Exception:
                continue  # truncated flavours are not what this measures
            out.append(data)
    return out


def images_per_s(jpegs, transform, seconds):
    for data in jpegs:  # warm-up
        transform(Image.open(io.BytesIO(data)).convert("RGB"))
    n, start = 0, time.perf_counter()
    while True:
        for data in jpegs:
            transform(Image.open(io.BytesIO(data)).convert("RGB"))
        n += len(jpegs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/usr/lib/python3/dist-packages/skimage/data")
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    jpegs = load_jpegs(args.dir)
    print(f"{len(jpegs)} JPEG images under {args.dir}; images/s on one thread (torchvision "
          f"{__import__('torchvision').__version__}, PIL)")
    print("   S  torchvision")
    for size in (224, 112, 64):
        t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
        print(f"{size:4d}  {images_per_s(jpegs, t, args.seconds):11.0f}")


if __name__ == "__main__":
    main()
