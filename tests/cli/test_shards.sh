#!/usr/bin/env bash
# convert --shards: sharded stores in every format verify, describe their shards, match the
# unsharded store record by record, reject bad shard counts, and refuse mixed conversions.
source "$(dirname "$0")/lib.sh"
SRC="synthetic:n=100,test=20,h=16,w=16,c=3,seed=7"
"$CONVERT" convert "$SRC" --to png,lmdb,hdf5 --out plain --quiet --no-fsync
"$CONVERT" convert "$SRC" --to png,lmdb,hdf5 --shards 3 --out sh --quiet --json > sh.json

for f in sh/train.png sh/train.lmdb sh/train.h5 sh/test.png sh/test.lmdb sh/test.h5; do
  [ -f "$f/shards.json" ] || fail "$f has no shards.json"
  "$CONVERT" verify "$f" --quiet || fail "verify $f"
done
"$CONVERT" verify sh/train.lmdb | grep -q "3 shards" || fail "verify does not mention the shards"
# Bit-exact against the unsharded stores, across formats too.
"$CONVERT" verify sh/train.lmdb --against plain/train.lmdb --quiet
"$CONVERT" verify sh/train.h5 --against plain/train.png --quiet
"$CONVERT" verify plain/test.h5 --against sh/test.png --quiet

