#!/usr/bin/env bash
# Installs the Debian packages imgstore needs (idempotent), then configures and builds a
# Release tree in ${IMGSTORE_BUILD_DIR:-build}. Sourced by run.sh and test.sh.
set -euo pipefail

IMGSTORE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMGSTORE_BUILD_DIR="${IMGSTORE_BUILD_DIR:-$IMGSTORE_ROOT/build}"

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libgloo-dev libtbb-dev liblmdb-dev libhdf5-dev libpng-dev zlib1g-dev libarchive-dev
  libxxhash-dev libdeflate-dev libspng-dev libturbojpeg0-dev libjpeg62-turbo-dev libfmt-dev nlohmann-json3-dev
  libcli11-dev doctest-dev
  dataset-fashion-mnist
  python3 python3-numpy python3-pil python3-h5py python3-lmdb python3-xxhash python3-torch
  python3-torchvision python3-skimage
  python3-matplotlib
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's python3 has the interop packages; a pyenv or venv python on PATH would not.
cmake -S "$IMGSTORE_ROOT" -B "$IMGSTORE_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE=/usr/bin/python3 ${IMGSTORE_CMAKE_ARGS:-} >/dev/null
# IMGSTORE_TARGETS limits the build (the main job needs no test binaries).
cmake --build "$IMGSTORE_BUILD_DIR" -j "$(nproc)" ${IMGSTORE_TARGETS:+--target $IMGSTORE_TARGETS}
