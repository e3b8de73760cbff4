#!/usr/bin/env bash
# Hostile input through the CLI: nothing is executed and nothing is written outside --out.
#  1. CIFAR python batches that are real Python pickles of os.system (protocols 0-5), as a
#     folder and as a .tar.gz: refused with exit 1 naming the global or opcode; the command
#     never runs (a positive control shows Python's own pickle WOULD run it).
#  2. A .tar.gz with absolute, '..', symlink and hardlink members: ignored, never followed or
#     extracted; the output holds exactly the expected stores and matches the clean source.
#  3. A store whose manifest names its split with a path ('../x', '/abs', 'a/b'): convert
#     refuses it (exit 1) instead of writing <out>/../x.png etc.
source "$(dirname "$0")/lib.sh"
[ -n "$FIXTURES" ] || fail "IMGSTORE_MAKE_FIXTURES not set"

# ---- 1. pickles that would run a command ----
"$FIXTURES" cifar10-py clean-py --records 20
evil_pickle() {  # evil_pickle FILE PROTOCOL MARKER
  $PY - "$1" "$2" "$3" <<'PY'
import os, pickle, sys
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[3],))
proto = int(sys.argv[2])
# Protocols 2+: a dict like a CIFAR batch, with the payload where the pixels would be (the
# reader parses its way to it). Protocols 0/1 write dicts with opcodes the reader does not know,
# so there the payload is the whole pickle and GLOBAL is its first opcode.
obj = Evil() if proto < 2 else {"batch_label": "x", "labels": [0], "data": Evil()}
open(sys.argv[1], "wb").write(pickle.dumps(obj, protocol=proto))
PY
}
# Positive control: Python's unpickler does run the payload.
evil_pickle control.pkl 2 "$WORK/control-ran"
(cd "$WORK" && $PY -c 'import pickle; pickle.load(open("control.pkl", "rb"))' >/dev/null)
[ -e "$WORK/control-ran" ] || fail "positive control: the evil pickle did not run under Python"

for proto in 0 1 2 3 4 5; do
  for member in data_batch_1 batches.meta; do
    rm -rf evil-py && cp -r clean-py evil-py
    evil_pickle "evil-py/$member" "$proto" "$WORK/pwned"
    # Protocols 0/1 start with GLOBAL; 2+ with PROTO then GLOBAL or STACK_GLOBAL.
    expect_error 1 "forbidden" "$CONVERT" convert evil-py --to lmdb --out out-py --quiet
    grep -qE "posix\.system|os\.system" err.txt || fail "message does not name the global: $(cat err.txt)"
    grep -qF "$member" err.txt || fail "message does not name the file $member: $(cat err.txt)"
    [ ! -e "$WORK/pwned" ] || fail "protocol $proto $member: the pickle's command ran"
    assert_empty_dir out-py
  done
done
# The same inside an archive (read in place, never extracted).
rm -rf evil-py && cp -r clean-py evil-py
evil_pickle evil-py/data_batch_3 4 "$WORK/pwned"
$PY - <<'PY'
import tarfile
with tarfile.open("evil-py.tar.gz", "w:gz") as t:
    t.add("evil-py", arcname="cifar-10-batches-py")
PY
expect_error 1 "forbidden" "$CONVERT" convert evil-py.tar.gz --to hdf5 --out out-tgz --quiet
grep -qF "member 'cifar-10-batches-py/data_batch_3'" err.txt || fail "archive member not named: $(cat err.txt)"
[ ! -e "$WORK/pwned" ] || fail "archive: the pickle's command ran"
assert_empty_dir out-tgz

# ---- 2. archive members with absolute paths, '..' and links ----
"$FIXTURES" cifar10-bin clean-bin --records 30
"$CONVERT" convert clean-bin --to lmdb --out ref --quiet
mkdir sub
$PY - "$WORK" <<'PY'
import io, os, sys, tarfile
work = sys.argv[1]
garbage = b"\x7f" * (30 * 3073)  # labels 127: conversion would fail if any of this were read
def add_file(t, name, data):
    info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
def add_link(t, name, target, kind):
    info = tarfile.TarInfo(name); info.type = kind; info.linkname = target; t.addfile(info)
