"""Models, chat sessions and streams over the C API."""

import ctypes
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Union

from . import _native as n
from ._native import check, lib

# Called per token with its id and the text it completes; return False to stop.
OnToken = Callable[[int, str], bool]


@dataclass
class Stats:
    """What a KV cache holds (see kf_stats in keyformer.h)."""

    policy: str
    budget: Optional[int]
    sinks: int
    recent: int
    tokens_seen: int
    layers: int
    kv_heads: int
    kept: int
    kv_bytes_held: int
    kv_bytes_full: int
    evictions: int
    compression_ratio: float
    tau: float
    kept_per_head: List[List[int]] = field(default_factory=list)
    """Tokens held per KV head, one list per layer."""

    @classmethod
    def _from(cls, s, kept=()):
        heads = s.kv_heads
        return cls(
            policy=n.POLICIES[s.policy],
            budget=s.budget or None,
            sinks=s.sinks,
            recent=s.recent,
            tokens_seen=s.tokens_seen,
            layers=s.layers,
            kv_heads=heads,
            kept=s.kept,
            kv_bytes_held=s.kv_bytes_held,
            kv_bytes_full=s.kv_bytes_full,
            evictions=s.evictions,
            compression_ratio=s.compression_ratio,
            tau=s.tau,
            kept_per_head=[list(kept[i : i + heads]) for i in range(0, len(kept), heads)],
        )


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int
    stop_reason: str
    """One of "max_tokens", "eos", "stop_string", "callback", "context"."""
    prefill_ms: float
    decode_ms: float
    stats: Stats


@dataclass
class LogLikelihood:
    logprob: float
    """Sum of the continuation tokens' natural-log probabilities."""
    greedy: bool
    """Whether greedy decoding would produce the whole continuation."""
    token_logprobs: List[float]


def _cache_params(
    policy="full",
    kv_ratio=0.5,
    kv_budget=0,
    recent_ratio=0.3,
    sinks=None,
    tau_init=1.0,
    tau_end=2.0,
    noise_seed=0,
    prefill_chunk=0,
):
    if policy not in n.POLICIES:
        raise ValueError(f"unknown policy {policy!r} (one of {', '.join(n.POLICIES)})")
    _unsigned(kv_budget=kv_budget, noise_seed=noise_seed, prefill_chunk=prefill_chunk)
    c = lib.kf_cache_params_default()
    c.policy = n.POLICIES.index(policy)
    c.kv_ratio = kv_ratio
    c.kv_budget = kv_budget
    c.recent_ratio = recent_ratio
    c.sinks = -1 if sinks is None else sinks
    c.tau_init = tau_init
    c.tau_end = tau_end
    c.seed = noise_seed
    c.prefill_chunk = prefill_chunk
    return c


def _unsigned(**values):
    """ctypes stores a negative int in an unsigned field as a huge number: refuse it here."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} {value} must be >= 0")


class _Options:
    """kf_generate_params from keyword arguments, keeping the stop strings alive, checked at
    once by the library's own rules (the checks the command line and the C ABI run)."""

    def __init__(
        self,
        max_new_tokens=128,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        stop: Sequence[str] = (),
        stop_at_eos=True,
        **cache,
    ):
        _unsigned(max_new_tokens=max_new_tokens, top_k=top_k, seed=seed)
        p = lib.kf_generate_params_default()
        p.max_new_tokens = max_new_tokens
        p.temperature = temperature
        p.top_k = top_k
        p.top_p = top_p
        p.seed = seed
        self._stops = (ctypes.c_char_p * len(stop))(*(s.encode() for s in stop))
        p.stop_strings = self._stops
        p.n_stop_strings = len(stop)
        p.stop_at_eos = int(stop_at_eos)
        p.cache = _cache_params(**cache)
        check(lib.kf_generate_params_check(ctypes.byref(p)))
        self.params = p


def _guarded(on_token: OnToken, raised: list):
    """A C token callback's body: calls on_token with the piece's text; an exception it raises
    stops generation and is kept in `raised` for after the C call returns."""

    def call(token, piece, length):
        try:
            go_on = on_token(token, ctypes.string_at(piece, length).decode(errors="replace"))
            return 0 if go_on is None or go_on else 1
        except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
            raised.append(e)
            return 1

    return call


def _generation(code, text, g) -> Generation:
    """A finished generation from a C call that returned `code`, a kf_*_alloc text and a
    kf_generation; frees the text."""
    try:
        check(code)
        out = ctypes.string_at(text.value).decode(errors="replace")
    finally:
        lib.kf_string_free(text)
    return Generation(
        text=out,
        prompt_tokens=g.prompt_tokens,
        generated_tokens=g.generated_tokens,
        stop_reason=n.STOP_REASONS[g.stop_reason],
        prefill_ms=g.prefill_ms,
        decode_ms=g.decode_ms,
        stats=Stats._from(g.stats),
    )


