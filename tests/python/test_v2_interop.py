#!/usr/bin/env python3
"""Format version 2 read from Python exactly as README.md documents it: stores of photos of
every size, converted from the real-photo fixtures' list.csv without resizing.

- raw (LMDB, HDF5 ragged) and png (PNG folder) stores: every record equals Pillow's
  Image.open(f).convert("RGB") of its file (PNG sources exactly; JPEG sources within
  JPEG_TOLERANCE grey levels, libjpeg-turbo on both sides), with its label;
- jpeg stores (LMDB, HDF5 ragged) with nothing resized: every JPEG file that can be stored as it
  is (baseline or progressive YCbCr/gray, not CMYK) is stored byte for byte; the others decode to
  the same picture within a PSNR bound; every record's checksum is
  xxh3_64(payload, seed=label) as the manifest says;
- the manifest's variable_size, bounds and format_version;
- --resize-short S and --max-side S: the sizes of torchvision's Resize(S) (long side
  int(S * long / short)) and of a max-side cap (short side floor(short * S / long)), and the
  pixels of Pillow's resize(size, BILINEAR) (antialiased), exactly for PNG sources and within
  JPEG_TOLERANCE for JPEG ones; the PSNR is printed.
"""
import csv
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import h5py
import lmdb
import numpy as np
import xxhash
from PIL import Image

CONVERT = os.environ.get("IMGSTORE_CONVERT") or os.path.join(
    os.environ.get("IMGSTORE_BUILD_DIR", "build"), "imgstore-convert")
SOURCE_DIR = os.environ.get("IMGSTORE_SOURCE_DIR", ".")
GENERATOR = os.path.join(SOURCE_DIR, "tests", "fixtures", "make_photo_fixtures.py")
JPEG_TOLERANCE = 1
REENCODED_MIN_PSNR = 30.0
DCT_MIN_PSNR = 30.0  # --jpeg-dct-scaling vs PIL's full-size decode then resize  # CMYK and other JPEGs re-encoded at quality 90
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def run(*args):
    r = subprocess.run([*map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} exited {r.returncode}: {r.stderr}")
    return r.stdout


def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# ---- the README's readers ----

def lmdb_records(path):
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=2)
    meta = env.open_db(b"__imgstore__")
    with env.begin() as txn:
        manifest = json.loads(txn.get(b"manifest", db=meta))
        out = []
        for i in range(manifest["count"]):
            v = txn.get(b"%08d" % i)
            enc, c, (h, w, label) = v[6], v[7], struct.unpack_from("<IIi", v, 8)
            payload = bytes(v[32:])
            out.append((enc, (h, w, c), label, payload))
    env.close()
    return manifest, out


def h5_records(path):
    with h5py.File(path, "r") as f:
        manifest = json.loads(f.attrs["imgstore_manifest"])
        o, s = f["offsets"][:], f["shapes"][:]
        images, labels, sums = f["images"], f["labels"][:], f["checksums"][:]
        out = [(tuple(int(x) for x in s[i]), int(labels[i]), images[o[i]:o[i + 1]].tobytes(),
                int(sums[i])) for i in range(len(labels))]
        version = int(f.attrs["imgstore_format_version"])
    return manifest, version, out


