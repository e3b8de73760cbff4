#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) in a separate clang build with ASan+UBSan, then
# replays every committed crasher and runs each target for SECONDS over its seed corpus.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default 10 s each, every target)
# Env: IMGSTORE_FUZZ_BUILD (default <repo>/build-fuzz), IMGSTORE_FUZZ_ARGS (extra libFuzzer
# flags). Exits non-zero if any target crashes, leaks, times out or exceeds a memory limit.
# Crash inputs are left in <build>/crashes/<target>/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${IMGSTORE_FUZZ_BUILD:-$ROOT/build-fuzz}"
SECONDS_EACH="${1:-10}"
shift || true
ALL_TARGETS=(cifar_binary pickle cifar_pickle idx idx_gz archive png_decode lmdb_value hdf5
             labels_csv manifest)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize=fuzzer-no-link"
nice -n 19 cmake -S "$ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_C_FLAGS="$SAN -fno-omit-frame-pointer" \
  -DCMAKE_CXX_FLAGS="$SAN -fno-omit-frame-pointer" \
  -DBUILD_SHARED_LIBS=OFF -DIMGSTORE_BUILD_FUZZERS=ON -DIMGSTORE_BUILD_TORCH=OFF \
  -DIMGSTORE_BUILD_TESTS=OFF >/dev/null
BUILD="$(cd "$BUILD" && pwd)"
nice -n 19 ninja -C "$BUILD" -j2 $(printf 'fuzz_%s ' "${TARGETS[@]}")

# Scratch files of the targets go to a private tmpfs folder, removed on exit.
FUZZ_TMP="$(mktemp -d /dev/shm/imgstore-fuzz.XXXXXX)"
trap 'rm -rf "$FUZZ_TMP"' EXIT
export IMGSTORE_FUZZ_TMP="$FUZZ_TMP"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$ROOT/tests/fuzz/lsan.supp}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# With -jobs, libFuzzer writes the job's log as fuzz-0.log in the current folder: keep it in
# the build folder (it is copied into our log too).
cd "$BUILD"
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20)
status=0
summary=()
for t in "${TARGETS[@]}"; do
  bin="$BUILD/tests/fuzz/fuzz_$t"
  seeds="$ROOT/tests/fuzz/corpus/$t"
  regress="$ROOT/tests/fuzz/regressions/$t"
  work="$BUILD/corpus/$t"
  crashes="$BUILD/crashes/$t"
  mkdir -p "$work" "$crashes"
  log="$BUILD/fuzz-$t.log"
  limits=("${LIMITS[@]}")
  # libhdf5 itself mallocs whatever size a corrupt metadata header declares (1.5 GB and
  # 104 TB seen, in H5C_protect); that is its bug (tests/fuzz/README.md, known/hdf5/). Let
  # such mallocs fail with NULL, which libhdf5 handles, so the run reaches imgstore's code;
  # -rss_limit_mb still catches memory actually used.
  target_env=()
  if [[ $t == hdf5 ]]; then
    limits+=(-malloc_limit_mb=1000000)
    target_env=(env "ASAN_OPTIONS=$ASAN_OPTIONS:allocator_may_return_null=1")
  fi

  # 1. Every committed crasher must now pass.
  if [[ -d "$regress" ]] && compgen -G "$regress/*" >/dev/null; then
    if ! nice -n 19 "${target_env[@]}" "$bin" "${limits[@]}" "$regress"/* >"$BUILD/regress-$t.log" 2>&1; then
      echo "FAIL $t: a committed regression input crashes again (see $BUILD/regress-$t.log)"
      status=1
      summary+=("$t: REGRESSION FAILED")
      continue
    fi
  fi

  # 2. Fuzz: the working corpus first (new inputs go there), the committed seeds read-only.
  dirs=("$work" "$seeds")
  [[ -d "$regress" ]] && dirs+=("$regress")
  if nice -n 19 "${target_env[@]}" "$bin" -max_total_time="$SECONDS_EACH" -jobs=1 -workers=1 \
       -artifact_prefix="$crashes/" -print_final_stats=1 "${limits[@]}" \
       ${IMGSTORE_FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1; then
    result="ok"
  else
    result="CRASH (inputs in $crashes, log $log)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  line="$t: $result, execs ${execs:-?}, cov ${cov:-?}, ft ${ft:-?}"
  echo "$line"
  summary+=("$line")
done

echo "---- fuzz summary (${SECONDS_EACH}s per target) ----"
printf '%s\n' "${summary[@]}"
exit $status
