#!/usr/bin/env bash
# Every source kind converts into every format, and the same data from different layouts
# gives identical stores: CIFAR-10 binary folder = binary tar.gz = python folder = python tar.gz.
source "$(dirname "$0")/lib.sh"
"$FIXTURES" cifar10-bin cifar-10-batches-bin --records 40
"$FIXTURES" cifar10-py cifar-10-batches-py --records 40
"$FIXTURES" tar cifar-10-batches-bin cifar-10-batches-bin cifar-10-binary.tar.gz
"$FIXTURES" tar cifar-10-batches-py cifar-10-batches-py cifar-10-python.tar.gz
for src in cifar-10-batches-bin cifar-10-binary.tar.gz cifar-10-batches-py cifar-10-python.tar.gz; do
  "$CONVERT" convert "$src" --to png,lmdb,hdf5 --out "out-$src" --quiet
  n=$("$CONVERT" info "out-$src/train.lmdb" --json | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["count"], j["classes"][0], j["classes"][9])')
  [ "$n" = "200 airplane truck" ] || fail "$src: info says $n"
  for split in train test; do
    "$CONVERT" verify "out-$src/$split.png" --against "out-$src/$split.lmdb" --quiet
    "$CONVERT" verify "out-$src/$split.h5" --against "out-cifar-10-batches-bin/$split.h5" --quiet
  done
  echo "ok: $src"
done

# IDX, plain and gzipped, give the same stores.
mkdir idx idxgz
"$FIXTURES" idx idx train --count 120
"$FIXTURES" idx idx t10k --count 30 --seed 2
"$FIXTURES" idx idxgz train --count 120 --gz
"$FIXTURES" idx idxgz t10k --count 30 --seed 2 --gz
"$CONVERT" convert idx --to png,lmdb,hdf5 --out out-idx --quiet
"$CONVERT" convert idxgz/train-images-idx3-ubyte.gz --to hdf5 --out out-idxgz --quiet
"$CONVERT" verify out-idx/train.png --against out-idxgz/train.h5
"$CONVERT" verify out-idx/test.lmdb --against out-idx/test.h5
echo "ok: idx"
