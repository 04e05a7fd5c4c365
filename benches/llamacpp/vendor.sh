#!/usr/bin/env bash
# Packs llama.cpp's source, as vendored in the llama-cpp-python source archive, into
# .dev/llama.cpp-VERSION.tgz (git-ignored; small enough to carry to the GPU machine, which has no
# network): vendor/llama.cpp without models/, docs/, media/ and the ggml backends other than CPU
# and CUDA. gpu.sh and cpu.sh build from it.
#
#   benches/llamacpp/vendor.sh [VERSION]    (default 0.3.36; prints the archive's path)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:-0.3.36}
out=.dev/llama.cpp-$version.tgz
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi
sdist=$(python3 benches/llamacpp/sdist.py "$version")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
top=llama_cpp_python-$version/vendor/llama.cpp
echo "extracting $top from $(basename "$sdist")..." >&2
tar -xzf "$sdist" -C "$tmp" \
    --exclude="$top/models" --exclude="$top/docs" --exclude="$top/media" "$top"
src=$tmp/$top
for backend in "$src"/ggml/src/ggml-*/; do
    case $(basename "$backend") in
        ggml-cpu | ggml-cuda) ;;
        *) rm -rf "$backend" ;;
    esac
done
mkdir -p .dev
tar -czf "$out.part" -C "$(dirname "$src")" llama.cpp
mv "$out.part" "$out"
size=$(stat -c %s "$out")
echo "wrote $out ($((size / 1024 / 1024)) MiB)" >&2
if [ "$size" -ge $((20 * 1024 * 1024)) ]; then
    echo "error: $out is over 20 MiB" >&2
    exit 1
fi
echo "$out"
