#!/usr/bin/env bash
# llama.cpp's CPU build against keyformer on the same GGUF files and thread count, side by side:
# `llama-bench -t THREADS -p 512 -n 64` and `keyformer bench --model FILE` (prompt 512, 64 new
# tokens, CPU backend) on SmolLM2-135M (Q4_1) and Gemma-3-270M (Q4_K_M), as fetched by
# scripts/fetch.sh.
#
#   benches/llamacpp/cpu.sh [KEYFORMER_BIN]   (default target/release/keyformer)
#
# llama.cpp is built from benches/llamacpp/vendor.sh's archive into .dev/llamacpp-cpu/ (kept:
# a few minutes on 2 cores the first time). CMake and Ninja come from pip into .dev/venv when the
# machine lacks them. THREADS (default 2) sets both programs' thread count; MODELS (space-separated
# paths) replaces the default files; OUT, when set, receives the logs and results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
kf=${1:-target/release/keyformer}
threads=${THREADS:-2}
models=${MODELS:-models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf}
out=${OUT:-.dev/llamacpp-cpu/results}
mkdir -p "$out"

tgz=$(benches/llamacpp/vendor.sh)
build=.dev/llamacpp-cpu
bench=$build/build/bin/llama-bench
if [ ! -x "$bench" ] || [ "$tgz" -nt "$bench" ]; then
    if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
        if [ ! -x .dev/venv/bin/cmake ] || [ ! -x .dev/venv/bin/ninja ]; then
            echo "installing cmake and ninja into .dev/venv..." >&2
            python3 -m venv .dev/venv
            .dev/venv/bin/pip install --quiet cmake ninja
        fi
        export PATH=$root/.dev/venv/bin:$PATH
    fi
    rm -rf "$build/llama.cpp"
    mkdir -p "$build"
    tar -xzf "$tgz" -C "$build"
    echo "building llama-bench (CPU) in $build/build..." >&2
    cmake -S "$build/llama.cpp" -B "$build/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF >"$out/cmake.log" 2>&1 ||
        { tail -20 "$out/cmake.log"; exit 1; }
    cmake --build "$build/build" --target llama-bench -j "$(nproc)" >"$out/build.log" 2>&1 ||
        { tail -30 "$out/build.log"; exit 1; }
fi

has_model_flag() { "$kf" bench --help 2>/dev/null | grep -q -- '--model'; }

table=$out/results.md
{
    # Other work on the machine skews both programs: say how busy it was.
    echo "$(date -u '+%F %H:%M') UTC, $threads threads, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| model | program | prompt 512 (tokens/s) | decode 64 (tokens/s) |"
    echo "| --- | --- | --- | --- |"
} >"$table"
for model in $models; do
    name=$(basename "$model")
    if [ ! -e "$model" ]; then
        echo "skipping $model: not there (scripts/fetch.sh fetches it)" >&2
        continue
    fi
    echo "llama-bench -t $threads -p 512 -n 64 -m $model" >&2
    "$bench" -m "$model" -t "$threads" -p 512 -n 64 -o json >"$out/llama-$name.json" 2>"$out/llama-$name.log"
    python3 - "$out/llama-$name.json" "$name" >>"$table" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))
pp = next((r["avg_ts"] for r in runs if r["n_prompt"] > 0 and r["n_gen"] == 0), float("nan"))
tg = next((r["avg_ts"] for r in runs if r["n_gen"] > 0 and r["n_prompt"] == 0), float("nan"))
print(f"| {sys.argv[2]} | llama.cpp ({runs[0].get('backends', 'CPU')}) | {pp:.1f} | {tg:.1f} |")
PY
    if has_model_flag; then
        echo "$kf bench --model $model --backend cpu --prompt-tokens 512 --gen-tokens 64" >&2
        RAYON_NUM_THREADS=$threads "$kf" bench --model "$model" --backend cpu \
            --prompt-tokens 512 --gen-tokens 64 >"$out/keyformer-$name.log" 2>&1 ||
            { tail -5 "$out/keyformer-$name.log"; }
        python3 - "$out/keyformer-$name.log" "$name" >>"$table" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"prefill ([0-9.]+) ms .*?decode [0-9.]+ ms/token \(([0-9.]+) tokens/s\)", text)
if m:
    print(f"| {sys.argv[2]} | keyformer | {512 / float(m.group(1)) * 1e3:.1f} | {float(m.group(2)):.1f} |")
else:
    print(f"| {sys.argv[2]} | keyformer | failed: see {sys.argv[1]} | |")
PY
    else
        echo "| $name | keyformer | (this build's bench has no --model) | |" >>"$table"
    fi
done
cat "$table"
