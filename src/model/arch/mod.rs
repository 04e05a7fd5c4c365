//! Architectures: one file each, listed once in `ARCHITECTURES`. A file parses its config
//! (Hugging Face config.json and, where llama.cpp writes one, GGUF metadata) into the
//! backend-neutral `ModelConfig`, and names its tensors in both layouts as data (`LayerTensors`).
//! Nothing outside this folder matches on an architecture's name.

mod gemma;
mod gpt2;
mod gptj;
mod llama;
mod mistral;
mod mpt;
mod phi3;
mod qwen2;
mod qwen3;

pub use llama::LLAMA;

use crate::error::{Error, Result};
use crate::model::config::{GgufConfig, HfConfig, ModelConfig};

/// Per-layer windows from `layer_types` ("sliding_attention" layers attend to
/// `sliding_window` tokens, "full_attention" ones to all), where the config lists them.
pub(crate) fn layer_types(c: &HfConfig, layers: usize) -> Result<Option<Vec<Option<usize>>>> {
    let Some(types) = c.get("layer_types") else {
        return Ok(None);
    };
    let bad = || {
        Error::Config(format!(
            "field 'layer_types' is {types}, expected {layers} layer types"
        ))
    };
    let types = types
        .as_array()
        .filter(|t| t.len() == layers)
        .ok_or_else(bad)?;
    let mut window = None;
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => {
                if window.is_none() {
                    window = Some(c.usize("sliding_window")?.max(1));
                }
                Ok(window)
            }
            _ => Err(Error::Config(format!(
                "layer type {t} is not supported (supported: full_attention, sliding_attention)"
            ))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Which checkpoint layout tensor names are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face safetensors names (`model.layers.0.self_attn.q_proj.weight`).
    Hf,
    /// llama.cpp's GGUF names (`blk.0.attn_q.weight`).
    Gguf,
}

/// One architecture: how to read its config, and where its tensors are.
pub struct Architecture {
    /// The name reports and errors use; also its first Hugging Face `model_type`.
    pub name: &'static str,
    /// Every Hugging Face `model_type` this file reads.
    pub hf_types: &'static [&'static str],
    /// llama.cpp's `general.architecture` value, where GGUF files of it are read.
    pub gguf_name: Option<&'static str>,
    pub from_hf: fn(&HfConfig) -> Result<ModelConfig>,
    pub from_gguf: Option<fn(&GgufConfig) -> Result<ModelConfig>>,
    /// The tensors of layer `i`.
    pub layer: fn(&ModelConfig, Layout, usize) -> LayerTensors,
    /// The tensors outside the layers.
    pub globals: fn(Layout) -> GlobalTensors,
}

impl std::fmt::Debug for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Every architecture the engine runs.
pub static ARCHITECTURES: &[&Architecture] = &[
    &gpt2::GPT2,
    &gptj::GPTJ,
    &mpt::MPT,
    &llama::LLAMA,
    &mistral::MISTRAL,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &phi3::PHI3,
    &gemma::GEMMA2,
    &gemma::GEMMA3,
];

fn supported(names: impl Iterator<Item = &'static str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// The architecture of a Hugging Face `model_type`.
pub fn by_hf_type(model_type: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.hf_types.contains(&model_type))
        .copied()
        .ok_or_else(|| Error::UnknownArchitecture {
            name: model_type.to_string(),
            supported: supported(
                ARCHITECTURES
                    .iter()
                    .flat_map(|a| a.hf_types.iter().copied()),
            ),
        })
}

/// The architecture of a GGUF file's `general.architecture`.
pub fn by_gguf_name(name: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.gguf_name == Some(name))
        .copied()
        .ok_or_else(|| Error::UnknownArchitecture {
            name: format!("{name} (GGUF)"),
            supported: supported(ARCHITECTURES.iter().filter_map(|a| a.gguf_name)),
        })
}

/// A norm: `{prefix}.weight`, and `{prefix}.bias` when it has one.
#[derive(Clone, Debug)]
pub struct NormTensors {
    pub prefix: String,
    pub bias: bool,
    /// The checkpoint stores weight - 1 (Gemma's Hugging Face norms): add it back.
    pub plus_one: bool,
}

