"""The C API through ctypes: the shared library, its structs and function prototypes.

The library is found through the KEYFORMER_LIB environment variable (a path to
libkeyformer.so), else the system's library search, else target/release of the source tree
this package sits in.
"""

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

ABI_VERSION = 1

POLICIES = ["full", "window", "streaming", "h2o", "keyformer"]
BACKENDS = {"auto": 0, "cpu": 1, "cuda": 2, "wgpu": 3}
DTYPES = {"f16": 0, "bf16": 1, "f32": 2}
STOP_REASONS = ["max_tokens", "eos", "stop_string", "callback", "context"]


class KeyformerError(Exception):
    """A failed call: `status` is the C status name (e.g. "KF_ERR_BUSY"), `code` its value."""

    def __init__(self, code, message):
        self.code = code
        self.status = lib.kf_status_name(code).decode()
        self.message = message
        super().__init__(f"{self.status}: {message}")


class ModelParams(Structure):
    _fields_ = [("backend", c_int32), ("device", c_uint32), ("dtype", c_int32),
                ("quantize", c_char_p)]


class CacheParams(Structure):
    _fields_ = [
        ("policy", c_int32),
        ("kv_ratio", c_float),
        ("kv_budget", c_size_t),
        ("recent_ratio", c_float),
        ("sinks", c_int32),
        ("tau_init", c_float),
        ("tau_end", c_float),
        ("seed", c_uint64),
        ("prefill_chunk", c_size_t),
    ]


class GenerateParams(Structure):
    _fields_ = [
        ("max_new_tokens", c_size_t),
        ("temperature", c_float),
        ("top_k", c_size_t),
        ("top_p", c_float),
        ("seed", c_uint64),
        ("stop_strings", POINTER(c_char_p)),
        ("n_stop_strings", c_size_t),
        ("stop_at_eos", c_int32),
        ("cache", CacheParams),
    ]


class Stats(Structure):
    _fields_ = [
        ("policy", c_int),
        ("budget", c_size_t),
        ("sinks", c_size_t),
        ("recent", c_size_t),
        ("tokens_seen", c_size_t),
        ("layers", c_size_t),
        ("kv_heads", c_size_t),
        ("kept", c_size_t),
        ("kv_bytes_held", c_size_t),
        ("kv_bytes_full", c_size_t),
        ("evictions", c_uint64),
        ("compression_ratio", c_double),
        ("tau", c_float),
    ]


class Generation(Structure):
    _fields_ = [
        ("prompt_tokens", c_size_t),
        ("generated_tokens", c_size_t),
        ("stop_reason", c_int),
        ("prefill_ms", c_double),
        ("decode_ms", c_double),
        ("stats", Stats),
    ]


class ModelInfo(Structure):
    _fields_ = [
        ("backend", c_char_p),
        ("architecture", c_char_p),
        ("vocab_size", c_size_t),
        ("context_length", c_size_t),
        ("layers", c_size_t),
        ("kv_heads", c_size_t),
    ]


class BatchParams(Structure):
    _fields_ = [("max_batch", c_size_t), ("memory_limit", c_size_t)]


class LoglikResult(Structure):
    _fields_ = [("logprob", c_double), ("greedy", c_bool)]


TOKEN_CALLBACK = CFUNCTYPE(c_int, c_void_p, c_uint32, POINTER(c_char), c_size_t)
BATCH_CALLBACK = CFUNCTYPE(c_int, c_void_p, c_uint64, c_uint32, POINTER(c_char), c_size_t)

_STATUS = c_int
_PROTOTYPES = {
    "kf_version": (c_char_p, []),
    "kf_abi_version": (c_uint32, []),
    "kf_last_error": (c_char_p, []),
    "kf_status_name": (c_char_p, [c_int32]),
    "kf_model_params_default": (ModelParams, []),
    "kf_cache_params_default": (CacheParams, []),
    "kf_generate_params_default": (GenerateParams, []),
    "kf_generate_params_check": (_STATUS, [POINTER(GenerateParams)]),
    "kf_model_load": (_STATUS, [c_char_p, POINTER(ModelParams), POINTER(c_void_p)]),
    "kf_model_free": (_STATUS, [c_void_p]),
    "kf_model_describe": (_STATUS, [c_void_p, POINTER(ModelInfo)]),
    "kf_tokenize": (
        _STATUS,
        [c_void_p, c_char_p, POINTER(c_uint32), c_size_t, POINTER(c_size_t)],
    ),
    "kf_generate_alloc": (
        _STATUS,
        [
            c_void_p,
            c_char_p,
            POINTER(GenerateParams),
            TOKEN_CALLBACK,
            c_void_p,
            POINTER(c_void_p),
            POINTER(Generation),
        ],
    ),
    "kf_string_free": (None, [c_void_p]),
    "kf_cache_stats": (_STATUS, [c_void_p, POINTER(Stats), POINTER(c_size_t), c_size_t]),
    "kf_loglik": (
        _STATUS,
        [
            c_void_p,
            POINTER(c_uint32),
            c_size_t,
            POINTER(c_uint32),
            c_size_t,
            POINTER(CacheParams),
            POINTER(c_double),
            POINTER(LoglikResult),
        ],
    ),
    "kf_session_new": (_STATUS, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "kf_session_free": (_STATUS, [c_void_p]),
    "kf_session_chat_alloc": (
        _STATUS,
        [
            c_void_p,
            c_char_p,
            POINTER(GenerateParams),
            TOKEN_CALLBACK,
            c_void_p,
            POINTER(c_void_p),
            POINTER(Generation),
        ],
    ),
    "kf_session_cache_stats": (
        _STATUS,
        [c_void_p, POINTER(Stats), POINTER(c_size_t), c_size_t],
    ),
    "kf_session_cache_positions": (
        _STATUS,
        [c_void_p, c_size_t, c_size_t, POINTER(c_uint32), c_size_t, POINTER(c_size_t)],
    ),
    "kf_batch_params_default": (BatchParams, []),
    "kf_batch_new": (_STATUS, [c_void_p, POINTER(BatchParams), POINTER(c_void_p)]),
    "kf_batch_free": (_STATUS, [c_void_p]),
    "kf_batch_submit": (
        _STATUS,
        [
            c_void_p,
            c_char_p,
            POINTER(GenerateParams),
            BATCH_CALLBACK,
            c_void_p,
            POINTER(c_uint64),
        ],
    ),
    "kf_batch_run": (_STATUS, [c_void_p]),
    "kf_batch_result": (
        _STATUS,
        [c_void_p, c_uint64, POINTER(c_void_p), POINTER(Generation)],
    ),
}


def _find_library():
    explicit = os.environ.get("KEYFORMER_LIB")
    if explicit:
        return explicit
    found = ctypes.util.find_library("keyformer")
    if found:
        return found
    # A source checkout: bindings/python/keyformer/ -> target/release/.
    built = Path(__file__).resolve().parents[3] / "target" / "release" / "libkeyformer.so"
    if built.exists():
        return str(built)
    raise OSError(
        "libkeyformer not found: build it with `cargo build --release` or set KEYFORMER_LIB"
    )


def _load():
    library = ctypes.CDLL(_find_library())
    for name, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    if library.kf_abi_version() != ABI_VERSION:
        raise OSError(
            f"libkeyformer has ABI {library.kf_abi_version()}, this package {ABI_VERSION}"
        )
    return library


lib = _load()


def check(code):
    """Raises KeyformerError for a status other than KF_OK."""
    if code != 0:
        raise KeyformerError(code, lib.kf_last_error().decode(errors="replace"))
