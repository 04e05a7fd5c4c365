"""Writes the fuzz seeds that are not copies of repository files, with the `gguf` package (an
independent GGUF writer and reader, not keyformer's code):

- gguf/tiny-llama.gguf: a Llama GGUF of a few kilobytes with every key keyformer reads, a
  small GPT-2 style tokenizer and F32 and F16 tensors, so that mutations reach the config,
  tokenizer and tensor paths quickly;
- chat_template/smollm2.jinja: the chat template stored in models/SmolLM2-*.gguf.

Run from the repository root after scripts/fetch.sh:  python3 fuzz/seeds/make_seeds.py
"""

from pathlib import Path

import gguf
import numpy as np

SEEDS = Path(__file__).resolve().parent
MODEL = SEEDS.parents[1] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_llama(path: Path):
    hidden, heads, kv_heads, ffn, layers = 8, 2, 1, 16, 1
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "ab", "Ġa"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rng = np.random.default_rng(0)

    def tensor(name, shape, dtype=np.float32):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(dtype))

    vocab = len(tokens)
    head_dim = hidden // heads
    tensor("token_embd.weight", (vocab, hidden), np.float16)
    tensor("output_norm.weight", (hidden,))
    for i in range(layers):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", (hidden,))
        tensor(p + "attn_q.weight", (heads * head_dim, hidden), np.float16)
        tensor(p + "attn_k.weight", (kv_heads * head_dim, hidden))
        tensor(p + "attn_v.weight", (kv_heads * head_dim, hidden))
        tensor(p + "attn_output.weight", (hidden, heads * head_dim))
        tensor(p + "ffn_norm.weight", (hidden,))
        tensor(p + "ffn_gate.weight", (ffn, hidden))
        tensor(p + "ffn_up.weight", (ffn, hidden))
        tensor(p + "ffn_down.weight", (hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2_template(path: Path):
    reader = gguf.GGUFReader(str(MODEL))
    field = reader.fields["tokenizer.chat_template"]
    path.write_bytes(bytes(field.parts[field.data[0]]))


if __name__ == "__main__":
    (SEEDS / "gguf").mkdir(exist_ok=True)
    (SEEDS / "chat_template").mkdir(exist_ok=True)
    tiny_llama(SEEDS / "gguf" / "tiny-llama.gguf")
    smollm2_template(SEEDS / "chat_template" / "smollm2.jinja")
    print("wrote", SEEDS / "gguf" / "tiny-llama.gguf", SEEDS / "chat_template" / "smollm2.jinja")
