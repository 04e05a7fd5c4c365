//! Llama: RMSNorm, SwiGLU, grouped-query attention, rotary on whole heads (halves pairing in
//! Hugging Face checkpoints, interleaved in llama.cpp's GGUF files).

use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, GgufConfig, HfConfig, ModelConfig, NormKind, RopePairs, divide, rotary,
};

pub static LLAMA: Architecture = Architecture {
    name: "llama",
    hf_types: &["llama"],
    gguf_name: Some("llama"),
    from_hf,
    from_gguf: Some(from_gguf),
    layer,
    globals,
};

fn from_hf(c: &HfConfig) -> Result<ModelConfig> {
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let head_dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None => divide(hidden, heads)?,
    };
    let rope = c
        .opt_object("rope_parameters")?
        .or(c.opt_object("rope_scaling")?);
    let rope_kind = match &rope {
        Some(r) => r.opt_str("rope_type")?.or(r.opt_str("type")?),
        None => None,
    };
    let rope_kind = rope_kind.unwrap_or("default");
    if rope_kind != "default" {
        return Err(Error::Config(format!(
            "rope type '{rope_kind}' is not supported"
        )));
    }
    let theta = match c.opt_f64("rope_theta")? {
        Some(t) => Some(t),
        None => match &rope {
            Some(r) => r.opt_f64("rope_theta")?,
            None => None,
        },
    };
    if c.opt_bool("attention_bias")? == Some(true) || c.opt_bool("mlp_bias")? == Some(true) {
        return Err(Error::Config("Llama with biases is not supported".into()));
    }
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch: &LLAMA,
        vocab_size: c.usize("vocab_size")?,
        hidden,
        layers: c.usize("num_hidden_layers")?,
        heads,
        kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        ffn_hidden: c.usize("intermediate_size")?,
        max_context: c.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        norm: NormKind::RmsNorm,
        norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        activation: Activation::SwiGlu,
        positions: rotary(
            head_dim,
            head_dim,
            theta.unwrap_or(10000.0),
            RopePairs::Halves,
        )?,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        bos,
        eos,
    })
}

/// The Llama layout as llama.cpp writes it.
fn from_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    let hidden = g.usize("embedding_length")?;
    let heads = g.usize("attention.head_count")?;
    let head_dim = divide(hidden, heads)?;
    let rope_dims = g.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    let vocab_size = match g.opt_usize("vocab_size")? {
        Some(v) => v,
        None => g.file.tensor_shape("token_embd.weight")?[0],
    };
    Ok(ModelConfig {
        arch: &LLAMA,
        vocab_size,
        hidden,
        layers: g.usize("block_count")?,
        heads,
        kv_heads: g.opt_usize("attention.head_count_kv")?.unwrap_or(heads),
        head_dim,
        ffn_hidden: g.usize("feed_forward_length")?,
        max_context: g.usize("context_length")?,
        norm: NormKind::RmsNorm,
        norm_eps: g
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5) as f32,
        activation: Activation::SwiGlu,
        positions: rotary(
            rope_dims,
            head_dim,
            g.opt_f64("rope.freq_base")?.unwrap_or(10000.0),
            RopePairs::Interleaved,
        )?,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: !g.has_tensor("output.weight"),
        bos: g.token_id("bos_token_id")?,
        eos: g.token_id("eos_token_id")?.into_iter().collect(),
    })
}

fn layer(_: &ModelConfig, layout: Layout, i: usize) -> LayerTensors {
    if layout == Layout::Gguf {
        return super::gguf_layer(i, false);
    }
    let p = Prefix(format!("model.layers.{i}"));
    LayerTensors {
        attn_norm: p.norm("input_layernorm", false),
        qkv: p.stack(
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            false,
        ),
        attn_out: p.one("self_attn.o_proj", false),
        mlp_norm: Some(p.norm("post_attention_layernorm", false)),
        mlp_in: p.stack(&["mlp.gate_proj", "mlp.up_proj"], false),
        mlp_out: p.one("mlp.down_proj", false),
    }
}

fn globals(layout: Layout) -> GlobalTensors {
    if layout == Layout::Gguf {
        return super::gguf_globals();
    }
    GlobalTensors {
        embed: "model.embed_tokens.weight".into(),
        pos_embed: None,
        final_norm: NormTensors {
            prefix: "model.norm".into(),
            bias: false,
        },
        head: "lm_head".into(),
        head_bias: false,
    }
}
