//! Rotary scaling: the inverse frequencies (and attention factor) of each `rope_type` a config
//! may name, as Hugging Face transformers computes them. Every kind here is fixed for a model:
//! the frequencies do not change with the sequence's length.

use crate::error::{Error, Result};
use crate::model::config::{HfConfig, MAX_HEAD_DIM, Positions, RopePairs};

/// What a rope configuration does to a model.
pub struct Rope {
    pub positions: Positions,
    /// Scales q.k: the square of the factor the cos/sin tables are multiplied by (YaRN,
    /// LongRoPE) when the rotary turns whole heads; 1 otherwise.
    pub logit_scale: f32,
    /// A smaller context than `max_position_embeddings`, where the scaling is exact only up to
    /// there (see `Kind::Dynamic` and `Kind::LongRope`).
    pub max_context: Option<usize>,
}

/// The share of each head the rotary turns: `partial_rotary_factor`, in the rope parameters
/// (transformers 5) or beside them.
pub fn partial_factor(c: &HfConfig) -> Result<f64> {
    let params = c.opt_object("rope_parameters")?;
    let inner = match &params {
        Some(p) => p.opt_f64("partial_rotary_factor")?,
        None => None,
    };
    Ok(match inner {
        Some(f) => f,
        None => c.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
    })
}

/// The base frequencies theta^(-2i/dims) of a rotary over `dims` dimensions.
fn base_inv_freq(dims: usize, theta: f64) -> Vec<f64> {
    (0..dims / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dims as f64))
        .collect()
}

fn bad(what: String) -> Error {
    Error::Config(format!("rope scaling: {what}"))
}

/// Reads `rope_parameters` (transformers 5) or `rope_scaling` (older configs) and the rope
/// theta, for a rotary over the first `dims` of `head_dim` dimensions of a model whose config
/// says `max_positions`.
pub fn from_hf(
    c: &HfConfig,
    dims: usize,
    head_dim: usize,
    pairs: RopePairs,
    max_positions: usize,
) -> Result<Rope> {
    if head_dim > MAX_HEAD_DIM || dims == 0 || dims > head_dim || !dims.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "rotary dims {dims} must be even and at most head_dim {head_dim} (at most {MAX_HEAD_DIM})"
        )));
    }
    let params = c.opt_object("rope_parameters")?;
    let legacy = c.opt_object("rope_scaling")?;
    let r = params.as_ref().or(legacy.as_ref());
    let theta = match c.opt_f64("rope_theta")? {
        Some(t) => t,
        None => match r {
            Some(r) => r.opt_f64("rope_theta")?.unwrap_or(10000.0),
            None => 10000.0,
        },
    };
    from_params(c, r, theta, (dims, head_dim), pairs, max_positions)
}

