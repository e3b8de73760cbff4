#!/usr/bin/env python3
"""imgstore-bench's Python side: bench/tutorial_peer.py and bench/plot_report.py.

1. tutorial_peer.py on 20 random 32x32x3 images: every row has the schema's fields and types,
   each experiment has the expected number of rows, the stores it kept hold the input images
   and labels (read back here with PIL, py-lmdb + pickle and h5py), and an experiment subset
   produces only those rows.
2. plot_report.py on a schema-conformant results.json generated here (every experiment, warm
   and cold, limits, summary) writes valid PNGs and a report with the headline table; on one
   with pieces missing (only the peer's JSON lines: no summary, machine or epochs; no tutorial
   rows; no rows at all) it still succeeds and draws only what it has.
3. Bad input to either script (missing or malformed files, bad arguments, unwritable output)
   exits non-zero with a message naming the problem.

Run by ctest with Debian's /usr/bin/python3 (numpy, Pillow, h5py, py-lmdb, matplotlib).
"""
import csv
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import lmdb
import numpy as np
from PIL import Image

SOURCE = Path(os.environ.get("IMGSTORE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
PEER = SOURCE / "bench" / "tutorial_peer.py"
REPORT = SOURCE / "bench" / "plot_report.py"
sys.path.insert(0, str(SOURCE / "bench"))  # pickle finds tutorial_store.CIFAR_Image

FIELDS = ["experiment", "impl", "format", "variant", "n", "threads", "cache", "order", "run",
          "seconds", "images_per_s", "bytes"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NS = [5, 20]
RUNS = 2


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def expect_ok(result, what):
    assert result.returncode == 0, f"{what}: exit {result.returncode}\n{result.stderr}"


def expect_error(result, what, needle):
    assert result.returncode != 0, f"{what}: exited 0\n{result.stdout}"
    assert "error" in result.stderr and needle in result.stderr, \
        f"{what}: stderr lacks {needle!r}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{what}: crashed:\n{result.stderr}"


def parse_rows(stdout):
    rows = [json.loads(line) for line in stdout.splitlines()]
    for r in rows:
        assert list(r) == FIELDS, f"fields {list(r)}"
        for f in ("n", "threads", "run", "bytes"):
            assert isinstance(r[f], int), (f, r)
        for f in ("seconds", "images_per_s"):
            assert isinstance(r[f], float), (f, r)
        assert r["impl"] == "tutorial" and r["threads"] == 1 and r["cache"] == "warm", r
        assert r["variant"] == {"png": "png", "lmdb": "pickle", "hdf5": "contiguous"}[r["format"]]
        if r["experiment"] == "disk_usage":
            assert r["seconds"] == 0 and r["run"] == 0 and r["images_per_s"] == 0, r
        else:
            assert r["seconds"] > 0 and 1 <= r["run"] <= RUNS, r
            assert abs(r["images_per_s"] - r["n"] / r["seconds"]) <= 1e-6 * r["images_per_s"]
        assert r["bytes"] > 0, r
        want_order = ("sequential", "shuffled") if r["experiment"] == "read_many" else ("-",)
        assert r["order"] in want_order, r
    return rows


def count(rows, **conds):
    return sum(all(r[k] == v for k, v in conds.items()) for r in rows)


def check_kept_stores(out, images, labels):
    """The stores the peer left behind (--keep) hold the input, read without the peer's code."""
    for n in NS:
        d = out / "many" / "png" / str(n)
        with open(d / f"{n}.csv") as f:
            got_labels = [int(row[0]) for row in csv.reader(f, delimiter=" ")]
        assert got_labels == labels[:n].tolist(), f"png n={n}: labels"
        for i in range(n):
            assert np.array_equal(np.asarray(Image.open(d / f"{i}.png")), images[i]), (n, i)

        env = lmdb.open(str(out / "many" / "lmdb" / str(n) / f"{n}_lmdb"), readonly=True,
                        lock=False)
        with env.begin() as txn:
            assert txn.stat()["entries"] == n
            for i in range(n):
                obj = pickle.loads(txn.get(f"{i:08}".encode("ascii")))
                assert np.array_equal(obj.get_image(), images[i]) and obj.label == labels[i]
        env.close()

        with h5py.File(out / "many" / "hdf5" / str(n) / f"{n}_many.h5", "r") as f:
            assert f["images"].dtype == np.dtype(">u1") and f["images"].chunks is None
            assert np.array_equal(f["images"][()], images[:n])
            assert np.array_equal(f["meta"][()], labels[:n])
    assert np.array_equal(np.asarray(Image.open(out / "single" / "png" / "0.png")), images[0])
    with h5py.File(out / "single" / "hdf5" / "0.h5", "r") as f:
        assert np.array_equal(f["image"][()], images[0]) and int(f["meta"][()]) == labels[0]


def test_peer(tmp, images_npy, labels_npy, images, labels):
    out = tmp / "peer"
    r = run(PEER, "--images", images_npy, "--labels", labels_npy, "--out", out,
            "--ns", ",".join(map(str, NS)), "--runs", RUNS, "--seed", 3, "--keep")
    expect_ok(r, "tutorial_peer")
    rows = parse_rows(r.stdout)
    assert "warm" in r.stderr, "the peer says its reads are warm"
    for fmt in ("png", "lmdb", "hdf5"):
        assert count(rows, experiment="store_one", format=fmt, n=1) == RUNS
        assert count(rows, experiment="read_one", format=fmt, n=1) == RUNS
        for n in NS:
            assert count(rows, experiment="store_many", format=fmt, n=n) == RUNS
            assert count(rows, experiment="disk_usage", format=fmt, n=n) == 1
            for order in ("sequential", "shuffled"):
                assert count(rows, experiment="read_many", format=fmt, n=n, order=order) == RUNS
    assert len(rows) == 3 * (2 * RUNS + len(NS) * (RUNS + 1 + 2 * RUNS)), len(rows)
    # Bytes: the stores' sizes; the PNG folder holds n PNGs and the CSV, so it grows with n.
    usage = {(r["format"], r["n"]): r["bytes"] for r in rows if r["experiment"] == "disk_usage"}
    for fmt in ("png", "lmdb", "hdf5"):
        assert usage[(fmt, NS[1])] > usage[(fmt, NS[0])], fmt
    h5 = out / "many" / "hdf5" / str(NS[1]) / f"{NS[1]}_many.h5"
    assert usage[("hdf5", NS[1])] == h5.stat().st_size
    check_kept_stores(out, images, labels)
    print(f"ok: tutorial_peer wrote {len(rows)} rows; kept stores hold the input")
    peer_stdout = r.stdout

    r = run(PEER, "--images", images_npy, "--labels", labels_npy, "--out", tmp / "peer2",
            "--ns", "20", "--runs", 1, "--experiments", "read_many,disk_usage")
    expect_ok(r, "tutorial_peer subset")
    sub = parse_rows(r.stdout)
    assert {x["experiment"] for x in sub} == {"read_many", "disk_usage"}
    assert len(sub) == 3 * (2 + 1)
    assert not (tmp / "peer2" / "many").exists(), "stores are removed without --keep"
    print("ok: experiment subset")
    return rows, peer_stdout


def synthetic_results(peer_rows):
    """A full results.json in schema 1, with figures drawn from a simple model plus noise."""
    rng = random.Random(11)
    rows = []

    def add(experiment, impl, fmt, variant, n, threads, cache, order, per_image, nbytes, runs=3):
        for run_no in range(1, runs + 1):
            s = n * per_image * rng.uniform(0.9, 1.2)
            rows.append(dict(zip(FIELDS, [experiment, impl, fmt, variant, n, threads, cache,
                                          order, run_no, s, n / s, nbytes])))

    ns = [10, 100, 1000]
    ours = [("png", "png", 40e-6), ("lmdb", "raw", 2e-6), ("lmdb", "png", 35e-6),
            ("hdf5", "contiguous", 1e-6), ("hdf5", "chunked", 2e-6), ("hdf5", "deflate", 9e-6)]
    for fmt, variant, cost in ours:
        add("store_one", "imgstore", fmt, variant, 1, 1, "warm", "-", 5 * cost, 4000)
        add("read_one", "imgstore", fmt, variant, 1, 1, "warm", "-", 2 * cost, 4000)
        for n in ns:
            add("store_many", "imgstore", fmt, variant, n, 1, "warm", "-", cost, 3100 * n)
            rows.append(dict(zip(FIELDS, ["disk_usage", "imgstore", fmt, variant, n, 1, "warm",
                                          "-", 0, 0.0, 0.0, 3100 * n])))
            for order in ("sequential", "shuffled"):
                for cache in ("warm", "cold"):
                    add("read_many", "imgstore", fmt, variant, n, 1, cache, order,
                        cost / 2 * (3 if cache == "cold" else 1), 3100 * n)
        for threads in (1, 2):
            for cache in ("warm", "cold"):
                for impl in ("prefetch", "stock"):
                    add("epoch", impl, fmt, variant, 1000, threads, cache, "shuffled",
                        cost / threads * (2 if impl == "stock" else 1), 3100 * 1000)
        for cache in ("warm", "cold"):
            add("limit_seqread", "limit", fmt, variant, 1000, 1, cache, "sequential",
                0.3e-6 * (4 if cache == "cold" else 1), 3100 * 1000)
    for threads in (1, 2):
        for order, cost in (("sequential", 0.02e-6), ("shuffled", 0.05e-6)):
            add("limit_gather", "limit", "memory", "-", 1000, threads, "warm", order,
                cost / threads, 3072 * 1000)
        add("limit_decode", "limit", "memory", "png", 1000, threads, "warm", "-",
            30e-6 / threads, 0)
    # The tutorial's rows from the real peer run, rescaled to N = 10..1000.
    for r in peer_rows:
        if r["n"] == NS[1]:
            for n in ns:
                scaled = dict(r, n=n, seconds=r["seconds"] * n / NS[1],
                              bytes=r["bytes"] * n // NS[1])
                scaled["images_per_s"] = n / scaled["seconds"] if scaled["seconds"] else 0.0
                rows.append(scaled)
        elif r["n"] == 1:
            rows.append(r)
    summary = [{"experiment": "epoch", "impl": "prefetch", "format": "lmdb", "variant": "raw",
                "n": 1000, "threads": 2, "cache": "warm", "order": "shuffled", "runs": 3,
                "median_s": 0.001, "min_s": 0.0009, "max_s": 0.0012, "images_per_s": 1e6,
                "bytes": 3100000, "limit": "limit_gather memory", "ratio_to_limit": 0.05,
                "peer": "stock lmdb raw", "ratio_to_peer": 2.0}]
    return {
        "schema": 1,
        "machine": {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "ram_bytes": 24 << 30,
                    "kernel": "6.1.0-test", "disk": "vda (virtio)", "filesystem": "ext4",
                    "load_avg_start": [0.5, 0.4, 0.3]},
        "libraries": {"imgstore": "0.1.0", "libtorch": "1.13.0", "lmdb": "0.9.24",
                      "hdf5": "1.10.8", "libpng": "1.6.39", "tbb": "2021.8", "python": "3.11.2",
                      "numpy": "1.24.2", "h5py": "3.7.0", "lmdb_py": "1.4.0", "pillow": "9.4.0"},
        "dataset": {"source": "synthetic:n=1000,h=32,w=32,c=3", "shape": [32, 32, 3],
                    "images": 1000},
        "config": {"ns": ns, "runs": 3, "threads": [1, 2], "quick": True,
                   "cold_method": "fadvise", "notes": ["synthetic results for the test"]},
        "measurements": rows,
        "summary": summary,
    }


def check_pngs(out, names):
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), f"{name} is not a PNG"
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.size[0] >= 300 and im.size[1] >= 200, (name, im.size)


ALL_PLOTS = ["store_many_loglog.png", "store_many_linear.png", "read_many_loglog.png",
             "read_many_linear.png", "disk_usage.png", "epoch_throughput.png",
             "thread_scaling.png"]


def test_report(tmp, peer_rows, peer_stdout):
    results = synthetic_results(peer_rows)
    full = tmp / "full.json"
    full.write_text(json.dumps(results))
    out = tmp / "report_full"
    r = run(REPORT, "--json", full, "--out", out)
    expect_ok(r, "plot_report (full)")
    check_pngs(out, ALL_PLOTS)
    report = (out / "report.md").read_text()
    for needle in ("## Headline", "| format | measurement |", "Test CPU @ 2.0GHz", "fadvise",
                   "synthetic results for the test", "## Machine", "## Libraries",
                   "## Data set", "## Page cache", "warm only"):
        assert needle in report, f"report.md lacks {needle!r}"
    for name in ALL_PLOTS:
        assert f"]({name})" in report, f"report.md does not link {name}"
    headline = [line for line in report.splitlines()
                if line.startswith("| lmdb | read_many shuffled | 1000 | warm | imgstore raw")]
    assert headline and "pickle" in headline[0], "LMDB shuffled read vs the tutorial's pickle"
    epoch = [line for line in report.splitlines()
             if line.startswith("| lmdb | epoch shuffled, 2 thr | 1000 | warm | prefetch raw")]
    assert epoch and "limit_gather memory" in epoch[0] and "0.05×" in epoch[0], \
        "the summary's limit ratio is used"
    print("ok: plot_report on a full results.json: 7 PNGs and the headline table")

    # Missing pieces: only the tutorial's rows, as the peer printed them (JSON lines): no
    # summary, machine or config, small Ns.
    partial = tmp / "peer.jsonl"
    partial.write_text(peer_stdout)
    out = tmp / "report_partial"
    r = run(REPORT, "--json", partial, "--out", out)
    expect_ok(r, "plot_report (partial)")
    present = ALL_PLOTS[:5]
    check_pngs(out, present)
    for name in ALL_PLOTS[5:]:
        assert not (out / name).exists(), f"{name} drawn without epoch rows"
    report = (out / "report.md").read_text()
    assert "No epoch measurements" in report and "(not recorded)" in report
    print("ok: plot_report on the peer's JSON lines alone")

    # No tutorial rows, no epoch limits: the Python libraries were missing.
    no_py = dict(results, measurements=[m for m in results["measurements"]
                                        if m["impl"] != "tutorial"
                                        and not m["experiment"].startswith("limit")],
                 summary=[])
    (tmp / "nopy.json").write_text(json.dumps(no_py))
    r = run(REPORT, "--json", tmp / "nopy.json", "--out", tmp / "report_nopy")
    expect_ok(r, "plot_report (no tutorial)")
    check_pngs(tmp / "report_nopy", ALL_PLOTS)
    assert "No tutorial rows" in (tmp / "report_nopy" / "report.md").read_text()

    # No measurements at all.
    (tmp / "empty.json").write_text(json.dumps({"schema": 1, "measurements": []}))
    expect_ok(run(REPORT, "--json", tmp / "empty.json", "--out", tmp / "report_empty"), "empty")
    report = (tmp / "report_empty" / "report.md").read_text()
    assert "holds no measurements" in report and "No plots" in report
    assert not list((tmp / "report_empty").glob("*.png"))
    print("ok: plot_report without tutorial rows and with no rows")


def test_bad_input(tmp, images_npy, labels_npy):
    blocker = tmp / "a_file"
    blocker.write_text("not a directory")
    bad_npy = tmp / "bad.npy"
    bad_npy.write_bytes(b"\x93NUMPY garbage")
    floats = tmp / "floats.npy"
    np.save(floats, np.zeros((4, 8, 8, 3), np.float32))
    short = tmp / "short_labels.npy"
    np.save(short, np.zeros(3, np.int64))
    base = ["--labels", labels_npy, "--out", tmp / "o", "--ns", "5", "--runs", "1"]
    cases = [
        (["--images", tmp / "missing.npy", *base], "missing.npy: no such file"),
        (["--images", bad_npy, *base], "not a readable .npy"),
        (["--images", floats, *base], "uint8"),
        (["--images", images_npy, "--labels", short, "--out", tmp / "o"], "--labels"),
        (["--images", images_npy, "--labels", labels_npy, "--out", blocker / "sub", "--ns", "5"],
         "--out"),
        (["--images", images_npy, *base[:4], "--ns", "5,x"], "--ns"),
        (["--images", images_npy, *base[:4], "--ns", "500"], "exceeds the 20 images"),
        (["--images", images_npy, *base[:4], "--runs", "0"], "--runs"),
        (["--images", images_npy, *base, "--experiments", "epoch"], "unknown experiment"),
    ]
    for args, needle in cases:
        expect_error(run(PEER, *args), f"tutorial_peer {args}", needle)

    good = tmp / "full.json"
    (tmp / "not.json").write_text("{ nope")
    (tmp / "rows.json").write_text(json.dumps({"schema": 1, "measurements": [{"n": 1}]}))
    (tmp / "list.json").write_text(json.dumps([1, 2]))
    (tmp / "schema2.json").write_text(json.dumps({"schema": 2, "measurements": []}))
    cases = [
        (["--json", tmp / "missing.json", "--out", tmp / "r"], "no such file"),
        (["--json", tmp / "not.json", "--out", tmp / "r"], "not JSON"),
        (["--json", tmp / "rows.json", "--out", tmp / "r"], "measurements[0] lacks"),
        (["--json", tmp / "list.json", "--out", tmp / "r"], "measurements"),
        (["--json", tmp / "schema2.json", "--out", tmp / "r"], "schema 2"),
        (["--json", good, "--out", blocker / "sub"], "--out"),
    ]
    for args, needle in cases:
        expect_error(run(REPORT, *args), f"plot_report {args}", needle)
    print("ok: bad input exits non-zero with a message")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(5)
        images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 20)
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        rows, peer_stdout = test_peer(tmp, tmp / "images.npy", tmp / "labels.npy", images,
                                      labels)
        test_report(tmp, rows, peer_stdout)
        test_bad_input(tmp, tmp / "images.npy", tmp / "labels.npy")


if __name__ == "__main__":
    sys.exit(main())
