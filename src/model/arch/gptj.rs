//! GPT-J: attention and MLP read one LayerNorm and add in parallel; partial interleaved rotary.

use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix};
use crate::error::Result;
use crate::model::config::{
    BlockFeatures, HfConfig, ModelConfig, NormKind, RopePairs, divide, gelu_kind, rotary,
};

pub static GPTJ: Architecture = Architecture {
    name: "gptj",
    hf_types: &["gptj"],
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
    let rotary_dim = c.opt_usize("rotary_dim")?.unwrap_or(head_dim);
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch: &GPTJ,
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
        positions: rotary(rotary_dim, head_dim, 10000.0, RopePairs::Interleaved)?,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: true,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        block: BlockFeatures::default(),
        bos,
        eos,
    })
}

fn layer(_: &ModelConfig, _: Layout, i: usize) -> LayerTensors {
    let p = Prefix(format!("transformer.h.{i}"));
    LayerTensors {
        attn_norm: p.norm("ln_1", true),
        qkv: p.stack(&["attn.q_proj", "attn.k_proj", "attn.v_proj"], false),
        attn_out: p.one("attn.out_proj", false),
        mlp_norm: None,
        mlp_in: p.one("mlp.fc_in", true),
        mlp_out: p.one("mlp.fc_out", true),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

fn globals(_: Layout) -> GlobalTensors {
    GlobalTensors {
        embed: "transformer.wte.weight".into(),
        pos_embed: None,
        final_norm: NormTensors {
            prefix: "transformer.ln_f".into(),
            bias: true,
            plus_one: false,
        },
        head: "lm_head".into(),
        head_bias: true,
    }
}
