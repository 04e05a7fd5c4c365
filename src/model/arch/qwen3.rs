//! Qwen3: the Llama block with an RMSNorm over each query and key head (before the rotary),
//! no biases, and Qwen's window rule.

use super::llama::{globals, llama_like, llama_like_gguf};
use super::qwen2::qwen_windows;
use super::{Architecture, LayerTensors, Layout, Prefix};
use crate::error::Result;
use crate::model::config::{GgufConfig, HfConfig, ModelConfig, RopePairs};

pub static QWEN3: Architecture = Architecture {
    name: "qwen3",
    hf_types: &["qwen3"],
    gguf_name: Some("qwen3"),
    from_hf,
    from_gguf: Some(from_gguf),
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = llama_like(c, &QWEN3)?;
    cfg.block.layer_window = qwen_windows(c, cfg.layers)?;
    Ok(cfg)
}

fn from_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    llama_like_gguf(g, &QWEN3, RopePairs::Halves)
}

fn layer(c: &ModelConfig, layout: Layout, i: usize) -> LayerTensors {
    let mut t = super::llama::layer(c, layout, i);
    let p = Prefix(match layout {
        Layout::Hf => format!("model.layers.{i}.self_attn"),
        Layout::Gguf => format!("blk.{i}"),
    });
    let (q, k) = match layout {
        Layout::Hf => ("q_norm", "k_norm"),
        Layout::Gguf => ("attn_q_norm", "attn_k_norm"),
    };
    t.qk_norm = Some((p.norm(q, false), p.norm(k, false)));
    t
}
