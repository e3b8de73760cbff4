#!/usr/bin/env bash
# Synthetic data through every format, verify, cross-format compare, store-to-store conversion,
# --limit/--repeat, info --json, and refusal to clobber.
source "$(dirname "$0")/lib.sh"
"$CONVERT" convert synthetic:n=200,test=40,seed=5 --to png,lmdb,hdf5 --out s --quiet
for f in s/train.png s/train.lmdb s/train.h5 s/test.png s/test.lmdb s/test.h5; do
  "$CONVERT" verify "$f" --quiet || fail "verify $f"
done
"$CONVERT" verify s/train.png --against s/train.lmdb
"$CONVERT" verify s/train.lmdb --against s/train.h5
count=$("$CONVERT" info s/train.h5 --json | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["count"], j["shape"], j["format"], len(j["classes"]))')
[ "$count" = "200 [32, 32, 3] hdf5 10" ] || fail "info: $count"

# Stores convert into each other, with chunked+deflated HDF5 and PNG-encoded LMDB.
"$CONVERT" convert s/train.lmdb --to hdf5 --hdf5-chunk 64 --hdf5-deflate 4 --out c1 --quiet
"$CONVERT" convert s/train.h5 --to lmdb --lmdb-encoding png --out c2 --quiet
"$CONVERT" convert s/train.png --to lmdb --out c3 --quiet
"$CONVERT" verify c1/train.h5 --against s/train.png
"$CONVERT" verify c2/train.lmdb --against s/train.h5
"$CONVERT" verify c3/train.lmdb --against s/train.lmdb

# --limit then --repeat: 30 records, twice.
"$CONVERT" convert synthetic:n=200,seed=5 --split train --limit 30 --repeat 2 --to lmdb --out r --quiet --json > r.json
n=$("$CONVERT" info r/train.lmdb --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["count"])')
[ "$n" = 60 ] || fail "limit+repeat gave $n records"
$PY - <<'PY'
import json; j = json.load(open("r.json"))
assert j["splits"][0]["count"] == 60 and j["splits"][0]["stores"][0]["format"] == "lmdb", j
PY

# Refuse to clobber an existing store; it stays intact. --overwrite replaces it.
expect_error 1 "already exists" "$CONVERT" convert synthetic:n=10 --split train --to lmdb --out r --quiet
"$CONVERT" verify r/train.lmdb --quiet
"$CONVERT" convert synthetic:n=10 --split train --to lmdb --out r --quiet --overwrite
n=$("$CONVERT" info r/train.lmdb --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["count"])')
[ "$n" = 10 ] || fail "overwrite gave $n records"
[ -z "$(ls -A r | grep -v '^train.lmdb$')" ] || fail "temporaries left: $(ls -A r)"

# Different content is detected by --against.
"$CONVERT" convert synthetic:n=200,test=40,seed=6 --split train --to hdf5 --out d --quiet
expect_error 1 "record 0 differs" "$CONVERT" verify d/train.h5 --against s/train.h5