def _generate(call, on_token: Optional[OnToken], options) -> Generation:
    """Runs one generating C call (kf_generate_alloc or kf_session_chat_alloc)."""
    opts = _Options(**options)
    raised = []
    if on_token:
        guarded = _guarded(on_token, raised)
        callback = n.TOKEN_CALLBACK(
            lambda _user, token, piece, length: guarded(token, piece, length)
        )
    else:
        callback = n.TOKEN_CALLBACK()
    text = ctypes.c_void_p()
    g = n.Generation()
    code = call(ctypes.byref(opts.params), callback, None, ctypes.byref(text), ctypes.byref(g))
    if raised:
        lib.kf_string_free(text)
        raise raised[0]
    return _generation(code, text, g)


def _stats(call) -> Stats:
    s = n.Stats()
    check(call(ctypes.byref(s), None, 0))
    kept = (ctypes.c_size_t * (s.layers * s.kv_heads))()
    check(call(ctypes.byref(s), kept, len(kept)))
    return Stats._from(s, list(kept))


_DONE = object()


class Stream:
    """Text pieces of a generation as they come, from a background thread. Iterate it; after
    the last piece, `result` holds the Generation. Leaving early (close, or a with block)
    stops the generation after the current token."""

    def __init__(self, run: Callable[[OnToken], Generation]):
        self.result: Optional[Generation] = None
        self._pieces: "queue.Queue" = queue.Queue()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._work, args=(run,), daemon=True)
        self._thread.start()

    def _work(self, run):
        try:
            self.result = run(self._on_token)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._error = e
        finally:
            self._pieces.put(_DONE)

    def _on_token(self, _token, piece):
        if self._stop.is_set():
            return False
        self._pieces.put(piece)
        return True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        piece = self._pieces.get()
        if piece is _DONE:
            self._pieces.put(_DONE)
            self._thread.join()
            if self._error is not None:
                raise self._error
            raise StopIteration
        return piece

    def close(self):
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Handle:
    """Owns a library handle freed by `_free_name` (a kf_*_free function): close(), a with
    block, or garbage collection frees it once."""

    _free_name = ""
    _handle = None

    def close(self):
        if self._handle:
            check(getattr(lib, self._free_name)(self._handle))
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # At interpreter exit the library may already be gone: nothing is left to free then.
        if self._handle and lib is not None:
            getattr(lib, self._free_name)(self._handle)


class Model(_Handle):
    """A loaded model (a .gguf file or a Hugging Face folder). One call at a time runs on a
    model: a second one from another thread raises KeyformerError with status KF_ERR_BUSY.

    Generation keywords (generate, stream, Session.send): max_new_tokens, temperature,
    top_k, top_p, seed, stop (strings), stop_at_eos, and the cache keywords policy ("full",
    "window", "streaming", "h2o", "keyformer"), kv_ratio, kv_budget, recent_ratio, sinks,
    tau_init, tau_end, noise_seed, prefill_chunk (0: the prompt in one pass).

    close() frees it; its sessions keep it alive until they are closed."""

    _free_name = "kf_model_free"

    def __init__(self, path, backend="auto", device=0, dtype="f16", quantize=None):
        p = lib.kf_model_params_default()
        p.backend = n.BACKENDS[backend]
        p.device = device
        p.dtype = n.DTYPES[dtype]
        # A Hugging Face folder's matrices quantized while loading: "q8_0", "q4_k", "q4_k_m"...
        p.quantize = quantize.encode() if quantize else None
        handle = ctypes.c_void_p()
        check(lib.kf_model_load(str(path).encode(), ctypes.byref(p), ctypes.byref(handle)))
        self._handle = handle
        info = n.ModelInfo()
        check(lib.kf_model_describe(handle, ctypes.byref(info)))
        self.backend = info.backend.decode()
        self.architecture = info.architecture.decode()
        self.vocab_size = info.vocab_size
        self.context_length = info.context_length
        self.layers = info.layers
        self.kv_heads = info.kv_heads

    def generate(self, prompt: str, on_token: Optional[OnToken] = None, **options) -> Generation:
        """Generates from a raw prompt (no chat template: use chat() for that)."""
        return _generate(
            lambda *args: lib.kf_generate_alloc(self._handle, prompt.encode(), *args),
            on_token,
            options,
        )

    def stream(self, prompt: str, **options) -> Stream:
        return Stream(lambda on_token: self.generate(prompt, on_token, **options))

    def stats(self) -> Stats:
        """The cache of the generation running now (any thread may ask), or the latest."""
        return _stats(lambda *args: lib.kf_cache_stats(self._handle, *args))

    def tokenize(self, text: str) -> List[int]:
        count = ctypes.c_size_t()
        check(lib.kf_tokenize(self._handle, text.encode(), None, 0, ctypes.byref(count)))
        ids = (ctypes.c_uint32 * count.value)()
        if count.value:
            check(lib.kf_tokenize(self._handle, text.encode(), ids, len(ids), ctypes.byref(count)))
        return list(ids)

    def loglik(
        self,
        context: Union[str, Sequence[int]],
        continuation: Union[str, Sequence[int]],
        **cache,
    ) -> LogLikelihood:
        """Log-likelihood of `continuation` after `context` under a cache policy (keywords as
        for generation's cache). Strings are tokenized separately."""
        ctx = self.tokenize(context) if isinstance(context, str) else list(context)
        cont = self.tokenize(continuation) if isinstance(continuation, str) else list(continuation)
        ctx_ids = (ctypes.c_uint32 * len(ctx))(*ctx)
        cont_ids = (ctypes.c_uint32 * len(cont))(*cont)
        per_token = (ctypes.c_double * len(cont))()
        result = n.LoglikResult()
        c = _cache_params(**cache)
        check(
            lib.kf_loglik(
                self._handle,
                ctx_ids,
                len(ctx),
                cont_ids,
                len(cont),
                ctypes.byref(c),
                per_token,
                ctypes.byref(result),
            )
        )
        return LogLikelihood(result.logprob, bool(result.greedy), list(per_token))

    def chat(self, system: Optional[str] = None) -> "Session":
        return Session(self, system)

    def batch(self, max_batch=0, memory_limit=0) -> "Batch":
        return Batch(self, max_batch, memory_limit)

    def generate_batch(
        self, prompts: Sequence[str], max_batch=0, memory_limit=0, **options
    ) -> List[Generation]:
        """Generates from every prompt, decoding them together (see Batch); each gets exactly
        what generate() gives it alone."""
        with self.batch(max_batch, memory_limit) as batch:
            requests = [batch.submit(prompt, **options) for prompt in prompts]
            batch.run()
            return [batch.result(r) for r in requests]


