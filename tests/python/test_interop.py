#!/usr/bin/env python3
"""Python interop: Debian's h5py, py-lmdb and PIL read imgstore stores using only the layout
documented in README.md, and every reader agrees on every pixel, label and checksum."""
import csv
import json
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

CONVERT = os.environ["IMGSTORE_CONVERT"]
HEADER = struct.Struct("<4sHBBIIiIQ")  # magic, version, encoding, C, H, W, label, length, xxh3


def read_png_folder(path):
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    images, labels = [], []
    with open(os.path.join(path, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == manifest["count"], "labels.csv row count"
    for row in rows:
        with Image.open(os.path.join(path, row["file"])) as im:
            images.append(np.asarray(im))
        labels.append(int(row["label"]))
        if manifest["class_names"]:
            assert row["class"] == manifest["class_names"][labels[-1]]
    return manifest, np.stack(images), np.array(labels)


def read_lmdb(path):
    # lock=False: committed stores are immutable and carry no lock file.
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=2)
    meta = env.open_db(b"__imgstore__", create=False)
    with env.begin() as txn:
        manifest = json.loads(txn.get(b"manifest", db=meta))
        h, w, c = manifest["height"], manifest["width"], manifest["channels"]
        images, labels = [], []
        for i in range(manifest["count"]):
            value = txn.get(b"%08d" % i)
            magic, version, encoding, vc, vh, vw, label, length, digest = HEADER.unpack_from(value)
            assert magic == b"IMGS" and version == 1 and encoding == 0, (magic, version, encoding)
            assert (vh, vw, vc) == (h, w, c) and length == h * w * c == len(value) - HEADER.size
            payload = value[-h * w * c:]
            assert xxhash.xxh3_64_intdigest(payload) == digest
            images.append(np.frombuffer(payload, np.uint8).reshape(h, w, c))
            labels.append(label)
    env.close()
    return manifest, np.stack(images), np.array(labels)


def read_hdf5(path):
    with h5py.File(path, "r") as f:
        manifest = json.loads(f.attrs["imgstore_manifest"])
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["class_names"]]
        assert names == manifest["class_names"]
        checksums = f["checksums"][:]
        images, labels = f["images"][:], f["labels"][:]
    assert images.dtype == np.uint8 and images.ndim == 4
    manifest["checksums"] = ["%016x" % c for c in checksums]
    return manifest, images, labels


def check_checksums(manifest, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
        want = int(manifest["checksums"][i], 16)
        got = xxhash.xxh3_64_intdigest(image.tobytes(), seed=int(label))
        assert got == want, f"record {i}: checksum {got:016x} != manifest {want:016x}"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for spec, shape in [("synthetic:n=300,test=10,h=32,w=32,c=3,seed=7", (32, 32, 3)),
                            ("synthetic:n=50,test=10,h=9,w=13,c=1,seed=3", (9, 13))]:
            out = os.path.join(tmp, "c%d" % len(shape))
            subprocess.run([CONVERT, "convert", spec, "--to", "png,lmdb,hdf5", "--out", out,
                            "--split", "train", "--quiet"], check=True)
            m_png, x_png, y_png = read_png_folder(os.path.join(out, "train.png"))
            m_lmdb, x_lmdb, y_lmdb = read_lmdb(os.path.join(out, "train.lmdb"))
            m_h5, x_h5, y_h5 = read_hdf5(os.path.join(out, "train.h5"))
            if len(shape) == 2:  # PIL gives (H, W) for gray images
                x_png = x_png[..., None]
            assert x_png.shape[1:] == x_lmdb.shape[1:] == x_h5.shape[1:]
            assert np.array_equal(x_png, x_lmdb) and np.array_equal(x_lmdb, x_h5)
            assert np.array_equal(y_png, y_lmdb) and np.array_equal(y_lmdb, y_h5)
            for m, x, y in [(m_png, x_png, y_png), (m_lmdb, x_lmdb, y_lmdb), (m_h5, x_h5, y_h5)]:
                check_checksums(m, x, y)
            print(f"ok: {spec}: PIL, py-lmdb and h5py read {len(y_h5)} identical records")


if __name__ == "__main__":
    sys.exit(main())
