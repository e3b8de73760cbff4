#!/usr/bin/env bash
# The installed CMake package works for a user's project: find_package(imgstore), link
# imgstore::core (no LibTorch needed), store and read one image in every format.
source "$(dirname "$0")/lib.sh"
: "${IMGSTORE_BUILD_DIR:?set by ctest}"
cmake --install "$IMGSTORE_BUILD_DIR" --prefix "$WORK/prefix" >/dev/null
[ -f "$WORK/prefix/lib/cmake/imgstore/imgstoreConfig.cmake" ] || \
  [ -n "$(find "$WORK/prefix" -name imgstoreConfig.cmake)" ] || fail "no imgstoreConfig.cmake installed"
cmake -S "$IMGSTORE_SOURCE_DIR/tests/cli/consumer" -B "$WORK/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$WORK/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$WORK/consumer" >/dev/null
mkdir "$WORK/stores"
LD_LIBRARY_PATH="$WORK/prefix/lib:$WORK/prefix/lib/x86_64-linux-gnu" "$WORK/consumer/consumer" "$WORK/stores"
