#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) in a separate clang build with ASan+UBSan, then
# replays every committed crasher and runs each target for SECONDS over its seed corpus.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default 10 s each, every target)
#   scripts/fuzz.sh --smoke [TARGET...]        CI smoke run (docs/sanitizers.md): installs clang
#       if missing, replays every target's seeds and regressions, then fuzzes each for
#       $IMGSTORE_FUZZ_SMOKE_SECONDS (default 25) s; fuzz_hdf5 only replays (see below).
# Env: IMGSTORE_FUZZ_BUILD (default <repo>/build-fuzz), IMGSTORE_FUZZ_ARGS (extra libFuzzer
# flags). Exits non-zero if any target crashes, leaks, times out or exceeds a memory limit.
# Crash inputs are left in <build>/crashes/<target>/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${IMGSTORE_FUZZ_BUILD:-$ROOT/build-fuzz}"
SMOKE=0
if [[ ${1:-} == --smoke ]]; then
  SMOKE=1
  shift
  SECONDS_EACH="${IMGSTORE_FUZZ_SMOKE_SECONDS:-25}"
else
  SECONDS_EACH="${1:-10}"
  shift || true
fi
ALL_TARGETS=(cifar_binary pickle cifar_pickle idx idx_gz archive png_decode png_fast lmdb_value hdf5
             labels_csv manifest image_list jpeg_decode image_png)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

# clang and its runtimes (libFuzzer, ASan, UBSan); the smoke run installs them (idempotent).
fuzz_packages=(clang libclang-rt-14-dev)
missing=()
for p in "${fuzz_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if ((SMOKE)); then
    echo "fuzz.sh: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "fuzz.sh: missing ${missing[*]} (apt-get install ${missing[*]}, or run with --smoke)" >&2
    exit 2
  fi
fi

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
build_start=$SECONDS
nice -n 19 ninja -C "$BUILD" -j2 $(printf 'fuzz_%s ' "${TARGETS[@]}")
build_time=$((SECONDS - build_start))
run_start=$SECONDS

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
  # The smoke run (CI) must not fail on bugs we cannot fix: new fuzzing of fuzz_hdf5 reaches
  # libhdf5 1.10.8's unchecked NULL memcpy (known/hdf5/, H5F__accum_read) within minutes, so
  # there it only runs every seed (and, above, every regression) once, which must pass.
  if ((SMOKE)) && [[ $t == hdf5 ]]; then
    if nice -n 19 "${target_env[@]}" "$bin" "${limits[@]}" "$seeds"/* >"$log" 2>&1; then
      line="$t: ok, replayed $(ls "$seeds" | wc -l) seeds + $(ls "$regress" 2>/dev/null | wc -l) regressions (no new fuzzing: libhdf5 bug)"
    else
      line="$t: SEED CRASHES (log $log)"
      status=1
    fi
    echo "$line"
    summary+=("$line")
    continue
  fi
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

mode="${SECONDS_EACH}s per target"
((SMOKE)) && mode+=", smoke run: hdf5 replay only"
echo "---- fuzz summary ($mode; build ${build_time}s, runs $((SECONDS - run_start))s) ----"
printf '%s\n' "${summary[@]}"
exit $status
