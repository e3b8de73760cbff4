#!/usr/bin/env bash
# Disk full while writing a store, for every format and layout: exit 1 with an error that
# names the file and says "No space left on device", and no staging data left behind; or, when
# the store just fits, exit 0 with a complete store. The disk is a 2 MiB tmpfs, pre-filled so
# that the free space runs out at chosen points of the write (early, mid-way, at the very end
# where only the manifest, the flush or the rename remain).
#
# Needs to mount a tmpfs: as root directly, else in a user+mount namespace (unshare -rm). If
# neither is possible it says so loudly and exits 0 (the CLI tests are registered by a glob
# without a skip code).
source "$(dirname "$0")/lib.sh"

MNT="$WORK/mnt"
mkdir -p "$MNT"
if ! mount -t tmpfs -o size=2m imgstore-enospc "$MNT" 2>"$WORK/mount.err"; then
  if [ -z "${IMGSTORE_ENOSPC_IN_NS:-}" ] && unshare -rm true 2>/dev/null; then
    echo "mount not permitted ($(cat "$WORK/mount.err")); rerunning in a user+mount namespace"
    rc=0
    IMGSTORE_ENOSPC_IN_NS=1 unshare -rm bash "$0" || rc=$?
    exit "$rc"
  fi
  echo "#####################################################################################"
  echo "SKIPPED: test_enospc did NOT run: cannot mount a tmpfs ($(cat "$WORK/mount.err"))"
  echo "and cannot create a user+mount namespace (unshare -rm). Disk-full handling is untested."
  echo "#####################################################################################"
  exit 0
fi
trap 'umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; rm -rf "$WORK"' EXIT

avail() { df -B1 --output=avail "$MNT" | tail -1 | tr -d ' '; }
used() { df -B1 --output=used "$MNT" | tail -1 | tr -d ' '; }
FREE0=$(avail)
echo "tmpfs at $MNT: $FREE0 bytes free"

N=300
SRC="synthetic:n=$N,test=4,h=32,w=32,c=3,classes=10,seed=11"
# Each configuration: label, store name, convert options.
CONFIGS=(
  "png|train.png|--to png"
  "lmdb-raw|train.lmdb|--to lmdb"
  "lmdb-png|train.lmdb|--to lmdb --lmdb-encoding png"
  "hdf5-contiguous|train.h5|--to hdf5"
  "hdf5-chunked|train.h5|--to hdf5 --hdf5-chunk 32"
  "hdf5-deflate|train.h5|--to hdf5 --hdf5-chunk 32 --hdf5-deflate 1"
)
# Free space as a per-mille of what the store needs: early, mid-way, and at the very end; with
# 10% to spare every format must fit (HDF5 reserves 64 KiB for its final flush, see
# hdf5_store.cpp), and the store must then occupy no more than it did on an empty disk.
FRACTIONS=(0 300 700 950 990 998 1000 1010 1100)

# check_failed LABEL LOG: the error names a file on the tmpfs and says no space is left; nothing
# is left in the output directory.
check_failed() {
  local label="$1" log="$2"
  grep -q "No space left on device" "$log" || fail "$label: error does not say 'No space left on device': $(cat "$log")"
  grep -q "'$MNT/out/[^']*'" "$log" || fail "$label: error does not name the file: $(cat "$log")"
  [ "$(wc -l < "$log")" -le 3 ] || fail "$label: noisy error output: $(cat "$log")"
  ! grep -qiE "terminate|segmentation|abort|core dumped" "$log" || fail "$label: crashed: $(cat "$log")"
  assert_empty_dir "$MNT/out"
}

fails=0 fits=0
for config in "${CONFIGS[@]}"; do
  IFS='|' read -r label store opts <<<"$config"
  # What the store needs on this tmpfs (pages, not bytes).
  rm -rf "${MNT:?}"/*
  before=$(used)
  # shellcheck disable=SC2086
  "$CONVERT" convert "$SRC" --split train $opts --out "$MNT/out" --quiet ||
    fail "$label: conversion into an empty 2 MiB tmpfs failed"
  "$CONVERT" verify "$MNT/out/$store" --quiet || fail "$label: store on tmpfs does not verify"
  need=$(( $(used) - before ))
  rm -rf "${MNT:?}"/*
  echo "$label: store of $N images needs $need bytes"
  [ "$need" -lt "$FREE0" ] || fail "$label: store does not fit the tmpfs; lower N"

  outcomes=""
  for f in "${FRACTIONS[@]}"; do
    rm -rf "${MNT:?}"/*
    want=$(( need * f / 1000 ))
    fill=$(( $(avail) - want ))
    [ "$fill" -le 0 ] || fallocate -l "$fill" "$MNT/filler" || head -c "$fill" /dev/zero > "$MNT/filler"
    filled=$(used)
    rc=0
    # shellcheck disable=SC2086
    "$CONVERT" convert "$SRC" --split train $opts --out "$MNT/out" --quiet 2>"$WORK/err.log" || rc=$?
    if [ "$rc" -eq 0 ]; then
      [ "$f" -ge 950 ] || fail "$label: succeeded with $want bytes free, $need needed?"
      "$CONVERT" verify "$MNT/out/$store" --quiet || fail "$label ($f‰): exit 0 but the store is bad"
      [ "$(ls -A "$MNT/out")" = "$store" ] || fail "$label: staging left beside the store: $(ls -A "$MNT/out")"
      [ $(( $(used) - filled )) -le "$need" ] ||
        fail "$label: the store occupies $(( $(used) - filled )) bytes, $need on an empty disk"
      outcomes+=" ${f}‰:ok"
      fits=$((fits + 1))
    else
      [ "$f" -lt 1100 ] || fail "$label: did not fit with 10% to spare: $(cat "$WORK/err.log")"
      [ "$rc" -eq 1 ] || fail "$label ($f‰ of the space needed): exit $rc, expected 1: $(cat "$WORK/err.log")"
      check_failed "$label ($f‰ of the space needed)" "$WORK/err.log"
      outcomes+=" ${f}‰:ENOSPC"
      fails=$((fails + 1))
      [ "$f" -ne 300 ] || echo "  e.g. $(head -c 400 "$WORK/err.log" | tr '\n' ' ')"
    fi
  done
  echo "  free space as share of the need ->$outcomes"
done

# The tmpfs is empty again: no space leaked by anything left open or behind.
rm -rf "${MNT:?}"/*
[ "$(avail)" -eq "$FREE0" ] || fail "tmpfs has $(avail) bytes free, $FREE0 at the start"
echo "ok: $fails disk-full failures reported cleanly, $fits runs that just fit produced complete stores"
