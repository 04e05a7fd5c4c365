//! One model description for every architecture. Each architecture (src/model/arch/) reads its
//! Hugging Face config.json or GGUF metadata into this struct through the strict, typed readers
//! below; the forward pass reads only the struct, never an architecture's name.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::arch::{self, Architecture};
use crate::model::files;
use crate::model::gguf::{GgufFile, GgufValue};

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
        /// The rotated dimensions are multiplied by this (YaRN's and LongRoPE's attention
        /// factor where only part of each head turns; 1 otherwise: a whole-head factor is
        /// folded into the attention scale instead).
        scale: f32,
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
    /// GELU-tanh(gate) * up (Gemma).
    GeGluTanh,
}

impl Activation {
    /// Whether the MLP's first product is a fused [gate | up] pair.
    pub fn gated(self) -> bool {
        matches!(self, Activation::SwiGlu | Activation::GeGluTanh)
    }
}

/// A block's optional features; the default is none of them (no biases, no windows, no
/// scaling or capping), which the older architectures keep.
#[derive(Clone, Debug, Default)]
pub struct BlockFeatures {
    /// Biases on the q, k and v projections, on the attention's output projection, and on the
    /// MLP's projections (what the loader reads; GPT-2's and GPT-J's are in their tensor lists).
    pub qkv_bias: bool,
    pub out_bias: bool,
    pub mlp_bias: bool,
    /// Per layer, the attention window of a sliding-window layer (the tokens a query sees,
    /// itself included); empty when no layer has one.
    pub layer_window: Vec<Option<usize>>,
    /// The rotary of sliding-window layers, where it differs from `positions` (Gemma 3).
    pub window_positions: Option<Positions>,
    /// The embedding is multiplied by this before the first layer (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// Soft-capping: scores become cap * tanh(score / cap), in attention before the softmax
    /// and on the final logits (Gemma 2).
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: &'static Architecture,
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
    /// The output projection is the embedding matrix unless the checkpoint has its own.
    pub tied_embeddings: bool,
    /// What the block has beyond the plain layouts above (biases, windows, Gemma's pieces).
    pub block: BlockFeatures,
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

    /// Slots per layer and kv head a sequence of `prompt_len + max_new` tokens needs under
    /// `plan`: the plan's own, or a window's `window` (the tokens a decode step attends to)
    /// where that is more.
    pub fn cache_slots(
        &self,
        plan: &crate::kv::policy::CachePlan,
        prompt_len: usize,
        max_new: usize,
    ) -> usize {
        let needed = (prompt_len + max_new).min(self.max_context);
        let widest = self.block.layer_window.iter().flatten().max().copied();
        let window = widest.map_or(0, |w| w.min(needed));
        plan.capacity(prompt_len, max_new, self.max_context)
            .max(window)
    }

