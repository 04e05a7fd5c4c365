#!/usr/bin/env python3
"""Fetches the llama-cpp-python source archive (which vendors llama.cpp) into .dev/ and prints
its path; an archive already there with the right sha256 is kept.

pip cannot download a source archive without building it, so this asks pip's configured index for
the file through the standard JSON listing (PEP 691) and checks the sha256 the index gives.

usage: sdist.py [VERSION]   (default 0.3.36)
"""

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

PACKAGE = "llama-cpp-python"


def index_url():
    index = os.environ.get("PIP_INDEX_URL") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True, text=True).stdout.strip()
    if not index:
        from pip._internal.models.index import PyPI  # pip's own default index
        index = PyPI.simple_url
    return index.rstrip("/") + "/" + PACKAGE + "/"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main():
    version = sys.argv[1] if len(sys.argv) > 1 else "0.3.36"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    name = f"{PACKAGE.replace('-', '_')}-{version}.tar.gz"
    target = os.path.join(root, ".dev", name)
    request = urllib.request.Request(
        index_url(), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        files = json.load(r)["files"]
    entry = next((f for f in files if f["filename"] == name), None)
    if entry is None:
        sys.exit(f"{name} is not in the index's listing of {PACKAGE}")
    expected = entry["hashes"]["sha256"]
    if os.path.exists(target) and sha256_of(target) == expected:
        print(target)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    print(f"fetching {name} ({entry.get('size', '?')} bytes)...", file=sys.stderr)
    url = urllib.parse.urljoin(request.full_url, entry["url"])
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as r, open(target + ".part", "wb") as dst:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != expected:
        os.remove(target + ".part")
        sys.exit(f"{name}: sha256 {digest.hexdigest()}, the index says {expected}; not kept")
    os.replace(target + ".part", target)
    print(target)


if __name__ == "__main__":
    main()
