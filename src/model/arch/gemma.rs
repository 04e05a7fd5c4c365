//! Gemma 2 and Gemma 3: GeGLU, the embedding scaled by sqrt(hidden), RMSNorms with weights
//! stored as w - 1 (Hugging Face; llama.cpp's GGUF files store w), norms before and after each
//! sub-block, local sliding-window layers between global ones, head_dim 256 and the attention
//! scale 1/sqrt(query_pre_attn_scalar). Gemma 2 soft-caps attention scores and final logits;
//! Gemma 3 norms each query and key head instead and gives its local layers their own rotary
//! base.

use super::{Architecture, GlobalTensors, LayerTensors, Layout, NormTensors, Prefix};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, BlockFeatures, GgufConfig, HfConfig, ModelConfig, NormKind, RopePairs, rotary,
};
use crate::model::rope;

pub static GEMMA2: Architecture = Architecture {
    name: "gemma2",
    hf_types: &["gemma2"],
    gguf_name: Some("gemma2"),
    from_hf: gemma2_hf,
    from_gguf: Some(gemma2_gguf),
    layer: |c, layout, i| layer(c, layout, i, false),
    globals,
};

pub static GEMMA3: Architecture = Architecture {
    name: "gemma3",
    hf_types: &["gemma3_text"],
    gguf_name: Some("gemma3"),
    from_hf: gemma3_hf,
    from_gguf: Some(gemma3_gguf),
    layer: |c, layout, i| layer(c, layout, i, true),
    globals,
};

fn activation(c: &HfConfig) -> Result<Activation> {
    let name = match c.opt_str("hidden_activation")? {
        Some(a) => a,
        None => c.opt_str("hidden_act")?.unwrap_or("gelu_pytorch_tanh"),
    };
    match name {
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeGluTanh),
        other => Err(Error::Config(format!(
            "Gemma activation '{other}' is not supported (supported: gelu_pytorch_tanh)"
        ))),
    }
}

/// What Gemma 2 and 3 share in config.json; `pattern` is the default interleave (every
/// `pattern`-th layer global) where `layer_types` is absent.
fn common(c: &HfConfig, arch: &'static Architecture, pattern: usize) -> Result<ModelConfig> {
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(256);
    let layers = c.usize("num_hidden_layers")?;
    let scalar = c
        .opt_f64("query_pre_attn_scalar")?
        .unwrap_or(head_dim as f64);
    if scalar <= 0.0 {
        return Err(Error::Config(format!(
            "query_pre_attn_scalar {scalar} must be positive"
        )));
    }
    let layer_window = match super::layer_types(c, layers)? {
        Some(w) => w,
        None => {
            let window = c.usize("sliding_window")?.max(1);
            (0..layers)
                .map(|i| ((i + 1) % pattern != 0).then_some(window))
                .collect()
        }
    };
    let cap = |k: &str| -> Result<Option<f32>> {
        match c.opt_f64(k)? {
            Some(x) if x > 0.0 => Ok(Some(x as f32)),
            Some(x) => Err(Error::Config(format!("{k} {x} must be positive"))),
            None => Ok(None),
        }
    };
    let (bos, eos) = c.bos_eos()?;
    Ok(ModelConfig {
        arch,
        vocab_size: c.usize("vocab_size")?,
        hidden,
        layers,
        heads,
        kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        ffn_hidden: c.usize("intermediate_size")?,
        max_context: c.opt_usize("max_position_embeddings")?.unwrap_or(8192),
        norm: NormKind::RmsNorm,
        norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        activation: activation(c)?,
        positions: rotary(head_dim, head_dim, 10000.0, RopePairs::Halves)?,
        attn_scale: (1.0 / scalar.sqrt()) as f32,
        parallel_block: false,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        block: BlockFeatures {
            qkv_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            out_bias: c.opt_bool("attention_bias")?.unwrap_or(false),
            layer_window,
            embed_scale: Some((hidden as f32).sqrt()),
            attn_softcap: cap("attn_logit_softcapping")?,
            final_softcap: cap("final_logit_softcapping")?,
            ..BlockFeatures::default()
        },
        bos,
        eos,
    })
}

fn gemma2_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = common(c, &GEMMA2, 2)?;
    let rope = rope::from_hf(
        c,
        cfg.head_dim,
        cfg.head_dim,
        RopePairs::Halves,
        cfg.max_context,
    )?;
    apply_rope(&mut cfg, rope);
    Ok(cfg)
}

fn apply_rope(cfg: &mut ModelConfig, rope: rope::Rope) {
    cfg.positions = rope.positions;
    cfg.attn_scale *= rope.logit_scale;
    if let Some(limit) = rope.max_context {
        cfg.max_context = cfg.max_context.min(limit);
    }
}

