//! One model description for every architecture, read from a Hugging Face config.json or from
//! GGUF metadata. The forward pass only looks at this struct, never at the architecture name
//! beyond the few switches below.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// GPT-2 layout (Cerebras-GPT): learned positions, LayerNorm, GELU, biases.
    Gpt2,
    /// GPT-J: parallel attention and MLP from one LayerNorm, partial interleaved rotary.
    GptJ,
    /// MPT: ALiBi, fused Wqkv, no biases.
    Mpt,
    /// Llama: RMSNorm, SwiGLU, grouped-query attention, rotary.
    Llama,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "gpt2" => Ok(Arch::Gpt2),
            "gptj" => Ok(Arch::GptJ),
            "mpt" => Ok(Arch::Mpt),
            "llama" => Ok(Arch::Llama),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::GptJ => "gptj",
            Arch::Mpt => "mpt",
            Arch::Llama => "llama",
        }
    }
}

/// Which pairs of dimensions a rotary embedding rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopePairs {
    /// (2i, 2i+1): GPT-J, and Llama weights as stored in GGUF files.
    Interleaved,
    /// (i, i + dim/2): Hugging Face Llama checkpoints.
    Halves,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// Learned absolute position embeddings added to the token embeddings.
    Learned,
    /// Rotary embedding on the first `dims` dimensions of every query and key head.
    Rotary {
        dims: usize,
        pairs: RopePairs,
        /// One inverse frequency per rotated pair (dims / 2 values).
        inv_freq: Vec<f32>,
    },
    /// ALiBi: a per-head linear bias on the key's distance, computed from original positions.
    Alibi { slopes: Vec<f32> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact erf form.
    GeluErf,
    /// GELU with the tanh approximation ("gelu_new").
    GeluTanh,
    /// SiLU(gate) * up.
    SwiGlu,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub max_context: usize,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub activation: Activation,
    pub positions: Positions,
    /// Attention scale applied to q.k (1/sqrt(head_dim) unless the config says otherwise).
    pub attn_scale: f32,
    /// GPT-J: attention and MLP read the same normalised input and add in parallel.
    pub parallel_block: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub fn from_hf_json(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(path, "config.json", e.to_string()))?;
        Self::from_hf_value(&json).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_hf_value(json: &Value) -> Result<ModelConfig> {
        let c = HfConfig(json);
        let model_type = c.str("model_type")?;
        let arch = Arch::parse(model_type)?;
        let (bos, eos) = (
            c.opt_u64("bos_token_id").map(|v| v as u32),
            c.ids("eos_token_id"),
        );
        let cfg = match arch {
            Arch::Gpt2 => {
                let hidden = c.usize("n_embd")?;
                let heads = c.usize("n_head")?;
                ModelConfig {
                    arch,
                    vocab_size: c.usize("vocab_size")?,
                    hidden,
                    layers: c.usize("n_layer")?,
                    heads,
                    kv_heads: heads,
                    head_dim: divide(hidden, heads)?,
                    ffn_hidden: c.opt_usize("n_inner").unwrap_or(4 * hidden),
                    max_context: c.usize("n_positions")?,
                    norm: NormKind::LayerNorm,
                    norm_eps: c.opt_f64("layer_norm_epsilon").unwrap_or(1e-5) as f32,
                    activation: gelu_kind(c.opt_str("activation_function").unwrap_or("gelu_new"))?,
                    positions: Positions::Learned,
                    attn_scale: 1.0 / (divide(hidden, heads)? as f32).sqrt(),
                    parallel_block: false,
                    bos,
                    eos,
                }
            }
            Arch::GptJ => {
                let hidden = c.usize("n_embd")?;
                let heads = c.usize("n_head")?;
                let head_dim = divide(hidden, heads)?;
                let rotary_dim = c.opt_usize("rotary_dim").unwrap_or(head_dim);
                ModelConfig {
                    arch,
                    vocab_size: c.usize("vocab_size")?,
                    hidden,
                    layers: c.usize("n_layer")?,
                    heads,
                    kv_heads: heads,
                    head_dim,
                    ffn_hidden: c.opt_usize("n_inner").unwrap_or(4 * hidden),
                    max_context: c.usize("n_positions")?,
                    norm: NormKind::LayerNorm,
                    norm_eps: c.opt_f64("layer_norm_epsilon").unwrap_or(1e-5) as f32,
                    activation: gelu_kind(c.opt_str("activation_function").unwrap_or("gelu_new"))?,
                    positions: rotary(rotary_dim, head_dim, 10000.0, RopePairs::Interleaved)?,
                    attn_scale: 1.0 / (head_dim as f32).sqrt(),
                    parallel_block: true,
                    bos,
                    eos,
                }
            }
            Arch::Mpt => {
                let hidden = c.usize("d_model")?;
                let heads = c.usize("n_heads")?;
                let head_dim = divide(hidden, heads)?;
                let attn = json.get("attn_config").cloned().unwrap_or(Value::Null);
                let attn = HfConfig(&attn);
                if attn.opt_bool("alibi") == Some(false) {
                    return Err(Error::Config("MPT without ALiBi is not supported".into()));
                }
                if attn.opt_bool("qk_ln") == Some(true) || attn.opt_f64("clip_qkv").is_some() {
                    return Err(Error::Config(
                        "MPT qk_ln and clip_qkv are not supported".into(),
                    ));
                }
                if c.opt_bool("no_bias") == Some(false) {
                    return Err(Error::Config(
                        "MPT with biases (no_bias=false) is not supported".into(),
                    ));
                }
                let scale = attn
                    .opt_f64("softmax_scale")
                    .map(|s| s as f32)
                    .unwrap_or(1.0 / (head_dim as f32).sqrt());
                let max_bias = attn.opt_f64("alibi_bias_max").unwrap_or(8.0);
                ModelConfig {
                    arch,
                    vocab_size: c.usize("vocab_size")?,
                    hidden,
                    layers: c.usize("n_layers")?,
                    heads,
                    kv_heads: heads,
                    head_dim,
                    ffn_hidden: hidden * c.opt_usize("expansion_ratio").unwrap_or(4),
                    max_context: c.usize("max_seq_len")?,
                    norm: NormKind::LayerNorm,
                    norm_eps: c.opt_f64("layer_norm_epsilon").unwrap_or(1e-5) as f32,
                    activation: Activation::GeluErf,
                    positions: Positions::Alibi {
                        slopes: mpt_alibi_slopes(heads, max_bias),
                    },
                    attn_scale: scale,
                    parallel_block: false,
                    bos,
                    eos,
                }
            }
            Arch::Llama => {
                let hidden = c.usize("hidden_size")?;
                let heads = c.usize("num_attention_heads")?;
                let head_dim = match c.opt_usize("head_dim") {
                    Some(d) => d,
                    None => divide(hidden, heads)?,
                };
                let rope = json
                    .get("rope_parameters")
                    .or_else(|| json.get("rope_scaling"));
                let rope_kind = rope
                    .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if rope_kind != "default" {
                    return Err(Error::Config(format!(
                        "rope type '{rope_kind}' is not supported"
                    )));
                }
                let theta = c
                    .opt_f64("rope_theta")
                    .or_else(|| {
                        rope.and_then(|r| r.get("rope_theta"))
                            .and_then(Value::as_f64)
                    })
                    .unwrap_or(10000.0);
                if c.opt_bool("attention_bias") == Some(true)
                    || c.opt_bool("mlp_bias") == Some(true)
                {
                    return Err(Error::Config("Llama with biases is not supported".into()));
                }
                ModelConfig {
                    arch,
                    vocab_size: c.usize("vocab_size")?,
                    hidden,
                    layers: c.usize("num_hidden_layers")?,
                    heads,
                    kv_heads: c.opt_usize("num_key_value_heads").unwrap_or(heads),
                    head_dim,
                    ffn_hidden: c.usize("intermediate_size")?,
                    max_context: c.opt_usize("max_position_embeddings").unwrap_or(2048),
                    norm: NormKind::RmsNorm,
                    norm_eps: c.opt_f64("rms_norm_eps").unwrap_or(1e-6) as f32,
                    activation: Activation::SwiGlu,
                    positions: rotary(head_dim, head_dim, theta, RopePairs::Halves)?,
                    attn_scale: 1.0 / (head_dim as f32).sqrt(),
                    parallel_block: false,
                    bos,
                    eos,
                }
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Llama-family models stored as GGUF (the layout llama.cpp writes).
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let arch_name = g.architecture()?;
        let arch = Arch::parse(arch_name)?;
        if arch != Arch::Llama {
            return Err(Error::Unsupported {
                path: g.path().to_path_buf(),
                what: format!("GGUF architecture '{arch_name}' (GGUF loading supports llama)"),
            });
        }
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| -> Result<usize> {
            g.get(&key(k))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::malformed(g.path(), "GGUF", format!("missing metadata {}", key(k)))
                })
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let head_dim = divide(hidden, heads)?;
        let rope_dims = need("rope.dimension_count").unwrap_or(head_dim);
        let theta = g
            .get(&key("rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0);
        let vocab_size = match need("vocab_size") {
            Ok(v) => v,
            Err(_) => g.tensor_shape("token_embd.weight")?[0],
        };
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden,
            layers: need("block_count")?,
            heads,
            kv_heads: need("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            ffn_hidden: need("feed_forward_length")?,
            max_context: need("context_length")?,
            norm: NormKind::RmsNorm,
            norm_eps: g
                .get(&key("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            activation: Activation::SwiGlu,
            positions: rotary(rope_dims, head_dim, theta, RopePairs::Interleaved)?,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            parallel_block: false,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden size", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("ffn size", self.ffn_hidden),
            ("context length", self.max_context),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Config(format!(
                "{} heads is not a multiple of {} kv heads",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

fn divide(hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden size {hidden} is not divisible by {heads} heads"
        )));
    }
    Ok(hidden / heads)
}

fn gelu_kind(name: &str) -> Result<Activation> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        other => Err(Error::Config(format!(
            "activation '{other}' is not supported"
        ))),
    }
}

fn rotary(dims: usize, head_dim: usize, theta: f64, pairs: RopePairs) -> Result<Positions> {
    if dims == 0 || dims > head_dim || !dims.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "rotary dims {dims} must be even and at most head_dim {head_dim}"
        )));
    }
    let inv_freq = (0..dims / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / dims as f64)) as f32)
        .collect();
    Ok(Positions::Rotary {
        dims,
        pairs,
        inv_freq,
    })
}

