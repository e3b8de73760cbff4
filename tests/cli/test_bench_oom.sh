#!/usr/bin/env bash
# imgstore-bench --out-of-memory in a small configuration (32 MiB memory cgroup, stores 4x that,
# one run): every row and ratio is printed and written, the cgroup limit held (by the group's
# own counters), the groups are removed, and every epoch (full shuffle and quasi-random)
# delivered every record exactly once (count, permutation and the sum of record checksums
# against the manifest's). No timing is asserted. It needs root and a cgroup memory
# controller, as CI has: without them it FAILS, saying what is missing.
# IMGSTORE_OOM_LIMIT_MIB sets the limit (scripts/sanitize.sh raises it under ASan, whose shadow
# memory, quarantine and fake stacks grow the children).
source "$(dirname "$0")/lib.sh"
BUILD="${IMGSTORE_BUILD_DIR:?set by ctest}"
BENCH="$BUILD/imgstore-bench"
require_torch_program "$BENCH" imgstore-bench
LIMIT_MIB="${IMGSTORE_OOM_LIMIT_MIB:-32}"
# Under ASan, keep its own memory well inside the children's limit: the quarantine (256 MiB by
# default) and the fake stacks of detect_stack_use_after_return (about 20 MiB over the
# loader's threads here). With them, an epoch child's anonymous memory charged to its group
# peaked at 71 MiB of a 96 MiB limit; without, 52 MiB. Every other test runs with both on.
[ -z "${ASAN_OPTIONS:-}" ] ||
  export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=4:thread_local_quarantine_size_kb=256:detect_stack_use_after_return=0"

# Not root: a clear refusal, before anything is written.
if command -v setpriv >/dev/null && [ "$(id -u)" -eq 0 ]; then
  expect_error 2 "needs root to create a memory cgroup" \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$BENCH" --out-of-memory --out "$WORK/nobody"
  [ ! -e "$WORK/nobody" ] || fail "the refused run created its output directory"
fi
[ "$(id -u)" -eq 0 ] || fail "cli.test_bench_oom needs root (memory cgroups); running as uid $(id -u)"

# Out dir on the real disk, not tmpfs: eviction and O_DIRECT must reach the disk.
OUT="$(mktemp -d "$BUILD/test-bench-oom.XXXXXX")"
trap 'rm -rf "$WORK" "$OUT"' EXIT
"$BENCH" --out-of-memory --quick --runs 1 --oom-limit-mib "$LIMIT_MIB" --oom-factor 4 \
  --oom-windows 512,2048 --out "$OUT" >run.txt 2>run.err ||
  fail "imgstore-bench --out-of-memory exited $?: $(tail -5 run.err)"
cat run.txt

NUM='[0-9]+(\.[0-9]+)?'
expect_rows() {
  local got; got=$(grep -cE -- "$2" "$1" || true)
  [ "$got" -eq "$3" ] || fail "$1: $got lines match '$2', expected $3:
$(cat "$1")"
}
for f in lmdb hdf5; do
  expect_rows run.txt "^$f +random-read limit [0-9]+K +$NUM +$NUM\.\.$NUM +$NUM +$NUM +- " 1
  expect_rows run.txt "^$f +full shuffle +$NUM +$NUM\.\.$NUM +$NUM +$NUM +${NUM}x random-read limit " 1
  expect_rows run.txt "^$f +quasi-random W=(512|2048) +$NUM +$NUM\.\.$NUM +$NUM +$NUM +${NUM}x full shuffle " 2
  expect_rows run.txt "^$f +sequential read +$NUM +$NUM\.\.$NUM +$NUM +$NUM +- " 1
  expect_rows run.txt "^target $f full shuffle >= 0\.7x random-read limit: ${NUM}x, (met|MISSED)$" 1
  expect_rows run.txt "^target $f quasi-random window_(512|2048) >= 3x full shuffle: ${NUM}x, (met|MISSED)$" 2
