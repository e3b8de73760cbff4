#!/usr/bin/env bash
# imgstore-store-bench on a small CIFAR-10 binary fixture (2 runs, LMDB and HDF5 cases only):
# exits 0, times the conversions from the source files beside the stores written from memory,
# and its JSON holds every case with a run per --runs and the floor ratios the issue asks for,
# each recomputed here from the cases' own times. Timings are never checked.
source "$(dirname "$0")/lib.sh"
BUILD="${IMGSTORE_BUILD_DIR:?set by ctest}"
BENCH="$BUILD/imgstore-store-bench"
[ -x "$BENCH" ] || fail "missing $BENCH (build target imgstore-store-bench)"
[ -x "$FIXTURES" ] || fail "missing the fixture generator (IMGSTORE_MAKE_FIXTURES)"
"$FIXTURES" cifar10-bin --records 300 "$WORK/cifar" >/dev/null

"$BENCH" --source "$WORK/cifar" --out "$WORK/scratch" --runs 2 --no-python --no-stream \
  --skip png_durable png_nosync files_durable files_nosync png_encode_1thread \
  --json sb.json >out.txt 2>err.txt || fail "imgstore-store-bench exited $?: $(cat err.txt) $(cat out.txt)"
for label in "LMDB from the files" "HDF5 from the files" "cat of the source files" "write floor"; do
  grep -q "^$label" out.txt || fail "no '$label' row: $(cat out.txt)"
done
grep -qE "lmdb from the files / cat floor \(nosync\) +[0-9.]+ +\[<= 2\.0\] (met|MISSED)" out.txt ||
  fail "no conversion floor ratio: $(cat out.txt)"

$PY - <<'PY' || fail "JSON check failed: $(cat out.txt)"
import json
doc = json.load(open("sb.json"))
cases = doc["cases"]
assert doc["failed_cases"] == [], doc["failed_cases"]
for key in ("lmdb_convert_nosync", "lmdb_convert_durable", "hdf5_convert_nosync",
            "hdf5_convert_durable", "cat_nosync", "cat_durable", "plain_nosync", "lmdb_nosync"):
    assert len(cases[key]["seconds"]) == 2, (key, cases[key])
# The stores hold the split repeated twice (the default): 600 images of 3,072 bytes.
assert cases["hdf5_convert_nosync"]["bytes_on_disk"] >= 600 * 3072, cases["hdf5_convert_nosync"]
floors = {f["case"]: f for f in doc["floors"]}
for key in ("lmdb_convert_nosync", "hdf5_convert_durable"):
    f = floors[key]
    cat = cases["cat_" + key.split("_")[-1]]
    median = sum(cases[key]["seconds"]) / 2  # the median of two runs
    fastest = min(cat["seconds"])
    assert abs(f["floor_seconds"] - fastest) < 1e-12, (f, cat)
    assert abs(f["value"] - median / fastest) < 1e-9, (f, median, fastest)
    assert f["met"] == (f["value"] <= 2.0), f
print("ok: JSON cases and floor ratios")
PY
echo "ok: imgstore-store-bench"
