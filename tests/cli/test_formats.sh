#!/usr/bin/env bash
# Every format the tool lists in `convert --help` (the format table) converts, and `info` and
# `verify` handle it. The names come from the tool, not from this script.
source "$(dirname "$0")/lib.sh"
names="$("$CONVERT" convert --help | sed -n 's/.*formats, comma-separated: \([a-z0-9,]*\).*/\1/p' | head -1)"
[ -n "$names" ] || fail "convert --help does not list the formats"
n=0
for f in ${names//,/ }; do
  "$CONVERT" convert synthetic:n=6,test=0,h=4,w=4,c=3,seed=2 --split train --to "$f" \
    --out "out-$f" --quiet
  store="$(ls -d out-$f/train.*)"
  "$CONVERT" info "$store" --json | grep -q "\"format\": \"$f\"" || fail "info of $store is not $f"
  "$CONVERT" verify "$store" --quiet || fail "verify of $store failed"
  n=$((n + 1))
done
[ "$n" -ge 3 ] || fail "only $n formats listed: $names"
# The default --to is every listed format.
"$CONVERT" convert synthetic:n=4,test=0 --split train --out all --quiet
[ "$(ls all | wc -l)" -eq "$n" ] || fail "default --to wrote $(ls all) for formats $names"
echo "ok: $n formats: $names"
