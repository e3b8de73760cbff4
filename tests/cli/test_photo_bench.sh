#!/usr/bin/env bash
# imgstore-photo-convert-bench --quick --copies 2 (small photo fixture, each file twice, 1 run):
# exits 0, prints every row of its table, writes complete CSV/JSON, and its cat floor moved
# exactly the data set's bytes (the total size of the files, counted here independently).
# Timings are never checked.
source "$(dirname "$0")/lib.sh"
BUILD="${IMGSTORE_BUILD_DIR:?set by ctest}"
BENCH="$BUILD/imgstore-photo-convert-bench"
[ -x "$BENCH" ] || fail "missing $BENCH (build target imgstore-photo-convert-bench)"
$PY -c "import PIL, skimage" 2>/dev/null || { echo "note: no Pillow/skimage, not checked"; exit 0; }

"$BENCH" --quick --copies 2 --out "$WORK/b" --json b.json --csv b.csv >out.txt 2>err.txt ||
  fail "imgstore-photo-convert-bench --quick exited $?: $(cat err.txt) $(cat out.txt)"
NUM='[0-9]+(\.[0-9]+)?'
row() {  # row PATTERN: exactly one table line starts with PATTERN and has all its figures
  local got; got=$(grep -cE -- "^$1 +[0-9]+ +$NUM +$NUM\.\.$NUM +$NUM +$NUM +($NUM!?|-)" out.txt || true)
  [ "$got" -eq 1 ] || fail "table row '$1': $got matches:
$(cat out.txt)"
}
for r in "cat floor, no flush" "cat floor, fsync" "lmdb pass-through, --no-fsync" \
         "lmdb pass-through, fsync" "lmdb --resize-short 256" "hdf5 pass-through, --no-fsync" \
         "hdf5 pass-through, fsync" "hdf5 --resize-short 256" "Python PIL loop, resize 256" \
         "process start \(convert --help\)"; do
  row "$r"
done
grep -qE "^lmdb pass-through, --no-fsync .* $NUM+x \(>= 0\.5x: (met|MISSED)\)" out.txt || fail "no floor ratio: $(cat out.txt)"
grep -qE "^hdf5 --resize-short 256 .* $NUM+x \(>= 3\.0x: (met|MISSED)\)" out.txt || fail "no peer ratio: $(cat out.txt)"
echo "ok: table complete"

# The data set stays in OUT/data: the floor's bytes are the files' bytes, in every floor run.
files=$(find "$WORK/b/data" -type f | wc -l)
bytes=$(find "$WORK/b/data" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
[ "$files" -gt 0 ] || fail "no data set under $WORK/b/data"
copies=$(find "$WORK/b/data" -type f -name 'copy1_*' | wc -l)
[ $((copies * 2)) -eq "$files" ] || fail "--copies 2: $copies second copies of $files files"
$PY - "$files" "$bytes" <<'EOF' || fail "JSON check failed"
import csv, json, sys
files, total = int(sys.argv[1]), int(sys.argv[2])
doc = json.load(open("b.json"))
assert doc["data"]["images"] == files, (doc["data"], files)
assert doc["data"]["bytes"] == total, (doc["data"], total)
assert doc["conditions"]["copies"] == 2, doc["conditions"]
assert len(doc["floor_runs"]) == 2, doc["floor_runs"]  # no flush + fsync, 1 run each
for run in doc["floor_runs"]:
    assert run["bytes"] == total, (run, total)
    assert run["read_calls"] >= files and run["write_calls"] >= 1, run
summary = {row["case"]: row for row in doc["summary"]}
assert len(summary) == 10, list(summary)
for name, row in summary.items():
    for key in ("median_seconds", "min_seconds", "max_seconds", "images_per_second", "bytes"):
        assert key in row, (name, key)
    assert row["images"] == files and row["runs"] == 1, row
    if row["experiment"] == "passthrough":
        assert row["against"].startswith("cat floor") and "ratio" in row and "rss_met" in row, row
        # the floor is its fastest run, the conversion its median
        floor = summary[row["against"]]["min_seconds"]
        assert abs(row["ratio"] - floor / row["median_seconds"]) <= 1e-9 * row["ratio"], (row, floor)
        assert row["peak_rss_bytes"] > 0, row
    if row["experiment"] == "resize256" and row["variant"] != "pil":
        assert row["against"] == "Python PIL loop, resize 256" and "cpu_ratio" in row, row
rows = list(csv.DictReader(open("b.csv")))
assert len(rows) == 10, len(rows)
assert all(int(r["n"]) == files for r in rows)
EOF
echo "ok: floor moved the data set's $bytes bytes of $files files; JSON and CSV complete"
