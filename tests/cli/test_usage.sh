#!/usr/bin/env bash
# Usage errors exit 2, bad data exits 1, --help shows examples.
source "$(dirname "$0")/lib.sh"
"$CONVERT" --help | grep -q "Examples:" || fail "--help lacks examples"
"$CONVERT" convert --help | grep -q -- "--repeat" || fail "convert --help lacks --repeat"
expect_error 2 "" "$CONVERT"
expect_error 2 "" "$CONVERT" frobnicate
expect_error 2 "unknown format 'tiff'" "$CONVERT" convert synthetic:n=5 --to tiff --out o
expect_error 2 "deflate" "$CONVERT" convert synthetic:n=5 --to hdf5 --hdf5-deflate 4 --out o
expect_error 2 "no split 'valid'" "$CONVERT" convert synthetic:n=5 --split valid --out o
expect_error 1 "'/no/such/source' does not exist" "$CONVERT" convert /no/such/source --out o
expect_error 1 "'/no/such/store' does not exist" "$CONVERT" verify /no/such/store
expect_error 1 "not an imgstore store" "$CONVERT" info "$WORK"
assert_empty_dir o
