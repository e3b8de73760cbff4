#!/usr/bin/env bash
# The main job, end to end on a fresh machine: set up and build, convert the embedded default
# data set (the real Fashion-MNIST from Debian's dataset-fashion-mnist) into PNG, LMDB and HDF5,
# verify that the three agree, measure which format feeds training best (the throughput
# benchmark, bench/throughput.cpp), then train the small convnet from LMDB with the prefetching
# loader.
# Pass a CIFAR-10 folder or archive to use it instead:  scripts/run.sh ~/cifar-10-binary.tar.gz
set -euo pipefail
IMGSTORE_TARGETS="imgstore-convert imgstore-throughput imgstore-train"
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

SOURCE="${1:-/usr/share/datasets/fashion-mnist}"
OUT="${IMGSTORE_OUT:-$IMGSTORE_ROOT/out}"
EPOCHS="${IMGSTORE_EPOCHS:-4}"
bin="$IMGSTORE_BUILD_DIR"

echo "== 1. convert $SOURCE into PNG, LMDB and HDF5 under $OUT/stores"
"$bin/imgstore-convert" convert "$SOURCE" --to png,lmdb,hdf5 --out "$OUT/stores" --overwrite

echo "== 2. verify: every checksum, and the three formats record by record"
for split in train test; do
  "$bin/imgstore-convert" verify "$OUT/stores/$split.h5" --against "$OUT/stores/$split.lmdb"
  "$bin/imgstore-convert" verify "$OUT/stores/$split.png" --against "$OUT/stores/$split.h5"
done
"$bin/imgstore-convert" info "$OUT/stores/train.lmdb"

echo "== 3. throughput: prefetch loader vs stock DataLoader vs in-memory limit, per format"
"$bin/imgstore-throughput" --stores "$OUT/stores" --split train --out "$OUT/throughput"

echo "== 4. train the small convnet from LMDB with the prefetching loader ($EPOCHS epochs)"
"$bin/imgstore-train" --train "$OUT/stores/train.lmdb" --test "$OUT/stores/test.lmdb" \
  --epochs "$EPOCHS" --loader prefetch --json "$OUT/train.json"
echo "== done: stores in $OUT/stores, figures in $OUT/throughput and $OUT/train.json"
