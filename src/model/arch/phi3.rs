//! Phi-3 and Phi-3.5: the Llama block with q, k and v in one matrix (`qkv_proj`) and gate and
//! up in another (`gate_up_proj`), LongRoPE scaling in the 128k variants, and a sliding
//! window where the config sets one.

use super::llama::{llama_like, llama_like_gguf, sliding_window};
use super::{Architecture, GlobalTensors, LayerTensors, Layout, Prefix};
use crate::error::Result;
use crate::model::config::{GgufConfig, HfConfig, ModelConfig, RopePairs};

pub static PHI3: Architecture = Architecture {
    name: "phi3",
    hf_types: &["phi3"],
    gguf_name: Some("phi3"),
    from_hf,
    from_gguf: Some(from_gguf),
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = llama_like(c, &PHI3)?;
    cfg.block.layer_window = sliding_window(c, cfg.layers)?;
    Ok(cfg)
}

fn from_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    llama_like_gguf(g, &PHI3, RopePairs::Halves)
}

fn layer(c: &ModelConfig, layout: Layout, i: usize) -> LayerTensors {
    let (qkv, out, gate_up, down, norms) = match layout {
        Layout::Hf => (
            "self_attn.qkv_proj",
            "self_attn.o_proj",
            "mlp.gate_up_proj",
            "mlp.down_proj",
            ("input_layernorm", "post_attention_layernorm"),
        ),
        Layout::Gguf => (
            "attn_qkv",
            "attn_output",
            "ffn_up",
            "ffn_down",
            ("attn_norm", "ffn_norm"),
        ),
    };
    let p = Prefix(match layout {
        Layout::Hf => format!("model.layers.{i}"),
        Layout::Gguf => format!("blk.{i}"),
    });
    LayerTensors {
        attn_norm: p.norm(norms.0, false),
        qkv: p.one(qkv, c.block.qkv_bias),
        attn_out: p.one(out, c.block.out_bias),
        mlp_norm: Some(p.norm(norms.1, false)),
        mlp_in: p.one(gate_up, c.block.mlp_bias),
        mlp_out: p.one(down, c.block.mlp_bias),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

fn globals(layout: Layout) -> GlobalTensors {
    super::llama::globals(layout)
}
