//! GPT-2 layout (Cerebras-GPT): learned positions, LayerNorm with biases, GELU, Conv1D weights
//! stored [n_in, n_out].

use super::ProjTensors;
use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix, Proj};
use crate::error::Result;
use crate::model::config::{
    BlockFeatures, HfConfig, ModelConfig, NormKind, Positions, divide, gelu_kind,
};

pub static GPT2: Architecture = Architecture {
    name: "gpt2",
    hf_types: &["gpt2"],
    gguf_name: None,
    from_hf,
    from_gguf: None,
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let hidden = c.usize("n_embd")?;
    let heads = c.usize("n_head")?;
    let head_dim = divide(hidden, heads)?;
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch: &GPT2,
        vocab_size: c.usize("vocab_size")?,
        hidden,
        layers: c.usize("n_layer")?,
        heads,
        kv_heads: heads,
        head_dim,
        ffn_hidden: c.opt_usize("n_inner")?.unwrap_or(4 * hidden),
        max_context: c.usize("n_positions")?,
        norm: NormKind::LayerNorm,
        norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
        activation: gelu_kind(c.opt_str("activation_function")?.unwrap_or("gelu_new"))?,
        positions: Positions::Learned,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        block: BlockFeatures::default(),
        bos,
        eos,
    })
}

fn layer(_: &ModelConfig, _: Layout, i: usize) -> LayerTensors {
    let p = Prefix(format!("transformer.h.{i}"));
    let conv = |s: &str| ProjTensors {
        proj: Proj::Conv1d(p.of(s)),
        bias: true,
    };
    LayerTensors {
        attn_norm: p.norm("ln_1", true),
        qkv: conv("attn.c_attn"),
        attn_out: conv("attn.c_proj"),
        mlp_norm: Some(p.norm("ln_2", true)),
        mlp_in: conv("mlp.c_fc"),
        mlp_out: conv("mlp.c_proj"),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

fn globals(_: Layout) -> GlobalTensors {
    GlobalTensors {
        embed: "transformer.wte.weight".into(),
        pos_embed: Some("transformer.wpe.weight".into()),
        final_norm: NormTensors {
            prefix: "transformer.ln_f".into(),
            bias: true,
            plus_one: false,
        },
        head: "lm_head".into(),
        head_bias: false,
    }
}