with tarfile.open("sub/evil-bin.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as t:
    add_file(t, "../evil-dotdot", b"pwned")
    add_file(t, work + "/evil-absolute", b"pwned")
    add_file(t, "cifar-10-batches-bin/../../evil-nested", b"pwned")
    add_file(t, "cifar-10-batches-bin/../../data_batch_1.bin", garbage)
    add_file(t, "/cifar-10-batches-bin/data_batch_2.bin", garbage)
    add_link(t, "cifar-10-batches-bin/evil-symlink", "../../evil-link-target", tarfile.SYMTYPE)
    add_link(t, "cifar-10-batches-bin/evil-hardlink", "/etc/passwd", tarfile.LNKTYPE)
    for name in sorted(os.listdir("clean-bin")):
        t.add("clean-bin/" + name, arcname="cifar-10-batches-bin/" + name)
PY
(cd sub && "$CONVERT" convert evil-bin.tar.gz --to png,lmdb,hdf5 --out out --quiet)
got=$(cd sub/out && ls -A | tr '\n' ' ')
[ "$got" = "test.h5 test.lmdb test.png train.h5 train.lmdb train.png " ] || fail "out holds: $got"
[ "$(ls -A sub | tr '\n' ' ')" = "evil-bin.tar.gz out " ] || fail "sub holds: $(ls -A sub)"
left=$(find "$WORK" -name 'evil-*' ! -name 'evil-bin.tar.gz' ! -path "$WORK/evil-py*")
[ -z "$left" ] || fail "archive members escaped: $left"
"$CONVERT" verify sub/out/train.png --against ref/train.lmdb --quiet
"$CONVERT" verify sub/out/test.h5 --against ref/test.lmdb --quiet
echo "ok: hostile archive members ignored; output only under --out and equal to the clean source"

# ---- 3. a store's manifest split used as an output file name ----
"$CONVERT" convert synthetic:n=12,test=0,h=4,w=4,c=1,seed=3 --split train --to png,lmdb,hdf5 \
  --out victim --quiet
set_split() {  # set_split STORE SPLIT: what a hand-edited or hostile manifest could say
  $PY - "$1" "$2" <<'PY'
import json, sys
path, split = sys.argv[1], sys.argv[2]
if path.endswith(".png"):
    p = path + "/manifest.json"; m = json.load(open(p)); m["split"] = split; json.dump(m, open(p, "w"))
elif path.endswith(".lmdb"):
    import lmdb
    env = lmdb.open(path, lock=False, max_dbs=2, subdir=True)
    db = env.open_db(b"__imgstore__", create=False)
    with env.begin(write=True, db=db) as txn:
        m = json.loads(txn.get(b"manifest")); m["split"] = split
        txn.put(b"manifest", json.dumps(m).encode())
    env.close()
else:
    import h5py, numpy as np
    with h5py.File(path, "r+") as f:
        attr = f.attrs.get_id("imgstore_manifest")
        m = json.loads(f.attrs["imgstore_manifest"]); m["split"] = split
        text = json.dumps(m).encode()
        tid = attr.get_type().copy(); tid.set_size(len(text))
        del f.attrs["imgstore_manifest"]
        f.attrs.create("imgstore_manifest", np.array(text, dtype=f"S{len(text)}"), dtype=tid)
PY
}
mkdir -p deep/er
for store in victim/train.png victim/train.lmdb victim/train.h5; do
  for split in "../../escaped" "$WORK/absolute" "a/b"; do
    h="hostile.${store##*.}" && cp -r "$store" "$h"
    set_split "$h" "$split"
    [ "$("$CONVERT" info "$h" --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["split"])')" = "$split" ] \
      || fail "$h: the edited split did not take"
    (cd deep/er && expect_error 1 "not a plain name" "$CONVERT" convert "$WORK/$h" \
       --to png,lmdb,hdf5 --out out --quiet)
    for p in "$WORK/escaped" "$WORK/absolute" "$WORK/deep/er/out/a"; do
      for ext in png lmdb h5; do [ ! -e "$p.$ext" ] || fail "$h split '$split' wrote $p.$ext"; done
    done
    [ ! -e "$WORK/deep/er/out/a" ] || fail "$h split '$split' created out/a"
    assert_empty_dir deep/er/out
    rm -rf "$h"
  done
done
echo "ok: path-like split names in a store's manifest are refused"
