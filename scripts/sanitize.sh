#!/usr/bin/env bash
# Sanitizer runs for CI (docs/sanitizers.md):
#   asan: build-asan/ (gcc, -fsanitize=address,undefined, UBSan non-recoverable, -O1 -g),
#         builds everything and runs the WHOLE ctest suite (whatever tests exist).
#   tsan: build-tsan/ (gcc, -fsanitize=thread, -O1 -g), runs the tests whose names match
#         $IMGSTORE_TSAN_TESTS (the loader, dataset, bad-store and multi-threaded store tests).
#   scripts/sanitize.sh [asan|tsan|all] [extra ctest args...]      (default: all)
# Env: IMGSTORE_ASAN_BUILD, IMGSTORE_TSAN_BUILD (build dirs), IMGSTORE_TSAN_TESTS (ctest -R
# regex), IMGSTORE_JOBS (default 2), IMGSTORE_TEST_TIMEOUT (per test, default 900 s),
# IMGSTORE_ASAN_TARGETS / IMGSTORE_TSAN_TARGETS (what to build; ASan: everything but the
# benchmarks, since CLI tests run the examples; TSan: what its tests need, every target under
# tests/ plus imgstore-convert: each LibTorch translation unit costs minutes under TSan).
# Needs the packages scripts/setup.sh installs (scripts/test.sh runs it first in CI).
# TSan also needs libtbb instrumented: Debian's libtbb.so.12 is not, so TSan cannot see the
# happens-before edges inside it (task spawn/steal, parallel_for's join, pipeline hand-offs)
# and reports each of them as a race in whatever code touched the data. The tsan stage builds
# the same oneTBB version from Debian's source package with -fsanitize=thread into
# <build-tsan>/tbb-tsan/ (once; 1.5 min here) and runs the tests against it through
# LD_LIBRARY_PATH. IMGSTORE_TSAN_TBB=/path/to/dir-with-libtbb.so.12 uses another build.
# Exits non-zero if any test fails or any sanitizer wrote a report, even from a child process
# whose exit status a test does not look at: every report is also written under
# <build>/sanitizer-logs/ and the run fails if that folder is not empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-all}"
shift || true
JOBS="${IMGSTORE_JOBS:-2}"
TIMEOUT="${IMGSTORE_TEST_TIMEOUT:-900}"
SUPP="$ROOT/tests/sanitizers"
read -r -a ASAN_TARGETS <<<"${IMGSTORE_ASAN_TARGETS:-all}"
read -r -a TSAN_TARGETS <<<"${IMGSTORE_TSAN_TARGETS:-tests/all imgstore-convert}"
# Doctest case names of the torch tests start with loader/dataset/bad store/stock loader...;
# the unit cases that start threads say so (threads, thread-safe, concurrent, TBB). Stores
# written with several writer threads are covered by "writer thread counts" and the round trips.
TSAN_TESTS="${IMGSTORE_TSAN_TESTS:-[Ll]oader|dataset|bad store|[Bb]atch|rank|epoch|shard|prefetch|stress|concurr|resume|thread|TBB|parallel|round-trip|png-encoded}"

case "$MODE" in asan|tsan|all) ;; *) echo "usage: $0 [asan|tsan|all] [ctest args...]" >&2; exit 2 ;; esac

# configure BUILD SANITIZE: a RelWithDebInfo tree at -O1 (fast enough, exact stacks), asserts on.
# Without the benchmark programs and their CLI tests (IMGSTORE_BUILD_BENCHMARKS=OFF): the
# Release stage (scripts/test.sh) builds and runs those; here they cost a quarter of CI's time.
configure() {
  local build="$1" san="$2" extra="$3"
  nice cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_C_FLAGS="$extra" -DCMAKE_CXX_FLAGS="$extra" \
    -DIMGSTORE_SANITIZE="$san" -DIMGSTORE_BUILD_BENCHMARKS=OFF \
    -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
}

