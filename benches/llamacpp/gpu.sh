#!/usr/bin/env bash
# llama.cpp (CUDA) against keyformer on the GPU machine, on the same Llama-3-8B-shaped random
# weights, in one call of at most 10 minutes:
#   1. unpacks benches/llamacpp/vendor.sh's archive and builds llama-bench and llama-quantize
#      for sm_90 (CUDA at /usr/local/cuda, -j16);
#   2. writes a random f16 GGUF of benches/configs/llama-3.1-8b.json's shape (random_gguf.py,
#      with the archive's own gguf-py) and llama-quantizes it to Q8_0 and Q4_K_M;
#   3. runs `llama-bench -ngl 99 -fa 1 -p 2048 -n 64 -d 0,2048` on f16, Q8_0 and Q4_K_M: prompt
#      processing of 2048 tokens, and generation of 64 tokens both from an empty context and after
#      a 2048-token one (-d 2048);
#   4. runs the keyformer binary given as the argument: `keyformer bench --model FILE` on the same
#      files when its bench takes --model, and `keyformer bench --config CONFIG --weights W` (or,
#      for a bench without --weights, its f16 random weights) — prompt 2048, 64 new tokens;
#   5. prints one table and writes it, with every log, under $OUT (or $WORK/results).
#
#   benches/llamacpp/gpu.sh [KEYFORMER_BIN]
#
# Every step is time-boxed against a total budget (BUDGET seconds, default 570) and skipped when
# its output is already there, so a second call on a still-warm machine picks up where a first
# one ran out of time (the build and models live under WORK, default /tmp/llamacpp; on a cold
# machine expect the first call to build and write the models, the second to measure). llama.cpp's
# results are kept too (delete $OUT/llama-bench-*.json to measure again); keyformer runs every
# call. Carry the archive and the keyformer binary. Other
# settings: TGZ (the archive, default .dev/llama.cpp-0.3.36.tgz), CONFIG, LAYERS (fewer layers
# for a quick check), TYPES (default "F16 Q8_0 Q4_K_M"), REPS (llama-bench repetitions, 3), JOBS,
# KF_BACKEND (keyformer's --backend, default cuda), KF_RANDOM=0 (skip the --config --weights runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t0=$(date +%s)
budget=${BUDGET:-570}
kf=${1:-}
work=${WORK:-/tmp/llamacpp}
tgz=${TGZ:-$root/.dev/llama.cpp-0.3.36.tgz}
config=${CONFIG:-$root/benches/configs/llama-3.1-8b.json}
types=${TYPES:-F16 Q8_0 Q4_K_M}
reps=${REPS:-3}
jobs=${JOBS:-16}
out=${OUT:-$work/results}
mkdir -p "$work/models" "$out"
[ -n "$kf" ] && kf=$(realpath "$kf")

elapsed() { echo $(($(date +%s) - t0)); }
# step NAME SECONDS COMMAND...: runs COMMAND with its output in $out/NAME.log, for at most
# SECONDS and never past the budget; prints how it went.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - $(elapsed) - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "[$(elapsed)s] $name: skipped, out of time" | tee -a "$out/progress.log"
        return 124
    fi
    echo "[$(elapsed)s] $name (at most ${limit}s)..." | tee -a "$out/progress.log"
    local start rc
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "[$(elapsed)s] $name: exit $rc after $(($(date +%s) - start))s" | tee -a "$out/progress.log"
    [ "$rc" -ne 0 ] && tail -5 "$out/$name.log"
    return "$rc"
}

# 1. llama.cpp
src=$work/llama.cpp
build=$work/build
if [ ! -d "$src" ]; then
    [ -e "$tgz" ] || { echo "no $tgz: run benches/llamacpp/vendor.sh first and carry it" >&2; exit 1; }
    tar -xzf "$tgz" -C "$work" || exit 1
fi
if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-quantize" ]; then
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    export PATH=/usr/local/cuda/bin:$PATH
    step cmake 120 cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF || exit 1
    step build 480 cmake --build "$build" --target llama-bench llama-quantize -j "$jobs" || {
        echo "build not finished: call again while the machine is warm to continue it" >&2
        exit 1
    }
fi

