#!/usr/bin/env bash
# imgstore-bench --quick on a tiny N: every experiment and format lands in measurements.csv and
# results.json (with ratios to limits and peers), plots and report appear when matplotlib is
# there, and bad input gets a clear message and a non-zero exit. Timings are not checked.
source "$(dirname "$0")/lib.sh"
BENCH="${IMGSTORE_BUILD_DIR:?set by ctest}/imgstore-bench"
if [ ! -x "$BENCH" ]; then
  echo "skip: $BENCH not built (LibTorch off)"
  exit 0
fi
have_py_libs=0
"$PY" -c "import numpy, h5py, lmdb, PIL" 2>/dev/null && have_py_libs=1
have_mpl=0
"$PY" -c "import matplotlib" 2>/dev/null && have_mpl=1

# ---- a tiny quick run: N = 10 and 24, 2 runs, every format and variant ----
"$BENCH" --quick --max-n 24 --runs 2 --out "$WORK/out" --keep --quiet >"$WORK/stdout.txt" 2>"$WORK/stderr.txt" ||
  fail "imgstore-bench --quick exited $?: $(cat "$WORK/stderr.txt")"
CSV="$WORK/out/measurements.csv"
[ -f "$CSV" ] || fail "no measurements.csv"
[ "$(head -1 "$CSV")" = "experiment,impl,format,variant,n,threads,cache,order,run,seconds,images_per_s,bytes" ] ||
  fail "bad CSV header: $(head -1 "$CSV")"

# rows EXPERIMENT IMPL FORMAT VARIANT N: how many CSV rows match.
rows() { awk -F, -v e="$1" -v i="$2" -v f="$3" -v v="$4" -v n="$5" \
  '$1==e && $2==i && $3==f && $4==v && $5==n' "$CSV" | wc -l; }
expect_rows() {
  local want="$1"; shift
  local got; got="$(rows "$@")"
  [ "$got" -eq "$want" ] || fail "expected $want rows of '$*', found $got"
}
cores="$(nproc)"
thread_counts=$(( cores > 1 ? 2 : 1 ))  # the loaders' threads: {1, cores}
for fv in png/png lmdb/raw lmdb/png hdf5/contiguous hdf5/chunked hdf5/deflate; do
  f="${fv%/*}" v="${fv#*/}"
  expect_rows 2 store_one imgstore "$f" "$v" 1
  expect_rows 2 read_one imgstore "$f" "$v" 1
  for n in 10 24; do
    expect_rows 2 store_many imgstore "$f" "$v" "$n"
    expect_rows 1 disk_usage imgstore "$f" "$v" "$n"
    expect_rows 4 read_many imgstore "$f" "$v" "$n"        # sequential + shuffled
    # warm + cold, 2 runs, at each of the loaders' thread counts and at twice the most
    expect_rows $(( 4 * (thread_counts + 1) )) limit_seqread limit "$f" "$v" "$n"
  done
  # Epochs on the largest N: threads {1, cores} x {warm, cold} x 2 runs per loader.
  per=$(( thread_counts * 2 * 2 ))
  expect_rows "$per" epoch prefetch "$f" "$v" 24
  expect_rows "$per" epoch stock "$f" "$v" 24
done
for n in 10 24; do
  [ "$(rows limit_gather limit memory - "$n")" -ge 4 ] || fail "limit_gather rows missing for N=$n"
  [ "$(rows limit_decode limit memory png "$n")" -ge 2 ] || fail "limit_decode rows missing for N=$n"
done
grep -q ',shuffled,' "$CSV" || fail "no shuffled reads"
grep -qE ',(cold|cold_unavailable),' "$CSV" || fail "no cold-cache rows"
echo "ok: CSV rows for every experiment, format and variant"

# ---- results.json: schema, machine, and ratios in the summary ----
"$PY" - "$WORK/out/results.json" "$CSV" "$have_py_libs" <<'PYEOF' || fail "results.json check failed"
import csv, json, sys
j = json.load(open(sys.argv[1]))
rows = list(csv.DictReader(open(sys.argv[2])))
have_peer = sys.argv[3] == "1"
assert j["schema"] == 1
for k in ("cpu", "cores", "ram_bytes", "kernel", "disk", "filesystem", "load_avg_start"):
    assert k in j["machine"], k
assert j["machine"]["cores"] >= 1 and j["machine"]["ram_bytes"] > 0
for k in ("imgstore", "libtorch", "lmdb", "hdf5", "libpng", "tbb", "python", "numpy", "h5py",
          "lmdb_py", "pillow"):
    assert k in j["libraries"], k
assert j["dataset"]["shape"] == [32, 32, 3] and j["dataset"]["images"] == 24
c = j["config"]
assert c["ns"] == [10, 24] and c["runs"] == 2 and c["quick"] is True
assert c["cold_method"] in ("fadvise", "drop_caches", "none")
assert len(j["measurements"]) == len(rows), (len(j["measurements"]), len(rows))
for m in j["measurements"]:
    if m["seconds"] > 0:
        assert abs(m["images_per_s"] - m["n"] / m["seconds"]) <= 1e-6 * m["images_per_s"], m
s = j["summary"]
def pick(**kv):
    return [r for r in s if all(r[k] == v for k, v in kv.items())]
for r in s:
    assert r["min_s"] <= r["median_s"] <= r["max_s"], r
# Every read_many and epoch row is compared with a limit; prefetch epochs with the stock loader.
for r in pick(experiment="read_many", impl="imgstore") + pick(experiment="epoch"):
    assert r["limit"] and r["ratio_to_limit"] > 0, r
