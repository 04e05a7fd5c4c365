//! Which block format each matrix of a model is kept in when its source holds floats: random
//! weights for `keyformer bench --weights q4_k_m`, and float matrices quantized while they load
//! (`--quantize q8_0`: Hugging Face folders, F16/F32 GGUF files).
//!
//! A plan is either one format for every matrix or one of llama.cpp's mixes, which give a few
//! matrices more bits (our reading of llama.cpp's `llama_tensor_get_type`, for dense models):
//! - the output projection (and the embedding when the two are tied) is Q6_K, unless the mix's
//!   base format is Q8_0;
//! - Q4_K_M and Q5_K_M give Q6_K to attention's v projection and the MLP's down projection in
//!   the layers `more_bits` picks (the first and last eighth, and every third between), and a
//!   fused q|k|v projection is Q5_K (Q4_K_M) or Q6_K (Q5_K_M);
//! - a matrix whose rows are not whole 256-value blocks falls back to a 32-value format (Q4_K to
//!   Q5_0, Q5_K to Q5_1, Q6_K to Q8_0), and to floats when not whole 32-value blocks either.
//!
//! Norms, biases and matrices a source must transpose (GPT-2's Conv1D) stay f32.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::arch::{Layout, Proj, ProjTensors};
use crate::model::config::ModelConfig;
use crate::model::quant::{self, Format};

/// How the matrices of a model are stored.
#[derive(Clone, Copy, Debug)]
pub enum WeightKind {
    /// As floats (the backend's own weight type: f16 on GPUs, f32 on the CPU).
    Float,
    /// Every matrix in one block format.
    Uniform(&'static Format),
    /// A llama.cpp mix with this base format (Q4_K for Q4_K_M, Q5_K for Q5_K_M).
    Mix(&'static Format),
}

/// The names `WeightKind::parse` accepts, for help texts and messages.
pub const WEIGHT_KIND_NAMES: &str = "f16, q4_k_m, q5_k_m, or one block format: q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q5_1, q5_0, \
     q4_1, q4_0";

impl PartialEq for WeightKind {
    fn eq(&self, other: &WeightKind) -> bool {
        match (self, other) {
            (WeightKind::Float, WeightKind::Float) => true,
            (WeightKind::Uniform(a), WeightKind::Uniform(b))
            | (WeightKind::Mix(a), WeightKind::Mix(b)) => a.id == b.id,
            _ => false,
        }
    }
}

impl WeightKind {
    /// `f16` (or `f32`, `bf16`: floats), `q4_k_m`, `q5_k_m`, or a writable block format's name
    /// (`q8_0`, `q6_k`, ...), any case.
    pub fn parse(name: &str) -> Result<WeightKind> {
        let lower = name.to_ascii_lowercase();
        let mix = |base: &str| quant::by_name(base).map(WeightKind::Mix);
        let kind = match lower.as_str() {
            "f16" | "f32" | "bf16" => Some(WeightKind::Float),
            "q4_k_m" => mix("Q4_K"),
            "q5_k_m" => mix("Q5_K"),
            _ => quant::by_name(&lower)
                .filter(|f| f.can_quantize() && f.block_values > 1)
                .map(WeightKind::Uniform),
        };
        kind.ok_or_else(|| {
            Error::InvalidInput(format!(
                "unknown weight type '{name}' (supported: {WEIGHT_KIND_NAMES})"
            ))
        })
    }

    pub fn name(&self) -> String {
        match self {
            WeightKind::Float => "f16".into(),
            WeightKind::Uniform(f) => f.name.to_ascii_lowercase(),
            WeightKind::Mix(f) => format!("{}_m", f.name.to_ascii_lowercase()),
        }
    }
}

/// llama.cpp's choice of layers for more bits: the first and last eighth and every third layer
/// between.
fn more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

fn format(name: &str) -> &'static Format {
    quant::by_name(name).expect("the format table lists every K and legacy format")
}

/// The block format of each matrix, by tensor name.
#[derive(Default)]
pub struct WeightPlan {
    formats: HashMap<String, &'static Format>,
}

impl WeightPlan {
    /// The plan of `kind` for the matrices of `cfg` named as in `layout`.
    pub fn new(kind: WeightKind, cfg: &ModelConfig, layout: Layout) -> WeightPlan {
        let base = match kind {
            WeightKind::Float => return WeightPlan::default(),
            WeightKind::Uniform(f) | WeightKind::Mix(f) => f,
        };
        let mix = matches!(kind, WeightKind::Mix(_));
        let q6_k = format("Q6_K");
        let output = if mix && base.name != "Q8_0" {
            q6_k
        } else {
            base
        };
        let more = |i: usize| {
            if mix && more_bits(i, cfg.layers) {
                q6_k
            } else {
                base
            }
        };
        let mut formats = HashMap::new();
        // Matrices by their names without `.weight`.
        let mut set = |names: Vec<String>, f: &'static Format| {
            for n in names {
                formats.insert(format!("{n}.weight"), f);
            }
        };
        let g = (cfg.arch.globals)(layout);
        set(vec![g.head], output);
        let embed = if cfg.tied_embeddings { output } else { base };
        set(
            g.embed
                .strip_suffix(".weight")
                .into_iter()
                .map(String::from)
                .collect(),
            embed,
        );
        let pos = g
            .pos_embed
            .as_deref()
            .and_then(|p| p.strip_suffix(".weight"));
        set(pos.into_iter().map(String::from).collect(), base);
        for i in 0..cfg.layers {
            let l = (cfg.arch.layer)(cfg, layout, i);
            match &l.qkv.proj {
                // The last of q, k, v is v.
                Proj::Stack(names) => {
                    let (v, qk) = names
                        .split_last()
                        .map_or((None, &[][..]), |(v, qk)| (Some(v), qk));
                    set(qk.to_vec(), base);
                    set(v.into_iter().cloned().collect(), more(i));
                }
                Proj::One(n) => {
                    let fused = match (mix, base.name) {
                        (true, "Q4_K") => format("Q5_K"),
                        (true, "Q5_K") => q6_k,
                        _ => base,
                    };
                    set(vec![n.clone()], fused);
                }
                Proj::Conv1d(_) => {}
            }
            set(names(&l.attn_out), base);
            set(names(&l.mlp_in), base);
            set(names(&l.mlp_out), more(i));
        }
        WeightPlan { formats }
    }

