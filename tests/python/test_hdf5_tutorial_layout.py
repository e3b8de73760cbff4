#!/usr/bin/env python3
"""HDF5 interop with h5py, both ways.

1. A file written exactly as the tutorial writes it (h5py, /images and /meta as STD_U8BE) is read
   by imgstore-convert: `info` reports its count and shape, `convert` to LMDB and HDF5 works, and
   `verify --against` finds the copies identical. Chunked/gzip variants written by h5py load too.
2. h5py reads an imgstore-written .h5 (/images, /labels, /checksums, class_names, manifest),
   contiguous and chunked+deflate, with the pixels of the CIFAR-10 fixture it came from.

Run by ctest with Debian's /usr/bin/python3 (h5py, numpy); IMGSTORE_CONVERT and
IMGSTORE_MAKE_FIXTURES name the binaries.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

CONVERT = os.environ["IMGSTORE_CONVERT"]
MAKE_FIXTURES = os.environ.get("IMGSTORE_MAKE_FIXTURES")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def run(*args, binary=CONVERT):
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(f"$ {binary} {' '.join(map(str, args))}\n{result.stdout}{result.stderr}")
        raise AssertionError(f"{Path(binary).name} {args[0]} exited with {result.returncode}")
    return result.stdout


def store_many_hdf5(path, images, labels):
    """The tutorial's store_many_hdf5, verbatim apart from the file name."""
    file = h5py.File(path, "w")
    dataset = file.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images)
    meta_set = file.create_dataset("meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels)
    file.close()


def converted_paths(summary_json):
    """{format: path} of the stores a `convert --json` run wrote."""
    summary = json.loads(summary_json)
    return {store["format"]: Path(store["path"])
            for split in summary["splits"] for store in split["stores"]}


def check_tutorial_layout(tmp):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(50,), dtype=np.uint8)
    tutorial = tmp / "50_many.h5"
    store_many_hdf5(tutorial, images, labels)

    info = json.loads(run("info", tutorial, "--json"))
    assert info["format"] == "hdf5", info
    assert info["count"] == 50, info
    assert info["shape"] == [32, 32, 3], info
    assert info["source"] == "tutorial layout", info
    assert info["classes"] == [], info

    out = tmp / "from_tutorial"
    stores = converted_paths(run("convert", tutorial, "--to", "lmdb,hdf5", "--out", out,
                                 "--quiet", "--json", "--no-fsync"))
    assert set(stores) == {"lmdb", "hdf5"}, stores
    for store in stores.values():
        assert store.exists(), store
        result = json.loads(run("verify", store, "--against", tutorial, "--json", "--quiet"))
        assert result["records"] == 50, result
        assert result["identical"] is True, result

    # The copy is an imgstore file h5py reads back to the tutorial's pixels and labels.
    with h5py.File(stores["hdf5"], "r") as f:
        assert np.array_equal(f["images"][...], images)
        assert np.array_equal(f["labels"][...], labels.astype(np.int64))

    # h5py's chunked variants (raw-chunk path; shuffle+gzip goes through HDF5's own filters).
    for name, kwargs in [("chunked", dict(chunks=(8, 32, 32, 3))),
                         ("gzip", dict(chunks=(16, 32, 32, 3), compression="gzip")),
                         ("shuffle", dict(chunks=(4, 32, 32, 3), compression="gzip", shuffle=True)),
                         ("split_chunks", dict(chunks=(5, 16, 32, 3)))]:
        path = tmp / f"tutorial_{name}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images, **kwargs)
            f.create_dataset("meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels)
        result = json.loads(run("verify", path, "--against", tutorial, "--json", "--quiet"))
        assert result["identical"] is True and result["records"] == 50, (name, result)


def read_cifar_binary(path):
    """CIFAR-10 binary records: 1 label byte, then 3072 bytes CHW. Returns HWC images, labels."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64)


def check_imgstore_written(tmp):
    if not MAKE_FIXTURES:
        print("IMGSTORE_MAKE_FIXTURES not set; skipping the imgstore-written part")
        return
    source = tmp / "cifar-10-batches-bin"
    run("cifar10-bin", source, "--records", 30, binary=MAKE_FIXTURES)
    images, labels = read_cifar_binary(source / "test_batch.bin")
    assert images.shape == (30, 32, 32, 3)

    for name, options in [("contiguous", []),
                          ("deflate", ["--hdf5-chunk", 8, "--hdf5-deflate", 4])]:
        stores = converted_paths(run("convert", source, "--to", "hdf5", "--split", "test",
                                     "--out", tmp / name, "--quiet", "--json", *options))
        with h5py.File(stores["hdf5"], "r") as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape == (30, 32, 32, 3)
            assert np.array_equal(f["images"][...], images), name
            assert f["labels"].dtype == np.int64
            assert np.array_equal(f["labels"][...], labels), name
            assert f["checksums"].dtype == np.uint64 and f["checksums"].shape == (30,)
            assert list(f.attrs["class_names"]) == CIFAR10_CLASSES, f.attrs["class_names"]
            assert int(f.attrs["imgstore_format_version"]) == 1
            manifest = json.loads(f.attrs["imgstore_manifest"])
            assert manifest["count"] == 30 and manifest["checksums"] == [], manifest
            assert manifest["class_names"] == CIFAR10_CLASSES
            if name == "deflate":
                assert f["images"].chunks == (8, 32, 32, 3) and f["images"].compression == "gzip"
            else:
                assert f["images"].chunks is None


def main():
    with tempfile.TemporaryDirectory(prefix="imgstore-py-hdf5-") as tmp:
        tmp = Path(tmp)
        check_tutorial_layout(tmp)
        check_imgstore_written(tmp)
    print("ok")


if __name__ == "__main__":
    main()
