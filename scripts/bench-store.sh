#!/usr/bin/env bash
# Builds imgstore-store-bench (Release, no LibTorch) and runs it; arguments pass through.
#   scripts/bench-store.sh                       # 50,000 synthetic images doubled to 100,000
#   scripts/bench-store.sh --count 2000 --runs 1 # quick look
#   BUILD_DIR=/path scripts/bench-store.sh --json store-bench.json
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-bench}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIMGSTORE_BUILD_TORCH=OFF \
        -DIMGSTORE_BUILD_TESTS=OFF -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
fi
if ! log="$(ninja -C "$build" -j"$(nproc)" imgstore-store-bench 2>&1)"; then
  echo "$log" >&2
  exit 1
fi
exec "$build/imgstore-store-bench" "$@"
