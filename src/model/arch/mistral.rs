//! Mistral: the Llama block with a sliding attention window on every layer where the config
//! sets one (Mistral-7B-v0.1: 4096; later versions: none). llama.cpp writes its GGUF files as
//! `llama`, which that file reads.

use super::Architecture;
use super::llama::{globals, layer, llama_like, sliding_window};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig};

pub static MISTRAL: Architecture = Architecture {
    name: "mistral",
    hf_types: &["mistral"],
    gguf_name: None,
    from_hf,
    from_gguf: None,
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = llama_like(c, &MISTRAL)?;
    cfg.block.layer_window = sliding_window(c, cfg.layers)?;
    Ok(cfg)
}