# 2. models
models=$work/models
base=$(basename "$config" .json)${LAYERS:+-$LAYERS-layers}
f16=$models/$base-F16.gguf
if [ ! -s "$f16" ]; then
    step random_gguf 240 env PYTHONPATH="$src/gguf-py" python3 "$root/benches/llamacpp/random_gguf.py" \
        "$f16.part" --config "$config" ${LAYERS:+--layers "$LAYERS"} && mv "$f16.part" "$f16"
fi
for t in $types; do
    [ "$t" = F16 ] && continue
    file=$models/$base-$t.gguf
    if [ -s "$f16" ] && [ ! -s "$file" ]; then
        step "quantize_$t" 240 "$build/bin/llama-quantize" "$f16" "$file.part" "$t" "$jobs" &&
            mv "$file.part" "$file"
    fi
done

# 3. llama-bench
for t in $types; do
    file=$models/$base-$t.gguf
    json=$out/llama-bench-$t.json
    [ -s "$file" ] && [ ! -s "$json" ] || continue
    # The JSON on stdout, the loader's messages in the log.
    step "llama_bench_$t" 150 bash -c '"$0" -m "$1" -ngl 99 -fa 1 -p 2048 -n 64 -d 0,2048 -r "$2" -o json >"$3"' \
        "$build/bin/llama-bench" "$file" "$reps" "$json.part" && mv "$json.part" "$json"
done

# 4. keyformer
if [ -n "$kf" ] && [ -x "$kf" ]; then
    help=$("$kf" bench --help 2>&1)
    common=(--backend "${KF_BACKEND:-cuda}" --prompt-tokens 2048 --gen-tokens 64)
    if grep -q -- '--model' <<<"$help"; then
        for t in $types; do
            file=$models/$base-$t.gguf
            [ -s "$file" ] && step "keyformer_model_$t" 150 "$kf" bench --model "$file" "${common[@]}"
        done
    fi
    if [ "${KF_RANDOM:-1}" = 0 ]; then
        :
    elif grep -q -- '--weights' <<<"$help"; then
        for t in $types; do
            w=$(tr 'A-Z' 'a-z' <<<"$t")
            step "keyformer_weights_$t" 150 "$kf" bench --config "$config" --weights "$w" "${common[@]}"
        done
    else
        step keyformer_weights_F16 150 "$kf" bench --config "$config" "${common[@]}"
    fi
else
    echo "no keyformer binary given: llama.cpp only" | tee -a "$out/progress.log"
fi

# 5. table
python3 - "$out" "$types" >"$out/results.md" <<'PY'
import glob, json, os, re, sys
out, types = sys.argv[1], sys.argv[2].split()
rows = ["| weights | program | prompt 2048 (tokens/s) | decode 64 (tokens/s) | decode 64 after 2048 (tokens/s) |",
        "| --- | --- | --- | --- | --- |"]
for t in types:
    path = os.path.join(out, f"llama-bench-{t}.json")
    if os.path.exists(path):
        runs = json.load(open(path))
        def find(p, g, d):
            r = [x["avg_ts"] for x in runs if x["n_prompt"] == p and x["n_gen"] == g and x.get("n_depth", 0) == d]
            return f"{r[0]:.1f}" if r else "-"
        rows.append(f"| {t} | llama.cpp | {find(2048, 0, 0)} | {find(0, 64, 0)} | {find(0, 64, 2048)} |")
    for kind in ("model", "weights"):
        log = os.path.join(out, f"keyformer_{kind}_{t}.log")
        if not os.path.exists(log):
            continue
        text = open(log).read()
        m = re.search(r"prefill ([0-9.]+) ms .*?decode [0-9.]+ ms/token \(([0-9.]+) tokens/s\)", text)
        what = "keyformer --model (file)" if kind == "model" else "keyformer --weights (random)"
        if m:
            rows.append(f"| {t} | {what} | {2048 / float(m.group(1)) * 1e3:.1f} | - | {float(m.group(2)):.1f} |")
        else:
            rows.append(f"| {t} | {what} | failed: see {os.path.basename(log)} | | |")
print("\n".join(rows))
PY
echo
cat "$out/results.md"
echo "[$(elapsed)s] done; logs in $out"
