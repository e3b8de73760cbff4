#!/usr/bin/env bash
# Exact resume under SIGKILL: a training loop killed mid-epoch and resumed from its last loader
# checkpoint trains on exactly the batches (indices and tensor bytes) an uninterrupted run does,
# in the same order: 1 and 2 loader threads, across an epoch boundary, and with 2 ranks.
source "$(dirname "$0")/lib.sh"

DRIVER="${IMGSTORE_BUILD_DIR:?set by ctest}/tests/imgstore-test-resume-driver"
[ -x "$DRIVER" ] || fail "$DRIVER is not built"

# 301 records of 8x8x3 in LMDB: batches of 8 give 38 steps per epoch (the last one partial),
# and 2 ranks need one padded record.
"$CONVERT" convert "synthetic:n=301,test=0,h=8,w=8,c=3,seed=5" --to lmdb --out stores --quiet \
  >/dev/null
STORE=stores/train.lmdb
[ -d "$STORE" ] || fail "convert did not write $STORE"
# --no-fsync: a SIGKILL loses no page cache, so rename alone keeps the checkpoint whole.
BASE=(--store "$STORE" --batch-size 8 --seed 17 --epochs 2 --augment --no-fsync)
COMMON=("${BASE[@]}" --every 3)

# The checkpointed prefix of a killed run's log (steps before the state's position) followed by
# the resumed run's log must equal the uninterrupted log.
check_resumed() {  # NAME REFERENCE_LOG KILLED_LOG STATE RESUMED_LOG
  "$PY" - "$@" <<'EOF'
import json, sys
name, ref, killed, state, resumed = sys.argv[1:]
lines = lambda p: open(p).read().splitlines()
s = json.load(open(state))
pos = (s["epoch"], s["batches_consumed"])
prefix = [l for l in lines(killed) if tuple(map(int, l.split()[:2])) < pos]
got, want = prefix + lines(resumed), lines(ref)
if got != want:
    diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    sys.exit(f"FAIL {name}: resumed run differs from the uninterrupted one at step {diff} "
             f"({len(prefix)} checkpointed + {len(got) - len(prefix)} resumed steps, "
             f"want {len(want)})")
print(f"ok {name}: killed at step {len(lines(killed))}, checkpoint at epoch {pos[0]} batch "
      f"{pos[1]}, {len(got) - len(prefix)} steps resumed")
EOF
}

# kill_and_resume NAME REF_LOG KILL_THREADS RESUME_THREADS KILL_AFTER [driver args...]
# (checkpoints every $EVERY steps, default 3; driver options from the array named $BASE_NAME)
kill_and_resume() {
  local name="$1" ref="$2" kt="$3" rt="$4" k="$5"; shift 5
  local -n base="${BASE_NAME:-BASE}"
  rm -f "$name".*
  local rc=0 every=(--every "${EVERY:-3}")
  # (in a subshell, so bash does not report the kill)
  ( exec "$DRIVER" "${base[@]}" "${every[@]}" "$@" --threads "$kt" --prefetch 4 \
    --log "$name.killed" --state "$name.state" --kill-after "$k" 2>"$name.err" ) 2>/dev/null \
    || rc=$?
  [ "$rc" -eq 137 ] || fail "$name: driver should die of SIGKILL (137), exited $rc: $(<"$name.err")"
  [ -f "$name.state" ] || fail "$name: no checkpoint after $k steps"
  cp "$name.state" "$name.ckpt"  # the resumed run checkpoints over it
  "$DRIVER" "${base[@]}" "${every[@]}" "$@" --threads "$rt" --prefetch 2 --log "$name.resumed" \
    --state "$name.state" --resume 2>"$name.err" || fail "$name: resume failed: $(cat "$name.err")"
  check_resumed "$name" "$ref" "$name.killed" "$name.ckpt" "$name.resumed"
}

# The uninterrupted reference (runs resumed with 2 threads must match it too).
"$DRIVER" "${COMMON[@]}" --threads 1 --log ref1.log --state ref1.state 2>/dev/null
[ "$(wc -l <ref1.log)" -eq 76 ] || fail "expected 76 steps over 2 epochs, got $(wc -l <ref1.log)"
# One epoch holds every record once.
"$PY" - ref1.log <<'EOF'
import sys
ep0 = [int(i) for l in open(sys.argv[1]) if l.startswith("0 ") for i in l.split()[3:]]
assert sorted(ep0) == list(range(301)), "epoch 0 does not cover the store exactly once"
EOF

