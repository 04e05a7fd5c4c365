"""keyformer: run language models with a Keyformer-reduced KV cache, through its C library.

    import keyformer
    with keyformer.Model("models/SmolLM2-135M-Instruct.Q4_1.gguf") as model:
        print(model.generate("The capital of France is", policy="keyformer").text)
"""

from ._native import KeyformerError, lib
from .model import Batch, Generation, LogLikelihood, Model, Session, Stats, Stream

__all__ = [
    "Batch",
    "Generation",
    "KeyformerError",
    "LogLikelihood",
    "Model",
    "Session",
    "Stats",
    "Stream",
    "version",
]


def version() -> str:
    """The version of the loaded libkeyformer."""
    return lib.kf_version().decode()
