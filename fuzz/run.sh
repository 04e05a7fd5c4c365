#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/fuzz_targets and runs each for a bounded time, as CI
# does:
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 20 s, every target)
# Stable Rust is enough: coverage instrumentation is added to the keyformer library alone by
# fuzz/rustc-wrapper.sh, so the build reuses the release dependencies in target/ and adds only
# keyformer, libFuzzer and the targets (no cargo-fuzz, no nightly), in fuzz/target. cargo-fuzz works on this
# folder too, where nightly is at hand: `cargo +nightly fuzz run gguf`.
#
# Each target first replays fuzz/regressions/TARGET/* (inputs that once crashed it), then
# fuzzes from the seeds (fuzz/seeds/TARGET plus copies of repository files) in a working
# corpus fuzz/corpus/TARGET. A crash fails the script and leaves the input in
# fuzz/artifacts/TARGET/: fix the bug, then commit the input under fuzz/regressions/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${1:-20}
if (($#)); then shift; fi
TARGETS=(gguf safetensors_header safetensors_index config_json tokenizer_json chat_template)
if (($#)); then TARGETS=("$@"); fi
# A target folder of its own: keyformer's library files carry no hash in their names (it is
# also a cdylib), so an instrumented build in target/ would overwrite the plain one. It starts
# as a copy of target/release (a few seconds), whose dependencies it then reuses.
TARGET_DIR=$ROOT/fuzz/target
start=$(date +%s)
if [ ! -d "$TARGET_DIR/release" ] && [ -d "${CARGO_TARGET_DIR:-$ROOT/target}/release" ]; then
    mkdir -p "$TARGET_DIR"
    cp -a "${CARGO_TARGET_DIR:-$ROOT/target}/release" "$TARGET_DIR/release"
    echo "fuzz: copied the release build into fuzz/target in $(($(date +%s) - start)) s"
fi

echo "fuzz: building ${#TARGETS[@]} targets (instrumented keyformer, plain dependencies)"
# keyformer's dependencies at the versions of its own Cargo.lock, so that they are the ones
# already built; cargo adds libFuzzer's few crates to this copy.
cp Cargo.lock fuzz/Cargo.lock
(cd fuzz && RUSTC_WRAPPER="$ROOT/fuzz/rustc-wrapper.sh" \
    cargo build --release --target-dir "$TARGET_DIR" --bins)
echo "fuzz: build took $(($(date +%s) - start)) s"

# The seeds of each target: its own folder, and copies of the repository's real files.
seed() {
    local target=$1 corpus=$ROOT/fuzz/corpus/$1
    mkdir -p "$corpus"
    if [ -d "$ROOT/fuzz/seeds/$target" ]; then
        cp "$ROOT/fuzz/seeds/$target"/* "$corpus/"
    fi
    case $target in
    gguf)
        # The real model's header and metadata (its tensors lie far beyond).
        local model=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
        if [ -f "$model" ]; then head -c 65536 "$model" >"$corpus/smollm2-head.gguf"; fi
        ;;
    safetensors_header)
        for arch in gpt2 mpt; do
            cp "$ROOT/tests/fixtures/tiny-$arch/model.safetensors" "$corpus/tiny-$arch.safetensors"
        done
        ;;
    config_json)
        for f in "$ROOT"/tests/fixtures/tiny-*/config.json; do
            cp "$f" "$corpus/$(basename "$(dirname "$f")").json"
        done
        cp "$ROOT"/benches/configs/*.json "$corpus/"
        ;;
    esac
}

failed=()
for target in "${TARGETS[@]}"; do
    bin=$TARGET_DIR/release/$target
    artifacts=$ROOT/fuzz/artifacts/$target/
    mkdir -p "$artifacts"
    regressions=("$ROOT/fuzz/regressions/$target"/*)
    if [ -e "${regressions[0]}" ]; then
        echo "fuzz: $target: replaying ${#regressions[@]} regression inputs"
        if ! "$bin" "${regressions[@]}" >"$artifacts/regressions.log" 2>&1; then
            tail -n 30 "$artifacts/regressions.log"
            failed+=("$target (a regression input)")
            continue
        fi
    fi
    seed "$target"
    log=$artifacts/fuzz.log
    # -rss_limit_mb: an input that makes the library allocate without bound is a crash.
    # -timeout: one input running for 10 s (an endless template, say) is a crash too.
    if "$bin" "$ROOT/fuzz/corpus/$target" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
        -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
        echo "fuzz: $target: ${runs:-?} runs in ${SECONDS_EACH} s, $cov, corpus $(ls "$ROOT/fuzz/corpus/$target" | wc -l) inputs"
    else
        tail -n 40 "$log"
        echo "fuzz: $target FAILED: the input is in $artifacts (fix, then commit it under fuzz/regressions/$target/)"
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz: failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets ran clean; total $(($(date +%s) - start)) s"