    /// The attention window of `layer`, when it is a sliding-window layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.block.layer_window.get(layer).copied().flatten()
    }

    /// The positions scheme of `layer`.
    pub fn positions_of(&self, layer: usize) -> &Positions {
        match (&self.block.window_positions, self.window(layer)) {
            (Some(local), Some(_)) => local,
            _ => &self.positions,
        }
    }

    pub fn from_hf_json(path: &Path) -> Result<ModelConfig> {
        let text = files::read_text(path, "config.json", files::CONFIG_JSON_LIMIT)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(path, "config.json", e.to_string()))?;
        Self::from_hf_value(&json).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// A Hugging Face config.json, read by the architecture its `model_type` names.
    pub fn from_hf_value(json: &Value) -> Result<ModelConfig> {
        let c = HfConfig::new(json)?;
        let arch = arch::by_hf_type(c.str("model_type")?)?;
        let cfg = (arch.from_hf)(&c)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A GGUF file's metadata, read by the architecture its `general.architecture` names.
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let name = g.architecture()?;
        let arch = arch::by_gguf_name(name)?;
        let read = arch.from_gguf.ok_or_else(|| Error::Unsupported {
            path: g.path().to_path_buf(),
            what: format!("GGUF architecture '{name}'"),
        })?;
        let cfg = read(&GgufConfig {
            file: g,
            arch: name,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let fields = [
            ("vocab_size", self.vocab_size, 1 << 23),
            ("hidden size", self.hidden, 1 << 17),
            ("layers", self.layers, 1 << 12),
            ("heads", self.heads, 1 << 12),
            ("kv heads", self.kv_heads, 1 << 12),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("ffn size", self.ffn_hidden, 1 << 20),
            ("context length", self.max_context, MAX_SIZE),
        ];
        for (name, value, max) in fields {
            if value == 0 || value > max {
                return Err(Error::Config(format!(
                    "{name} {value} is out of range (1 to {max})"
                )));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Config(format!(
                "{} heads is not a multiple of {} kv heads",
                self.heads, self.kv_heads
            )));
        }
        if !self.block.layer_window.is_empty() && self.block.layer_window.len() != self.layers {
            return Err(Error::Config(format!(
                "{} layer windows for {} layers",
                self.block.layer_window.len(),
                self.layers
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::Config(format!(
                "norm epsilon {} must be a positive number",
                self.norm_eps
            )));
        }
        if !(self.attn_scale.is_finite() && self.attn_scale > 0.0) {
            return Err(Error::Config(format!(
                "attention scale {} must be a positive number",
                self.attn_scale
            )));
        }
        Ok(())
    }
}

/// No size in a config may exceed this (16M), so an absurd value is refused before anything
/// is sized from it; `validate` then applies each field's own limit.
pub const MAX_SIZE: usize = 1 << 24;
/// The widest attention head of a supported model is 256; this leaves room above it.
pub const MAX_HEAD_DIM: usize = 1 << 12;

pub(crate) fn divide(hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "hidden size {hidden} is not divisible by {heads} heads"
        )));
    }
    Ok(hidden / heads)
}

pub(crate) fn gelu_kind(name: &str) -> Result<Activation> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        other => Err(Error::Config(format!(
            "activation '{other}' is not supported"
        ))),
    }
}

/// Rotary embedding on the first `dims` of `head_dim` with the usual inverse frequencies
/// theta^(-2i/dims).
pub(crate) fn rotary(
    dims: usize,
    head_dim: usize,
    theta: f64,
    pairs: RopePairs,
) -> Result<Positions> {
    if head_dim > MAX_HEAD_DIM || dims == 0 || dims > head_dim || !dims.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "rotary dims {dims} must be even and at most head_dim {head_dim} (at most {MAX_HEAD_DIM})"
        )));
    }
    if !(theta.is_finite() && theta > 1.0) {
        return Err(Error::Config(format!(
            "rope theta {theta} must be a number above 1"
        )));
    }
    let inv_freq = (0..dims / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / dims as f64)) as f32)
        .collect();
    Ok(Positions::Rotary {
        dims,
        pairs,
        inv_freq,
        scale: 1.0,
    })
}

/// Typed, strict access to a config.json object: a missing required field, or a field of the
/// wrong type or out of range, is an error naming the field and its value.
pub struct HfConfig<'a> {
    pub json: &'a serde_json::Map<String, Value>,
}

impl<'a> HfConfig<'a> {
    pub fn new(json: &'a Value) -> Result<HfConfig<'a>> {
        let json = json
            .as_object()
            .ok_or_else(|| Error::Config("config.json is not a JSON object".into()))?;
        Ok(HfConfig { json })
    }

    /// The field, where present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn wrong(key: &str, v: &Value, what: &str) -> Error {
        Error::Config(format!("field '{key}' is {v}, expected {what}"))
    }

    fn missing(key: &str, what: &str) -> Error {
        Error::Config(format!("missing field '{key}' ({what})"))
    }

