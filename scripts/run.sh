#!/usr/bin/env bash
# The main job: set up, build, convert the embedded default data set (the real Fashion-MNIST
# from Debian's dataset-fashion-mnist) into all three formats, verify that they agree, and
# print a summary. Pass a CIFAR-10 folder or archive to use it instead:
#   scripts/run.sh ~/data/cifar-10-python.tar.gz
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

SOURCE="${1:-/usr/share/datasets/fashion-mnist}"
OUT="${IMGSTORE_OUT:-$IMGSTORE_ROOT/out/stores}"
convert="$IMGSTORE_BUILD_DIR/imgstore-convert"

echo "== converting $SOURCE into PNG, LMDB and HDF5 under $OUT"
"$convert" convert "$SOURCE" --to png,lmdb,hdf5 --out "$OUT" --overwrite
for split in train test; do
  [ -e "$OUT/$split.lmdb" ] || continue
  echo "== verifying the $split stores against each other"
  "$convert" verify "$OUT/$split.h5" --against "$OUT/$split.lmdb"
  "$convert" verify "$OUT/$split.png" --against "$OUT/$split.h5"
  "$convert" info "$OUT/$split.lmdb"
done
