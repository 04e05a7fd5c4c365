"""Hugging Face transformers on the same shapes as `keyformer bench`: random fp16 weights,
`--attn sdpa` (default, transformers' own default) or eager attention, full cache, batch 1 or
--batch N. Run on the GPU machine in the same call as the
bench:

    python3 benches/hf_baseline.py benches/configs/gptj-6b.json --prompt-tokens 2048 --gen-tokens 64

--max-batch finds the largest batch whose cache holds prompt + generated tokens (grown in chunks
of 512 tokens up to that length, then one decode step), and reports its decode throughput over
64 steps from the middle of the generation (prompt + gen/2 tokens cached), where the step time
is the mean over a whole generation: a decode step's cost grows linearly with the cache.
"""

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("--prompt-tokens", type=int, default=2048)
parser.add_argument("--gen-tokens", type=int, default=64)
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--max-batch", action="store_true")
parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
args = parser.parse_args()

with open(args.config) as f:
    fields = json.load(f)
# Room for the prompt and the generated tokens, as `keyformer bench` makes.
for key in ("n_positions", "max_seq_len", "max_position_embeddings"):
    if key in fields:
        fields[key] = max(fields[key], args.prompt_tokens + args.gen_tokens + 1)
config = AutoConfig.for_model(**fields)
config._attn_implementation = args.attn
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
ids = torch.randint(0, config.vocab_size, (args.batch, args.prompt_tokens), device="cuda")


def run(prompt, steps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(steps):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3 / max(steps, 1)


def grow(batch, length):
    """A cache of `length` tokens for `batch` random sequences: the prompt at once, the rest in
    chunks of 512 (as a generation would hold it, without its per-token time)."""
    ids = torch.randint(0, config.vocab_size, (batch, length), device="cuda")
    with torch.no_grad():
        out = model(ids[:, :args.prompt_tokens], use_cache=True)
        for at in range(args.prompt_tokens, length, 512):
            out = model(ids[:, at:min(at + 512, length)], past_key_values=out.past_key_values,
                        use_cache=True)
    return out


def fits(batch):
    try:
        out = grow(batch, args.prompt_tokens + args.gen_tokens - 1)
        with torch.no_grad():
            model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        out = None
        torch.cuda.empty_cache()


def largest_batch():
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


if args.max_batch:
    batch = largest_batch()
    if batch == 0:
        raise SystemExit("transformers: not even one sequence fits")
    out = grow(batch, args.prompt_tokens + args.gen_tokens // 2)
    steps = 64
    with torch.no_grad():
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    decode_ms = (time.perf_counter() - t0) * 1e3 / steps
    print(f"transformers {torch.__version__} {config.model_type} fp16 {args.attn}: prompt "
          f"{args.prompt_tokens} gen {args.gen_tokens} max batch {batch}: decode {decode_ms:.3f} "
          f"ms/step at {args.prompt_tokens + args.gen_tokens // 2} cached tokens "
          f"({batch * 1e3 / decode_ms:.1f} tokens/s)")
    raise SystemExit(0)

run(ids[:, :64], 4)  # warm-up
prefill_ms, decode_ms = run(ids, args.gen_tokens)
print(f"transformers {torch.__version__} {config.model_type} fp16 {args.attn}: prompt {args.prompt_tokens} "
      f"gen {args.gen_tokens} batch {args.batch}: prefill {prefill_ms:.1f} ms, decode "
      f"{decode_ms:.3f} ms/step ({args.batch * 1e3 / decode_ms:.1f} tokens/s)")
