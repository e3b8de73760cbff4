#!/usr/bin/env bash
# imgstore-train --shuffle-window: trains from the prefetch loader in quasi-random order (windows
# of W consecutive records, shuffled in and across) and says so in its report and JSON; the
# option is refused with the loaders that cannot honour it. Timings are not checked.
source "$(dirname "$0")/lib.sh"
TRAIN="${IMGSTORE_BUILD_DIR:?set by ctest}/imgstore-train"
[ -x "$TRAIN" ] || fail "imgstore-train is not built"
[ -n "$FIXTURES" ] || fail "IMGSTORE_MAKE_FIXTURES not set"

"$FIXTURES" cifar10-bin cifar --records 96 >/dev/null
"$CONVERT" convert cifar --to lmdb --out stores --quiet --no-fsync || fail "convert failed"

"$TRAIN" --train stores/train.lmdb --test stores/test.lmdb --epochs 2 --batch-size 16 \
  --threads 2 --torch-threads 1 --shuffle-window 24 --json train.json >train.txt 2>&1 ||
  fail "imgstore-train --shuffle-window exited $?: $(cat train.txt)"
grep -q "order quasi-random, windows of 24" train.txt || fail "order not reported: $(cat train.txt)"
[ "$(grep -Ec "^epoch [12]/2 .* test acc [0-9.]+%" train.txt)" = 2 ] ||
  fail "no epoch reports in: $(cat train.txt)"
"$PY" - train.json <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["shuffle_window"] == 24 and j["loader"] == "prefetch", j
assert len(j["epochs"]) == 2, j
for e in j["epochs"]:
    assert 0 <= e["test_accuracy"] <= 1 and e["train_loss"] > 0, e
print("ok: imgstore-train --shuffle-window 24")
PY

for loader in stock memory; do
  expect_error 2 "--shuffle-window needs --loader prefetch" \
    "$TRAIN" --train stores/train.lmdb --test stores/test.lmdb --epochs 1 --loader "$loader" \
    --shuffle-window 8
done
echo "ok: quasi-random training"
