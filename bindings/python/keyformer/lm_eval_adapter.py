"""An lm-evaluation-harness model type, "keyformer", that runs any lm-eval task with a
Keyformer-reduced (or any other policy's) KV cache through the C library.

Importing this module registers the model; it is the only module of the package that needs
lm_eval (`pip install lm_eval`). From Python:

    import lm_eval
    import keyformer.lm_eval_adapter  # registers "keyformer"
    lm_eval.simple_evaluate(model="keyformer",
                            model_args="pretrained=models/SmolLM2-135M-Instruct.Q4_1.gguf,"
                                       "policy=keyformer,kv_ratio=0.5,backend=cpu",
                            tasks=["hellaswag"])

From the shell, this module runs lm_eval's command line with the model registered:

    python -m keyformer.lm_eval_adapter run --model keyformer \
        --model_args pretrained=...,policy=keyformer,kv_ratio=0.5 --tasks ...

Model arguments (`--model_args key=value,...`):
    pretrained      the model: a .gguf file or a Hugging Face folder (required)
    backend         auto, cpu, cuda or wgpu (default auto); device (GPU index), dtype
    policy          full, window, streaming, h2o or keyformer (default keyformer)
    kv_ratio, kv_budget, recent_ratio, sinks, tau_init, tau_end, noise_seed
                    the cache, as for keyformer.Model.generate
    max_new_tokens  generate_until's limit when the task sets no max_gen_toks (default 256)
    max_length      the longest sequence scored at once (default: the model's context length)
    prefix_token_id a token to condition on where a text has nothing before it (an empty
                    loglikelihood context, the start of a loglikelihood_rolling text) and the
                    tokenizer adds no BOS token; default none (see loglikelihood_rolling)

How each request type maps onto the C API:
    loglikelihood          kf_loglik(context tokens, continuation tokens). The pair is tokenized
                           together and split where the context's own tokens end (as lm-eval's
                           Hugging Face model does), so a token across the boundary goes to the
                           continuation. The cache budget is a fraction of the context
                           (kv_ratio) or kv_budget tokens; the continuation then passes through
                           the cache one token at a time, evicting as in generation.
    loglikelihood_rolling  kf_loglik over the whole text, in windows of max_length tokens
                           (lm_eval's rolling windows). The first token conditions and the
                           rest are scored: that first token is the BOS where the tokenizer
                           adds one (every text token is scored), else prefix_token_id if
                           given, else the text's own first token, which is then not scored
                           (as `keyformer eval perplexity` does). With kv_ratio the budget is
                           that fraction of the window's tokens, not of its one-token context,
                           raised to the policy's minimum: the text streams through a cache of
                           ratio x its length, as StreamingLLM-style perplexity is measured.
    generate_until         kf_generate with the task's `until` strings as stop strings (the text
                           is cut before them), max_gen_toks, and greedy decoding unless the
                           task samples (do_sample, temperature, top_k, top_p). Prompts go in as
                           raw text; chat templates are not supported.

Requests run one at a time, in order (batch_size is accepted and ignored).
"""

import ctypes
import logging
import math
from typing import List, Optional, Tuple

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from .model import LogLikelihood, Model

log = logging.getLogger(__name__)


def _f32(x: float) -> float:
    return ctypes.c_float(x).value


def _min_budget(policy: str, recent_ratio: float, sinks: Optional[int]) -> int:
    """The smallest budget the policy accepts: it must hold the sinks, the recent window and
    one more token (CacheConfig::min_budget in src/kv/policy.rs, in its f32 arithmetic)."""
    sinks = (4 if policy == "streaming" else 0) if sinks is None or sinks < 0 else sinks
    k = 1
    while True:
        if policy in ("window", "streaming"):
            if k > sinks:
                return k
        elif k > sinks + math.floor(_f32(_f32(k) * _f32(recent_ratio))):
            return k
        k += 1


