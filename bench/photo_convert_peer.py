#!/usr/bin/python3
"""Python peer of imgstore-photo-convert-bench: the plain Pillow loop a user would write.

For every file of --list (one path per line), in order, on one thread:
    Image.open(path) -> .convert("RGB") -> resize to short side --short (long side
    int(short * long / short_side), as torchvision's Resize(S) and imgstore's --resize-short),
    Image.BILINEAR -> save as JPEG, quality --quality, into one file per image under --out.
Nothing is flushed to disk (imgstore-convert runs with --no-fsync against it). The output
folder is removed before each run, outside the timing.

Output: one JSON object per run on stdout:
    {"run": r, "images": n, "seconds": wall, "cpu_seconds": user+sys, "bytes": bytes written}
and a last line {"peak_rss_bytes": ...}. Errors on stderr.
Run with Debian's interpreter: /usr/bin/python3 bench/photo_convert_peer.py --list L --out D
"""
import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

try:
    from PIL import Image
except ImportError as e:  # the bench tells "no Pillow" from a failure by this status
    print(f"photo_convert_peer: error: {e}", file=sys.stderr)
    sys.exit(3)


def target_size(width, height, short):
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def convert_all(paths, out, short, quality):
    written = 0
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        small = rgb.resize(target_size(rgb.width, rgb.height, short), Image.BILINEAR)
        dest = out / f"{i:08}.jpg"
        small.save(dest, format="JPEG", quality=quality)
        written += dest.stat().st_size
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", required=True, help="file with one image path per line")
    ap.add_argument("--out", required=True, help="scratch folder for the JPEGs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--short", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    paths = [line for line in Path(args.list).read_text().splitlines() if line]
    out = Path(args.out)
    for run in range(1, args.runs + 1):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t0, c0 = time.perf_counter(), os.times()
        written = convert_all(paths, out, args.short, args.quality)
        t1, c1 = time.perf_counter(), os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        print(json.dumps({"run": run, "images": len(paths), "seconds": t1 - t0,
                          "cpu_seconds": cpu, "bytes": written}), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_bytes": peak}), flush=True)


if __name__ == "__main__":
    main()
