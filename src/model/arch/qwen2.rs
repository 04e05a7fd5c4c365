//! Qwen2 and Qwen2.5: the Llama block with biases on q, k and v (not on the output), and a
//! sliding window only where `use_sliding_window` turns it on for layers from
//! `max_window_layers` up (or `layer_types` says so).

use super::Architecture;
use super::llama::{globals, layer, llama_like, llama_like_gguf};
use crate::error::{Error, Result};
use crate::model::config::{GgufConfig, HfConfig, ModelConfig, RopePairs};

pub static QWEN2: Architecture = Architecture {
    name: "qwen2",
    hf_types: &["qwen2"],
    gguf_name: Some("qwen2"),
    from_hf,
    from_gguf: Some(from_gguf),
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = llama_like(c, &QWEN2)?;
    cfg.block.qkv_bias = true;
    cfg.block.out_bias = false;
    cfg.block.layer_window = qwen_windows(c, cfg.layers)?;
    Ok(cfg)
}

/// Qwen's window rule: `layer_types` where given, else `use_sliding_window` from layer
/// `max_window_layers` on.
pub(super) fn qwen_windows(c: &HfConfig, layers: usize) -> Result<Vec<Option<usize>>> {
    if let Some(windows) = super::layer_types(c, layers)? {
        return Ok(windows);
    }
    if c.opt_bool("use_sliding_window")? != Some(true) {
        return Ok(Vec::new());
    }
    let window = c.usize("sliding_window")?;
    if window == 0 {
        return Err(Error::Config("sliding_window 0 must be positive".into()));
    }
    let first = c.opt_usize("max_window_layers")?.unwrap_or(layers);
    Ok((0..layers)
        .map(|i| (i >= first).then_some(window))
        .collect())
}

/// llama.cpp keeps Qwen2's q and k rows as they are (rotary on halves).
fn from_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    let mut cfg = llama_like_gguf(g, &QWEN2, RopePairs::Halves)?;
    cfg.block.qkv_bias = true;
    Ok(cfg)
}