done
expect_rows run.txt "limit $LIMIT_MIB MiB \(cgroup v[12] memory controller" 1
# measurements.csv: one row per pass (1 run: 5 passes per store).
expect_rows "$OUT/measurements.csv" "^experiment,impl,format,variant,n,threads,cache,order,run,seconds,images_per_s,bytes$" 1
for fv in "lmdb,raw" "hdf5,contiguous"; do
  expect_rows "$OUT/measurements.csv" "^limit_randread,limit,$fv,[0-9]+,[0-9]+,out_of_memory,shuffled,1,$NUM,$NUM,[1-9][0-9]*$" 1
  expect_rows "$OUT/measurements.csv" "^oom_epoch,prefetch,$fv,[0-9]+,[0-9]+,out_of_memory,(shuffled|window_512|window_2048),1,$NUM,$NUM,[0-9]+$" 3
  expect_rows "$OUT/measurements.csv" "^limit_seqread,limit,$fv,[0-9]+,1,out_of_memory,sequential,1,$NUM,$NUM,[1-9][0-9]*$" 1
done

# results.json: limits held, records once, ratios present, groups gone.
"$PY" - "$OUT/results.json" "$LIMIT_MIB" <<'EOF' || fail "results.json checks failed"
import json, os, sys
j = json.load(open(sys.argv[1]))
limit = int(sys.argv[2]) << 20
oom = j["config"]["out_of_memory"]
assert oom["limit_bytes"] == limit, oom
for s in oom["stores"]:
    assert s["bytes"] >= 4 * limit, f"store {s['path']} is {s['bytes']} bytes, under 4x the limit"
passes = j["passes"]
assert len(passes) == 10, len(passes)
sums = {}
for p in passes:
    what = f"{p['format']} {p['experiment']} {p['order']}"
    assert p["cgroup_limit"] == limit, (what, p["cgroup_limit"])
    assert 0 < p["cgroup_peak"] <= limit, (what, "cgroup peak", p["cgroup_peak"])
    assert p["cgroup_oom_kills"] == 0, (what, "OOM kills", p["cgroup_oom_kills"])
    if p["experiment"] == "oom_epoch":
        assert p["records_once"] is True, what
        assert p["n"] == j["dataset"]["images"], what
        sums.setdefault(p["format"], set()).add(p["checksum"])
        # The data path's own memory stays flat: anon RSS grows by at most a few batches.
        grow = p["rss_anon_end"] - p["rss_anon_first_batch"]
        assert grow <= limit // 2, (what, "anon RSS grew", grow)
        # Page cache and buffers the epoch made: charged to the group, which hit its limit
        # (the store did not fit).
        assert p["cgroup_peak"] >= limit // 2, (what, "cgroup peak", p["cgroup_peak"])
assert sorted(sums) == ["hdf5", "lmdb"] and all(len(v) == 1 for v in sums.values()), sums
assert sums["hdf5"] == sums["lmdb"], "LMDB and HDF5 epochs delivered different records"
rows = {(s["experiment"], s["format"], s["order"]): s for s in j["summary"]}
for f in ("lmdb", "hdf5"):
    full = [s for s in j["summary"] if s["experiment"] == "oom_epoch" and s["format"] == f
            and s["order"] == "shuffled" and s["impl"] == "prefetch"][0]
    assert full["limit"].startswith("limit_randread") and full["ratio_to_limit"] > 0, full
    for w in ("window_512", "window_2048"):
        q = rows[("oom_epoch", f, w)]
        assert q["peer"].startswith("prefetch") and q["ratio_to_peer"] > 0, q
# Every cgroup the run made was removed.
parent = oom["cgroup"].split("under ", 1)[1]
left = [d for d in os.listdir(parent) if d.startswith("imgstore-bench-oom-")]
assert not left, f"cgroups left behind under {parent}: {left}"
print("ok: results.json")
EOF
[ ! -e "$OUT/oom-stores" ] || fail "the run left its stores behind"
echo "ok: imgstore-bench --out-of-memory"