# A figure above its limit is flagged: the limit would be wrong.
for r in s:
    assert r["limit_beaten"] == (r["ratio_to_limit"] is not None and r["ratio_to_limit"] > 1), r
for r in pick(experiment="epoch", impl="prefetch"):
    assert r["peer"].startswith("stock ") and r["ratio_to_peer"] > 0, r
# A limit's figure is its fastest run. Prefetch epochs meet the limits at their own thread
# count; stock epochs (get_batch decodes on every core) those at the most threads.
limits = [r for r in s if r["impl"] == "limit"]
for r in limits:
    assert abs(r["images_per_s"] - r["n"] / r["min_s"]) <= 1e-6 * r["images_per_s"], r
most = {}
for l in limits:
    most[l["experiment"]] = max(most.get(l["experiment"], 0), l["threads"])
assert most["limit_seqread"] == 2 * most["limit_gather"], most
for r in pick(experiment="epoch"):
    rate = r["images_per_s"] / r["ratio_to_limit"]
    match = [l for l in limits if l["n"] == r["n"] and abs(l["images_per_s"] - rate) <= 1e-6 * rate
             and l["threads"] == (most[l["experiment"]] if r["impl"] == "stock" else r["threads"])]
    assert match, r
raw = pick(experiment="read_many", impl="imgstore", format="lmdb", variant="raw", n=24, order="shuffled")
assert raw and raw[0]["limit"].startswith("limit_"), raw
png = pick(experiment="epoch", impl="prefetch", format="png", threads=1, cache="warm")
assert png and png[0]["limit"] in ("limit_decode memory png", "limit_seqread png png"), png
if have_peer:
    tut = [m for m in rows if m["impl"] == "tutorial"]
    assert {m["format"] for m in tut} == {"png", "lmdb", "hdf5"}, "tutorial rows missing"
    for r in pick(experiment="read_many", impl="imgstore", n=24):
        assert r["peer"].startswith("tutorial ") and r["ratio_to_peer"] > 0, r
    for r in pick(experiment="store_many", impl="imgstore"):
        assert r["peer"].startswith("tutorial ") and r["ratio_to_peer"] > 0, r
print("ok: results.json schema, %d measurements, %d summary rows" % (len(rows), len(s)))
PYEOF
grep -q "vs limit" "$WORK/stdout.txt" || fail "stdout has no ratio table"
grep -q "limit_decode memory png" "$WORK/stdout.txt" || fail "stdout table lacks limit names"
grep -q "limit_decode's fastest full PNG decoder: " "$WORK/out/results.json" ||
  fail "results.json notes do not name the decode limit's decoder"
if [ "$have_py_libs" = 1 ]; then
  grep -q '^store_many,tutorial,lmdb,pickle,24,' "$CSV" || fail "no tutorial rows"
  echo "ok: tutorial peer rows"
else
  grep -q "tutorial peer skipped" "$WORK/stdout.txt" || fail "missing Python libraries not reported"
fi
if [ "$have_mpl" = 1 ] && [ -f "$IMGSTORE_SOURCE_DIR/bench/plot_report.py" ]; then
  [ -s "$WORK/out/report.md" ] || fail "no report.md: $(cat "$WORK/out/plot_report.log" 2>/dev/null)"
  ls "$WORK/out"/*.png >/dev/null 2>&1 || fail "no plots in $WORK/out"
  echo "ok: report.md and plots"
fi

# ---- --store: an existing store, and bad input ----
# The run above kept its stores (--keep): bench the LMDB one of N = 24 as an existing store.
STORE="$WORK/out/stores/lmdb-raw/n24.lmdb"
[ -d "$STORE" ] || fail "--keep did not keep $STORE"
"$BENCH" --store "$STORE" --formats lmdb --runs 1 --threads 1 --no-cold --no-python \
  --no-plots --quiet --out "$WORK/out2" >/dev/null 2>"$WORK/err2.txt" ||
  fail "--store run failed: $(cat "$WORK/err2.txt")"
grep -q '^epoch,prefetch,lmdb,raw,24,1,warm,shuffled,1,' "$WORK/out2/measurements.csv" ||
  fail "--store run lacks its epoch row"
[ -d "$STORE" ] || fail "--store removed the store it benched"
[ ! -e "$WORK/out2/stores" ] || fail "stores left behind without --keep"
echo "ok: --store"

touch "$WORK/a-file"
expect_error 1 "cannot create output directory '$WORK/a-file/out'" "$BENCH" --quick --out "$WORK/a-file/out"
expect_error 1 "store '/no/such/store' does not exist" "$BENCH" --store /no/such/store --out "$WORK/o"
expect_error 2 "store '$STORE' is in lmdb format, but --formats asks for hdf5" \
  "$BENCH" --store "$STORE" --formats hdf5 --out "$WORK/o"
expect_error 1 "'/no/such/source' does not exist" "$BENCH" --source /no/such/source --out "$WORK/o"
expect_error 2 "--runs 0: must be at least 1" "$BENCH" --runs 0 --out "$WORK/o"
expect_error 2 "--ns '10,abc': 'abc' is not a whole number" "$BENCH" --ns 10,abc --out "$WORK/o"
expect_error 2 "--threads '0': 0 is outside 1..1024" "$BENCH" --threads 0 --out "$WORK/o"
expect_error 2 "unknown format 'tiff'" "$BENCH" --formats png,tiff --out "$WORK/o"
expect_error 2 "--store benches the whole store" "$BENCH" --store "$STORE" --max-n 5 --out "$WORK/o"
expect_error 2 "frobnicate" "$BENCH" --frobnicate
[ ! -e "$WORK/o/measurements.csv" ] || fail "a failed run wrote measurements"
echo "ok: bad input"
