import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODEL = Path(os.environ.get("KEYFORMER_MODEL", ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="session")
def model():
    import keyformer

    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found (run scripts/fetch.sh)")
    with keyformer.Model(MODEL, backend="cpu") as m:
        yield m
