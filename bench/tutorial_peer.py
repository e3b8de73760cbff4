#!/usr/bin/python3
"""The tutorial's store and read functions, timed properly, as imgstore-bench's Python peer.

Reproduces "Three Ways of Storing and Accessing Lots of Images in Python" (Real Python):
  store_single_* / store_many_*  - PNG via Pillow + CSV labels; py-lmdb with pickle.dumps of a
                                   CIFAR_Image per key f"{i:08}"; h5py datasets "images"/"meta"
                                   (STD_U8BE). The store_many_* functions come from
                                   bench/tutorial_store.py, which imgstore-store-bench runs.
  read_single_* / read_many_*    - as the tutorial wrote them.
What differs from the tutorial is the timing, not the functions:
  - each timed run calls the function itself and np.asarray()s every image it returned (the
    tutorial's read timings measured a call that did no reading);
  - read_many is also run in a shuffled order (a seeded permutation), as a training epoch reads;
  - every measurement is repeated --runs times, and the reader checks the pixels and labels it
    read back against the input, outside the timed region.
Reads follow the writes in the same process with nothing evicted: the page cache is warm.

Output: one JSON object per measurement on stdout, with the fields of imgstore-bench's
measurements.csv (bench/README.md); progress and errors on stderr.
Run with Debian's interpreter: /usr/bin/python3 bench/tutorial_peer.py --images X.npy ...
"""
import argparse
import csv
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

EXPERIMENTS = ("store_one", "store_many", "read_one", "read_many", "disk_usage")
FORMATS = ("png", "lmdb", "hdf5")
# What is inside each tutorial container, in the schema's terms: PNG files, pickled
# CIFAR_Image objects, one contiguous (unchunked, uncompressed) HDF5 dataset.
VARIANTS = {"png": "png", "lmdb": "pickle", "hdf5": "contiguous"}
WARM_NOTE = ("tutorial (Python) reads follow its writes in the same process with nothing "
             "evicted: its read figures are warm page cache only")

MISSING_MODULE_EXIT = 3  # the caller can tell "no Python libraries" from a failure


def fail(message, status=2):
    print(f"tutorial_peer: error: {message}", file=sys.stderr)
    sys.exit(status)


try:
    import h5py
    import lmdb
    import numpy as np
    import PIL
    from PIL import Image
    # The tutorial's store_many_* functions and its CIFAR_Image class, shared with
    # imgstore-store-bench so both benchmarks time the same code.
    from tutorial_store import CIFAR_Image, store_many_disk, store_many_hdf5, store_many_lmdb
    from tutorial_store import disk_usage as _disk_usage
except ImportError as e:
    fail(f"{e}; install Debian's python3-numpy, python3-pil, python3-h5py and python3-lmdb and "
         f"run with /usr/bin/python3", MISSING_MODULE_EXIT)


# ---- the tutorial's single-image functions (directories passed in instead of globals) ----
# Verbatim otherwise, down to the unused `dataset`/`meta_set` names, the placeholder-free
# f-strings and the docstrings of the read functions.

