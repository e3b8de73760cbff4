#!/usr/bin/env bash
# Every kind of bad input: exit 1, a message naming the file and record or key, and nothing
# left behind in the output directory.
source "$(dirname "$0")/lib.sh"

# convert_fails PATTERN SOURCE: conversion to all formats fails naming PATTERN, leaves nothing.
convert_fails() {
  rm -rf out
  expect_error 1 "$1" "$CONVERT" convert "$2" --to png,lmdb,hdf5 --out out --quiet
  assert_empty_dir out
}
fresh_bin() { rm -rf bin; "$FIXTURES" cifar10-bin bin --records 20; }
fresh_py() { rm -rf py; "$FIXTURES" cifar10-py py --records 20; }

# --- CIFAR-10 binary batches ---
fresh_bin; truncate -s -100 bin/data_batch_3.bin
convert_fails "data_batch_3.bin" bin
fresh_bin; head -c 3073 bin/data_batch_1.bin >> bin/data_batch_2.bin
convert_fails "data_batch_2.bin" bin
fresh_bin; head -c $((20 * 3074)) /dev/zero > bin/test_batch.bin   # CIFAR-100-sized records
convert_fails "test_batch.bin" bin
fresh_bin; printf '\x0a' | dd of=bin/data_batch_1.bin bs=1 seek=$((5 * 3073)) conv=notrunc status=none
convert_fails "label 10" bin

# --- CIFAR-10 python pickles ---
fresh_py; printf '\xff' | dd of=py/data_batch_1 bs=1 seek=2 conv=notrunc status=none
convert_fails "opcode" py
fresh_py; $PY -c 'import os, pickle; open("py/data_batch_4", "wb").write(pickle.dumps({b"data": os.system}, protocol=2))'
convert_fails "system" py

# --- IDX ---
rm -rf idx; mkdir idx
"$FIXTURES" idx idx train --count 50 --gz; "$FIXTURES" idx idx t10k --count 10 --gz
size=$(stat -c %s idx/train-images-idx3-ubyte.gz)
printf '\x00\x00\x00\x00\x00\x00\x00\x00' | dd of=idx/train-images-idx3-ubyte.gz bs=1 seek=$((size / 2)) conv=notrunc status=none
convert_fails "train-images-idx3-ubyte.gz" idx
rm -rf idx; mkdir idx
"$FIXTURES" idx idx train --count 50; "$FIXTURES" idx idx t10k --count 10
printf '\x00\x00\x00\x31' | dd of=idx/train-labels-idx1-ubyte bs=1 seek=4 conv=notrunc status=none  # 49 labels
convert_fails "idx1-ubyte" idx
printf '\x00\x00\x00\x32' | dd of=idx/train-labels-idx1-ubyte bs=1 seek=4 conv=notrunc status=none
printf '\x7f\xff\xff\xff\x00\x01\x00\x00\x00\x01\x00\x00' | dd of=idx/train-images-idx3-ubyte bs=1 seek=4 conv=notrunc status=none
convert_fails "train-images-idx3-ubyte" idx

# --- stores: corrupt one record, verify names it, converting from it leaves nothing ---
"$CONVERT" convert synthetic:n=40,test=8 --split train --to png,lmdb,hdf5 --out good --quiet
fresh_store() { rm -rf s; cp -r good s; }
verify_fails() {  # PATTERN STORE
  expect_error 1 "$1" "$CONVERT" verify "$2" --quiet
  rm -rf out
  expect_error 1 "$1" "$CONVERT" convert "$2" --to lmdb,hdf5 --out out --quiet
  assert_empty_dir out
}
fresh_store; truncate -s 100 s/train.png/00000003.png
verify_fails "00000003.png" s/train.png
fresh_store; $PY - <<'PY'
import struct
path = "s/train.png/00000004.png"
data = bytearray(open(path, "rb").read())
pos = 8
while True:  # find the IDAT chunk and flip a byte of its data (its CRC no longer matches)
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    if kind == b"IDAT":
        data[pos + 8 + length // 2] ^= 0x40
        break
    pos += 12 + length
open(path, "wb").write(bytes(data))
PY
verify_fails "00000004.png" s/train.png
fresh_store; $PY - <<'PY'
import csv
lines = open("s/train.png/labels.csv").read().splitlines(True)
open("s/train.png/labels.csv", "w").write("".join(lines[:10] + lines[11:]))
PY
verify_fails "labels.csv" s/train.png
fresh_store; sed -i '6s/,[0-9]*,/,cat,/' s/train.png/labels.csv
verify_fails "labels.csv" s/train.png
fresh_store; $PY - <<'PY'
import lmdb
env = lmdb.open("s/train.lmdb", lock=False, max_dbs=2)
with env.begin(write=True) as txn:
    txn.put(b"00000007", txn.get(b"00000007")[:-1])
env.close()
PY
verify_fails "key '00000007'" s/train.lmdb
fresh_store; $PY - <<'PY'
import lmdb
env = lmdb.open("s/train.lmdb", lock=False, max_dbs=2)
with env.begin(write=True) as txn:
    v = bytearray(txn.get(b"00000009")); v[-5] ^= 1; txn.put(b"00000009", bytes(v))
env.close()
PY
verify_fails "key '00000009'" s/train.lmdb
rm -rf bad.h5 && $PY -c '
import h5py, numpy as np
with h5py.File("rank3.h5", "w") as f:
    f.create_dataset("images", (10, 32, 32), h5py.h5t.STD_U8BE, data=np.zeros((10, 32, 32), np.uint8))
    f.create_dataset("meta", (10,), h5py.h5t.STD_U8BE, data=np.zeros(10, np.uint8))
with h5py.File("float.h5", "w") as f:
    f.create_dataset("images", data=np.zeros((10, 32, 32, 3), np.float32))
    f.create_dataset("meta", data=np.zeros(10, np.uint8))
'
verify_fails "shape" rank3.h5
verify_fails "dtype" float.h5

# --- an output directory that cannot be written ---
echo x > plainfile
expect_error 1 "plainfile" "$CONVERT" convert synthetic:n=5 --to png,lmdb,hdf5 --out plainfile/out --quiet
