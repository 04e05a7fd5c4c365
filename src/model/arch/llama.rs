//! Llama: RMSNorm, SwiGLU, grouped-query attention, rotary on whole heads (halves pairing in
//! Hugging Face checkpoints, interleaved in llama.cpp's GGUF files).

use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, BlockFeatures, GgufConfig, HfConfig, ModelConfig, NormKind, Positions, RopePairs,
    divide, rotary,
};
use crate::model::rope;

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
    let mut cfg = llama_like(c, &LLAMA)?;
    cfg.block.layer_window = sliding_window(c, cfg.layers)?;
    Ok(cfg)
}

/// The config of a Llama-shaped model (Llama, Mistral, Qwen2, Phi-3): RMSNorm, SwiGLU, rotary
/// with any scaling, grouped-query attention, optional biases.
pub(super) fn llama_like(c: &HfConfig, arch: &'static Architecture) -> Result<ModelConfig> {
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let head_dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None => divide(hidden, heads)?,
    };
    let partial = rope::partial_factor(c)?;
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(Error::Config(format!(
            "partial_rotary_factor {partial} must be in (0, 1]"
        )));
    }
    let rotary_dims = (head_dim as f64 * partial) as usize;
    let max_positions = c.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    let rope = rope::from_hf(c, rotary_dims, head_dim, RopePairs::Halves, max_positions)?;
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch,
        vocab_size: c.usize("vocab_size")?,
        hidden,
        layers: c.usize("num_hidden_layers")?,
        heads,
        kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        ffn_hidden: c.usize("intermediate_size")?,
        max_context: rope.max_context.unwrap_or(max_positions),
        norm: NormKind::RmsNorm,
        norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        activation: Activation::SwiGlu,
        positions: rope.positions,
        attn_scale: rope.logit_scale / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        block: BlockFeatures {
            qkv_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            out_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: c.opt_bool("mlp_bias")?.unwrap_or(false),
            ..BlockFeatures::default()
        },
        bos,
        eos,
    })
}

/// `sliding_window`, where set: every layer attends to that many tokens (itself included).
pub(super) fn sliding_window(c: &HfConfig, layers: usize) -> Result<Vec<Option<usize>>> {
    Ok(match c.opt_usize("sliding_window")? {
        Some(0) => return Err(Error::Config("sliding_window 0 must be positive".into())),
        Some(w) => vec![Some(w); layers],
        None => Vec::new(),
    })
}

/// The Llama layout as llama.cpp writes it (q and k rows permuted for interleaved rotary).
fn from_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    llama_like_gguf(g, &LLAMA, RopePairs::Interleaved)
}

/// A Llama-shaped model's GGUF metadata, under its architecture's key prefix.
pub(super) fn llama_like_gguf(
    g: &GgufConfig,
    arch: &'static Architecture,
    pairs: RopePairs,
) -> Result<ModelConfig> {
    let hidden = g.usize("embedding_length")?;
    let heads = g.usize("attention.head_count")?;
    let head_dim = match g.opt_usize("attention.key_length")? {
        Some(d) => d,
        None => divide(hidden, heads)?,
    };
    let rope_dims = g.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    let vocab_size = match g.opt_usize("vocab_size")? {
        Some(v) => v,
        None => g.file.tensor_shape("token_embd.weight")?[0],
    };
    let layers = g.usize("block_count")?;
    let window = g.opt_usize("attention.sliding_window")?;
    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden,
        layers,
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
        positions: gguf_rotary(g, rope_dims, head_dim, pairs)?,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: !g.has_tensor("output.weight"),
        block: BlockFeatures {
            qkv_bias: g.has_tensor("blk.0.attn_q.bias"),
            layer_window: window.map_or_else(Vec::new, |w| vec![Some(w); layers]),
            ..BlockFeatures::default()
        },
        bos: g.token_id("bos_token_id")?,
        eos: g.token_id("eos_token_id")?.into_iter().collect(),
    })
}

/// The rotary llama.cpp describes: `rope.freq_base`, its per-frequency divisors in the
/// `rope_freqs.weight` tensor (how it stores Llama 3.1's llama3 scaling) and linear scaling;
/// other scalings and LongRoPE's factor tensors are refused rather than ignored.
pub(super) fn gguf_rotary(
    g: &GgufConfig,
    dims: usize,
    head_dim: usize,
    pairs: RopePairs,
) -> Result<Positions> {
    let theta = g.opt_f64("rope.freq_base")?.unwrap_or(10000.0);
    let mut positions = rotary(dims, head_dim, theta, pairs)?;
    let Positions::Rotary { inv_freq, .. } = &mut positions else {
        unreachable!("rotary() makes a rotary");
    };
    if g.has_tensor("rope_freqs.weight") {
        let divisors = g.file.tensor_f32("rope_freqs.weight")?;
        if divisors.len() != inv_freq.len() || divisors.iter().any(|d| d.is_nan() || *d <= 0.0) {
            return Err(Error::Config(format!(
                "rope_freqs.weight holds {} values, expected {} positive ones",
                divisors.len(),
                inv_freq.len()
            )));
        }
        inv_freq
            .iter_mut()
            .zip(&divisors)
            .for_each(|(f, d)| *f /= d);
    }
    for factors in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if g.has_tensor(factors) {
            return Err(Error::Config(format!(
                "GGUF LongRoPE factors ({factors}) are not supported yet"
            )));
        }
    }
    let scaling = match g.get("rope.scaling.type") {
        Some(v) => v.as_str().map(str::to_string).ok_or_else(|| {
            Error::Config(format!("rope.scaling.type is {v:?}, expected a string"))
        })?,
        None => "none".to_string(),
    };
    match scaling.as_str() {
        "none" => {}
        "linear" => {
            let factor = g.opt_f64("rope.scaling.factor")?.unwrap_or(1.0);
            if factor < 1.0 {
                return Err(Error::Config(format!(
                    "rope.scaling.factor {factor} must be at least 1"
                )));
            }
            inv_freq.iter_mut().for_each(|f| *f /= factor as f32);
        }
        other => {
            return Err(Error::Config(format!(
                "GGUF rope scaling '{other}' is not supported (supported: none, linear)"
            )));
        }
    }
    Ok(positions)
}

pub(super) fn layer(c: &ModelConfig, layout: Layout, i: usize) -> LayerTensors {
    if layout == Layout::Gguf {
        return super::gguf_layer(i, c.block.qkv_bias);
    }
    let p = Prefix(format!("model.layers.{i}"));
    let (qkv_bias, mlp_bias) = (c.block.qkv_bias, c.block.mlp_bias);
    LayerTensors {
        attn_norm: p.norm("input_layernorm", false),
        qkv: p.stack(
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            qkv_bias,
        ),
        attn_out: p.one("self_attn.o_proj", c.block.out_bias),
        mlp_norm: Some(p.norm("post_attention_layernorm", false)),
        mlp_in: p.stack(&["mlp.gate_proj", "mlp.up_proj"], mlp_bias),
        mlp_out: p.one("mlp.down_proj", mlp_bias),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

pub(super) fn globals(layout: Layout) -> GlobalTensors {
    if layout == Layout::Gguf {
        return super::gguf_globals();
    }
    GlobalTensors {
        embed: "model.embed_tokens.weight".into(),
        pos_embed: None,
        final_norm: NormTensors {
            prefix: "model.norm".into(),
            bias: false,
            plus_one: false,
        },
        head: "lm_head".into(),
        head_bias: false,
    }
}