def pixels_of(payload, shape, jpeg):
    if jpeg:
        return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    return np.frombuffer(payload, np.uint8).reshape(shape)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(tmp, "photos")
        run(sys.executable, GENERATOR, "--size", "small", "--out", photos)
        lst = os.path.join(photos, "list.csv")
        run(CONVERT, "convert", lst, "--to", "lmdb,hdf5,png", "--out", os.path.join(tmp, "raw"),
            "--quiet")
        run(CONVERT, "convert", lst, "--to", "lmdb,hdf5", "--encoding", "jpeg", "--out",
            os.path.join(tmp, "jpeg"), "--quiet")
        with open(lst, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for split in sorted({r["split"] for r in rows}):
            part = [r for r in rows if r["split"] == split]
            check_split(tmp, photos, split, part)
        for flag, value in (("--resize-short", 48), ("--max-side", 64)):
            out_dir = os.path.join(tmp, flag.strip("-"))
            run(CONVERT, "convert", lst, "--to", "hdf5", flag, value, "--out", out_dir, "--quiet")
            check_resized(out_dir, photos, rows, flag, value)
        # --jpeg-dct-scaling trades PIL-exactness for speed: measured, bounded by PSNR.
        out_dir = os.path.join(tmp, "dct")
        run(CONVERT, "convert", lst, "--to", "hdf5", "--max-side", 64, "--jpeg-dct-scaling",
            "--out", out_dir, "--quiet")
        check_resized(out_dir, photos, rows, "--max-side", 64, DCT_MIN_PSNR)
        # verify --against a lossy store measures instead of failing.
        out = run(CONVERT, "verify", os.path.join(tmp, "jpeg", "val.lmdb"), "--against",
                  os.path.join(tmp, "raw", "val.h5"), "--json")
        j = json.loads(out)
        check("psnr_db" in j and "max_abs_diff" in j, f"verify --against JSON: {j}")
        print(f"val jpeg vs raw: max abs diff {j.get('max_abs_diff')}, PSNR {j.get('psnr_db')}")
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("ok")


def resized_size(w, h, flag, s):
    lo, hi = min(w, h), max(w, h)
    if flag == "--resize-short":
        lo, hi = s, int(s * hi / min(w, h))
    elif hi > s:
        lo, hi = max(1, lo * s // hi), s
    return (hi, lo) if w >= h else (lo, hi)


def check_resized(out_dir, photos, rows, flag, value, min_psnr=None):
    """Exact against PIL (min_psnr None), or every JPEG record at least min_psnr dB."""
    worst, lowest, mean = 0, math.inf, []
    for split in sorted({r["split"] for r in rows}):
        part = [r for r in rows if r["split"] == split]
        _, _, recs = h5_records(os.path.join(out_dir, f"{split}.h5"))
        check(len(recs) == len(part), f"{flag}: {split} has {len(recs)} records")
        for r, (shape, label, payload, _) in zip(part, recs):
            with Image.open(os.path.join(photos, r["path"])) as im:
                is_jpeg = im.format == "JPEG"
                rgb = im.convert("RGB")
            size = resized_size(rgb.width, rgb.height, flag, value)
            want = np.asarray(rgb.resize(size, Image.BILINEAR))
            got = pixels_of(payload, shape, False)
            if got.shape != want.shape:
                check(False, f"{flag} {r['path']}: shape {got.shape}, want {want.shape}")
                continue
            diff = int(np.abs(got.astype(int) - want).max())
            if min_psnr is None or not is_jpeg:
                check(diff <= (JPEG_TOLERANCE if is_jpeg else 0),
                      f"{flag} {r['path']}: max diff {diff}")
            else:
                check(psnr(got, want) >= min_psnr, f"{flag} {r['path']}: PSNR {psnr(got, want):.1f}")
                mean.append(psnr(got, want))
            worst, lowest = max(worst, diff), min(lowest, psnr(got, want))
    how = "with --jpeg-dct-scaling " if min_psnr is not None else ""
    print(f"{flag} {value} {how}vs PIL resize(BILINEAR): max abs diff {worst}, lowest PSNR "
          f"{lowest:.1f} dB" + (f", median {float(np.median(mean)):.1f} dB" if mean else ""))


def check_split(tmp, photos, split, part):
    sources = []
    for r in part:
        with open(os.path.join(photos, r["path"]), "rb") as f:
            data = f.read()
        sources.append((data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
                        int(r["label"]), data[:2] == b"\xff\xd8"))
    heights = [s[1].shape[0] for s in sources]
    widths = [s[1].shape[1] for s in sources]

    # raw LMDB, raw HDF5 (ragged), PNG folder: the decoded pixels.
    m, recs = lmdb_records(os.path.join(tmp, "raw", f"{split}.lmdb"))
    hm, version, hrecs = h5_records(os.path.join(tmp, "raw", f"{split}.h5"))
    check(version == 2 and hm["variable_size"] and hm["format_version"] == 2, f"{split} h5 manifest")
    check(m["variable_size"] and m["height"] == 0 and m["channels"] == 3, f"{split} lmdb manifest")
    check((m["min_height"], m["max_height"], m["min_width"], m["max_width"]) ==
          (min(heights), max(heights), min(widths), max(widths)), f"{split} bounds {m}")
    png_dir = os.path.join(tmp, "raw", f"{split}.png")
    with open(os.path.join(png_dir, "labels.csv"), newline="", encoding="utf-8") as f:
        png_rows = list(csv.DictReader(f))
    check(len(recs) == len(hrecs) == len(png_rows) == len(sources), f"{split} counts")
    worst = 0
    for i, (data, want, label, is_jpeg) in enumerate(sources):
        enc, shape, l1, payload = recs[i]
        hshape, l2, hpayload, _ = hrecs[i]
        png = np.asarray(Image.open(os.path.join(png_dir, png_rows[i]["file"])).convert("RGB"))
        for name, got, l in (("lmdb", pixels_of(payload, shape, False), l1),
                             ("hdf5", pixels_of(hpayload, hshape, False), l2),
                             ("png", png, int(png_rows[i]["label"]))):
            if got.shape != want.shape or l != label:
                check(False, f"{split} {name} record {i}: {got.shape}/{l}, want {want.shape}/{label}")
                continue
            diff = int(np.abs(got.astype(int) - want).max()) if got.size else 0
            worst = max(worst, diff if is_jpeg else 0)
            check(diff <= (JPEG_TOLERANCE if is_jpeg else 0),
                  f"{split} {name} record {i} ({part[i]['path']}): max diff {diff}")
    print(f"{split}: raw/png stores match PIL (worst JPEG difference {worst})")

    # JPEG stores: source bytes untouched where they can be, checksums over the payload.
    jm, jrecs = lmdb_records(os.path.join(tmp, "jpeg", f"{split}.lmdb"))
    jhm, _, jhrecs = h5_records(os.path.join(tmp, "jpeg", f"{split}.h5"))
    check(jm["encoding"] == "jpeg" and jm["checksum_algorithm"] == "xxh3_64(payload, seed=label)",
          f"{split} jpeg manifest {jm['encoding']} {jm['checksum_algorithm']}")
    untouched, reencoded, lowest = 0, 0, math.inf
    for i, (data, want, label, is_jpeg) in enumerate(sources):
        enc, shape, l1, payload = jrecs[i]
        hshape, l2, hpayload, hsum = jhrecs[i]
        check(enc == 2 and payload == hpayload and l1 == l2 == label, f"{split} jpeg record {i}")
        check(xxhash.xxh3_64_intdigest(payload, seed=label) == int(jm["checksums"][i], 16) == hsum,
              f"{split} jpeg record {i}: checksum is not xxh3_64(payload, seed=label)")
        got = pixels_of(payload, shape, True)
        check(got.shape == want.shape == tuple(shape), f"{split} jpeg record {i}: {got.shape}")
        if payload == data:
            untouched += 1
        else:
            reencoded += 1
            if got.shape == want.shape:
                lowest = min(lowest, psnr(got, want))
    check(untouched > 0 and lowest >= REENCODED_MIN_PSNR,
          f"{split}: {untouched} untouched, lowest re-encoded PSNR {lowest:.1f}")
    print(f"{split}: jpeg stores: {untouched} source JPEGs stored untouched, {reencoded} "
          f"re-encoded (PNG or CMYK sources), lowest PSNR {lowest:.1f} dB")


if __name__ == "__main__":
    main()