# run_ctest BUILD LOGDIR ARGS...: runs ctest, then fails if any sanitizer report was logged.
run_ctest() {
  local build="$1" logs="$2"; shift 2
  local rc=0
  (cd "$build" && ${WRAP[@]+"${WRAP[@]}"} ctest --output-on-failure -j "$JOBS" --timeout "$TIMEOUT" "$@") || rc=$?
  # LeakSanitizer writes only "Unable to get registers from thread N" when the process is
  # killed (the crash-safety tests' SIGKILL/SIGINT) while its exit-time leak check has the
  # threads stopped: no finding, the check just did not finish. Such logs are set aside and
  # listed; any log with another line is a report.
  local f
  while IFS= read -r f; do
    [[ -n $f ]] || continue
    if ! grep -qv 'Unable to get registers from thread' "$f"; then
      mkdir -p "$logs.interrupted" && mv "$f" "$logs.interrupted/"
      echo "sanitize: note: leak check interrupted by a kill, no finding: $(basename "$f")" >&2
    fi
  done <<<"$(find "$logs" -type f 2>/dev/null)"
  local reports
  reports="$(find "$logs" -type f 2>/dev/null | sort)"
  if [[ -n "$reports" ]]; then
    echo "sanitize: sanitizer reports were written:" >&2
    while IFS= read -r f; do echo "==== $f" >&2; head -80 "$f" >&2; done <<<"$reports"
    rc=1
  fi
  return $rc
}

# deb_src_lists DIR: writes DIR/sources.list and DIR/sources.list.d/*.sources, the deb-src twins
# of this machine's own apt entries (/etc/apt/sources.list, sources.list.d/*.list and deb822
# *.sources) for its release's suites (<codename>, <codename>-*), so the source comes from
# whatever mirror the machine already uses. Fails if the machine has no such entry.
deb_src_lists() {
  local out="$1" release f
  release="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  mkdir -p "$out/sources.list.d"
  : >"$out/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # One-line form: deb [options] URI suite components...
    awk -v rel="$release" '
      $1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        suite = $(i + 1)
        if (rel == "" || suite == rel || index(suite, rel "-") == 1) { sub(/^deb/, "deb-src"); print }
      }' "$f" >>"$out/sources.list"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822 form: one stanza per paragraph; keep enabled "deb" stanzas, retyped as deb-src,
    # with only the release's suites. Other fields (URIs, Components, Signed-By...) are copied.
    awk -v rel="$release" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) types = " " substr($i, 7) " "
          if ($i ~ /^Suites:/) suites = substr($i, 8)
          if (tolower($i) ~ /^enabled:[ \t]*no/) enabled = "no"
        }
        if (enabled == "no" || types !~ /[ \t]deb[ \t]/) next
        keep = ""
        n = split(suites, s, /[ \t]+/)
        for (j = 1; j <= n; j++)
          if (s[j] != "" && (rel == "" || s[j] == rel || index(s[j], rel "-") == 1)) keep = keep " " s[j]
        if (keep == "") next
        out = "Types: deb-src\nSuites:" keep
        for (i = 1; i <= NF; i++)
          if ($i !~ /^(Types|Suites):/ && $i !~ /^#/) out = out "\n" $i
        printf "%s%s\n", (printed++ ? "\n" : ""), out
      }' "$f" >"$out/sources.list.d/$(basename "$f")"
    [[ -s $out/sources.list.d/$(basename "$f") ]] || rm -f "$out/sources.list.d/$(basename "$f")"
  done
  if [[ ! -s $out/sources.list ]] && ! compgen -G "$out/sources.list.d/*.sources" >/dev/null; then
    echo "sanitize: no apt entry for release '${release:-?}' in /etc/apt to derive deb-src from" >&2
    return 1
  fi
}

# fetch_debian_source DIR PACKAGE=VERSION: downloads a Debian source package into DIR/src with
# apt's private state under DIR/apt (deb-src lists from deb_src_lists), so the system's apt is
# untouched.
fetch_debian_source() {
  local dir="$1" want="$2"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/src"
  deb_src_lists "$dir/apt" || return 1
  local apt=(apt-get -qq -o "Dir::Etc::SourceList=$dir/apt/sources.list"
             -o "Dir::Etc::SourceParts=$dir/apt/sources.list.d" -o "Dir::State::Lists=$dir/apt/lists"
             -o "Dir::Cache=$dir/apt/cache" -o Debug::NoLocking=1)
  "${apt[@]}" update && (cd "$dir/src" && "${apt[@]}" source --download-only "$want")
}

