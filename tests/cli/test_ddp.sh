#!/usr/bin/env bash
# imgstore-ddp-train: two ranks on this machine train in lockstep (identical parameter hashes,
# rank 0 evaluates), a checkpointed and resumed run ends bit-identical to an uninterrupted one,
# and every kind of bad input stops with a clear message and a non-zero exit before training.
source "$(dirname "$0")/lib.sh"
DDP="${IMGSTORE_BUILD_DIR:?set by ctest}/imgstore-ddp-train"
[ -x "$DDP" ] || fail "$DDP is not built (it needs LibTorch)"

"$CONVERT" convert "synthetic:n=1200,test=400,h=16,w=16,c=1,classes=10,seed=3" --to lmdb \
  --out syn --quiet
"$CONVERT" convert "synthetic:n=1200,test=400,h=16,w=16,c=1,classes=10,seed=4" --to lmdb \
  --out other --quiet
COMMON=(--test syn/test.lmdb --epochs 2 --batch-size 64 --timeout 30)

# hash_of FILE RANK: the parameter hash rank RANK printed at the end.
hash_of() { sed -n "s/^\[rank $2\/2\] params xxh3 \([0-9a-f]\{16\}\)$/\1/p" "$1"; }

# run_ok NAME ARGS...: a two-rank run that must succeed; output in NAME.txt.
run_ok() {
  local name="$1"; shift
  "$DDP" --nproc 2 "$@" >"$name.txt" 2>&1 || fail "$name: exited $?: $(cat "$name.txt")"
}

# --- two ranks in lockstep ---
run_ok full --train syn/train.lmdb "${COMMON[@]}"
h0="$(hash_of full.txt 0)"; h1="$(hash_of full.txt 1)"
[ -n "$h0" ] && [ -n "$h1" ] || fail "a rank printed no parameter hash: $(cat full.txt)"
[ "$h0" = "$h1" ] || fail "ranks ended with different parameters: $h0 vs $h1"
[ "$(grep -c '^\[rank 0/2\] epoch .* test acc [0-9.]*%' full.txt)" -eq 2 ] \
  || fail "rank 0 did not evaluate once per epoch: $(cat full.txt)"
! grep -q '^\[rank 1/2\] epoch' full.txt || fail "rank 1 evaluated too"
echo "ok: 2 ranks, identical parameters $h0, rank 0 evaluated each epoch"

# A different seed must give different parameters (the hash is not a constant).
run_ok seed2 --train syn/train.lmdb "${COMMON[@]}" --seed 2 --max-steps 3
[ "$(hash_of seed2.txt 0)" != "$h0" ] || fail "--seed 2 ended with the same parameters"

# --- exact resume: interrupted mid-epoch, and at an epoch's end ---
# 600 records per rank in batches of 64: 10 steps per epoch. Step 13 is inside epoch 2, step
# 10 the end of epoch 1.
for stop in 13 10; do
  rm -rf "ck$stop"
  run_ok "part$stop" --train syn/train.lmdb "${COMMON[@]}" --checkpoint "ck$stop" --max-steps "$stop"
  grep -q "stopped after --max-steps $stop" "part$stop.txt" || fail "no stop at $stop: $(cat "part$stop.txt")"
  [ -f "ck$stop/latest" ] || fail "no checkpoint written at step $stop"
  [ "$stop" -ne 10 ] || grep -q "(epoch 1, step 10 of 10)" part10.txt \
    || fail "step 10 is not the end of epoch 1: $(cat part10.txt)"
  run_ok "resumed$stop" --train syn/train.lmdb "${COMMON[@]}" --resume "ck$stop"
  grep -q "resumed from .* at step $stop" "resumed$stop.txt" || fail "not resumed: $(cat "resumed$stop.txt")"
  r0="$(hash_of "resumed$stop.txt" 0)"; r1="$(hash_of "resumed$stop.txt" 1)"
  [ "$r0" = "$h0" ] && [ "$r1" = "$h0" ] \
    || fail "resumed at step $stop ended with $r0/$r1, uninterrupted with $h0"
  echo "ok: stopped at step $stop, resumed, identical to the uninterrupted run"
done

# --- bad input: a clear error before training, non-zero exit ---
# fails_early RC PATTERN ARGS...: exits RC naming PATTERN, and trained nothing.
fails_early() {
  local rc="$1" pattern="$2"; shift 2
  expect_error "$rc" "$pattern" "$DDP" "$@"
  ! grep -q '^\[rank' "$WORK/out.txt" || fail "'$*' trained before failing: $(cat "$WORK/out.txt")"
}
fails_early 2 "--global-batch 100 is not divisible by 3 ranks" \
  --nproc 3 --train syn/train.lmdb --test syn/test.lmdb --global-batch 100
fails_early 2 "has 1 shard, fewer than the 2 ranks" \
  --nproc 2 --train syn/train.lmdb --test syn/test.lmdb --whole-shards
