#!/usr/bin/env bash
# A conversion that fails in a later split writes no store at all (issue 12): a CIFAR-10 folder
# whose test_batch.bin has a bad label makes `convert` exit 1 naming the file, and leaves the
# output directory as it was: empty for a new one (so a rerun on the fixed source succeeds),
# and with --overwrite every old store still there, unchanged. For each format, plain and
# sharded.
source "$(dirname "$0")/lib.sh"
[ -n "$FIXTURES" ] || fail "IMGSTORE_MAKE_FIXTURES not set"

"$FIXTURES" cifar10-bin good --records 12 >/dev/null
"$FIXTURES" cifar10-bin old --records 7 >/dev/null  # other records: tells old stores from new
for d in good old; do
  [ -f "$d/test_batch.bin" ] && [ -f "$d/data_batch_1.bin" ] || fail "fixture $d lacks the batch files"
done
cp -r good bad
# Record 5 of test_batch.bin gets label 200 (each record: 1 label byte, then 3072 pixel bytes).
printf '\xc8' | dd of=bad/test_batch.bin bs=1 seek=$((5 * 3073)) conv=notrunc status=none
cmp -s good/test_batch.bin bad/test_batch.bin && fail "corrupting the label changed nothing"

for fmt in png lmdb hdf5; do
  ext=$fmt; [ "$fmt" = hdf5 ] && ext=h5
  for shards in 1 2; do
    tag="$fmt --shards $shards"
    args=(--to "$fmt" --shards "$shards" --quiet --no-fsync)

    # A new output directory: the run fails in 'test', after 'train' was written completely.
    expect_error 1 "test_batch.bin" "$CONVERT" convert bad --out "new-$fmt-$shards" "${args[@]}"
    grep -q "label" err.txt || fail "$tag: message does not say what is wrong: $(cat err.txt)"
    assert_empty_dir "new-$fmt-$shards"
    # The rerun on a fixed source is not tripped up by anything the failed run left.
    "$CONVERT" convert good --out "new-$fmt-$shards" "${args[@]}" || fail "$tag: rerun failed"
    for split in train test; do
      "$CONVERT" verify "new-$fmt-$shards/$split.$ext" --quiet || fail "$tag: rerun's $split store"
    done

    # --overwrite over complete old stores: a failed run keeps every one of them as it was.
    out="over-$fmt-$shards"
    "$CONVERT" convert old --out "$out" "${args[@]}"
    cp -a "$out" "ref-$fmt-$shards"
    expect_error 1 "test_batch.bin" "$CONVERT" convert bad --out "$out" --overwrite "${args[@]}"
    [ "$(ls -A "$out")" = "$(printf 'test.%s\ntrain.%s' "$ext" "$ext")" ] ||
      fail "$tag: after the failed --overwrite run $out holds: $(ls -A "$out")"
    for split in train test; do
      "$CONVERT" verify "$out/$split.$ext" --against "ref-$fmt-$shards/$split.$ext" --quiet ||
        fail "$tag: the old $split store did not survive the failed --overwrite run"
    done
    # ... and a good --overwrite run replaces them all.
    "$CONVERT" convert good --out "$out" --overwrite "${args[@]}"
    "$CONVERT" verify "$out/train.$ext" --against "new-$fmt-$shards/train.$ext" --quiet ||
      fail "$tag: --overwrite did not replace the old store"
    echo "ok: $tag: failed runs leave no store, old stores survive a failed --overwrite"
  done
done
