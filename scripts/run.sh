#!/usr/bin/env bash
# The main job, end to end on a fresh machine: set up and build, convert the embedded default
# data set (the real Fashion-MNIST from Debian's dataset-fashion-mnist) into PNG, LMDB and HDF5,
# verify that the three agree, measure which format feeds training best (the throughput
# benchmark, bench/throughput.cpp), then train the small convnet from LMDB with the prefetching
# loader; then the photo experiment: generate the real-photo fixture (python3-skimage photos,
# ImageFolder layout), store its JPEGs untouched in LMDB and HDF5, measure RandomResizedCrop
# loading at 224/112/64 against torchvision and the JPEG decode limit (bench/photo_throughput.cpp),
# and train the convnet on the photo store at 64. Each stage prints its time.
# IMGSTORE_PHOTO_RUNS (default 3) sets the photo benchmark's repetitions.
# Pass a CIFAR-10 folder or archive to use it instead:  scripts/run.sh ~/cifar-10-binary.tar.gz
set -euo pipefail
IMGSTORE_TARGETS="imgstore-convert imgstore-throughput imgstore-photo-throughput imgstore-train"
job_start=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
stage_start=$SECONDS
# Prints the time the previous stage took, then starts timing the next one.
stage() {
  echo "   (stage took $((SECONDS - stage_start)) s; job so far $((SECONDS - job_start)) s)"
  stage_start=$SECONDS
  echo "$1"
}
echo "== 0. setup and build took $((SECONDS - job_start)) s"

SOURCE="${1:-/usr/share/datasets/fashion-mnist}"
OUT="${IMGSTORE_OUT:-$IMGSTORE_ROOT/out}"
EPOCHS="${IMGSTORE_EPOCHS:-4}"
bin="$IMGSTORE_BUILD_DIR"

stage "== 1. convert $SOURCE into PNG, LMDB and HDF5 under $OUT/stores"
"$bin/imgstore-convert" convert "$SOURCE" --to png,lmdb,hdf5 --out "$OUT/stores" --overwrite

stage "== 2. verify: every checksum, and the three formats record by record"
for split in train test; do
  "$bin/imgstore-convert" verify "$OUT/stores/$split.h5" --against "$OUT/stores/$split.lmdb"
  "$bin/imgstore-convert" verify "$OUT/stores/$split.png" --against "$OUT/stores/$split.h5"
done
"$bin/imgstore-convert" info "$OUT/stores/train.lmdb"

stage "== 3. throughput: prefetch loader vs stock DataLoader vs in-memory limit, per format"
"$bin/imgstore-throughput" --stores "$OUT/stores" --split train --out "$OUT/throughput"

stage "== 4. train the small convnet from LMDB with the prefetching loader ($EPOCHS epochs)"
"$bin/imgstore-train" --train "$OUT/stores/train.lmdb" --test "$OUT/stores/test.lmdb" \
  --epochs "$EPOCHS" --loader prefetch --json "$OUT/train.json"

PHOTOS="$OUT/photos"
stage "== 5. photos: generate the medium real-photo fixture (ImageFolder, train/ and val/)"
/usr/bin/python3 "$IMGSTORE_ROOT/tests/fixtures/make_photo_fixtures.py" --size medium \
  --out "$PHOTOS/fixture" >/dev/null
stage "== 6. photos: store the JPEGs untouched in LMDB and HDF5"
"$bin/imgstore-convert" convert "$PHOTOS/fixture" --to lmdb,hdf5 --encoding jpeg \
  --out "$PHOTOS/stores" --overwrite

stage "== 7. photos: RandomResizedCrop loading at 224, 112, 64 vs torchvision and the decode limit"
"$bin/imgstore-photo-throughput" --stores "$PHOTOS/stores" --images "$PHOTOS/fixture/train" \
  --runs "${IMGSTORE_PHOTO_RUNS:-3}" --torchvision-limit 600 --out "$OUT/photo_throughput"
/usr/bin/python3 "$IMGSTORE_ROOT/bench/plot_photo.py" --json "$OUT/photo_throughput/photo_throughput.json" \
  --out "$OUT/photo_throughput"

stage "== 8. photos: train the convnet on RandomResizedCrop 64 from LMDB-JPEG (2 epochs)"
"$bin/imgstore-train" --train "$PHOTOS/stores/train.lmdb" --test "$PHOTOS/stores/val.lmdb" \
  --crop 64 --epochs 2 --batch-size 64 --threads 1 --torch-threads 1 --json "$OUT/photo_train.json"
stage "== done in $((SECONDS - job_start)) s: stores in $OUT/stores and $PHOTOS/stores, figures in \
$OUT/throughput, $OUT/train.json, $OUT/photo_throughput and $OUT/photo_train.json"
