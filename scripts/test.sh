#!/usr/bin/env bash
# The test command: set up, build, run every test (doctest units, CLI and Python interop).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$IMGSTORE_BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" "$@"
