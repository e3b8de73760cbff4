#!/usr/bin/env bash
# Concurrent load: several imgstore-test-stress-reader processes (PrefetchLoader, 2-3 threads,
# shuffled, own seed each) read the SAME PNG, LMDB and HDF5 stores at once and check every image
# of every batch against the manifest checksums, while another process converts repeatedly
# (synthetic and store-to-store, reading the shared LMDB store) into a different directory.
# A watchdog (timeout on every process) turns a hang or deadlock into a failure.
#
# Checks: every process exits 0; no checksum mismatch; each reader's RSS after its last epoch is
# within IMGSTORE_STRESS_RSS_MIB (default 8 MiB) of its RSS after the first epoch; the shared
# stores are byte-identical afterwards. Prints batches verified and images/s per format. First,
# a negative control: a flipped pixel in a copy of the HDF5 store, read with the store reader's
# own check off, must make the stress reader fail (so its independent check really checks).
#
# Env: IMGSTORE_STRESS_SECONDS (reading time per reader, default 6: ~20-30 s in all on 2 cores;
# 600 for a long run), IMGSTORE_STRESS_IMAGES (records per store, default 5000),
# IMGSTORE_STRESS_READERS (readers per format, default 2), IMGSTORE_STRESS_RSS_MIB.
#
# Why 8 MiB: after the first epoch a reader has allocated everything it reuses (the loader's
# buffer pool, per-thread scratch, the reader's caches) and touched every page of the store, so
# file-backed RSS (mmap of data.mdb / the .h5 file, page cache mappings) is at its maximum too.
# What may still grow legitimately is allocator slack: glibc gives each new thread that mallocs
# its own arena (64 MiB reserved, touched pages only), and TBB may run a pass on different
# workers. A few MiB covers that. A leak per batch (0.19 MiB for 64 images of 32x32x3, hundreds
# of batches even in the short run) goes far past it; a leak per epoch only in the long run.
source "$(dirname "$0")/lib.sh"
# On any exit, stop what we started before the work directory goes.
cleanup() {
  touch "$WORK/stop" 2>/dev/null || true
  local pid
  for pid in $(jobs -p); do  # our jobs, and the converter subshell's child (timeout forwards)
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

READER="${IMGSTORE_BUILD_DIR:?set by ctest}/tests/imgstore-test-stress-reader"
if [ ! -x "$READER" ]; then
  if grep -q '^IMGSTORE_BUILD_TORCH:BOOL=OFF' "$IMGSTORE_BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
    echo "skip: built without LibTorch, so there is no stress reader"; exit 0
  fi
  fail "missing $READER (build target imgstore-test-stress-reader)"
fi

SECONDS_PER_READER="${IMGSTORE_STRESS_SECONDS:-6}"
IMAGES="${IMGSTORE_STRESS_IMAGES:-5000}"
READERS="${IMGSTORE_STRESS_READERS:-2}"
RSS_BOUND="${IMGSTORE_STRESS_RSS_MIB:-8}"
# Watchdog: generous, since 7 processes share 2 cores; only a hang gets near it.
LIMIT=$(( SECONDS_PER_READER * 3 + 90 ))

t0=$(date +%s)
"$CONVERT" convert "synthetic:n=$IMAGES,test=0,seed=11" --split train --to png,lmdb,hdf5 \
  --out stores --quiet --no-fsync
# Negative control: one flipped pixel byte in a copy of the HDF5 store, read with the reader's own
# check off, must be caught by the stress reader's independent check (exit 1, named record).
cp stores/train.h5 flipped.h5
$PY - <<'PY'
import h5py
with h5py.File("flipped.h5", "r") as f:
    d = f["images"]; off = d.id.get_offset() + 7 * d[0].size + 100  # record 7, byte 100
with open("flipped.h5", "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x01]))
PY
rc=0
"$READER" flipped.h5 --epochs 1 --no-reader-verify > flipped.out 2> flipped.err || rc=$?
[ "$rc" -eq 1 ] || fail "flipped byte: reader exited $rc, expected 1: $(cat flipped.out flipped.err)"
grep -q "record 7 (label" flipped.err || fail "flipped byte not reported for record 7: $(cat flipped.err)"
grep -q '"errors":1[,}]' flipped.out || fail "flipped byte: expected exactly 1 error: $(cat flipped.out)"
echo "ok: the stress reader's own check catches a flipped pixel the store reader was told not to check"

snapshot() { (cd stores && find . -type f -print0 | sort -z | xargs -0 sha256sum) ; }
snapshot > before.sha
echo "stores of $IMAGES images written and checked in $(( $(date +%s) - t0 )) s"
t0=$(date +%s)

# Converter: runs until the readers are done, alternating a synthetic source and the shared
# LMDB store as source, each time overwriting its own output and verifying it.
converter() {
  local i=0 src
  while [ ! -e stop ]; do
    i=$((i + 1))
    if (( i % 2 )); then src="synthetic:n=1000,test=0,seed=$i"; else src=stores/train.lmdb; fi
    timeout -k 5 "$LIMIT" "$CONVERT" convert "$src" --split train --to png,lmdb,hdf5 --limit 1000 \
      --out conv --overwrite --quiet --no-fsync || { echo "convert $i ($src) exited $?"; return 1; }
    timeout -k 5 "$LIMIT" "$CONVERT" verify conv/train.h5 --against conv/train.lmdb --quiet \
      || { echo "verify after convert $i exited $?"; return 1; }
  done
  echo "$i" > conv_iterations
}
converter > conv.log 2>&1 &
conv_pid=$!

mkdir readers
pids=()
names=()
seed=100
for fmt in png lmdb h5; do
  for ((r = 0; r < READERS; r++)); do
    seed=$((seed + 1))
    extra=()
    (( r % 2 )) && extra=(--no-reader-verify)  # then only our own check guards the data
    name="readers/$fmt.$r"
    nice timeout -k 5 "$LIMIT" "$READER" "stores/train.$fmt" --seconds "$SECONDS_PER_READER" \
      --threads $((2 + r % 2)) --seed "$seed" "${extra[@]}" > "$name.json" 2> "$name.err" &
    pids+=($!)
    names+=("$name")
  done
done

status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    status=1
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "FAIL: reader ${names[$i]} hung (killed by the watchdog)" >&2
    echo "FAIL: reader ${names[$i]} exited $rc: $(cat "${names[$i]}.err" "${names[$i]}.json")" >&2
  fi
done
touch stop
rc=0
wait "$conv_pid" || rc=$?
[ "$rc" -eq 0 ] || { status=1; echo "FAIL: converter: $(cat conv.log)" >&2; }
[ "$status" -eq 0 ] || fail "a process failed (see above)"
[ -s conv_iterations ] || fail "converter did not report"
echo "readers and converter done in $(( $(date +%s) - t0 )) s"

snapshot > after.sha
cmp -s before.sha after.sha || fail "shared stores changed under concurrent reads: $(diff before.sha after.sha)"
for f in stores/train.png stores/train.lmdb stores/train.h5; do "$CONVERT" verify "$f" --quiet; done

cat readers/*.json
$PY - "$RSS_BOUND" "$IMAGES" "$(cat conv_iterations)" readers/*.json <<'PY'
import json, sys
bound, images, conv_iters = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = [json.load(open(p)) for p in sys.argv[4:]]
bad = []
per_fmt = {}
for r in rows:
    name = r["store"]
    if r["errors"] != 0: bad.append(f"{name}: {r['errors']} errors")
    if r["epochs"] < 2: bad.append(f"{name}: only {r['epochs']} epochs")
    if r["images_verified"] < r["epochs"] * images: bad.append(f"{name}: too few images verified")
    growth = r["rss_last_mib"] - r["rss_first_mib"]
    if r["rss_first_mib"] <= 0 or growth > bound:
        bad.append(f"{name}: RSS {r['rss_first_mib']:.1f} -> {r['rss_last_mib']:.1f} MiB "
                   f"(+{growth:.1f} > {bound} MiB)")
    f = per_fmt.setdefault(r["format"], {"batches": 0, "images": 0, "ips": 0.0, "procs": 0,
                                         "growth": []})
    f["batches"] += r["batches_verified"]; f["images"] += r["images_verified"]
    f["ips"] += r["images_per_s"]; f["procs"] += 1; f["growth"].append(growth)
total = sum(f["batches"] for f in per_fmt.values())
print(f"stress: {len(rows)} readers, {total} batches verified, converter ran {conv_iters} times")
for fmt, f in sorted(per_fmt.items()):
    print(f"  {fmt:<5} {f['procs']} readers  {f['batches']:>7} batches  {f['images']:>9} images  "
          f"{f['ips']:>9.0f} images/s (sum)  RSS growth "
          + ", ".join(f"{g:+.2f}" for g in f["growth"]) + " MiB")
if bad:
    print("FAIL: " + "; ".join(bad), file=sys.stderr); sys.exit(1)
if set(per_fmt) != {"png", "lmdb", "hdf5"}:
    print(f"FAIL: formats seen {sorted(per_fmt)}", file=sys.stderr); sys.exit(1)
PY
echo "ok: concurrent readers and converter, all verified"