fails_early 1 "missing.lmdb" --nproc 2 --train missing.lmdb --test syn/test.lmdb
fails_early 1 "missing.lmdb" --nproc 2 --train syn/train.lmdb --test missing.lmdb
fails_early 2 "seed 1 vs 2" --nproc 2 --train syn/train.lmdb "${COMMON[@]}" --resume ck13 --seed 2
fails_early 2 "another data set" --nproc 2 --train other/train.lmdb "${COMMON[@]}" --resume ck13
fails_early 2 "taken with 2 ranks, this run has 3" \
  --nproc 3 --train syn/train.lmdb "${COMMON[@]}" --resume ck13
fails_early 1 "no such checkpoint directory" --nproc 2 --train syn/train.lmdb "${COMMON[@]}" --resume nowhere
fails_early 2 "do not also give --rank" --nproc 2 --rank 1 --train syn/train.lmdb --test syn/test.lmdb

# One rank of a multi-machine run with a bad store: both ranks stop before training, neither
# waits for the other until the timeout.
port=$((20000 + RANDOM % 20000))
rc0=0; rc1=0
MASTER_PORT=$port RANK=0 WORLD_SIZE=2 "$DDP" --train syn/train.lmdb "${COMMON[@]}" \
  >rank0.txt 2>&1 & pid0=$!
MASTER_PORT=$port RANK=1 WORLD_SIZE=2 "$DDP" --train syn/train.lmdb --test missing.lmdb \
  --epochs 2 --batch-size 64 --timeout 30 >rank1.txt 2>&1 || rc1=$?
wait $pid0 || rc0=$?
[ "$rc0" -ne 0 ] && [ "$rc1" -ne 0 ] || fail "ranks exited $rc0 and $rc1: $(cat rank0.txt rank1.txt)"
grep -q "rank 1: .*missing.lmdb" rank1.txt || fail "rank 1 did not name the store: $(cat rank1.txt)"
grep -q "another rank failed" rank0.txt || fail "rank 0 did not say why it stopped: $(cat rank0.txt)"
! grep -q '^\[rank' rank0.txt rank1.txt || fail "a rank trained"
echo "ok: RANK/WORLD_SIZE ranks stop together on one rank's bad store"

# Ranks started with different options (here the seed) refuse to train together.
port=$((20000 + RANDOM % 20000))
rc0=0; rc1=0
MASTER_PORT=$port RANK=0 WORLD_SIZE=2 "$DDP" --train syn/train.lmdb "${COMMON[@]}" \
  >rank0.txt 2>&1 & pid0=$!
MASTER_PORT=$port RANK=1 WORLD_SIZE=2 "$DDP" --train syn/train.lmdb "${COMMON[@]}" --seed 7 \
  >rank1.txt 2>&1 || rc1=$?
wait $pid0 || rc0=$?
[ "$rc0" -eq 2 ] && [ "$rc1" -eq 2 ] || fail "ranks exited $rc0 and $rc1: $(cat rank0.txt rank1.txt)"
grep -q "ranks disagree on the configuration" rank0.txt rank1.txt || fail "no disagreement named"
! grep -q '^\[rank' rank0.txt rank1.txt || fail "a rank trained"
echo "ok: ranks with different seeds stop before training"

# --- sharded stores: whole-shard reading, mixed conversions, a missing shard ---
if "$CONVERT" convert --help 2>&1 | grep -q -- "--shards"; then
  "$CONVERT" convert "synthetic:n=1200,test=400,h=16,w=16,c=1,classes=10,seed=3" --to lmdb \
    --shards 4 --out sh --quiet
  "$CONVERT" convert "synthetic:n=1200,test=400,h=16,w=16,c=1,classes=10,seed=3" --to lmdb \
    --shards 4 --out sh2 --quiet
  run_ok whole --train sh/train.lmdb "${COMMON[@]}" --whole-shards --max-steps 4
  [ "$(hash_of whole.txt 0)" = "$(hash_of whole.txt 1)" ] || fail "whole shards: ranks differ"
  echo "ok: --whole-shards over 4 shards"
  shard="$(cd sh/train.lmdb && ls -d shard-00001-of-00004* | head -n1)"
  [ -n "$shard" ] || fail "no shard-00001-of-00004 in sh/train.lmdb: $(ls sh/train.lmdb)"
  rm -rf "sh/train.lmdb/$shard"; cp -r "sh2/train.lmdb/$shard" "sh/train.lmdb/$shard"
  fails_early 1 "another conversion" --nproc 2 --train sh/train.lmdb "${COMMON[@]}"
  rm -rf "sh/train.lmdb/$shard"
  fails_early 1 "$shard" --nproc 2 --train sh/train.lmdb "${COMMON[@]}"
else
  echo "note: this imgstore-convert writes no sharded stores; sharded cases not run"
fi
echo "PASS"
