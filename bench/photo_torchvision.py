#!/usr/bin/python3
"""torchvision's side of imgstore-photo-throughput: ImageFolder + RandomResizedCrop(S) +
RandomHorizontalFlip + ToTensor + Normalize, DataLoader batch 64, shuffled, on the original
image folder, for each S and each num_workers; torch threads 1. Prints JSON on stdout
({"images", "results": [{"size", "workers", "median", "min", "max"}]}), notes on stderr.

    photo_torchvision.py --root FIXTURE/train [--sizes 224,112,64] [--workers 0,2] [--runs 3]
                         [--limit N]

Files PIL cannot open (the fixture's deliberate junk) are left out, as imgstore-convert skips them.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.datasets import ImageFolder


class Folder(ImageFolder):
    """ImageFolder without hidden class folders (.ipynb_checkpoints), as imgstore-convert."""

    def find_classes(self, directory):
        classes = sorted(e.name for e in os.scandir(directory)
                         if e.is_dir() and not e.name.startswith("."))
        return classes, {c: i for i, c in enumerate(classes)}


def readable(path):
    if os.path.basename(path).startswith("."):
        return False
    try:
        with Image.open(path) as im:
            im.convert("RGB")
        return True
    except Exception:
        return False


def epoch(loader):
    n = 0
    start = time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--sizes", default="224,112,64")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="about N images, evenly spaced over the classes (0: all)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    folder = Folder(a.root, is_valid_file=readable)
    ds = folder
    if a.limit:
        ds = torch.utils.data.Subset(folder, range(0, len(folder), max(1, len(folder) // a.limit)))
    images = len(ds)
    for size in [int(s) for s in a.sizes.split(",")]:
        folder.transform = T.Compose([
            T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        for w in [int(x) for x in a.workers.split(",")]:
            loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True,
                                                 num_workers=w)
            epoch(loader)  # warm-up: page cache, worker start-up paths
            rates = [epoch(loader) for _ in range(a.runs)]
            results.append({"size": size, "workers": w, "median": statistics.median(rates),
                            "min": min(rates), "max": max(rates)})
            print(f"torchvision S={size} workers={w}: {results[-1]['median']:.0f} img/s",
                  file=sys.stderr, flush=True)
    json.dump({"images": images, "torch_threads": 1, "batch_size": a.batch_size,
               "results": results}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