/// MPT's slopes: geometric in 2^(-max_bias * i / n) over the next power of two of the head
/// count, taking the odd then even entries when the head count is not a power of two.
pub fn mpt_alibi_slopes(heads: usize, max_bias: f64) -> Vec<f32> {
    let pow2 = heads.next_power_of_two();
    let all: Vec<f32> = (1..=pow2)
        .map(|i| (1.0 / 2f64.powf(i as f64 * max_bias / pow2 as f64)) as f32)
        .collect();
    if pow2 == heads {
        return all;
    }
    let odd = all.iter().skip(1).step_by(2);
    let even = all.iter().step_by(2);
    odd.chain(even).take(heads).copied().collect()
}

/// Typed access to a config.json object with errors that name the missing key.
struct HfConfig<'a>(&'a Value);

impl HfConfig<'_> {
    fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)
            .ok_or_else(|| Error::Config(format!("missing string field '{key}'")))
    }
    fn opt_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)
            .ok_or_else(|| Error::Config(format!("missing integer field '{key}'")))
    }
    fn opt_usize(&self, key: &str) -> Option<usize> {
        self.opt_u64(key).map(|v| v as usize)
    }
    fn opt_u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }
    fn opt_f64(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(Value::as_f64)
    }
    fn opt_bool(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(Value::as_bool)
    }
    /// An id or a list of ids.
    fn ids(&self, key: &str) -> Vec<u32> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_power_of_two() {
        // MPT-7B, 32 heads, max bias 8: slope_i = 2^(-8 i / 32) = 2^(-i/4).
        let s = mpt_alibi_slopes(32, 8.0);
        assert_eq!(s.len(), 32);
        assert!((s[0] - 2f32.powf(-0.25)).abs() < 1e-7);
        assert!((s[31] - 2f32.powf(-8.0)).abs() < 1e-9);
    }

    #[test]
    fn alibi_slopes_odd_heads_interleave() {
        // 3 heads -> 4 base slopes 2^-2, 2^-4, 2^-6, 2^-8; odd then even entries.
        let s = mpt_alibi_slopes(3, 8.0);
        assert_eq!(s, vec![2f32.powi(-4), 2f32.powi(-8), 2f32.powi(-2)]);
    }

    #[test]
    fn unknown_model_type_is_named() {
        let err =
            ModelConfig::from_hf_value(&serde_json::json!({"model_type": "falcon"})).unwrap_err();
        assert!(
            matches!(err, Error::UnknownArchitecture(ref a) if a == "falcon"),
            "{err}"
        );
    }
}