/// Where a projection's matrix (and bias) comes from.
#[derive(Clone, Debug)]
pub enum Proj {
    /// One [n_out, n_in] matrix `{name}.weight` as PyTorch stores it.
    One(String),
    /// GPT-2's Conv1D: one [n_in, n_out] matrix, transposed when loaded.
    Conv1d(String),
    /// Several matrices stacked in order into one (q, k, v, or gate and up); the loader knows
    /// each part's rows from the config.
    Stack(Vec<String>),
}

/// A projection and whether it has a bias (`{name}.bias` beside each matrix).
#[derive(Clone, Debug)]
pub struct ProjTensors {
    pub proj: Proj,
    pub bias: bool,
}

impl ProjTensors {
    pub fn one(name: String, bias: bool) -> Self {
        ProjTensors {
            proj: Proj::One(name),
            bias,
        }
    }

    pub fn stack(names: Vec<String>, bias: bool) -> Self {
        ProjTensors {
            proj: Proj::Stack(names),
            bias,
        }
    }
}

/// The tensors of one layer, in the engine's block order.
#[derive(Clone, Debug)]
pub struct LayerTensors {
    pub attn_norm: NormTensors,
    /// [q | k | v] rows.
    pub qkv: ProjTensors,
    pub attn_out: ProjTensors,
    /// None when the MLP reads the attention's norm (a parallel block).
    pub mlp_norm: Option<NormTensors>,
    /// [ffn] rows for GELU models, [gate | up] for gated ones.
    pub mlp_in: ProjTensors,
    pub mlp_out: ProjTensors,
    /// Per-head RMSNorms of q and k (Qwen3, Gemma 3).
    pub qk_norm: Option<(NormTensors, NormTensors)>,
    /// Norms of the attention's and the MLP's outputs (Gemma).
    pub post_attn_norm: Option<NormTensors>,
    pub post_mlp_norm: Option<NormTensors>,
}

/// The tensors outside the layers.
#[derive(Clone, Debug)]
pub struct GlobalTensors {
    pub embed: String,
    /// Learned absolute positions, for architectures that have them.
    pub pos_embed: Option<String>,
    pub final_norm: NormTensors,
    /// The output projection's prefix; absent from a checkpoint that ties it to the embedding.
    pub head: String,
    /// Whether the output projection has a bias (GPT-J's does).
    pub head_bias: bool,
}

/// A `{prefix}.{suffix}` name maker for one layer's tensors.
pub(crate) struct Prefix(pub String);

impl Prefix {
    pub fn of(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.0)
    }

    pub fn norm(&self, suffix: &str, bias: bool) -> NormTensors {
        NormTensors {
            prefix: self.of(suffix),
            bias,
            plus_one: false,
        }
    }

    pub fn one(&self, suffix: &str, bias: bool) -> ProjTensors {
        ProjTensors::one(self.of(suffix), bias)
    }

    pub fn stack(&self, suffixes: &[&str], bias: bool) -> ProjTensors {
        ProjTensors::stack(suffixes.iter().map(|s| self.of(s)).collect(), bias)
    }
}

/// llama.cpp's names, shared by every architecture it writes in the Llama layout.
pub(crate) fn gguf_layer(i: usize, qkv_bias: bool) -> LayerTensors {
    let p = Prefix(format!("blk.{i}"));
    LayerTensors {
        attn_norm: p.norm("attn_norm", false),
        qkv: p.stack(&["attn_q", "attn_k", "attn_v"], qkv_bias),
        attn_out: p.one("attn_output", false),
        mlp_norm: Some(p.norm("ffn_norm", false)),
        mlp_in: p.stack(&["ffn_gate", "ffn_up"], false),
        mlp_out: p.one("ffn_down", false),
        qk_norm: None,
        post_attn_norm: None,
        post_mlp_norm: None,
    }
}

pub(crate) fn gguf_globals() -> GlobalTensors {
    GlobalTensors {
        embed: "token_embd.weight".into(),
        pos_embed: None,
        final_norm: NormTensors {
            prefix: "output_norm".into(),
            bias: false,
            plus_one: false,
        },
        head: "output".into(),
        head_bias: false,
    }
}