@register_model("keyformer")
class KeyformerLM(LM):
    """lm_eval's LM over keyformer.Model: see the module's documentation."""

    def __init__(
        self,
        pretrained: str,
        backend: str = "auto",
        device=None,
        dtype: str = "f16",
        policy: str = "keyformer",
        kv_ratio: float = 0.5,
        kv_budget: int = 0,
        recent_ratio: float = 0.3,
        sinks: Optional[int] = None,
        tau_init: float = 1.0,
        tau_end: float = 2.0,
        noise_seed: int = 0,
        max_new_tokens: int = 256,
        max_length: Optional[int] = None,
        prefix_token_id: Optional[int] = None,
        batch_size=None,  # lm_eval passes these; requests run one at a time
        max_batch_size=None,
    ):
        super().__init__()
        # lm_eval's --device is a string such as "cpu" or "cuda:1"; ours is the GPU index.
        if isinstance(device, str):
            kind, _, index = device.partition(":")
            if backend == "auto" and kind in ("cpu", "cuda"):
                backend = kind
            device = int(index) if index else 0
        self.model = Model(pretrained, backend=backend, device=device or 0, dtype=dtype)
        self.cache = dict(
            policy=policy,
            kv_ratio=kv_ratio,
            kv_budget=kv_budget,
            recent_ratio=recent_ratio,
            sinks=sinks,
            tau_init=tau_init,
            tau_end=tau_end,
            noise_seed=noise_seed,
        )
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length or self.model.context_length
        self.prefix_token_id = prefix_token_id
        # Whether the tokenizer starts every text with a BOS token (then no prefix is needed).
        self.adds_bos = bool(self.model.tokenize(""))

    # ---- loglikelihood ------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        # Trailing spaces of the context belong to the continuation's first token.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.model.tokenize(context + continuation)
        ctx = self.model.tokenize(context)
        cont = whole[len(ctx) :]
        if not ctx:
            if self.prefix_token_id is None:
                raise ValueError(
                    "an empty loglikelihood context needs a prefix: this tokenizer adds no BOS "
                    "token, so pass prefix_token_id=N in --model_args"
                )
            ctx = [self.prefix_token_id]
        return ctx, cont

    def _loglik(self, ctx: List[int], cont: List[int], **cache) -> LogLikelihood:
        return self.model.loglik(ctx, cont, **{**self.cache, **cache})

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="keyformer loglikelihood"):
            ctx, cont = self._encode_pair(*request.args)
            if not cont:
                raise ValueError(f"nothing to score after {request.args[0]!r}")
            # Keep the end of a context too long for the model, as lm-eval does (the last
            # continuation token is scored, never run: max_length + 1 tokens fit).
            keep = max(1, self.max_length + 1 - len(cont))
            ll = self._loglik(ctx[-keep:], cont)
            result = (ll.logprob, ll.greedy)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    # ---- loglikelihood_rolling ----------------------------------------------------------

    def _window_budget(self, tokens: int) -> dict:
        c = self.cache
        if c["policy"] == "full" or c["kv_budget"]:
            return {}
        budget = int(tokens * c["kv_ratio"])
        return {"kv_budget": max(budget, _min_budget(c["policy"], c["recent_ratio"], c["sinks"]))}

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="keyformer rolling"):
            (text,) = request.args
            tokens = self.model.tokenize(text)
            if not self.adds_bos and self.prefix_token_id is not None:
                tokens = [self.prefix_token_id] + tokens
            total = 0.0
            if len(tokens) > 1:  # a one-token text has nothing to score
                windows = get_rolling_token_windows(
                    token_list=tokens[1:],
                    prefix_token=tokens[0],
                    max_seq_len=self.max_length,
                    context_len=1,
                )
                for ctx, cont in map(make_disjoint_window, windows):
                    budget = self._window_budget(len(ctx) + len(cont))
                    total += self._loglik(ctx, cont, **budget).logprob
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    # ---- generate_until -----------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="keyformer generate_until"):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else [s for s in until if s]
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            sample = kwargs.pop("do_sample", temperature > 0)
            g = self.model.generate(
                context,
                max_new_tokens=int(kwargs.pop("max_gen_toks", self.max_new_tokens)),
                stop=until,
                temperature=temperature if sample else 0.0,
                top_k=int(kwargs.pop("top_k", 0) or 0),
                top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
                seed=int(kwargs.pop("seed", 0) or 0),
                **self.cache,
            )
            if kwargs:
                log.warning("keyformer ignores these generation arguments: %s", sorted(kwargs))
            text = g.text
            for stop in until:  # the library stops before them; cut again to be sure
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out


def main():
    """lm_eval's command line with the "keyformer" model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
