#!/usr/bin/env bash
# Builds imgstore-bench (Release, with LibTorch; Debian packages via setup.sh) and runs it.
# Arguments pass through to imgstore-bench:
#   scripts/bench.sh --quick --out /tmp/bench-quick     # under 2 minutes
#   scripts/bench.sh --out /tmp/imgstore-bench-full     # the full run: N up to 100,000, 5 runs
#   IMGSTORE_BUILD_DIR=/path scripts/bench.sh ...       # another build tree (default build/)
# The build goes to stderr, so stdout is the bench's table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export IMGSTORE_TARGETS=imgstore-bench
# shellcheck source=setup.sh
source "$root/scripts/setup.sh" >&2
bench="$IMGSTORE_BUILD_DIR/imgstore-bench"
if [[ ! -x "$bench" ]]; then
  echo "bench.sh: $bench was not built (is LibTorch installed? IMGSTORE_BUILD_TORCH=OFF?)" >&2
  exit 1
fi
exec "$bench" "$@"
