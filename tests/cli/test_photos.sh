#!/usr/bin/env bash
# Image folders and list files (real photos from tests/fixtures/make_photo_fixtures.py) convert
# into every format at --resize 64x64; each bad input stops the run naming the file and leaves
# no store; --skip-bad skips and names them; conflicting options are usage errors.
source "$(dirname "$0")/lib.sh"
: "${IMGSTORE_SOURCE_DIR:?set by ctest}"
$PY "$IMGSTORE_SOURCE_DIR/tests/fixtures/make_photo_fixtures.py" --size small --out photos \
  --bad bad >/dev/null || fail "make_photo_fixtures.py failed (needs python3-pil/numpy/skimage)"

# Expected counts and classes from the generator's own index.
read -r want_train want_val want_ignored classes < <($PY -c '
import json; j = json.load(open("photos/fixture_index.json"))
c = j["counts"]
print(sum(c["train"].values()), sum(c["val"].values()), sum(j["skipped"].values()),
      json.dumps(j["classes"], ensure_ascii=False, separators=(",", ":")))')

for src in photos photos/list.csv; do
  out="out-$(basename "$src")"
  "$CONVERT" convert "$src" --resize 64x64 --to lmdb,hdf5,png --out "$out" --json >summary.json
  for split in train val; do
    want=$([ $split = train ] && echo "$want_train" || echo "$want_val")
    for store in "$out/$split.lmdb" "$out/$split.h5" "$out/$split.png"; do
      "$CONVERT" verify "$store" --quiet
      got=$("$CONVERT" info "$store" --json | $PY -c '
import json, sys; j = json.load(sys.stdin)
print(j["count"], "x".join(map(str, j["shape"])), json.dumps(j["classes"], ensure_ascii=False, separators=(",", ":")))')
      [ "$got" = "$want 64x64x3 $classes" ] || fail "$store: info says '$got', want '$want 64x64x3 $classes'"
    done
  done
  if [ "$src" = photos ]; then  # the scanner's non-image entries are counted in --json
    ignored=$($PY -c 'import json; print(sum(json.load(open("summary.json"))["ignored"].values()))')
    [ "$ignored" = "$want_ignored" ] || fail "ignored $ignored entries, want $want_ignored"
  fi
  echo "ok: $src"
done
"$CONVERT" verify out-photos/val.lmdb --against out-photos/val.h5 --quiet
echo "ok: formats agree"

# Each bad input: exit 1, the file named on stderr, nothing left in --out.
while IFS=$'\t' read -r name source bad_path; do
  pattern="$(basename "$bad_path")"
  # Root reads a mode-000 file; the same case's dangling symlink is what fails then.
  [ "$name" = unreadable ] && [ "$(id -u)" = 0 ] && pattern=dangling.jpg
  expect_error 1 "$pattern" "$CONVERT" convert "bad/$source" --resize 64x64 --to lmdb,hdf5,png \
    --out "bad-out-$name"
  assert_empty_dir "bad-out-$name"
done < <($PY -c '
import json
for c in json.load(open("bad/cases.json")):
    if c["name"] != "mixed": print(c["name"], c["source"], c["bad_path"], sep="\t")')

# --skip-bad: exit 0, each bad file named with its reason, the store holds exactly the images
# PIL opens (os.walk without following links: the loop and the dangling link are not images).
"$CONVERT" convert bad/mixed --skip-bad --resize 64x64 --to lmdb,hdf5 --out skip >skip.txt
for f in truncated.jpg "zero bytes.jpg" text.jpg huge.jpg dangling.jpg; do
  grep -qF "$f: " skip.txt || fail "--skip-bad summary does not name $f: $(cat skip.txt)"
done
good=$($PY -c '
import os
from PIL import Image
n = 0
for d, _, files in os.walk("bad/mixed"):
    for f in files:
        try:
            with Image.open(os.path.join(d, f)) as im: im.load()
            n += 1
        except Exception: pass
print(n)')
got=$("$CONVERT" info skip/train.h5 --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["count"])')
[ "$got" = "$good" ] || fail "--skip-bad store holds $got images, PIL opens $good"
"$CONVERT" verify skip/train.lmdb --against skip/train.h5 --quiet
"$CONVERT" convert bad/mixed --skip-bad --resize 8x8 --to hdf5 --out skip-json --json >skip.json
$PY -c '
import json; j = json.load(open("skip.json"))
names = [s["path"].rsplit("/", 1)[-1] for s in j["skipped"]]
assert all(s["reason"] for s in j["skipped"]), j["skipped"]
for f in ["truncated.jpg", "zero bytes.jpg", "text.jpg", "huge.jpg", "dangling.jpg"]:
    assert f in names, (f, names)' || fail "--json skipped list: $(cat skip.json)"
# The store's manifest records the same skipped files with their reasons.
"$CONVERT" info skip-json/train.h5 --json >skip-info.json
$PY -c '
import json
summary = json.load(open("skip.json"))["skipped"]
manifest = json.load(open("skip-info.json"))["skipped_inputs"]
assert manifest == summary, (manifest, summary)' || fail "manifest skipped_inputs: $(cat skip-info.json)"
echo "ok: --skip-bad"

# A header over --max-pixels is refused, naming the file.
expect_error 1 "decode limit" "$CONVERT" convert photos --max-pixels 100 --resize 8x8 --to hdf5 \
  --out tiny-limit
assert_empty_dir tiny-limit

# Usage errors: exit 2.
expect_error 2 "excludes" "$CONVERT" convert photos --resize 64x64 --resize-short 32 --out u1
expect_error 2 "excludes" "$CONVERT" convert photos --resize-short 32 --max-side 64 --out u2
expect_error 2 "HxW" "$CONVERT" convert photos --resize 64 --out u3
expect_error 2 "HxW" "$CONVERT" convert photos --resize 0x64 --out u4
expect_error 2 "--channels" "$CONVERT" convert photos --channels 2 --out u5
expect_error 2 "--jpeg-quality" "$CONVERT" convert photos --jpeg-quality 0 --out u6
expect_error 2 "unknown encoding" "$CONVERT" convert photos --encoding bogus --out u8
mkdir notsrc && echo x >notsrc/a.txt  # not a source: the message says image folders are
expect_error 1 "image folder" "$CONVERT" convert notsrc --out u7
for d in u1 u2 u3 u4 u5 u6 u7 u8; do assert_empty_dir "$d"; done
echo "ok: usage errors"
