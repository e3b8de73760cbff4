#!/usr/bin/env bash
# Crash safety: `imgstore-convert convert` killed at random moments never leaves a partial store.
#
# SIGKILL (no chance to clean up): afterwards either nothing exists at the store path, or a
# complete store that passes `verify` and holds exactly the reference content. Whatever else is
# left must be a hidden staging sibling `.<name>.tmp-<pid>-<hex8>`, which no reader opens at the
# store path; a later conversion into the same directory must succeed and remove the stale
# staging data of dead runs.
# SIGINT (Ctrl-C): exit 130 with one clean message and no staging data left, or, when the signal
# lands after the last batch, exit 0 with a complete store.
#
# Kill delays are uniform over [0, T], T being the measured duration of an uninterrupted
# conversion of the same size (~0.3-1 s each here), drawn from a seeded generator. The seed is
# printed; rerun with IMGSTORE_CRASH_SEED=<seed> to replay. IMGSTORE_CRASH_TRIALS sets the number
# of SIGKILL trials per format (default 20), IMGSTORE_CRASH_INT_TRIALS the SIGINT ones (6),
# IMGSTORE_CRASH_OVERWRITE_TRIALS the SIGKILLed --overwrite runs (5), after which the path must
# hold the old store or the new one, complete (nothing lost).
source "$(dirname "$0")/lib.sh"

# Where the stores go: a tmpfs (/dev/shm) by default. Process kills leave the same state on any
# file system, and there every commit's syncfs() is instant instead of waiting for all dirty data
# of a shared disk, which keeps the test within its time budget. IMGSTORE_CRASH_DIR=<dir> runs it
# elsewhere (e.g. on ext4, to have kills land in the flush as well).
BASE="${IMGSTORE_CRASH_DIR:-/dev/shm}"
if ! RUN_DIR="$(mktemp -d "$BASE/imgstore-crash.XXXXXX" 2>/dev/null)"; then
  RUN_DIR="$(mktemp -d "$WORK/stores.XXXXXX")"
fi
trap 'rm -rf "$RUN_DIR" "$WORK"' EXIT
cd "$RUN_DIR"
echo "stores under $RUN_DIR ($(df --output=fstype "$RUN_DIR" | tail -1))"

SEED="${IMGSTORE_CRASH_SEED:-$(( $(date +%s%N) % 1000000007 ))}"
KILL_TRIALS="${IMGSTORE_CRASH_TRIALS:-20}"
INT_TRIALS="${IMGSTORE_CRASH_INT_TRIALS:-6}"
OVERWRITE_TRIALS="${IMGSTORE_CRASH_OVERWRITE_TRIALS:-5}"
RANDOM=$(( SEED % 32768 ))
echo "seed: $SEED (replay with IMGSTORE_CRASH_SEED=$SEED)"
echo "trials per format: $KILL_TRIALS SIGKILL, $INT_TRIALS SIGINT, $OVERWRITE_TRIALS SIGKILL with --overwrite"
START=$(date +%s)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# rand_below N: sets REPLY to a uniform integer in [0, N) from bash's seeded generator (30
# bits). Not via $(...): bash reseeds RANDOM in subshells, which would break the replay.
rand_below() { REPLY=$(( ((RANDOM << 15) | RANDOM) % $1 )); }
ext_of() { case "$1" in png) echo png ;; lmdb) echo lmdb ;; hdf5) echo h5 ;; esac; }
# Sized so that one conversion takes ~0.3-1 s on a loaded 2-core machine (PNG encodes).
count_of() { case "$1" in png) echo 1000 ;; *) echo 6000 ;; esac; }
digest_of() {  # digest_of STORE: content digest reported by a full verify (fails if invalid)
  local j; j=$("$CONVERT" verify "$1" --json) || return 1
  sed -n 's/^ *"content_digest": "\([0-9a-f]\{16\}\)".*/\1/p' <<<"$j"
}