# build_tsan_tbb DIR: prints the folder holding a TSan-instrumented libtbb.so.12 built from
# the Debian source of the installed libtbb12 (its version, its Debian patches), building it
# once (source fetched by fetch_debian_source).
build_tsan_tbb() {
  local dir="$1" lib="$1/lib"
  if [[ -f "$lib/libtbb.so.12" ]]; then echo "$lib"; return; fi
  local version
  version="$(dpkg-query -W -f='${Version}' libtbb12)"
  rm -rf "$dir" && mkdir -p "$dir"
  # One && chain: set -e does not apply inside a list followed by ||.
  {
    fetch_debian_source "$dir" "onetbb=$version" &&
    (cd "$dir/src" && dpkg-source --no-check -x onetbb_*.dsc onetbb) &&
    nice cmake -S "$dir/src/onetbb" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DTBB_SANITIZE=thread -DTBB_TEST=OFF \
      -DTBB_EXAMPLES=OFF -DTBBMALLOC_BUILD=OFF -DTBB_STRICT=OFF -DCMAKE_CXX_COMPILER_LAUNCHER=ccache &&
    nice ninja -C "$dir/build" -j "$JOBS" tbb &&
    mkdir -p "$lib" &&
    cp -a "$dir"/build/*/libtbb.so* "$lib/"
  } >"$dir/build.log" 2>&1 || { echo "sanitize: building TSan libtbb failed, see $dir/build.log" >&2; exit 1; }
  echo "$lib"
}

status=0
summary=()

if [[ $MODE == asan || $MODE == all ]]; then
  build="${IMGSTORE_ASAN_BUILD:-$ROOT/build-asan}"
  start=$SECONDS
  configure "$build" address,undefined "-fno-sanitize-recover=all"
  nice ninja -C "$build" -j "$JOBS" "${ASAN_TARGETS[@]}"
  built=$((SECONDS - start))
  logs="$build/sanitizer-logs"
  rm -rf "$logs" "$logs.interrupted" && mkdir -p "$logs"
  # Distinct exit codes, so a test expecting "exit 1" cannot pass on a sanitizer report.
  # detect_leaks: on; the only suppressions are leaks inside third-party libraries (lsan.supp).
  # verify_asan_link_order=0: cli.test_install links an uninstrumented consumer against the
  # installed (instrumented) libimgstore.so, so the ASan runtime is loaded as a dependency, not
  # first; the library's own code is still checked.
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:exitcode=97:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:verify_asan_link_order=0:log_path=$logs/asan:log_exe_name=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98:log_path=$logs/ubsan:log_exe_name=1"
  export LSAN_OPTIONS="exitcode=99:suppressions=$SUPP/lsan.supp:print_suppressions=0"
  # ASan's quarantine keeps up to 256 MiB of freed memory on purpose (to catch use after
  # free), so RSS-growth bounds (cli.test_stress, the crop loader's) cannot hold; LSan checks
  # leaks instead.
  export IMGSTORE_STRESS_RSS_MIB="${IMGSTORE_STRESS_RSS_MIB:-320}"
  # cli.test_bench_oom runs its children in a 32 MiB memory cgroup; under ASan a loader child
  # holds about 50 MiB of anonymous memory (shadow, quarantine capped by the test), so the
  # page cache the epoch needs has to fit beside it, or the kernel OOM-kills the child (at
  # 96 MiB it did, on CI).
  export IMGSTORE_OOM_LIMIT_MIB="${IMGSTORE_OOM_LIMIT_MIB:-160}"
  WRAP=()
  start=$SECONDS
  if run_ctest "$build" "$logs" "$@"; then result="ok"; else result="FAILED"; status=1; fi
  ran=$(grep -c '^[0-9]*/[0-9]* Testing:' "$build/Testing/Temporary/LastTest.log" || true)
  summary+=("asan+ubsan: $result, $ran tests, build ${built}s, tests $((SECONDS - start))s, reports: $(find "$logs" -type f | wc -l)")
  unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS IMGSTORE_STRESS_RSS_MIB IMGSTORE_OOM_LIMIT_MIB
fi

if [[ $MODE == tsan || $MODE == all ]]; then
  build="${IMGSTORE_TSAN_BUILD:-$ROOT/build-tsan}"
  logs="$build/sanitizer-logs"
  # TSan needs its fixed shadow layout; with high ASLR entropy (vm.mmap_rnd_bits > 28) the
  # runtime dies with "unexpected memory mapping". Probe once; if so, run without ASLR.
  WRAP=()
  probe="$(mktemp -d)"
  echo 'int main() { return 0; }' >"$probe/p.c"
  if gcc -fsanitize=thread "$probe/p.c" -o "$probe/p" 2>/dev/null && ! "$probe/p" >/dev/null 2>&1; then
    if setarch "$(uname -m)" -R "$probe/p" >/dev/null 2>&1; then
      echo "sanitize: TSan needs ASLR off on this kernel; running under setarch -R"
      WRAP=(setarch "$(uname -m)" -R)
    fi
  fi
  rm -rf "$probe"
  start=$SECONDS
  tbb_lib="${IMGSTORE_TSAN_TBB:-}"
  [[ -n $tbb_lib ]] || tbb_lib="$(build_tsan_tbb "$build/tbb-tsan")" || tbb_lib=""
  tbb_built=$((SECONDS - start))
fi
if [[ ($MODE == tsan || $MODE == all) && ! -f ${tbb_lib:-}/libtbb.so.12 ]]; then
  # Without an instrumented libtbb every TBB hand-off is a false report (see tsan.supp), so
  # the TSan tests cannot give a meaningful answer. Say so loudly rather than fail CI on what
  # is usually an unreachable Debian source mirror; IMGSTORE_TSAN_REQUIRED=1 makes it fatal.
  echo "sanitize: WARNING: no TSan-instrumented libtbb (see $build/tbb-tsan/build.log); TSan tests SKIPPED" >&2
  summary+=("tsan: SKIPPED, could not build an instrumented libtbb from the Debian source")
  [[ ${IMGSTORE_TSAN_REQUIRED:-0} == 1 ]] && status=1
elif [[ $MODE == tsan || $MODE == all ]]; then
  start=$SECONDS
  configure "$build" thread ""
  # The build runs the doctest binaries (test discovery), so it needs the wrapper too.
  nice ${WRAP[@]+"${WRAP[@]}"} ninja -C "$build" -j "$JOBS" "${TSAN_TARGETS[@]}"
  built=$((SECONDS - start))
  rm -rf "$logs" "$logs.interrupted" && mkdir -p "$logs"
  # TSan's shadow memory and its allocator's delayed reuse grow RSS too (see the ASan note).
  export IMGSTORE_STRESS_RSS_MIB="${IMGSTORE_STRESS_RSS_MIB:-320}"
  # Only our TSan programs link libtbb; the instrumented copy needs the TSan runtime.
  export LD_LIBRARY_PATH="$tbb_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export TSAN_OPTIONS="halt_on_error=1:exitcode=96:second_deadlock_stack=1:suppressions=$SUPP/tsan.supp:log_path=$logs/tsan:log_exe_name=1"
  start=$SECONDS
  if run_ctest "$build" "$logs" -R "$TSAN_TESTS" "$@"; then result="ok"; else result="FAILED"; status=1; fi
  ran=$(grep -c '^[0-9]*/[0-9]* Testing:' "$build/Testing/Temporary/LastTest.log" || true)
  summary+=("tsan: $result, $ran tests matching '$TSAN_TESTS', instrumented libtbb ${tbb_built}s, build ${built}s, tests $((SECONDS - start))s, reports: $(find "$logs" -type f | wc -l)")
  unset TSAN_OPTIONS IMGSTORE_STRESS_RSS_MIB LD_LIBRARY_PATH
fi

echo "---- sanitizer summary ----"
echo "(benchmark programs and their tests are built and run by the Release stage only)"
printf '%s\n' "${summary[@]}"
exit $status
