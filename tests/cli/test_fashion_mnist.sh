#!/usr/bin/env bash
# The real Fashion-MNIST from Debian's dataset-fashion-mnist converts into all three formats,
# and the formats agree record by record.
source "$(dirname "$0")/lib.sh"
SRC=/usr/share/datasets/fashion-mnist
[ -e "$SRC/train-images-idx3-ubyte.gz" ] || fail "$SRC missing: install dataset-fashion-mnist"
"$CONVERT" convert "$SRC" --to png,lmdb,hdf5 --out fm --quiet
for split in train test; do
  "$CONVERT" verify "fm/$split.png" --against "fm/$split.lmdb"
  "$CONVERT" verify "fm/$split.lmdb" --against "fm/$split.h5"
done
info=$("$CONVERT" info fm/train.h5 --json | $PY -c 'import json,sys; j=json.load(sys.stdin); print(j["count"], j["shape"], j["classes"][0], j["classes"][9])')
[ "$info" = "60000 [28, 28, 1] T-shirt/top Ankle boot" ] || fail "info: $info"
# Independent check: the HDF5 pixels equal the raw IDX bytes, read with Python's gzip module.
$PY - <<'PY'
import gzip, h5py, numpy as np
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
labels = gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").read()
x = np.frombuffer(raw, np.uint8, offset=16).reshape(10000, 28, 28, 1)
with h5py.File("fm/test.h5") as f:
    assert np.array_equal(f["images"][:], x)
    assert np.array_equal(f["labels"][:], np.frombuffer(labels, np.uint8, offset=8))
print("ok: test.h5 equals the raw IDX bytes")
PY