def store_single_disk(image, image_id, label, disk_dir, png_level):
    """Stores a single image as a .png file on disk."""
    Image.fromarray(image).save(disk_dir / f"{image_id}.png", compress_level=png_level)

    with open(disk_dir / f"{image_id}.csv", "wt") as csvfile:
        writer = csv.writer(csvfile, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        writer.writerow([label])


def store_single_lmdb(image, image_id, label, lmdb_dir):
    """Stores a single image to a LMDB."""
    map_size = image.nbytes * 10

    # Create a new LMDB environment
    env = lmdb.open(str(lmdb_dir / f"single_lmdb"), map_size=map_size)

    # Start a new write transaction
    with env.begin(write=True) as txn:
        # All key-value pairs need to be strings
        value = CIFAR_Image(image, label)
        key = f"{image_id:08}"
        txn.put(key.encode("ascii"), pickle.dumps(value))
    env.close()


def store_single_hdf5(image, image_id, label, hdf5_dir):
    """Stores a single image to an HDF5 file."""
    # Create a new HDF5 file
    file = h5py.File(hdf5_dir / f"{image_id}.h5", "w")

    # Create a dataset in the file
    dataset = file.create_dataset(
        "image", np.shape(image), h5py.h5t.STD_U8BE, data=image
    )
    meta_set = file.create_dataset(
        "meta", np.shape(label), h5py.h5t.STD_U8BE, data=label
    )
    file.close()


def read_single_disk(image_id, disk_dir):
    """Stores a single image to disk."""  # sic: the tutorial's docstring
    image = np.array(Image.open(disk_dir / f"{image_id}.png"))

    with open(disk_dir / f"{image_id}.csv", "r") as csvfile:
        reader = csv.reader(csvfile, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        label = int(next(reader)[0])

    return image, label


def read_single_lmdb(image_id, lmdb_dir):
    """Stores a single image to LMDB."""  # sic
    # Open the LMDB environment
    env = lmdb.open(str(lmdb_dir / f"single_lmdb"), readonly=True)

    # Start a new read transaction
    with env.begin() as txn:
        # Encode the key the same way as we stored it
        data = txn.get(f"{image_id:08}".encode("ascii"))
        # Remember it's a CIFAR_Image object that is loaded
        cifar_image = pickle.loads(data)
        # Retrieve the relevant bits
        image = cifar_image.get_image()
        label = cifar_image.label
    env.close()

    return image, label


def read_single_hdf5(image_id, hdf5_dir):
    """Stores a single image to HDF5."""  # sic
    # Open the HDF5 file ("r+" and never closed, as in the tutorial: h5py closes it when the
    # File object is collected on return)
    file = h5py.File(hdf5_dir / f"{image_id}.h5", "r+")

    image = np.array(file["/image"]).astype("uint8")
    label = int(np.array(file["/meta"]).astype("uint8"))

    return image, label


# ---- the tutorial's read_many_* functions ----

def read_many_disk(num_images, disk_dir):
    """Reads image from disk."""
    images, labels = [], []

    # Loop over all IDs and read each image in one by one
    for image_id in range(num_images):
        images.append(np.array(Image.open(disk_dir / f"{image_id}.png")))

    with open(disk_dir / f"{num_images}.csv", "r") as csvfile:
        reader = csv.reader(csvfile, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        for row in reader:
            labels.append(int(row[0]))
    return images, labels


def read_many_lmdb(num_images, lmdb_dir):
    """Reads image from LMDB."""
    images, labels = [], []
    env = lmdb.open(str(lmdb_dir / f"{num_images}_lmdb"), readonly=True)

    # Start a new read transaction
    with env.begin() as txn:
        # Read all images in one single transaction, with one lock
        # We could split this up into multiple transactions if needed
        for image_id in range(num_images):
            data = txn.get(f"{image_id:08}".encode("ascii"))
            # Remember that it's a CIFAR_Image object
            # that is stored as the value
            cifar_image = pickle.loads(data)
            # Retrieve the relevant bits
            images.append(cifar_image.get_image())
            labels.append(cifar_image.label)
    env.close()
    return images, labels


def read_many_hdf5(num_images, hdf5_dir):
    """Reads image from HDF5."""
    images, labels = [], []

    # Open the HDF5 file
    file = h5py.File(hdf5_dir / f"{num_images}_many.h5", "r+")

    images = np.array(file["/images"]).astype("uint8")
    labels = np.array(file["/meta"]).astype("uint8")

    return images, labels


# ---- shuffled reads: the tutorial's read_many_* with the loop over a permutation ----
# The tutorial only ever read in key order. A training epoch reads in a random order; these
# read the same records one at a time in `order` and return them in that order.

def read_many_disk_shuffled(num_images, disk_dir, order):
    images, labels = [], []
    with open(disk_dir / f"{num_images}.csv", "r") as csvfile:
        reader = csv.reader(csvfile, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
        all_labels = [int(row[0]) for row in reader]
    for image_id in order:
        images.append(np.array(Image.open(disk_dir / f"{image_id}.png")))
        labels.append(all_labels[image_id])
    return images, labels


def read_many_lmdb_shuffled(num_images, lmdb_dir, order):
    images, labels = [], []
    env = lmdb.open(str(lmdb_dir / f"{num_images}_lmdb"), readonly=True)
    with env.begin() as txn:
        for image_id in order:
            data = txn.get(f"{image_id:08}".encode("ascii"))
            cifar_image = pickle.loads(data)
            images.append(cifar_image.get_image())
            labels.append(cifar_image.label)
    env.close()
    return images, labels


def read_many_hdf5_shuffled(num_images, hdf5_dir, order):
    # One hyperslab read per image, as a Dataset's __getitem__ does; the tutorial's sequential
    # read_many_hdf5 reads the whole dataset in one call instead.
    images, labels = [], []
    file = h5py.File(hdf5_dir / f"{num_images}_many.h5", "r+")
    image_set, meta_set = file["/images"], file["/meta"]
    for image_id in order:
        images.append(np.array(image_set[image_id]).astype("uint8"))
        labels.append(int(meta_set[image_id]))
    file.close()
    return images, labels


# ---- harness ----

def emit(experiment, fmt, n, order, run, seconds, nbytes):
    row = {
        "experiment": experiment, "impl": "tutorial", "format": fmt, "variant": VARIANTS[fmt],
        "n": int(n), "threads": 1, "cache": "warm", "order": order, "run": int(run),
        "seconds": float(seconds),
        "images_per_s": float(n / seconds) if seconds > 0 else 0.0,
        "bytes": int(nbytes),
    }
    print(json.dumps(row), flush=True)


def progress(message):
    print(f"[tutorial] {message}", file=sys.stderr, flush=True)


def store_bytes(path):
    """Bytes on disk of a store: the sum of its files' sizes (apparent, not allocated), without
    LMDB's lock.mdb, which holds reader slots, not data."""
    if path.is_file():
        return path.stat().st_size
    lock = path / "lock.mdb"
    return _disk_usage(path)[0] - (lock.stat().st_size if lock.is_file() else 0)


def fresh_dir(path):
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def materialise(images):
    """Forces every image into a NumPy array, inside the timed region."""
    total = 0
    for image in images:
        total += np.asarray(image).nbytes
    return total


def check_read(what, got_images, got_labels, images, labels, ids):
    """The images and labels read back must equal the input, in the order asked for."""
    ids = np.asarray(ids)
    if len(got_images) != len(ids) or len(got_labels) != len(ids):
        fail(f"{what}: read {len(got_images)} images and {len(got_labels)} labels, "
             f"expected {len(ids)}", 1)
    for k, i in enumerate(ids):
        got = np.asarray(got_images[k]).reshape(images.shape[1:])
        if not np.array_equal(got, images[i]):
            fail(f"{what}: image {i} (position {k}) differs from the input", 1)
        if int(got_labels[k]) != int(labels[i]):
            fail(f"{what}: label of image {i} is {int(got_labels[k])}, expected {int(labels[i])}",
                 1)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def load_inputs(args):
    arrays = []
    for flag, path in (("--images", args.images), ("--labels", args.labels)):
        p = Path(path)
        if not p.is_file():
            fail(f"{flag} {path}: no such file")
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except (OSError, ValueError, EOFError) as e:
            fail(f"{flag} {path}: not a readable .npy file ({e})")
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        fail(f"--images {args.images}: expected a (N, H, W, C) uint8 array with C in 1, 3, 4; "
             f"got {images.dtype} {images.shape}")
    if len(images) == 0:
        fail(f"--images {args.images}: holds no images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        fail(f"--labels {args.labels}: expected ({len(images)},) integers, got "
             f"{labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() > 255:
        fail(f"--labels {args.labels}: labels must be 0..255 (the tutorial's HDF5 'meta' dataset "
             f"is STD_U8BE); got {labels.min()}..{labels.max()}")
    return images, labels


def parse_ns(text, count):
    try:
        ns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--ns {text!r}: expected a comma-separated list of integers")
    if not ns or any(n < 1 for n in ns):
        fail(f"--ns {text!r}: every N must be at least 1")
    too_big = [n for n in ns if n > count]
    if too_big:
        fail(f"--ns {text!r}: N = {too_big[0]} exceeds the {count} images in --images")
    return ns


def parse_experiments(text):
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in EXPERIMENTS]
    if unknown or not names:
        fail(f"--experiments {text!r}: unknown experiment {unknown[0] if unknown else '(none)'}; "
             f"choose from {','.join(EXPERIMENTS)}")
    return names


def prepare_out(path):
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tutorial_peer_probe"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        fail(f"--out {path}: cannot write there ({e.strerror or e})")
    return out


def versions():
    return {"python": sys.version.split()[0], "numpy": np.__version__,
            "pillow": PIL.__version__, "h5py": h5py.__version__, "lmdb_py": lmdb.__version__,
            "hdf5": h5py.version.hdf5_version, "notes": [WARM_NOTE]}


def run_single(args, images, labels, out, experiments):
    """store_one and read_one: image 0, stored with the store_single_* functions."""
    image, label = images[0], int(labels[0])
    if images.shape[3] == 1:
        image = image[:, :, 0]  # Pillow writes grayscale from (H, W) only
    stores = {
        "png": lambda d: store_single_disk(image, 0, label, d, args.png_level),
        "lmdb": lambda d: store_single_lmdb(images[0], 0, label, d),
        "hdf5": lambda d: store_single_hdf5(images[0], 0, label, d),
    }
    reads = {"png": read_single_disk, "lmdb": read_single_lmdb, "hdf5": read_single_hdf5}
    for fmt in FORMATS:
        try:
            single_format(args, images, labels, out, experiments, fmt, stores[fmt], reads[fmt])
        except lmdb.MapFullError:
            warn_map_full(1)


def warn_map_full(n):
    progress(f"warning: skipped LMDB at N = {n}: the tutorial's map_size (10 x the image bytes "
             f"x N) is too small for N = {n} images of this size (MDB_MAP_FULL)")


def single_format(args, images, labels, out, experiments, fmt, store, read):
    d = out / "single" / fmt
    if "store_one" in experiments:
        for run in range(1, args.runs + 1):
            fresh_dir(d)
            os.sync()  # the previous run's dirty pages must not be flushed in this one
            seconds, _ = timed(lambda: store(d))
            emit("store_one", fmt, 1, "-", run, seconds, store_bytes(d))
        progress(f"store_one {fmt}: {args.runs} runs")
    else:
        fresh_dir(d)
        store(d)
    if "read_one" in experiments:
        nbytes = store_bytes(d)

        def read_one():
            got, got_label = read(0, d)
            materialise([got])
            return got, got_label

        for run in range(1, args.runs + 1):
            seconds, (got, got_label) = timed(read_one)
            emit("read_one", fmt, 1, "-", run, seconds, nbytes)
            check_read(f"read_one {fmt} run {run}", [got], [got_label], images, labels, [0])
        progress(f"read_one {fmt}: {args.runs} runs, image checked")


def run_many(args, images, labels, out, experiments):
    """store_many, disk_usage and read_many (sequential and shuffled) for every N."""
    png_images = images[:, :, :, 0] if images.shape[3] == 1 else images
    rng = np.random.default_rng(args.seed)
    for n in args.ns:
        # One permutation per N, the same for every format and run.
        order = rng.permutation(n)
        stores = {
            "png": lambda d: store_many_disk(png_images[:n], labels[:n], d, args.png_level),
            "lmdb": lambda d: store_many_lmdb(images[:n], labels[:n], d),
            "hdf5": lambda d: store_many_hdf5(images[:n], labels[:n], d),
        }
        # The file or directory each store_many_* creates inside its directory.
        store_path = {"png": lambda d: d, "lmdb": lambda d: d / f"{n}_lmdb",
                      "hdf5": lambda d: d / f"{n}_many.h5"}
        seq_reads = {"png": read_many_disk, "lmdb": read_many_lmdb, "hdf5": read_many_hdf5}
        shuf_reads = {"png": read_many_disk_shuffled, "lmdb": read_many_lmdb_shuffled,
                      "hdf5": read_many_hdf5_shuffled}
        for fmt in FORMATS:
            d = out / "many" / fmt / str(n)
            try:
                many_format(args, images, labels, experiments, fmt, n, d, stores[fmt],
                            store_path[fmt](d), seq_reads[fmt], shuf_reads[fmt], order)
            except lmdb.MapFullError:
                warn_map_full(n)
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)


def many_format(args, images, labels, experiments, fmt, n, d, store, path, seq_read, shuf_read,
                order):
    if "store_many" in experiments:
        for run in range(1, args.runs + 1):
            fresh_dir(d)
            os.sync()  # the previous run's dirty pages must not be flushed in this one
            seconds, _ = timed(lambda: store(d))
            emit("store_many", fmt, n, "-", run, seconds, store_bytes(path))
            progress(f"store_many {fmt} n={n} run {run}/{args.runs}: {seconds:.4f} s")
    elif "read_many" in experiments or "disk_usage" in experiments:
        fresh_dir(d)
        store(d)
    else:
        return
    nbytes = store_bytes(path)
    if "disk_usage" in experiments:
        emit("disk_usage", fmt, n, "-", 0, 0.0, nbytes)
    if "read_many" not in experiments:
        return
    calls = {"sequential": (lambda: seq_read(n, d), np.arange(n)),
             "shuffled": (lambda: shuf_read(n, d, order), order)}
    # Sequential and shuffled runs alternate, so drift hits both alike.
    for run in range(1, args.runs + 1):
        for kind, (call, ids) in calls.items():
            def read_all():
                got_images, got_labels = call()
                materialise(got_images)
                return got_images, got_labels

            seconds, (got_images, got_labels) = timed(read_all)
            emit("read_many", fmt, n, kind, run, seconds, nbytes)
            progress(f"read_many {fmt} {kind} n={n} run {run}/{args.runs}: {seconds:.4f} s")
            check_read(f"read_many {fmt} {kind} n={n} run {run}", got_images, got_labels,
                       images, labels, ids)
            del got_images, got_labels


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", help=".npy, (N, H, W, C) uint8")
    p.add_argument("--labels", help=".npy, (N,) integers 0..255")
    p.add_argument("--out", help="scratch directory for the stores")
    p.add_argument("--ns", default="10,100,1000", help="comma-separated image counts")
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--seed", type=int, default=1, help="seed of the shuffled read order")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS),
                   help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    p.add_argument("--png-level", type=int, default=6,
                   help="zlib level for Pillow (its default, 6, is what the tutorial used)")
    p.add_argument("--keep", action="store_true", help="leave the stores in --out")
    p.add_argument("--versions", action="store_true",
                   help="print library versions and notes as one JSON object and exit")
    args = p.parse_args()

    if args.versions:
        print(json.dumps(versions()))
        return
    for flag in ("images", "labels", "out"):
        if getattr(args, flag) is None:
            fail(f"--{flag} is required")
    if args.runs < 1:
        fail(f"--runs {args.runs}: must be at least 1")
    if not 0 <= args.png_level <= 9:
        fail(f"--png-level {args.png_level}: must be 0..9")
    experiments = parse_experiments(args.experiments)
    images, labels = load_inputs(args)
    args.ns = parse_ns(args.ns, len(images))
    out = prepare_out(args.out)

    progress(f"{len(images)} images {images.shape[1:]}, N = {args.ns}, {args.runs} runs, "
             f"experiments {','.join(experiments)}; python {sys.version.split()[0]}, "
             f"numpy {np.__version__}, Pillow {PIL.__version__}, h5py {h5py.__version__}, "
             f"py-lmdb {lmdb.__version__}")
    progress(f"note: {WARM_NOTE}")
    try:
        if "store_one" in experiments or "read_one" in experiments:
            run_single(args, images, labels, out, experiments)
        if any(e in experiments for e in ("store_many", "read_many", "disk_usage")):
            run_many(args, images, labels, out, experiments)
        if not args.keep:
            shutil.rmtree(out / "single", ignore_errors=True)
            shutil.rmtree(out / "many", ignore_errors=True)
    except OSError as e:
        fail(f"{e.filename or args.out}: {e.strerror or e}", 1)
    except lmdb.Error as e:
        fail(f"LMDB: {e}", 1)


if __name__ == "__main__":
    main()