/// The rotary of rope parameters `r` (a `rope_parameters` object, or one layer type's entry
/// in it) at base `theta`, for `dims` of `head_dim` dimensions.
pub fn from_params(
    c: &HfConfig,
    r: Option<&HfConfig>,
    theta: f64,
    (dims, head_dim): (usize, usize),
    pairs: RopePairs,
    max_positions: usize,
) -> Result<Rope> {
    if head_dim > MAX_HEAD_DIM || dims == 0 || dims > head_dim || !dims.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "rotary dims {dims} must be even and at most head_dim {head_dim} (at most {MAX_HEAD_DIM})"
        )));
    }
    let field = |k: &str| r.map_or(Ok(None), |r| r.opt_f64(k));
    if !(theta.is_finite() && theta > 1.0) {
        return Err(bad(format!("rope theta {theta} must be a number above 1")));
    }
    let kind = match r {
        Some(r) => r.opt_str("rope_type")?.or(r.opt_str("type")?),
        None => None,
    }
    .unwrap_or("default");
    let mut inv_freq = base_inv_freq(dims, theta);
    let factor = || -> Result<f64> {
        match field("factor")? {
            Some(f) if f >= 1.0 => Ok(f),
            Some(f) => Err(bad(format!("factor {f} must be at least 1"))),
            None => Err(bad(format!("'{kind}' needs a factor"))),
        }
    };
    // The context the model was trained at before scaling.
    let original = match r {
        Some(r) => r.opt_usize("original_max_position_embeddings")?,
        None => None,
    };
    let original = match original {
        Some(o) => Some(o),
        None => c.opt_usize("original_max_position_embeddings")?,
    };
    let mut logit_scale = 1.0;
    let mut max_context = None;
    match kind {
        "default" => {}
        "linear" => {
            let f = factor()?;
            inv_freq.iter_mut().for_each(|x| *x /= f);
        }
        // NTK scaling changes the frequencies only once the sequence outgrows the trained
        // context, and then with every new length; inside it, it is the plain rotary.
        "dynamic" => {
            factor()?;
            max_context = Some(max_positions);
        }
        "llama3" => {
            let f = factor()?;
            let low = field("low_freq_factor")?
                .ok_or_else(|| bad("llama3 needs low_freq_factor".into()))?;
            let high = field("high_freq_factor")?
                .ok_or_else(|| bad("llama3 needs high_freq_factor".into()))?;
            let old = original
                .ok_or_else(|| bad("llama3 needs original_max_position_embeddings".into()))?
                as f64;
            if !(high > low && low > 0.0) {
                return Err(bad(format!(
                    "llama3 needs high_freq_factor {high} above low_freq_factor {low} above 0"
                )));
            }
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            for x in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *x;
                if wavelen > low_wavelen {
                    *x /= f;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low) / (high - low);
                    *x = (1.0 - smooth) * *x / f + smooth * *x;
                }
            }
        }
        "yarn" => {
            let f = factor()?;
            let old = original.unwrap_or(max_positions) as f64;
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention = match field("attention_factor")? {
                Some(a) => a,
                None => match (field("mscale")?, field("mscale_all_dim")?) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(f, m) / mscale(f, all),
                    _ => mscale(f, 1.0),
                },
            };
            let beta_fast = field("beta_fast")?.unwrap_or(32.0);
            let beta_slow = field("beta_slow")?.unwrap_or(1.0);
            let truncate = match r {
                Some(r) => r.opt_bool("truncate")?.unwrap_or(true),
                None => true,
            };
            // The dimension whose wavelength turns `rotations` times over the old context.
            let dim_of = |rotations: f64| {
                dims as f64 * (old / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (dim_of(beta_fast), dim_of(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dims as f64 - 1.0));
            if low == high {
                high += 0.001;
            }
            for (i, x) in inv_freq.iter_mut().enumerate() {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolate = 1.0 - ramp;
                *x = *x / f * (1.0 - extrapolate) + *x * extrapolate;
            }
            logit_scale = (attention * attention) as f32;
        }
        // LongRoPE (Phi-3): per-frequency factors, short ones up to the original context and
        // long ones past it. Only the short ones are used, so the context stops there.
        "longrope" | "su" => {
            let old = original
                .ok_or_else(|| bad("longrope needs original_max_position_embeddings".into()))?;
            let short = r
                .map_or(Ok(None), |r| r.opt_f64s("short_factor"))?
                .ok_or_else(|| bad("longrope needs short_factor".into()))?;
            if short.len() != dims / 2 || short.iter().any(|&s| s <= 0.0) {
                return Err(bad(format!(
                    "longrope short_factor has {} entries, expected {} positive ones",
                    short.len(),
                    dims / 2
                )));
            }
            let scale = match field("factor")? {
                Some(f) => f,
                None => max_positions as f64 / old as f64,
            };
            let attention = match field("attention_factor")? {
                Some(a) => a,
                None if scale <= 1.0 => 1.0,
                None => (1.0 + scale.ln() / (old as f64).ln()).sqrt(),
            };
            inv_freq.iter_mut().zip(&short).for_each(|(x, s)| *x /= s);
            logit_scale = (attention * attention) as f32;
            max_context = Some(old.min(max_positions));
        }
        other => {
            return Err(Error::Config(format!(
                "rope type '{other}' is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)"
            )));
        }
    }
    // The factor multiplies cos and sin: q.k grows by its square where the whole head turns;
    // where only part of it does, only the turned dimensions are scaled.
    let (scale, logit_scale) = if dims == head_dim {
        (1.0, logit_scale)
    } else {
        (logit_scale.sqrt(), 1.0)
    };
    Ok(Rope {
        positions: Positions::Rotary {
            dims,
            pairs,
            inv_freq: inv_freq.into_iter().map(|x| x as f32).collect(),
            scale,
        },
        logit_scale,
        max_context,
    })
}
