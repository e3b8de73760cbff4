#!/usr/bin/env bash
# Reading never modifies a store: every file of every store (PNG folder, LMDB raw and
# PNG-encoded, HDF5 contiguous and chunked+deflated) is hashed (sha256), with its type, mode,
# size and mtime, before and after `verify`, `verify --against`, `info`, `info --json`,
# converting the store into another directory (the store as a source) and the PrefetchLoader
# stress reader. No lock.mdb may appear (stores are opened MDB_RDONLY|MDB_NOLOCK).
# Then the same with the stores made read-only (chmod -R a-w). As root, chmod blocks nothing,
# so when we are root the reads are repeated as user nobody through setpriv (util-linux), for
# whom the stores truly are not writable; there an attempted --overwrite of the stores must also
# fail and leave them intact.
source "$(dirname "$0")/lib.sh"

READER="${IMGSTORE_BUILD_DIR:?set by ctest}/tests/imgstore-test-stress-reader"
if [ ! -x "$READER" ]; then
  if grep -q '^IMGSTORE_BUILD_TORCH:BOOL=OFF' "$IMGSTORE_BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
    echo "note: built without LibTorch, the loader is not exercised"; READER=""
  else
    fail "missing $READER (build target imgstore-test-stress-reader)"
  fi
fi

"$CONVERT" convert synthetic:n=300,test=0,seed=4 --split train --to png,lmdb,hdf5 --out stores \
  --quiet
"$CONVERT" convert synthetic:n=300,test=0,seed=4 --split train --to lmdb,hdf5 \
  --lmdb-encoding png --hdf5-chunk 64 --hdf5-deflate 3 --out stores/packed --quiet
STORES=(stores/train.png stores/train.lmdb stores/train.h5 stores/packed/train.lmdb
        stores/packed/train.h5)

# Type, mode, size, mtime and sha256 of everything under stores/ (access times excluded).
snapshot() {
  find stores -printf '%y %m %s %T@ %p\n' | sort -k5
  find stores -type f -print0 | sort -z | xargs -0 sha256sum
}
no_lock() {
  local locks; locks=$(find stores -name lock.mdb)
  [ -z "$locks" ] || fail "lock.mdb appeared: $locks"
}

# read_everything TAG [RUNAS...]: every read path over every store; output goes to out-TAG.
read_everything() {
  local tag="$1"; shift
  local out="$WORK/out-$tag"
  for s in "${STORES[@]}"; do
    "$@" "$CONVERT" verify "$s" --quiet
    "$@" "$CONVERT" verify "$s" --against stores/train.lmdb --quiet
    "$@" "$CONVERT" info "$s" > /dev/null
    "$@" "$CONVERT" info "$s" --json > /dev/null
    "$@" "$CONVERT" convert "$s" --to png,lmdb,hdf5 --out "$out/$(echo "$s" | tr / _)" --quiet \
      --no-fsync
    if [ -n "$READER" ]; then
      "$@" "$READER" "$s" --epochs 2 --threads 2 --batch-size 50 --seed 7 > "$out.json"
      grep -q '"errors":0' "$out.json" || fail "$tag reader on $s: $(cat "$out.json")"
    fi
  done
  echo "ok: $tag: verify, verify --against, info, convert and the loader read every store"
}

no_lock
snapshot > s0.txt
ls -laR stores > listing.txt
read_everything writable
no_lock
snapshot > s1.txt
diff s0.txt s1.txt || fail "reading changed the stores (diff above)"
echo "ok: $(grep -c '^f ' s0.txt) files hashed, unchanged by reading; no lock.mdb"

chmod -R a-w stores
snapshot > s2.txt
if [ "$(id -u)" -ne 0 ]; then
  # Not root: chmod really makes the stores unwritable for us.
  read_everything readonly
elif command -v setpriv > /dev/null; then
  # Root ignores file modes, so read as nobody, for whom the stores truly are not writable.
  AS_NOBODY=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
  chmod 755 "$WORK"
  chmod -R a+rX "$WORK"
  mkdir "$WORK/out-nobody" && chown nobody "$WORK/out-nobody"
  snapshot > s2.txt  # a+rX may have widened modes
  if "${AS_NOBODY[@]}" touch stores/train.lmdb/probe 2>/dev/null; then
    fail "nobody can write into the read-only store; the test would prove nothing"
  fi
  read_everything nobody/x "${AS_NOBODY[@]}"
  # Replacing a read-only store fails cleanly and leaves it as it was.
  expect_error 1 "" "${AS_NOBODY[@]}" "$CONVERT" convert synthetic:n=5,test=0 --split train \
    --to png,lmdb,hdf5 --out stores --overwrite --quiet
  echo "ok: as nobody, overwriting the read-only stores is refused: $(cat err.txt)"
else
  # Root without setpriv: chmod blocks nothing for us, so this pass is only nominal.
  echo "note: root without setpriv: the read-only pass cannot make the stores unwritable"
  read_everything readonly-root
fi
no_lock
snapshot > s3.txt
diff s2.txt s3.txt || fail "reading the read-only stores changed them (diff above)"
echo "ok: read-only stores open and read, unchanged"
chmod -R u+w stores  # so the EXIT trap can remove them
echo "ok: reading never modified a store"
