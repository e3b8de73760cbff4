#!/usr/bin/env bash
# The benchmark programs that were once skipped doctests still build and run: each --quick mode
# exits 0 and prints its whole table (every row, a number in every figure column). Their
# timings are not checked.
source "$(dirname "$0")/lib.sh"
BUILD="${IMGSTORE_BUILD_DIR:?set by ctest}"

# expect_rows FILE PATTERN COUNT: COUNT lines of FILE match the extended regex PATTERN.
expect_rows() {
  local got; got=$(grep -cE -- "$2" "$1" || true)
  [ "$got" -eq "$3" ] || fail "$1: $got lines match '$2', expected $3:
$(cat "$1")"
}
NUM='[0-9]+(\.[0-9]+)?'

# ---- imgstore-lmdb-bench ----
LMDB_BENCH="$BUILD/imgstore-lmdb-bench"
[ -x "$LMDB_BENCH" ] || fail "missing $LMDB_BENCH (build target imgstore-lmdb-bench)"
"$LMDB_BENCH" --quick --dir "$WORK" >lmdb.txt 2>lmdb.err ||
  fail "imgstore-lmdb-bench --quick exited $?: $(cat lmdb.err)"
expect_rows lmdb.txt "^LMDB, 2000 images of 32x32x3" 1
expect_rows lmdb.txt "^case +images/s +images/cpu-s$" 1
expect_rows lmdb.txt "^write, durable=[01] +$NUM +$NUM$" 2
expect_rows lmdb.txt "^shuffled read_one, verify=[01], pass [12] +$NUM +$NUM$" 4
expect_rows lmdb.txt "^shuffled read_many\(256\), verify=[01] +$NUM +$NUM$" 2
expect_rows lmdb.txt "^(write|read_one|read_many).* $NUM+x$" 3
! compgen -G "$WORK/imgstore-lmdb-bench*" >/dev/null || fail "imgstore-lmdb-bench left its scratch store"
echo "ok: imgstore-lmdb-bench --quick"

# ---- imgstore-loader-bench (LibTorch) ----
LOADER_BENCH="$BUILD/imgstore-loader-bench"
if [ ! -x "$LOADER_BENCH" ]; then
  if grep -q '^IMGSTORE_BUILD_TORCH:BOOL=OFF' "$BUILD/CMakeCache.txt" 2>/dev/null; then
    echo "note: built without LibTorch, imgstore-loader-bench not checked"; exit 0
  fi
  fail "missing $LOADER_BENCH (build target imgstore-loader-bench)"
fi
"$LOADER_BENCH" --quick --dir "$WORK" >loader.txt 2>loader.err ||
  fail "imgstore-loader-bench --quick exited $?: $(cat loader.err)"
expect_rows loader.txt "^2048 shuffled 32x32x3 images per epoch, batch 256, best of 1 epochs$" 1
expect_rows loader.txt "^reader +loader +images/s +cpu-us/image +vs memory$" 1
expect_rows loader.txt "^in-memory tensor +index_select gather +$NUM +$NUM +1\.00x$" 1
# Six loaders (prefetch t=1,2 x uint8, float+aug; stock workers=0,2) over six readers.
for reader in "memory reader" "lmdb raw" "lmdb raw noverify" "hdf5 contiguous" "hdf5 chunk 256" \
              "png folder"; do
  expect_rows loader.txt "^$reader +(prefetch t=[12] (uint8|float\+aug)|stock loader workers=[02] uint8) +$NUM +$NUM +${NUM}x$" 6
done
! compgen -G "$WORK/imgstore-loader-bench*" >/dev/null || fail "imgstore-loader-bench left its scratch stores"
echo "ok: imgstore-loader-bench --quick"
