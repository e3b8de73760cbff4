#!/usr/bin/env bash
# The photo experiment and photo training in a quick mode, on the small real-photo fixture
# stored as LMDB-JPEG and HDF5-JPEG: imgstore-photo-throughput gives every (store, S) row every
# figure (prefetch, stock, decode limit, torchvision peer, ratios; training and RSS at the train
# size) in its table, CSV and JSON, and imgstore-train --crop trains and evaluates on the photo
# store with its usual reports. Timings are not checked, only that figures exist and are sane.
source "$(dirname "$0")/lib.sh"
PT="${IMGSTORE_BUILD_DIR:?set by ctest}/imgstore-photo-throughput"
TRAIN="$IMGSTORE_BUILD_DIR/imgstore-train"
[ -x "$PT" ] && [ -x "$TRAIN" ] || fail "imgstore-photo-throughput or imgstore-train is not built"

$PY "$IMGSTORE_SOURCE_DIR/tests/fixtures/make_photo_fixtures.py" --size small --out photos \
  >/dev/null || fail "make_photo_fixtures.py failed"
"$CONVERT" convert photos --to lmdb,hdf5 --encoding jpeg --out stores >convert.txt ||
  fail "convert failed"
grep -Eq "^train: [0-9]+ images of any size, 3 channels " convert.txt ||
  fail "the summary does not say the split has images of any size: $(cat convert.txt)"

"$PT" --stores stores --images photos/train --sizes 48,32 --runs 1 --train-size 32 \
  --train-steps 2 --rss-epochs 2 --torchvision-limit 40 --out out >stdout.txt 2>stderr.txt ||
  fail "imgstore-photo-throughput exited $?: $(cat stderr.txt)"
grep -Eq "^lmdb +32 " stdout.txt && grep -Eq "^hdf5 +48 " stdout.txt ||
  fail "no table rows in: $(cat stdout.txt)"

CSV=out/photo_throughput.csv
want="format,size,images,prefetch_ips,first_epoch_ips,stock_ips,decode_limit_ips,full_decode_ips,torchvision_ips,\
torchvision_workers,prefetch_vs_limit,prefetch_vs_torchvision_per_core,train_ips,\
train_memory_ips,train_vs_memory,train_data_wait_share,rss_growth_mib"
[ "$(head -1 "$CSV")" = "$want" ] || fail "bad CSV header: $(head -1 "$CSV")"
[ "$(tail -n +2 "$CSV" | cut -d, -f1,2 | tr '\n' ' ')" = "lmdb,48 lmdb,32 hdf5,48 hdf5,32 " ] ||
  fail "CSV rows: $(cat "$CSV")"

"$PY" - out/photo_throughput.json <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
rows = j["results"]
assert [(r["format"], r["size"]) for r in rows] == [
    ("lmdb", 48), ("lmdb", 32), ("hdf5", 48), ("hdf5", 32)], rows
n = rows[0]["images"]
assert n > 100, n
tv = j["torchvision"]
assert tv is not None, "the torchvision peer did not run"
assert {(x["size"], x["workers"]) for x in tv["results"]} == {(s, w) for s in (48, 32) for w in (0, 2)}
for r in rows:
    assert r["images"] == n, r
    for k in ("prefetch", "stock"):
        assert r[k]["median"] > 0, (r["format"], r["size"], k)
    assert r["first_epoch"] > 0, r  # the new loader's warm-up epoch, reported beside the median
    assert r["decode_limit"] > 0 and r["torchvision_best"] > 0, r
    assert 0 < r["full_decode"] <= r["decode_limit"], r
    # The limit is the faster decode, each the fastest of one pass before every loader epoch
    # (warm-up included) of both formats' rows at that size: 2 x (runs + 1) passes.
    assert abs(r["decode_limit"] - max(r["region_decode"], r["full_decode"])) < 1e-6 * r["decode_limit"], r
    assert r["decode_limit_passes"] == 2 * (1 + 1), r
    assert r["limit_beaten"] == (r["prefetch"]["median"] > r["decode_limit"]), r
    assert r["torchvision_best_workers"] in (0, 2), r
    assert r["prefetch_vs_limit"] > 0 and r["prefetch_vs_torchvision_per_core"] > 0, r
    trained = r["size"] == 32
    assert (r["train_fed_by_loader"]["median"] > 0) == trained, r
    assert (r["train_fed_from_preloaded_crops"]["median"] > 0) == trained, r
    assert (len(r["rss_mib_per_epoch"]) == 2) == trained, r
    if trained:
        assert 0 <= r["train_data_wait_share"] <= 1, r
        assert all(m > 0 for m in r["rss_mib_per_epoch"]), r
for size in (48, 32):
    limits = {r["decode_limit"] for r in rows if r["size"] == size}
    assert len(limits) == 1, (size, limits)  # one limit per size, shared by the formats
print("ok: photo_throughput.json has every figure for lmdb and hdf5 at 48 and 32")
EOF

"$PY" "$IMGSTORE_SOURCE_DIR/bench/plot_photo.py" --json out/photo_throughput.json --out out \
  >/dev/null || fail "plot_photo.py failed"
[ -s out/photo_throughput.png ] || fail "no photo_throughput.png"

# Training on the photo store: RandomResizedCrop 32 for training, resize + centre crop for test.
"$TRAIN" --train stores/train.lmdb --test stores/val.h5 --crop 32 --epochs 1 --batch-size 32 \
  --threads 1 --torch-threads 1 --json train.json >train.txt 2>&1 ||
  fail "imgstore-train --crop exited $?: $(cat train.txt)"
grep -q "RandomResizedCrop 32 + flip" train.txt || fail "no crop in: $(cat train.txt)"
grep -Eq "epoch 1/1 .* test acc [0-9.]+% .* img/s +data wait [0-9.]+%" train.txt ||
  fail "no epoch report in: $(cat train.txt)"
"$PY" - train.json <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["crop"] == 32 and len(j["epochs"]) == 1, j
e = j["epochs"][0]
assert 0 <= e["test_accuracy"] <= 1 and e["images_per_second"] > 0, e
assert 0 <= e["data_wait_share"] <= 1 and e["train_loss"] > 0, e
print("ok: imgstore-train --crop on the photo store")
EOF

# A store of any image size without --crop: a clear usage error.
expect_error 2 "holds images of any size: pass --crop S" \
  "$TRAIN" --train stores/train.lmdb --test stores/val.lmdb --epochs 1
echo "ok: photo throughput and training"
