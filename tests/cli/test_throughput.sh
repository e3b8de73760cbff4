#!/usr/bin/env bash
# imgstore-throughput (bench/throughput.cpp) on tiny stores: every format gets a row in
# throughput.csv and throughput.json with every figure measured (prefetch loader, the stock
# DataLoader over get_batch and over the per-sample view + Stack<>, memory gather, training,
# the Python peer bench/python_dataloader.py), and bad input gets a clear message and a
# non-zero exit. Timings are not checked.
source "$(dirname "$0")/lib.sh"
TP="${IMGSTORE_BUILD_DIR:?set by ctest}/imgstore-throughput"
[ -x "$TP" ] || fail "$TP is not built (it needs LibTorch)"

"$CONVERT" convert "synthetic:n=300,test=8,h=16,w=16,c=3,classes=10,seed=5" --split train \
  --to png,lmdb,hdf5 --out stores --quiet
"$TP" --stores stores --split train --out out --runs 1 --batch-size 64 --threads 2 \
  --train-steps 2 >stdout.txt 2>stderr.txt || fail "imgstore-throughput exited $?: $(cat stderr.txt)"

CSV=out/throughput.csv
want="format,images,prefetch_ips,stock_w0_ips,stock_w2_ips,stock_per_sample_w0_ips,\
stock_per_sample_w2_ips,memory_ips,limit_ips,png_single_thread_decode_ips,prefetch_vs_limit,\
prefetch_vs_best_stock,prefetch_vs_best_per_sample,train_ips,train_memory_ips,train_vs_memory,\
train_data_wait_share,python_dataloader_ips,prefetch_vs_python,checksums,\
prefetch_checksums_off_ips,prefetch_checksums_on_vs_off,limit_kind,limit_threads,png_decoder,\
limit_beaten"
[ "$(head -1 "$CSV")" = "$want" ] || fail "bad CSV header: $(head -1 "$CSV")"
[ "$(tail -n +2 "$CSV" | cut -d, -f1,2 | tr '\n' ' ')" = "png,300 lmdb,300 hdf5,300 " ] ||
  fail "CSV rows: $(cat "$CSV")"
grep -q "stock, per-sample .* with samples() + Stack<>" stdout.txt ||
  fail "no per-sample line in: $(cat stdout.txt)"
[ "$(grep -c "prefetch / limit = " stdout.txt)" -eq 3 ] ||
  fail "no prefetch / limit line per format in: $(cat stdout.txt)"

"$PY" - out/throughput.json <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
rows = j["results"]
assert [r["format"] for r in rows] == ["png", "lmdb", "hdf5"], [r["format"] for r in rows]
for r in rows:
    assert r["images"] == 300, r
    for k in ("prefetch", "stock_workers0", "stock_workers2", "stock_per_sample_workers0",
              "stock_per_sample_workers2", "memory_gather", "train_fed_by_loader",
              "train_fed_from_memory"):
        assert r[k]["median"] > 0, (r["format"], k, r[k])
    assert r["prefetch_vs_best_per_sample"] > 0, r
    assert r["python_dataloader_best"] > 0, r
    # The limit: measured in this run, at the loader's 2 threads; a decode limit for PNG (by a
    # full decoder), a RAM gather for the others; limit_beaten says whether the loader beat it.
    assert r["limit"] > 0 and r["limit_threads"] == 2, r
    assert r["limit_kind"] == ("decode" if r["format"] == "png" else "gather"), r
    if r["format"] == "png":
        assert r["png_decoder"] in ("imgstore", "libpng", "libpng-simplified"), r
    else:
        assert r["png_decoder"] is None, r
    assert r["limit_beaten"] == (r["prefetch_vs_limit"] > 1), r
peer = j["python_peer"]
assert peer is not None, "the Python peer did not run"
got = {(x["format"], x["workers"]) for x in peer["results"]}
want = {(f, w) for f in ("png", "lmdb", "hdf5") for w in (0, 2)} | {("memory", 0)}
assert got == want, got
print("ok: throughput.json has every figure for png, lmdb, hdf5 and the Python peer")
EOF

# Bad input: a clear message and exit 2; no stores at all: nothing measured, exit 1.
expect_error 2 "--checksums must be on, off or both" \
  "$TP" --stores stores --out out2 --checksums maybe --python ''
expect_error 2 "--stores is required" "$TP" --out out2
mkdir empty
rc=0
"$TP" --stores empty --out out3 --python '' >empty.txt 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "no stores: exited $rc, expected 1"
grep -q "skip lmdb: empty/train.lmdb not found" empty.txt || fail "no skip note: $(cat empty.txt)"
echo "ok: bad input"
