#!/usr/bin/python3
"""PyTorch DataLoader throughput over imgstore stores (PNG folder, LMDB, HDF5).

The Python half of bench/throughput.cpp: it reads the SAME stores the C++ loaders read,
written the way a Python user would (and the way the tutorial "Three Ways of Storing and
Accessing Lots of Images in Python" reads them): PIL per PNG file, py-lmdb with one read
transaction per item, h5py indexing f["images"][i]. Each Dataset returns
(torch.from_numpy(CHW uint8 image), int label) and is wrapped in
DataLoader(batch_size, shuffle=True, num_workers=w, persistent_workers=False) with the default
collate. One untimed warm-up epoch, then --runs timed shuffled epochs (time.perf_counter);
reports median/min/max images/s per (format, workers), plus an in-memory baseline
(TensorDataset over one uint8 tensor, workers 0).

Progress goes to stderr; stdout carries exactly one JSON object:
  {"python": ..., "torch": ..., "torch_threads": 1, "batch_size": b,
   "results": [{"format": "lmdb", "workers": 0, "median": ..., "min": ..., "max": ...,
                "images": N, ...}, ..., {"format": "memory", "workers": 0, ...}]}
Exit codes: 0 ok, 2 bad arguments or a missing/invalid store, 3 torch (or a reader module)
not importable.

Run it with Debian's interpreter (/usr/bin/python3), which has torch, PIL, lmdb and h5py.
"""

import argparse
import csv
import json
import os
import platform
import statistics
import struct
import sys
import time

FORMATS = ("png", "lmdb", "hdf5")
# PIL decoding runs at ~10k img/s in Python: cap PNG epochs so the whole run stays short.
DEFAULT_PNG_MAX_IMAGES = 20000
LMDB_HEADER = 32


def log(msg):
    print("[python_dataloader] " + msg, file=sys.stderr, flush=True)


def die(msg, code=2):
    print("python_dataloader: error: " + msg, file=sys.stderr, flush=True)
    sys.exit(code)


try:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
except Exception as e:  # ImportError, or a broken install raising something else
    die("cannot import torch/numpy (%s: %s); run with /usr/bin/python3 (Debian python3-torch)"
        % (type(e).__name__, e), code=3)


def store_path(stores, split, fmt):
    return os.path.join(stores, split + {"png": ".png", "lmdb": ".lmdb", "hdf5": ".h5"}[fmt])


def to_chw_tensor(hwc):
    # Always one copy: contiguous CHW and writable (PIL/LMDB buffers are read-only and torch
    # warns on those; with C == 1 the transpose alone would still be that read-only view).
    return torch.from_numpy(hwc.transpose(2, 0, 1).copy())


