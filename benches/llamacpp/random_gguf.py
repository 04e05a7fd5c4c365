#!/usr/bin/env python3
"""Writes a Llama-shaped GGUF with random f16 weights, for llama.cpp and keyformer to benchmark on
the same file (llama-quantize turns it into Q8_0, Q4_K_M, ...).

The shape comes from a Hugging Face config.json (benches/configs/llama-3.1-8b.json by default);
the vocabulary is a dummy SentencePiece one of the config's size (<unk>, <s>, </s>, the 256 byte
tokens, then "▁t<N>") that both programs accept; Llama 3's rotary scaling, when the config has
it, is stored as llama.cpp's converter does, as per-frequency divisors in `rope_freqs.weight`.

Weights are normal with standard deviation 0.02 (norm weights 1): one seeded block of random
values is tiled through every tensor from a different offset, so an 8B file takes seconds, not
the minutes of drawing 8e9 normals. Tensors are written one at a time.

Needs numpy and the `gguf` package from the same llama.cpp source (gpu.sh puts its gguf-py on
PYTHONPATH).

    random_gguf.py OUT.gguf [--config CONFIG] [--layers N] [--vocab N] [--seed S]
"""

import argparse
import json
import math
import os
import sys

import types

import numpy as np

try:
    import yaml  # noqa: F401  (gguf's metadata module imports it; nothing here uses it)
except ImportError:
    sys.modules["yaml"] = types.ModuleType("yaml")
import gguf  # noqa: E402

BLOCK = 1 << 20  # values in the tiled random block
SIGMA = 0.02


def rope_divisors(cfg, head_dim):
    """Llama 3's per-frequency divisors of the rotary frequencies, or None without that scaling."""
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    theta = cfg.get("rope_theta", 10000.0)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < old / high:
            out.append(1.0)
        elif wavelength > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def tensors(cfg, layers, vocab):
    """(name, numpy shape, is_norm) in file order; shapes are [rows, cols] as numpy sees them."""
    hidden, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * (hidden // heads)
    out = [("token_embd.weight", (vocab, hidden), False)]
    for i in range(layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (hidden,), True),
            (b + "attn_q.weight", (hidden, hidden), False),
            (b + "attn_k.weight", (kv, hidden), False),
            (b + "attn_v.weight", (kv, hidden), False),
            (b + "attn_output.weight", (hidden, hidden), False),
            (b + "ffn_norm.weight", (hidden,), True),
            (b + "ffn_gate.weight", (ffn, hidden), False),
            (b + "ffn_up.weight", (ffn, hidden), False),
            (b + "ffn_down.weight", (hidden, ffn), False),
        ]
    out += [("output_norm.weight", (hidden,), True)]
    if not cfg.get("tie_word_embeddings", False):
        out += [("output.weight", (vocab, hidden), False)]
    return out


def vocabulary(n):
    """A SentencePiece-style vocabulary of n tokens: special, byte and filler tokens."""
    T = gguf.TokenType
    tokens, types = ["<unk>", "<s>", "</s>"], [T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    tokens += [f"\u2581t{i}" for i in range(len(tokens), n)]
    types += [T.NORMAL] * (n - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return tokens[:n], scores[:n], [int(t) for t in types[:n]]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--config", default=os.path.join(here, "..", "configs", "llama-3.1-8b.json"))
    p.add_argument("--layers", type=int, help="override num_hidden_layers")
    p.add_argument("--vocab", type=int, help="override vocab_size")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    if cfg.get("model_type") not in ("llama", "mistral"):
        sys.exit(f"{a.config}: model_type {cfg.get('model_type')!r}; this writes Llama-shaped files")
    layers = a.layers or cfg["num_hidden_layers"]
    vocab = a.vocab or cfg["vocab_size"]
    if vocab < 300:
        sys.exit("the vocabulary needs at least 300 tokens (special and byte tokens first)")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("random-" + os.path.splitext(os.path.basename(a.config))[0])
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads", heads))
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = vocabulary(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    layout = tensors(cfg, layers, vocab)
    divisors = rope_divisors(cfg, head_dim)
    if divisors is not None:
        w.add_tensor_info("rope_freqs.weight", divisors.shape, divisors.dtype, divisors.nbytes)
    for name, shape, norm in layout:
        dtype = np.dtype(np.float32 if norm else np.float16)
        w.add_tensor_info(name, shape, dtype, math.prod(shape) * dtype.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    rng = np.random.default_rng(a.seed)
    block = (rng.standard_normal(BLOCK, dtype=np.float32) * SIGMA).astype(np.float16)
    if divisors is not None:
        w.write_tensor_data(divisors)
    total = 0
    for i, (name, shape, norm) in enumerate(layout):
        if norm:
            data = np.ones(shape, dtype=np.float32)
        else:
            start = int(rng.integers(BLOCK))
            data = np.resize(np.roll(block, -start), shape)
        w.write_tensor_data(data)
        total += data.nbytes
        if i % 50 == 0:
            print(f"  {name} {shape} ({total / 1e9:.1f} GB so far)", file=sys.stderr)
    w.close()
    print(f"wrote {a.out}: {layers} layers, vocabulary {vocab}, {total / 1e9:.2f} GB of tensors",
          file=sys.stderr)


if __name__ == "__main__":
    main()