# check_dir DIR EXT: DIR holds at most the store and hidden staging siblings of it.
# Prints the number of staging siblings left.
check_dir() {
  local dir="$1" ext="$2" n=0 entry
  [ -d "$dir" ] || { echo 0; return; }
  while IFS= read -r entry; do
    [ -n "$entry" ] || continue
    [ "$entry" = "train.$ext" ] && continue
    [[ "$entry" =~ ^\.train\.$ext\.tmp-[0-9]+-[0-9a-f]{8}$ ]] ||
      fail "$dir: unexpected entry '$entry' (not the store, not a staging sibling)"
    n=$((n + 1))
  done < <(ls -A "$dir")
  echo "$n"
}

declare -A SUMMARY
for fmt in png lmdb hdf5; do
  ext=$(ext_of "$fmt")
  n=$(count_of "$fmt")
  src="synthetic:n=$n,test=8,h=32,w=32,c=3,classes=10,seed=7"
  args=(convert "$src" --split train --to "$fmt" --out)

  # Reference run: its duration is the kill window, its digest the expected content.
  t0=$(now_ms)
  "$CONVERT" "${args[@]}" "ref-$fmt" --quiet
  window=$(( $(now_ms) - t0 ))
  [ "$window" -ge 50 ] || window=50
  ref=$(digest_of "ref-$fmt/train.$ext")
  echo "$fmt: $n images, uninterrupted conversion ${window} ms, digest $ref"

  none=0 complete=0 litter_runs=0 litter_total=0 finished=0
  litter_dir=""
  for ((i = 0; i < KILL_TRIALS; i++)); do
    out="kill-$fmt-$i"
    rand_below $((window + 1)); delay=$REPLY
    "$CONVERT" "${args[@]}" "$out" --quiet 2>/dev/null &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -KILL "$pid" 2>/dev/null || true
    rc=0; wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 137 ] || fail "$fmt trial $i: exit $rc (expected 0 or 137)"
    [ "$rc" -eq 0 ] && finished=$((finished + 1))
    store="$out/train.$ext"
    if [ -e "$store" ]; then
      got=$(digest_of "$store") || fail "$fmt trial $i (killed at ${delay} ms): $store exists but does not verify"
      [ "$got" = "$ref" ] || fail "$fmt trial $i: $store holds digest $got, expected $ref"
      complete=$((complete + 1))
    else
      [ "$rc" -eq 137 ] || fail "$fmt trial $i: exit 0 but no store at $store"
      # Staging siblings are never opened at the store path.
      [ "$none" -gt 0 ] || expect_error 1 "does not exist" "$CONVERT" verify "$store" >/dev/null
      none=$((none + 1))
    fi
    left=$(check_dir "$out" "$ext")
    if [ "$left" -gt 0 ]; then
      litter_runs=$((litter_runs + 1)) litter_total=$((litter_total + left))
      if [ ! -e "$store" ] && [ -z "$litter_dir" ]; then litter_dir="$out"; continue; fi
    fi
    rm -rf "$out"
  done
  echo "$fmt SIGKILL: $KILL_TRIALS trials: $none no store, $complete complete store" \
       "($finished finished before the kill); staging left behind in $litter_runs runs"
  [ $((none + complete)) -eq "$KILL_TRIALS" ] || fail "$fmt: trials do not add up"

  # Stale staging data from a killed run: a later conversion into the same directory succeeds,
  # writes a complete store and removes the stale siblings (their writers are dead).
  cleanup="n/a (no run was killed mid-write)"
  if [ -n "$litter_dir" ]; then
    stale=$(ls -A "$litter_dir" | tr '\n' ' ')
    "$CONVERT" "${args[@]}" "$litter_dir" --quiet || fail "$fmt: conversion next to stale staging failed"
    [ "$(digest_of "$litter_dir/train.$ext")" = "$ref" ] || fail "$fmt: store next to stale staging is wrong"
    left=$(check_dir "$litter_dir" "$ext")
    [ "$left" -eq 0 ] || fail "$fmt: stale staging not cleaned up by a later run: $(ls -A "$litter_dir")"
    cleanup="a later run removed the stale $stale"
  fi
  echo "$fmt stale staging: $cleanup"

  # SIGINT: caught, turned into an exception between batches, staging removed, exit 130.
  int130=0 int0=0
  for ((i = 0; i < INT_TRIALS; i++)); do
    out="int-$fmt-$i"
    rand_below $((window + 1)); delay=$REPLY
    "$CONVERT" "${args[@]}" "$out" --quiet 2>"int.err" &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -INT "$pid" 2>/dev/null || true
    rc=0; wait "$pid" 2>/dev/null || rc=$?
    store="$out/train.$ext"
    left=$(check_dir "$out" "$ext")
    [ "$left" -eq 0 ] || fail "$fmt SIGINT trial $i (rc $rc, at ${delay} ms): staging left: $(ls -A "$out")"
    if [ "$rc" -eq 130 ]; then
      [ ! -e "$store" ] || fail "$fmt SIGINT trial $i: exit 130 but $store exists"
      msg=$(cat int.err)
      [ "$msg" = "imgstore-convert: interrupted; partial output removed" ] ||
        fail "$fmt SIGINT trial $i: unexpected stderr: $msg"
      int130=$((int130 + 1))
    elif [ "$rc" -eq 0 ]; then  # the signal came after the last batch (or before the handler)
      [ "$(digest_of "$store")" = "$ref" ] || fail "$fmt SIGINT trial $i: exit 0, store invalid"
      int0=$((int0 + 1))
    else
      fail "$fmt SIGINT trial $i (at ${delay} ms): exit $rc, stderr: $(cat int.err)"
    fi
    rm -rf "$out"
  done
  echo "$fmt SIGINT: $INT_TRIALS trials: $int130 interrupted (exit 130, nothing left)," \
       "$int0 finished first (exit 0, complete store)"

  # SIGKILL while replacing a store (--overwrite, other content): the path holds the old store
  # or the new one, complete, at every moment; never nothing, never a mix.
  "$CONVERT" convert "synthetic:n=$n,test=8,h=32,w=32,c=3,classes=10,seed=8" --split train \
    --to "$fmt" --out "old-$fmt" --quiet
  old_digest=$(digest_of "old-$fmt/train.$ext")
  kept_old=0 got_new=0
  for ((i = 0; i < OVERWRITE_TRIALS; i++)); do
    out="ow-$fmt-$i"
    cp -a "old-$fmt" "$out"
    rand_below $((window + 1)); delay=$REPLY
    "$CONVERT" "${args[@]}" "$out" --overwrite --quiet 2>/dev/null &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -KILL "$pid" 2>/dev/null || true
    rc=0; wait "$pid" 2>/dev/null || rc=$?
    [ -e "$out/train.$ext" ] || fail "$fmt --overwrite trial $i (killed at ${delay} ms): no store at the path"
    got=$(digest_of "$out/train.$ext") || fail "$fmt --overwrite trial $i: store does not verify"
    case "$got" in
      "$old_digest") kept_old=$((kept_old + 1)) ;;
      "$ref") got_new=$((got_new + 1)) ;;
      *) fail "$fmt --overwrite trial $i: digest $got is neither the old nor the new store" ;;
    esac
    check_dir "$out" "$ext" >/dev/null
    rm -rf "$out"
  done
  echo "$fmt SIGKILL during --overwrite: $OVERWRITE_TRIALS trials: $kept_old old store intact," \
       "$got_new new store complete"
  SUMMARY[$fmt]="SIGKILL $KILL_TRIALS: $none none / $complete complete, staging left in $litter_runs; SIGINT $INT_TRIALS: $int130 x 130 / $int0 x complete; --overwrite $OVERWRITE_TRIALS: $kept_old old / $got_new new"
  rm -rf kill-"$fmt"-* int-"$fmt"-* ow-"$fmt"-* ref-"$fmt" old-"$fmt"
done

elapsed=$(( $(date +%s) - START ))
echo "summary (seed $SEED, $elapsed s):"
for fmt in png lmdb hdf5; do echo "  $fmt: ${SUMMARY[$fmt]}"; done
[ "$elapsed" -le 60 ] || echo "note: took $elapsed s, over the 60 s budget (a busy machine?)"
echo "ok: no partial store in any trial"