class Session(_Handle):
    """A chat that keeps its KV cache between turns: each turn runs only its new text. The
    cache keywords must stay the same from turn to turn."""

    _free_name = "kf_session_free"

    def __init__(self, model: Model, system: Optional[str] = None):
        handle = ctypes.c_void_p()
        sys_prompt = system.encode() if system is not None else None
        check(lib.kf_session_new(model._handle, sys_prompt, ctypes.byref(handle)))
        self._handle = handle

    def send(self, message: str, on_token: Optional[OnToken] = None, **options) -> Generation:
        """One turn: the user's message in, the assistant's reply out."""
        return _generate(
            lambda *args: lib.kf_session_chat_alloc(self._handle, message.encode(), *args),
            on_token,
            options,
        )

    def stream(self, message: str, **options) -> Stream:
        return Stream(lambda on_token: self.send(message, on_token, **options))

    def stats(self) -> Stats:
        return _stats(lambda *args: lib.kf_session_cache_stats(self._handle, *args))

    def positions(self, layer: int, kv_head: int) -> List[int]:
        """Original positions the cache keeps in one layer and KV head, ascending."""
        count = ctypes.c_size_t()
        check(
            lib.kf_session_cache_positions(
                self._handle, layer, kv_head, None, 0, ctypes.byref(count)
            )
        )
        out = (ctypes.c_uint32 * count.value)()
        if count.value:
            check(
                lib.kf_session_cache_positions(
                    self._handle, layer, kv_head, out, len(out), ctypes.byref(count)
                )
            )
        return list(out)


class Batch(_Handle):
    """Requests decoded together on one model, each with its own generation and cache
    keywords and its own KV cache: submit() them, run() them all, then read each result().
    At most max_batch run at once (0: as many as fit in memory_limit bytes, 0 meaning the
    GPU's free memory or 2 GiB on the CPU); the others wait for a place. Submit between runs."""

    _free_name = "kf_batch_free"

    def __init__(self, model: Model, max_batch=0, memory_limit=0):
        p = lib.kf_batch_params_default()
        p.max_batch = max_batch
        p.memory_limit = memory_limit
        handle = ctypes.c_void_p()
        check(lib.kf_batch_new(model._handle, ctypes.byref(p), ctypes.byref(handle)))
        self._handle = handle
        self._callbacks = []  # alive until the run that calls them returns
        self._raised = []

    def submit(self, prompt: str, on_token: Optional[OnToken] = None, **options) -> int:
        """Queues a raw prompt; returns its request number. Raises KeyformerError at once for
        bad options, or a request that could never fit in the batch's memory."""
        opts = _Options(**options)
        if on_token:
            guarded = _guarded(on_token, self._raised)
            callback = n.BATCH_CALLBACK(
                lambda _user, _request, token, piece, length: guarded(token, piece, length)
            )
        else:
            callback = n.BATCH_CALLBACK()
        request = ctypes.c_uint64()
        check(
            lib.kf_batch_submit(
                self._handle,
                prompt.encode(),
                ctypes.byref(opts.params),
                callback,
                None,
                ctypes.byref(request),
            )
        )
        self._callbacks.append(callback)
        return request.value

    def run(self):
        """Runs every request submitted since the last run to its end, calling their
        on_token callbacks. An exception from a callback stops its request and is raised
        here once the run is over."""
        code = lib.kf_batch_run(self._handle)
        self._callbacks.clear()
        raised, self._raised = self._raised, []
        if raised:
            raise raised[0]
        check(code)

    def result(self, request: int) -> Generation:
        text = ctypes.c_void_p()
        g = n.Generation()
        code = lib.kf_batch_result(self._handle, request, ctypes.byref(text), ctypes.byref(g))
        return _generation(code, text, g)