    /// The format a matrix `name` of `cols` columns is stored in, after llama.cpp's fallback for
    /// rows that are not whole blocks; `None` keeps it as floats.
    pub fn format_for(&self, name: &str, cols: usize) -> Option<&'static Format> {
        let f = *self.formats.get(name)?;
        let f = if cols.is_multiple_of(f.block_values) {
            f
        } else {
            match f.name {
                "Q4_K" => format("Q5_0"),
                "Q5_K" => format("Q5_1"),
                "Q6_K" => format("Q8_0"),
                "Q2_K" | "Q3_K" => format("Q4_0"),
                _ => f,
            }
        };
        cols.is_multiple_of(f.block_values).then_some(f)
    }

    pub fn is_empty(&self) -> bool {
        self.formats.is_empty()
    }

    /// How many matrices get each format, for messages ("Q4_K x 193, Q6_K x 33").
    pub fn summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for f in self.formats.values() {
            match counts.iter_mut().find(|(n, _)| *n == f.name) {
                Some((_, c)) => *c += 1,
                None => counts.push((f.name, 1)),
            }
        }
        counts.sort();
        let parts: Vec<String> = counts.iter().map(|(n, c)| format!("{n} x {c}")).collect();
        parts.join(", ")
    }
}

/// The matrix names of a projection (without `.weight`); none for a transposed Conv1D.
fn names(p: &ProjTensors) -> Vec<String> {
    match &p.proj {
        Proj::One(n) => vec![n.clone()],
        Proj::Stack(ns) => ns.clone(),
        Proj::Conv1d(_) => Vec::new(),
    }
}
