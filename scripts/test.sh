#!/usr/bin/env bash
# The whole test suite: dependencies, a --werror gcc build with every test, an ASan/UBSan
# clang build with the unit tests, and a libFuzzer build that runs each fuzzer for a while.
#   FUZZ_SECONDS=N   length of each fuzzer run (default 30; 0 skips the fuzz build)
#   SKIP_ASAN=1      skip the sanitizer build
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
status=0

setup() { # dir, meson args...
  local dir=$1; shift
  if [ -d "$dir" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else meson setup "$dir" "$@" >/dev/null; fi
}

echo "== gcc, --werror: build and all tests"
setup build --werror -Dbuildtype=debugoptimized || exit 1
ninja -C build || exit 1
meson test -C build --no-suite fuzzrun --print-errorlogs || status=1

if [ "${SKIP_ASAN:-0}" != 1 ]; then
  echo "== clang ASan+UBSan: unit tests"
  CC=clang setup build-asan --werror -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug -Dfuzz=disabled -Dcuda=disabled || exit 1
  ninja -C build-asan || exit 1
  meson test -C build-asan --suite unit --print-errorlogs --timeout-multiplier 4 || status=1
fi

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "== clang libFuzzer: each fuzzer for ${FUZZ_SECONDS}s"
  CC=clang setup build-fuzz -Dfuzz=enabled -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debugoptimized -Dcuda=disabled -Dfuzz_seconds="$FUZZ_SECONDS" || exit 1
  ninja -C build-fuzz || exit 1
  meson test -C build-fuzz --suite fuzzrun --print-errorlogs --num-processes 2 || status=1
fi
exit $status