class PngFolder(Dataset):
    """One PNG file per item, opened with PIL in __getitem__; labels.csv read once."""

    def __init__(self, root):
        from PIL import Image  # noqa: F401  (fail early, in the parent, if PIL is missing)
        self.root = root
        with open(os.path.join(root, "manifest.json"), "rb") as f:
            m = json.load(f)
        self.channels = int(m["channels"])
        with open(os.path.join(root, "labels.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != int(m["count"]):
            raise ValueError("'%s': labels.csv has %d rows, manifest count is %d"
                             % (root, len(rows), int(m["count"])))
        self.files = [os.path.join(root, r["file"]) for r in rows]
        self.labels = [int(r["label"]) for r in rows]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            x = np.asarray(im)
        if x.ndim == 2:  # gray PNGs decode to (H, W)
            x = x[:, :, None]
        return to_chw_tensor(x), self.labels[i]


class LmdbStore(Dataset):
    """py-lmdb env opened lazily per process (envs must not cross fork), one txn per item."""

    def __init__(self, path):
        import lmdb
        self.path = path
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=2)
        try:
            with env.begin() as txn:
                raw = txn.get(b"manifest", db=env.open_db(b"__imgstore__", txn=txn, create=False))
            if raw is None:
                raise ValueError("'%s': no manifest in sub-db __imgstore__" % path)
            self.count = int(json.loads(bytes(raw))["count"])
        finally:
            env.close()  # the parent keeps no env: workers fork from it
        self._env = None
        self._pid = None

    def __len__(self):
        return self.count

    def _open(self):
        import lmdb
        self._env = lmdb.open(self.path, readonly=True, lock=False, max_dbs=2)
        self._pid = os.getpid()

    def __getitem__(self, i):
        if self._pid != os.getpid():
            self._open()
        key = b"%08d" % i
        with self._env.begin() as txn:
            v = txn.get(key)
        if v is None:
            raise KeyError("'%s': missing key %s" % (self.path, key.decode()))
        c = v[7]
        h, w, label = struct.unpack_from("<IIi", v, 8)
        n = h * w * c
        if len(v) < LMDB_HEADER + n:
            raise ValueError("'%s' key %s: value is %d bytes, expected >= %d"
                             % (self.path, key.decode(), len(v), LMDB_HEADER + n))
        x = np.frombuffer(v, np.uint8, count=n, offset=len(v) - n).reshape(h, w, c)
        return to_chw_tensor(x), label


class Hdf5Store(Dataset):
    """h5py.File opened lazily per process (HDF5 handles must not cross fork); f["images"][i]."""

    def __init__(self, path):
        import h5py
        self.path = path
        with h5py.File(path, "r") as f:
            if "images" not in f:
                raise ValueError("'%s': no /images dataset" % path)
            self.count = int(f["images"].shape[0])
            self.label_key = "labels" if "labels" in f else "meta"  # tutorial layout: /meta
        self._file = None
        self._pid = None

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if self._pid != os.getpid():
            import h5py
            self._file = h5py.File(self.path, "r")
            self._images = self._file["images"]
            self._labels = self._file[self.label_key][()]  # N int64: read once per process
            self._pid = os.getpid()
        return to_chw_tensor(self._images[i]), int(self._labels[i])


def load_memory(stores, split, fmts, limit):
    """Whole store (or its first `limit` images) as one NCHW uint8 tensor + int64 labels."""
    order = [f for f in ("hdf5", "lmdb", "png") if f in fmts]
    fmt = order[0]
    path = store_path(stores, split, fmt)
    if fmt == "hdf5":
        import h5py
        with h5py.File(path, "r") as f:
            n = f["images"].shape[0] if limit is None else min(limit, f["images"].shape[0])
            x = f["images"][:n]
            key = "labels" if "labels" in f else "meta"
            y = f[key][:n].astype(np.int64)
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        labels = torch.from_numpy(y)
    else:
        ds = LmdbStore(path) if fmt == "lmdb" else PngFolder(path)
        n = len(ds) if limit is None else min(limit, len(ds))
        items = [ds[i] for i in range(n)]
        images = torch.stack([t for t, _ in items])
        labels = torch.tensor([l for _, l in items], dtype=torch.int64)
    return images, labels, fmt


def time_epochs(ds, batch_size, workers, runs):
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=False)
    seconds = []
    for epoch in range(runs + 1):  # epoch 0: untimed warm-up (page cache, imports, lazy opens)
        seen = 0
        t0 = time.perf_counter()
        for x, y in loader:
            seen += x.shape[0]
        dt = time.perf_counter() - t0
        if seen != len(ds):
            raise RuntimeError("epoch yielded %d images, expected %d" % (seen, len(ds)))
        if epoch > 0:
            seconds.append(dt)
    rates = [len(ds) / s for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "epoch_seconds": [round(s, 4) for s in seconds]}


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Time PyTorch DataLoader epochs over imgstore PNG/LMDB/HDF5 stores and an "
                    "in-memory TensorDataset baseline; prints one JSON object to stdout.")
    p.add_argument("--stores", required=True,
                   help="directory holding <split>.png/, <split>.lmdb/, <split>.h5")
    p.add_argument("--split", default="train", help="split name (default: train)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    p.add_argument("--workers", default="0,2",
                   help="comma-separated DataLoader num_workers values (default: 0,2)")
    p.add_argument("--runs", type=int, default=3,
                   help="timed epochs per (format, workers), after one untimed warm-up "
                        "(default: 3)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help="comma-separated subset of png,lmdb,hdf5 (default: all three)")
    p.add_argument("--max-images", type=int, default=None,
                   help="use a Subset of the first N images (still shuffled) for every format "
                        "and the memory baseline; default: whole store, except PNG which is "
                        "capped at %d because PIL decoding is slow. The count used is reported "
                        "as \"images\" in each JSON result." % DEFAULT_PNG_MAX_IMAGES)
    a = p.parse_args(argv)
    try:
        a.workers = [int(w) for w in a.workers.split(",") if w.strip() != ""]
    except ValueError:
        p.error("--workers must be comma-separated integers, got %r" % a.workers)
    if not a.workers or any(w < 0 for w in a.workers):
        p.error("--workers needs at least one value, all >= 0")
    a.formats = [f.strip() for f in a.formats.split(",") if f.strip() != ""]
    bad = [f for f in a.formats if f not in FORMATS]
    if bad or not a.formats:
        p.error("--formats must be a non-empty subset of png,lmdb,hdf5, got %r" % ",".join(bad))
    if a.batch_size < 1 or a.runs < 1:
        p.error("--batch-size and --runs must be >= 1")
    if a.max_images is not None and a.max_images < 1:
        p.error("--max-images must be >= 1")
    return a


def main(argv):
    a = parse_args(argv)
    for fmt in a.formats:
        path = store_path(a.stores, a.split, fmt)
        if not os.path.exists(path):
            die("%s store not found: '%s' (create it with imgstore-convert ... --to %s)"
                % (fmt, path, fmt))
    torch.set_num_threads(1)  # like the C++ side: one intra-op thread
    t_start = time.perf_counter()
    results = []
    for fmt in a.formats:
        path = store_path(a.stores, a.split, fmt)
        try:
            full = {"png": PngFolder, "lmdb": LmdbStore, "hdf5": Hdf5Store}[fmt](path)
        except ImportError as e:
            die("cannot import the %s reader module: %s" % (fmt, e), code=3)
        except Exception as e:
            die("cannot open %s store '%s': %s: %s" % (fmt, path, type(e).__name__, e))
        limit = a.max_images if a.max_images is not None else (
            DEFAULT_PNG_MAX_IMAGES if fmt == "png" else None)
        n = len(full) if limit is None else min(limit, len(full))
        for w in a.workers:
            # Fresh dataset object per loader so no open handle leaks from an earlier run.
            ds = {"png": PngFolder, "lmdb": LmdbStore, "hdf5": Hdf5Store}[fmt](path)
            if n < len(ds):
                ds = Subset(ds, range(n))
            log("%s workers=%d images=%d: warm-up + %d timed epochs" % (fmt, w, n, a.runs))
            try:
                r = time_epochs(ds, a.batch_size, w, a.runs)
            except Exception as e:
                die("reading %s store '%s' failed: %s: %s" % (fmt, path, type(e).__name__, e))
            log("%s workers=%d: median %.0f img/s (min %.0f, max %.0f)"
                % (fmt, w, r["median"], r["min"], r["max"]))
            results.append(dict(format=fmt, workers=w, images=n, **r))

    try:
        images, labels, src = load_memory(a.stores, a.split, a.formats, a.max_images)
    except Exception as e:
        die("loading the in-memory baseline failed: %s: %s" % (type(e).__name__, e))
    mem = TensorDataset(images, labels)
    log("memory (from %s) workers=0 images=%d: warm-up + %d timed epochs"
        % (src, len(mem), a.runs))
    r = time_epochs(mem, a.batch_size, 0, a.runs)
    log("memory workers=0: median %.0f img/s (min %.0f, max %.0f)"
        % (r["median"], r["min"], r["max"]))
    results.append(dict(format="memory", workers=0, images=len(mem), loaded_from=src, **r))

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": a.batch_size,
        "split": a.split,
        "runs": a.runs,
        "warmup_epochs": 1,
        "shuffle": True,
        "persistent_workers": False,
        "units": "images/s over whole shuffled epochs (worker start-up included)",
        "results": results,
        "elapsed_s": round(time.perf_counter() - t_start, 2),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
