#!/usr/bin/env bash
# Checks the C ABI from C, C++ and Python, as CI runs it:
#   - include/keyformer.h as committed is what build.rs generates from src/ffi.rs;
#   - the C example builds with gcc against the header and both the shared and the static
#     library, runs SmolLM2 with the keyformer policy and prints the cache statistics;
#   - the C API test (every error path, the threading rule) passes, linked both ways;
#   - the example and the API test run clean under AddressSanitizer, and the example under
#     valgrind (no errors, no leaks);
#   - the C++ wrapper's test program and the Python package's pytest suite pass.
# It installs the tools it needs (apt-get, pip) where they are missing, and takes about
# two minutes once the library is built (valgrind runs in the background meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LIBDIR=$TARGET/release
MODEL=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
# Five tokens for the slow runs (ASan, valgrind); a longer prompt shows the policy at work.
PROMPT="The capital of France is"
LONG_PROMPT="Keyformer keeps a recent window and the key tokens of the KV cache, and drops the rest. The capital of France is"
OUT=$ROOT/bindings/c/build
step() { printf '\n== %s\n' "$*"; }

step "tools"
missing=()
for tool in gcc g++ make pkg-config valgrind; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc g++ make pkg-config valgrind >/dev/null
fi
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
scripts/fetch.sh

step "library and header"
cargo build --release --lib
# build.rs has just regenerated the header from src/ffi.rs: it must equal the committed one.
if ! git ls-files --error-unmatch include/keyformer.h >/dev/null 2>&1 ||
    ! git diff --quiet HEAD -- include/keyformer.h; then
    echo "include/keyformer.h differs from what src/ffi.rs generates (or is not committed):"
    git diff HEAD -- include/keyformer.h | head -40
    if [ "${CI:-}" = true ]; then
        echo "commit the regenerated include/keyformer.h"
        exit 1
    fi
    echo "(not in CI: carrying on; commit the regenerated header)"
fi

step "C: build against the shared and the static library"
make -C bindings/c -j2 LIBDIR="$LIBDIR" all

# The checks run on the CPU backend: where lavapipe is installed (CI installs it for the wgpu
# tests), auto would pick that software Vulkan adapter, far slower under valgrind.
# valgrind is slow (about 90 s here): it runs beside the other checks. Leaks of kinds
# "definite" and "indirect" are errors; "possibly lost" and "still reachable" are not: they
# are process-wide state that lives until exit (rayon's worker threads and their stacks,
# tokenizer regex caches held in statics), not memory the program lost.
valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
    "$OUT/example" "$MODEL" "$PROMPT" 4 cpu >"$OUT/valgrind.out" 2>"$OUT/valgrind.log" &
valgrind_pid=$!
trap 'kill "$valgrind_pid" 2>/dev/null || true' EXIT

step "C: example (shared library, keyformer policy)"
"$OUT/example" "$MODEL" "$LONG_PROMPT" 16 cpu
step "C: example (static library)"
"$OUT/example-static" "$MODEL" "$PROMPT" 8 cpu

step "C: API test"
"$OUT/test_api" "$MODEL"
"$OUT/test_api-static" "$MODEL" | tail -n 1

step "C: AddressSanitizer"
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1
"$OUT/example-asan" "$MODEL" "$PROMPT" 4 cpu
"$OUT/test_api-asan" "$MODEL" | tail -n 1
unset ASAN_OPTIONS

step "C++: wrapper test"
g++ -std=c++17 -Wall -Wextra -Werror -O2 -Iinclude -Ibindings/cpp bindings/cpp/test.cpp \
    -o "$OUT/test_cpp" -L"$LIBDIR" -lkeyformer -Wl,-rpath,"$LIBDIR"
"$OUT/test_cpp" "$MODEL"

step "Python: pytest"
(cd bindings/python && KEYFORMER_LIB=$LIBDIR/libkeyformer.so python3 -m pytest -q)

step "C: valgrind"
if ! wait "$valgrind_pid"; then
    cat "$OUT/valgrind.log"
    echo "valgrind found errors or leaks"
    exit 1
fi
cat "$OUT/valgrind.out"
grep -E "ERROR SUMMARY|(definitely|indirectly|possibly) lost:|still reachable:" "$OUT/valgrind.log"
echo "all binding checks passed"