    pub fn str(&self, key: &str) -> Result<&'a str> {
        self.opt_str(key)?
            .ok_or_else(|| Self::missing(key, "a string"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| Self::wrong(key, v, "a string")))
            .transpose()
    }

    /// A size: an integer from 0 to `MAX_SIZE`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Self::missing(key, "an integer"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| match v.as_u64() {
                Some(n) if n <= MAX_SIZE as u64 => Ok(n as usize),
                _ => Err(Self::wrong(
                    key,
                    v,
                    &format!("an integer from 0 to {MAX_SIZE}"),
                )),
            })
            .transpose()
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| Self::wrong(key, v, "a number"))
            })
            .transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Self::wrong(key, v, "true or false"))
            })
            .transpose()
    }

    /// A nested object (e.g. `rope_scaling`), where present and not null.
    pub fn opt_object(&self, key: &str) -> Result<Option<HfConfig<'a>>> {
        self.get(key)
            .map(|v| {
                v.as_object()
                    .map(|json| HfConfig { json })
                    .ok_or_else(|| Self::wrong(key, v, "an object"))
            })
            .transpose()
    }

    /// A list of finite numbers (e.g. longrope's factors).
    pub fn opt_f64s(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get(key)
            .map(|v| {
                let bad = || Self::wrong(key, v, "a list of numbers");
                let items = v.as_array().ok_or_else(bad)?;
                items
                    .iter()
                    .map(|x| x.as_f64().filter(|x| x.is_finite()).ok_or_else(bad))
                    .collect()
            })
            .transpose()
    }

    /// A token id or a list of them.
    pub fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| Self::wrong(key, v, "a token id or a list of token ids"))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(id).collect(),
            Some(v) => Ok(vec![id(v)?]),
        }
    }

    /// The special-token fields every architecture shares: (bos, eos ids).
    pub fn bos_eos(&self) -> Result<(Option<u32>, Vec<u32>)> {
        let bos = match self.ids("bos_token_id")?.as_slice() {
            [] => None,
            [id] => Some(*id),
            _ => {
                let v = &self.json["bos_token_id"];
                return Err(Self::wrong("bos_token_id", v, "one token id"));
            }
        };
        Ok((bos, self.ids("eos_token_id")?))
    }
}

/// Typed access to an architecture's GGUF metadata (`{arch}.{key}`), with the same limits.
pub struct GgufConfig<'a> {
    pub file: &'a GgufFile,
    /// The `general.architecture` prefix of the keys.
    pub arch: &'a str,
}

impl GgufConfig<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn malformed(&self, reason: String) -> Error {
        Error::malformed(self.file.path(), "GGUF", reason)
    }

    /// `{arch}.{k}`, where present.
    pub fn get(&self, k: &str) -> Option<&GgufValue> {
        self.file.get(&self.key(k))
    }

    pub fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if n <= MAX_SIZE as u64 => Ok(Some(n as usize)),
            _ => Err(self.malformed(format!(
                "metadata {} is {v:?}, expected an integer from 0 to {MAX_SIZE}",
                self.key(k)
            ))),
        }
    }

    pub fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| self.malformed(format!("missing metadata {}", self.key(k))))
    }

    pub fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        match v.as_f64().filter(|x| x.is_finite()) {
            Some(x) => Ok(Some(x)),
            None => Err(self.malformed(format!(
                "metadata {} is {v:?}, expected a number",
                self.key(k)
            ))),
        }
    }

    /// A `tokenizer.ggml.{k}` token id, where present.
    pub fn token_id(&self, k: &str) -> Result<Option<u32>> {
        let Some(v) = self.file.get(&format!("tokenizer.ggml.{k}")) else {
            return Ok(None);
        };
        match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
            Some(id) => Ok(Some(id)),
            None => Err(self.malformed(format!(
                "metadata tokenizer.ggml.{k} is {v:?}, expected a token id"
            ))),
        }
    }

    /// Whether the file has this tensor.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.file.has_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_is_named() {
        let err =
            ModelConfig::from_hf_value(&serde_json::json!({"model_type": "falcon"})).unwrap_err();
        assert!(
            matches!(err, Error::UnknownArchitecture { ref name, .. } if name == "falcon"),
            "{err}"
        );
    }
}