# Kill points: right after a checkpoint, between checkpoints, on the last step of epoch 0
# (38) and just into epoch 1 (the 2-rank runs below die later in epoch 1). Threads change
# between the kill and the resume.
kill_and_resume t1_k38 ref1.log 1 2 38
for k in 3 20 40; do kill_and_resume "t2_k$k" ref1.log 2 1 "$k"; done
# Checkpointed on the last batch of epoch 0 (step 38), killed just after: resumes at epoch 1.
EVERY=19 kill_and_resume t1_boundary ref1.log 1 2 39

# An outside kill -9 at whatever moment the log reaches 15 steps (batches are in flight).
rm -f ext.*
"$DRIVER" "${COMMON[@]}" --threads 2 --sleep-ms 20 --log ext.killed --state ext.state 2>/dev/null &
pid=$!
for _ in $(seq 1 500); do
  [ -f ext.killed ] && [ "$(wc -l <ext.killed)" -ge 15 ] && break
  sleep 0.02
done
kill -KILL "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
[ -f ext.state ] || fail "external kill: no checkpoint"
cp ext.state ext.ckpt
"$DRIVER" "${COMMON[@]}" --threads 1 --log ext.resumed --state ext.state --resume 2>/dev/null
check_resumed external ref1.log ext.killed ext.ckpt ext.resumed

# Two ranks: two driver processes, killed at different steps, each resuming its own shard.
for r in 0 1; do
  "$DRIVER" "${COMMON[@]}" --threads 1 --rank "$r" --world-size 2 --log "rank$r.ref" \
    --state "rank$r.refstate" 2>/dev/null
done
"$PY" - rank0.ref rank1.ref <<'EOF'
import sys
for epoch in ("0", "1"):
    idx = [int(i) for p in sys.argv[1:] for l in open(p) if l.split()[0] == epoch
           for i in l.split()[3:]]
    # 301 records over 2 ranks: 151 each, one record repeated as padding.
    assert len(idx) == 302 and set(idx) == set(range(301)), f"epoch {epoch}: ranks miss records"
print("ok: 2 ranks cover the store each epoch, one padded record")
EOF
kill_and_resume rank0_k10 rank0.ref 1 2 10 --rank 0 --world-size 2 &
p0=$!
kill_and_resume rank1_k23 rank1.ref 2 1 23 --rank 1 --world-size 2 &
p1=$!
wait "$p0" || fail "rank 0 did not resume exactly"
wait "$p1" || fail "rank 1 did not resume exactly"

# Whole shards of a real sharded store: 3 shards over 2 ranks, so rank 1 (one shard) pads to
# rank 0's two shards and both take the same number of steps.
"$CONVERT" convert "synthetic:n=301,h=8,w=8,c=3,seed=5,split=train" --to lmdb --shards 3 \
  --out sharded --quiet >/dev/null
SHARDED=(--store sharded/train.lmdb --batch-size 8 --seed 17 --epochs 2 --augment --no-fsync
         --whole-shards --world-size 2)
for r in 0 1; do
  "$DRIVER" "${SHARDED[@]}" --every 3 --threads 2 --rank "$r" --log "ws$r.ref" \
    --state "ws$r.refstate" 2>/dev/null
done
[ "$(wc -l <ws0.ref)" -eq "$(wc -l <ws1.ref)" ] || fail "whole shards: unequal step counts"
"$PY" - ws0.ref ws1.ref <<'EOF'
import sys
for epoch in ("0", "1"):
    per_rank = [set(int(i) for l in open(p) if l.split()[0] == epoch for i in l.split()[3:])
                for p in sys.argv[1:]]
    assert not (per_rank[0] & per_rank[1]), f"epoch {epoch}: a record is on both ranks"
    assert per_rank[0] | per_rank[1] == set(range(301)), f"epoch {epoch}: records missing"
print("ok: whole shards split the store between the ranks")
EOF
BASE_NAME=SHARDED kill_and_resume ws0_k7 ws0.ref 2 1 7 --rank 0
BASE_NAME=SHARDED kill_and_resume ws1_k30 ws1.ref 1 2 30 --rank 1

# A checkpoint of rank 0 cannot resume rank 1.
expect_error 2 "loader state does not match this loader: rank 0 vs 1" \
  "$DRIVER" "${COMMON[@]}" --rank 1 --world-size 2 --log wrong.log --state rank0_k10.state --resume
echo "all resume checks passed"
