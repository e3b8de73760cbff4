#!/usr/bin/python3
"""The tutorial's three store_many_* functions, timed on images dumped by imgstore-store-bench.

Reproduces "Three Ways of Storing and Accessing Lots of Images in Python" (Real Python):
  store_many_disk  - one PNG per image via Pillow, labels in a CSV
  store_many_lmdb  - py-lmdb, one write transaction, pickle.dumps(CIFAR_Image) per key f"{i:08}"
  store_many_hdf5  - h5py create_dataset("images"/"meta", ..., h5py.h5t.STD_U8BE, data=...)
The only deliberate change: Pillow's compress_level is passed explicitly (its default is 6), so
both sides use the same zlib level. Output: one JSON object on stdout.

Run with Debian's interpreter: /usr/bin/python3 bench/tutorial_store.py --images X.npy ...
"""
import argparse
import csv
import json
import os
import pickle
import resource
import sys
import time
from pathlib import Path

import h5py
import lmdb
import numpy as np
import PIL
from PIL import Image


class CIFAR_Image:
    def __init__(self, image, label):
        # Dimensions of image for reconstruction - not really necessary
        # for this dataset, but some datasets may include images of
        # varying sizes
        self.channels = image.shape[2]
        self.size = image.shape[:2]

        self.image = image.tobytes()
        self.label = label

    def get_image(self):
        """Returns the image as a numpy array."""
        image = np.frombuffer(self.image, dtype=np.uint8)
        return image.reshape(*self.size, self.channels)


def store_many_disk(images, labels, disk_dir, png_level):
    num_images = len(images)

    # Save all the images one by one
    for i, image in enumerate(images):
        Image.fromarray(image).save(disk_dir / f"{i}.png", compress_level=png_level)

    # Save all the labels to the csv file
    with open(disk_dir / f"{num_images}.csv", "wt") as csvfile:
        writer = csv.writer(csvfile, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        for label in labels:
            # This typically would be more than just one value per row
            writer.writerow([label])


def store_many_lmdb(images, labels, lmdb_dir):
    num_images = len(images)

    map_size = num_images * images[0].nbytes * 10

    # Create a new LMDB DB for all the images
    env = lmdb.open(str(lmdb_dir / f"{num_images}_lmdb"), map_size=map_size)

    # Same as before - but let's write all the images in a single transaction
    with env.begin(write=True) as txn:
        for i in range(num_images):
            # All key-value pairs need to be Strings
            value = CIFAR_Image(images[i], labels[i])
            key = f"{i:08}"
            txn.put(key.encode("ascii"), pickle.dumps(value))
    env.close()


def store_many_hdf5(images, labels, hdf5_dir):
    num_images = len(images)

    # Create a new HDF5 file
    file = h5py.File(hdf5_dir / f"{num_images}_many.h5", "w")

    # Create a dataset in the file
    dataset = file.create_dataset(
        "images", np.shape(images), h5py.h5t.STD_U8BE, data=images
    )
    meta_set = file.create_dataset(
        "meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels
    )
    file.close()


def disk_usage(path):
    """(apparent bytes, allocated bytes) of every regular file under path."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def peak_rss_bytes():
    # VmHWM belongs to this process image only; ru_maxrss would include a forking parent's.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help=".npy, (N,H,W,C) uint8")
    p.add_argument("--labels", required=True, help=".npy, (N,) integers")
    p.add_argument("--out", required=True, help="scratch directory (the caller deletes it)")
    p.add_argument("--png-level", type=int, default=6)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--methods", default="disk,lmdb,hdf5")
    p.add_argument("--budget", type=float, default=float("inf"),
                   help="seconds after which a method is not run again")
    args = p.parse_args()

    images = np.load(args.images)
    labels = np.load(args.labels)
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        sys.exit(f"{args.images}: expected (N,H,W,C) uint8 with N labels")

    out = Path(args.out)
    result = {
        "count": int(len(images)),
        "shape": list(images.shape[1:]),
        "png_level": args.png_level,
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "pillow": PIL.__version__, "h5py": h5py.__version__,
                     "lmdb": lmdb.__version__, "hdf5": h5py.version.hdf5_version},
        "methods": {},
    }
    funcs = {
        "disk": lambda d: store_many_disk(images, labels, d, args.png_level),
        "lmdb": lambda d: store_many_lmdb(images, labels, d),
        "hdf5": lambda d: store_many_hdf5(images, labels, d),
    }
    # Earlier runs' output is moved aside, not deleted: unlinking 100,000 files takes a minute
    # on this kind of disk. The caller deletes `trash` when it is done.
    trash = out / "trash"
    trash.mkdir(parents=True, exist_ok=True)
    for name in args.methods.split(","):
        seconds, user, system = [], [], []
        usage = (0, 0)
        for run in range(args.runs):
            if sum(seconds) > args.budget:
                break
            target = out / name
            if target.exists():
                target.rename(trash / f"{name}-{run}")
            target.mkdir(parents=True)
            os.sync()  # earlier runs' dirty pages must not be flushed during this one
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            funcs[name](target)
            seconds.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            user.append(r1.ru_utime - r0.ru_utime)
            system.append(r1.ru_stime - r0.ru_stime)
            usage = disk_usage(target)
        (out / name).rename(trash / name)
        result["methods"][name] = {"seconds": seconds, "bytes_on_disk": usage[0],
                                   "bytes_allocated": usage[1], "user_seconds": user,
                                   "sys_seconds": system}
    result["peak_rss_bytes"] = peak_rss_bytes()
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