for f in sh/train.png sh/train.lmdb sh/train.h5; do
  got=$("$CONVERT" info "$f" --json | $PY -c '
import json, sys
j = json.load(sys.stdin)
print(j["count"], j["shard_count"], [s["count"] for s in j["shards"]], [s["first_record"] for s in j["shards"]], len(j["conversion_id"]))')
  [ "$got" = "100 3 [34, 33, 33] [0, 34, 67] 32" ] || fail "info --json $f: $got"
done
# One shard on its own is a plain store that knows its place.
got=$("$CONVERT" info sh/train.h5/shard-00001-of-00003.h5 --json | $PY -c '
import json, sys
j = json.load(sys.stdin)
print(j["count"], j["shard"]["index"], j["shard"]["shards"], j["shard"]["first_record"])')
[ "$got" = "33 1 3 34" ] || fail "info on a shard: $got"
"$CONVERT" verify sh/train.png/shard-00002-of-00003.png --quiet
# The index's digest is the unsharded store's digest.
d1=$("$CONVERT" info sh/train.h5 --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["content_digest"])')
d2=$("$CONVERT" info plain/train.h5 --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["content_digest"])')
[ "$d1" = "$d2" ] || fail "digests differ: $d1 $d2"
"$CONVERT" info sh/test.lmdb | grep -q "shards:    3 (7, 7, 6 records)" || fail "info text: $("$CONVERT" info sh/test.lmdb)"
n=$("$CONVERT" info plain/train.lmdb --json | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["shard_count"], "shards" in j)')
[ "$n" = "1 False" ] || fail "unsharded info: $n"
$PY - <<'PY'
import json
j = json.load(open("sh.json"))
assert all(s["shards"] == 3 for sp in j["splits"] for s in sp["stores"]), j
PY
# Python reads a shard as the plain store it is.
$PY - <<'PY'
import json, lmdb, h5py
idx = json.load(open("sh/train.lmdb/shards.json"))
env = lmdb.open("sh/train.lmdb/" + idx["shards"][1]["file"], readonly=True, lock=False, max_dbs=2)
with env.begin() as txn:
    m = json.loads(txn.get(b"manifest", db=env.open_db(b"__imgstore__", txn=txn, create=False)))
assert m["shard"]["index"] == 1 and m["shard"]["first_record"] == 34, m["shard"]
assert m["shard"]["conversion_id"] == idx["conversion_id"] and m["count"] == 33
with h5py.File("sh/train.h5/shard-00002-of-00003.h5") as f:
    assert f["images"].shape == (33, 16, 16, 3)
PY

# --shards 1 writes the usual single store.
"$CONVERT" convert "$SRC" --split test --to lmdb --shards 1 --out one --quiet --no-fsync
[ -f one/test.lmdb/data.mdb ] && [ ! -e one/test.lmdb/shards.json ] || fail "--shards 1 wrote $(ls one/test.lmdb)"

# Bad shard counts: usage errors (exit 2), and nothing written.
expect_error 2 "--shards" "$CONVERT" convert "$SRC" --to lmdb --shards 0 --out bad --quiet
expect_error 2 "is more than the 20 records of split 'test'" \
  "$CONVERT" convert "$SRC" --to lmdb --shards 21 --out bad --quiet
expect_error 2 "--shards" "$CONVERT" convert "$SRC" --to lmdb --shards 100000 --out bad --quiet
expect_error 2 "--shards" "$CONVERT" convert "$SRC" --to lmdb --shards 99999999999 --out bad --quiet
expect_error 2 "--shards" "$CONVERT" convert "$SRC" --to lmdb --shards -3 --out bad --quiet
expect_error 2 "--shards" "$CONVERT" convert "$SRC" --to lmdb --shards many --out bad --quiet
assert_empty_dir bad

# Shards of two conversions mixed together: a clear error, exit 1.
"$CONVERT" convert "$SRC" --split train --to lmdb,hdf5 --shards 3 --out sh2 --quiet --no-fsync
cp -r sh/train.lmdb mixed.lmdb
rm -rf mixed.lmdb/shard-00001-of-00003.lmdb
cp -r sh2/train.lmdb/shard-00001-of-00003.lmdb mixed.lmdb/
expect_error 1 "shard 'shard-00001-of-00003.lmdb' comes from another conversion" \
  "$CONVERT" verify mixed.lmdb
expect_error 1 "comes from another conversion" "$CONVERT" info mixed.lmdb --json
mkdir mixed2 && cp -r sh/train.h5 mixed2/
cp sh2/train.h5/shards.json mixed2/train.h5/shards.json
expect_error 1 "comes from another conversion" "$CONVERT" verify mixed2/train.h5
# A missing shard names the file.
rm -rf mixed.lmdb/shard-00002-of-00003.lmdb
expect_error 1 "shard file 'shard-00002-of-00003.lmdb'" "$CONVERT" verify mixed.lmdb

# --overwrite replaces a sharded store whole, with no temporaries left.
expect_error 1 "already exists" "$CONVERT" convert "$SRC" --split train --to lmdb --shards 2 --out sh2 --quiet
"$CONVERT" convert "$SRC" --split train --to lmdb --shards 2 --out sh2 --quiet --overwrite --no-fsync
n=$("$CONVERT" info sh2/train.lmdb --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["shard_count"])')
[ "$n" = 2 ] || fail "overwrite gave $n shards"
[ "$(ls -A sh2)" = "$(printf 'train.h5\ntrain.lmdb')" ] || fail "left in sh2: $(ls -A sh2)"
# Ctrl-C during a sharded conversion: exit 130 and nothing left, or (signal after the last
# batch) exit 0 and a complete store. Either way no staging data remains.
for delay in 0.05 0.2 0.5; do
  out="int-$delay"
  "$CONVERT" convert synthetic:n=20000,h=32,w=32,c=3,seed=3 --split train --to lmdb,hdf5 \
    --shards 5 --out "$out" --quiet 2>"int.err" &
  pid=$!
  sleep "$delay"
  kill -INT "$pid" 2>/dev/null || true
  rc=0; wait "$pid" || rc=$?
  if [ "$rc" -eq 130 ]; then
    assert_empty_dir "$out"
    echo "ok: interrupted after ${delay}s, nothing left"
  elif [ "$rc" -eq 0 ]; then
    "$CONVERT" verify "$out/train.lmdb" --quiet && "$CONVERT" verify "$out/train.h5" --quiet
    [ "$(ls -A "$out")" = "$(printf 'train.h5\ntrain.lmdb')" ] || fail "left in $out: $(ls -A "$out")"
    echo "ok: finished before the signal (${delay}s), complete stores"
  else
    fail "interrupted conversion exited $rc: $(cat int.err)"
  fi
done
echo "all shard tests passed"