/// Gemma 3's rotaries: global layers at `rope_theta` (1e6) with any scaling, local ones at
/// `rope_local_base_freq` (1e4) without; transformers 5 writes both under
/// `rope_parameters.{full_attention, sliding_attention}`.
fn gemma3_hf(c: &HfConfig) -> Result<ModelConfig> {
    let mut cfg = common(c, &GEMMA3, 6)?;
    let hd = (cfg.head_dim, cfg.head_dim);
    let params = c.opt_object("rope_parameters")?;
    let by_type = |t: &str| match &params {
        Some(p) => p.opt_object(t),
        None => Ok(None),
    };
    let (global, local) = (by_type("full_attention")?, by_type("sliding_attention")?);
    let theta = |r: &Option<HfConfig>, legacy: &str, default: f64| -> Result<f64> {
        match r
            .as_ref()
            .map(|r| r.opt_f64("rope_theta"))
            .transpose()?
            .flatten()
        {
            Some(t) => Ok(t),
            None => Ok(c.opt_f64(legacy)?.unwrap_or(default)),
        }
    };
    let legacy = c.opt_object("rope_scaling")?;
    let global_params = global.as_ref().or(legacy.as_ref());
    let global_theta = theta(&global, "rope_theta", 1_000_000.0)?;
    let local_theta = theta(&local, "rope_local_base_freq", 10_000.0)?;
    let pairs = RopePairs::Halves;
    let rope = rope::from_params(c, global_params, global_theta, hd, pairs, cfg.max_context)?;
    let local = rope::from_params(c, local.as_ref(), local_theta, hd, pairs, cfg.max_context)?;
    if local.logit_scale != 1.0 {
        return Err(Error::Config(
            "Gemma 3 local layers with a scaled rotary are not supported".into(),
        ));
    }
    apply_rope(&mut cfg, rope);
    cfg.block.window_positions = Some(local.positions);
    Ok(cfg)
}

/// What Gemma 2 and 3 share in llama.cpp's metadata.
fn common_gguf(g: &GgufConfig, arch: &'static Architecture, pattern: usize) -> Result<ModelConfig> {
    let hidden = g.usize("embedding_length")?;
    let heads = g.usize("attention.head_count")?;
    let head_dim = g.opt_usize("attention.key_length")?.unwrap_or(256);
    let layers = g.usize("block_count")?;
    let window = g.usize("attention.sliding_window")?.max(1);
    let cap = |k: &str| -> Result<Option<f32>> {
        Ok(g.opt_f64(k)?.filter(|&x| x > 0.0).map(|x| x as f32))
    };
    let vocab_size = match g.opt_usize("vocab_size")? {
        Some(v) => v,
        None => g.file.tensor_shape("token_embd.weight")?[0],
    };
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
            .unwrap_or(1e-6) as f32,
        activation: Activation::GeGluTanh,
        positions: super::llama::gguf_rotary(g, head_dim, head_dim, RopePairs::Halves)?,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        parallel_block: false,
        tied_embeddings: !g.has_tensor("output.weight"),
        block: BlockFeatures {
            layer_window: (0..layers)
                .map(|i| ((i + 1) % pattern != 0).then_some(window))
                .collect(),
            embed_scale: Some((hidden as f32).sqrt()),
            attn_softcap: cap("attn_logit_softcapping")?,
            final_softcap: cap("final_logit_softcapping")?,
            ..BlockFeatures::default()
        },
        bos: g.token_id("bos_token_id")?,
        eos: g.token_id("eos_token_id")?.into_iter().collect(),
    })
}

fn gemma2_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    common_gguf(g, &GEMMA2, 2)
}

/// llama.cpp's Gemma 3: local layers turn at base 10000, global ones at `rope.freq_base`
/// (scaled as `gguf_rotary` reads it).
fn gemma3_gguf(g: &GgufConfig) -> Result<ModelConfig> {
    let mut cfg = common_gguf(g, &GEMMA3, 6)?;
    let hd = cfg.head_dim;
    cfg.block.window_positions = Some(rotary(hd, hd, 10000.0, RopePairs::Halves)?);
    Ok(cfg)
}

/// A Gemma layer's tensors; Gemma 3's (`qk`) also norm each query and key head.
fn layer(c: &ModelConfig, layout: Layout, i: usize, qk: bool) -> LayerTensors {
    match layout {
        Layout::Hf => {
            let p = Prefix(format!("model.layers.{i}"));
            let norm = |s: &str| NormTensors {
                plus_one: true,
                ..p.norm(s, false)
            };
            LayerTensors {
                attn_norm: norm("input_layernorm"),
                qkv: p.stack(
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    c.block.qkv_bias,
                ),
                attn_out: p.one("self_attn.o_proj", c.block.out_bias),
                mlp_norm: Some(norm("pre_feedforward_layernorm")),
                mlp_in: p.stack(&["mlp.gate_proj", "mlp.up_proj"], false),
                mlp_out: p.one("mlp.down_proj", false),
                qk_norm: qk.then(|| (norm("self_attn.q_norm"), norm("self_attn.k_norm"))),
                post_attn_norm: Some(norm("post_attention_layernorm")),
                post_mlp_norm: Some(norm("post_feedforward_layernorm")),
            }
        }
        Layout::Gguf => {
            let p = Prefix(format!("blk.{i}"));
            let mut t = super::gguf_layer(i, false);
            t.qk_norm = qk.then(|| (p.norm("attn_q_norm", false), p.norm("attn_k_norm", false)));
            t.post_attn_norm = Some(p.norm("post_attention_norm", false));
            t.post_mlp_norm = Some(p.norm("post_ffw_norm", false));
            t
        }
    }
}

fn globals(layout: Layout) -> GlobalTensors {
    let mut g = super::llama::globals(layout);
    if layout == Layout::Hf {
        g.final_norm.plus_one = true;
    }
    g
}
