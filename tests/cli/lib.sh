# Shared helpers for the CLI tests (sourced). Each test runs in its own temp directory.
set -euo pipefail
: "${IMGSTORE_CONVERT:?set by ctest}"
CONVERT="$IMGSTORE_CONVERT"
FIXTURES="${IMGSTORE_MAKE_FIXTURES:-}"
PY=/usr/bin/python3
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_error RC PATTERN CMD...: CMD exits with RC and its stderr contains PATTERN.
expect_error() {
  local want_rc="$1" pattern="$2"; shift 2
  local rc=0
  "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || rc=$?
  [ "$rc" -eq "$want_rc" ] || fail "'$*' exited $rc, expected $want_rc; stderr: $(cat "$WORK/err.txt")"
  grep -qF -- "$pattern" "$WORK/err.txt" || fail "'$*' stderr lacks '$pattern': $(cat "$WORK/err.txt")"
  echo "ok: rc=$rc '$pattern'"
}

# assert_empty_dir DIR: DIR holds nothing at all (no store, no temporary left behind).
assert_empty_dir() {
  [ -d "$1" ] || return 0
  local left; left="$(ls -A "$1")"
  [ -z "$left" ] || fail "$1 should be empty but holds: $left"
}

# require_torch_program PATH TARGET: PATH is built, or the build has no LibTorch (then the
# test ends here, ok, saying so); a missing program in a LibTorch build is a failure.
require_torch_program() {
  [ -x "$1" ] && return 0
  if grep -q '^IMGSTORE_BUILD_TORCH:BOOL=OFF' "${IMGSTORE_BUILD_DIR:-}/CMakeCache.txt" 2>/dev/null; then
    echo "note: built without LibTorch, $(basename "$1") not checked"; exit 0
  fi
  fail "missing $1 (build target $2)"
}
