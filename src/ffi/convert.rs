//! C structs to and from the library's types. Enum-valued fields arrive as plain integers and are
//! range-checked here: an out-of-range value from C is an error, never undefined behaviour.

use std::ffi::CStr;
use std::sync::Mutex;

use super::handles::snapshot;
use super::status::{Failure, Outcome, buffer_arg, fill, out_arg, slice_arg, str_arg};
use super::{
    kf_batch_params, kf_cache_params, kf_generate_params, kf_model_params, kf_policy, kf_stats,
    kf_status,
};
use crate::backend::cuda::CudaDtype;
use crate::engine::generate::GenerateParams;
use crate::engine::planner::BatchLimits;
use crate::engine::sampling::SamplingParams;
use crate::engine::select::{BackendChoice, BackendOptions};
use crate::kv::policy::{Budget, CacheConfig, Policy};
use crate::kv::stats::CacheStats;
use crate::model::mix::WeightKind;

pub fn status_name(status: i32) -> &'static CStr {
    use kf_status::*;
    let all = [
        (KF_OK, c"KF_OK"),
        (KF_ERR_NULL_ARGUMENT, c"KF_ERR_NULL_ARGUMENT"),
        (KF_ERR_INVALID_ARGUMENT, c"KF_ERR_INVALID_ARGUMENT"),
        (KF_ERR_INVALID_UTF8, c"KF_ERR_INVALID_UTF8"),
        (KF_ERR_INVALID_HANDLE, c"KF_ERR_INVALID_HANDLE"),
        (KF_ERR_BUFFER_TOO_SMALL, c"KF_ERR_BUFFER_TOO_SMALL"),
        (KF_ERR_BUSY, c"KF_ERR_BUSY"),
        (KF_ERR_NOT_FOUND, c"KF_ERR_NOT_FOUND"),
        (KF_ERR_IO, c"KF_ERR_IO"),
        (KF_ERR_MODEL, c"KF_ERR_MODEL"),
        (KF_ERR_BACKEND, c"KF_ERR_BACKEND"),
        (KF_ERR_INVALID_STATE, c"KF_ERR_INVALID_STATE"),
        (KF_ERR_INTERNAL, c"KF_ERR_INTERNAL"),
    ];
    all.iter()
        .find(|(s, _)| *s as i32 == status)
        .map_or(c"unknown status", |(_, name)| name)
}

pub fn model_params_default() -> kf_model_params {
    kf_model_params {
        backend: super::kf_backend::KF_BACKEND_AUTO as i32,
        device: 0,
        dtype: super::kf_dtype::KF_DTYPE_F16 as i32,
        quantize: std::ptr::null(),
    }
}

/// kf_model_params.quantize: NULL or "" for floats, else a `WeightKind` name.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub unsafe fn weight_kind(p: *const std::ffi::c_char) -> Outcome<WeightKind> {
    if p.is_null() {
        return Ok(WeightKind::Float);
    }
    // SAFETY: the caller's promise above.
    let name = unsafe { str_arg(p, "quantize") }?;
    if name.is_empty() {
        return Ok(WeightKind::Float);
    }
    Ok(WeightKind::parse(name)?)
}

pub fn cache_params_default() -> kf_cache_params {
    let d = CacheConfig::default();
    kf_cache_params {
        policy: policy_value(d.policy) as i32,
        kv_ratio: match d.budget {
            Budget::Ratio(r) => r,
            Budget::Tokens(_) => 0.5,
        },
        kv_budget: 0,
        recent_ratio: d.recent_ratio,
        sinks: -1,
        tau_init: d.tau_init,
        tau_end: d.tau_end,
        seed: d.seed,
        prefill_chunk: d.prefill_chunk.unwrap_or(0),
    }
}

pub fn generate_params_default() -> kf_generate_params {
    let d = GenerateParams::default();
    kf_generate_params {
        max_new_tokens: d.max_new_tokens,
        temperature: d.sampling.temperature,
        top_k: d.sampling.top_k,
        top_p: d.sampling.top_p,
        seed: d.sampling.seed,
        stop_strings: std::ptr::null(),
        n_stop_strings: 0,
        stop_at_eos: d.stop_at_eos as i32,
        cache: cache_params_default(),
    }
}

fn policy_value(p: Policy) -> kf_policy {
    match p {
        Policy::Full => kf_policy::KF_POLICY_FULL,
        Policy::Window => kf_policy::KF_POLICY_WINDOW,
        Policy::Streaming => kf_policy::KF_POLICY_STREAMING,
        Policy::H2o => kf_policy::KF_POLICY_H2O,
        Policy::Keyformer => kf_policy::KF_POLICY_KEYFORMER,
    }
}

/// The entry of `table` whose first value is `value`, or an error naming the field.
fn lookup<T: Copy>(field: &str, value: i32, table: &[(i32, T)]) -> Outcome<T> {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map(|&(_, t)| t)
        .ok_or_else(|| {
            let valid: Vec<String> = table.iter().map(|(v, _)| v.to_string()).collect();
            Failure::invalid(format!(
                "{field} {value} is out of range (valid: {})",
                valid.join(", ")
            ))
        })
}

pub fn backend_options(p: &kf_model_params) -> Outcome<BackendOptions> {
    use super::kf_backend::*;
    use super::kf_dtype::*;
    let backend = lookup(
        "backend",
        p.backend,
        &[
            (KF_BACKEND_AUTO as i32, BackendChoice::Auto),
            (KF_BACKEND_CPU as i32, BackendChoice::Cpu),
            (KF_BACKEND_CUDA as i32, BackendChoice::Cuda),
            (KF_BACKEND_WGPU as i32, BackendChoice::Wgpu),
        ],
    )?;
    let dtype = lookup(
        "dtype",
        p.dtype,
        &[
            (KF_DTYPE_F16 as i32, CudaDtype::F16),
            (KF_DTYPE_BF16 as i32, CudaDtype::Bf16),
            (KF_DTYPE_F32 as i32, CudaDtype::F32),
        ],
    )?;
    Ok(BackendOptions {
        backend,
        device: p.device as usize,
        dtype,
    })
}

/// Zero means "as many as fit" and "the default memory".
pub fn batch_limits(p: &kf_batch_params) -> BatchLimits {
    BatchLimits {
        max_batch: Some(p.max_batch).filter(|&n| n > 0),
        memory: Some(p.memory_limit).filter(|&m| m > 0),
    }
}

/// The cache settings; their ranges are checked where they are used (`CacheConfig::plan`).
pub fn cache_config(c: &kf_cache_params) -> Outcome<CacheConfig> {
    let policy = lookup(
        "cache.policy",
        c.policy,
        &Policy::ALL.map(|p| (policy_value(p) as i32, p)),
    )?;
    let sinks = match c.sinks {
        -1 => None,
        s if s >= 0 => Some(s as usize),
        s => {
            return Err(Failure::invalid(format!(
                "cache.sinks {s} is out of range (-1 for the policy's default, or >= 0)"
            )));
        }
    };
    let config = CacheConfig {
        policy,
        budget: Budget::from_tokens_or_ratio(c.kv_budget, c.kv_ratio),
        recent_ratio: c.recent_ratio,
        sinks,
        tau_init: c.tau_init,
        tau_end: c.tau_end,
        seed: c.seed,
        prefill_chunk: (c.prefill_chunk > 0).then_some(c.prefill_chunk),
    };
    config.validate()?;
    Ok(config)
}

/// The generation settings at `p`, NULL meaning the defaults.
///
/// # Safety
/// `p` is NULL or a valid kf_generate_params whose stop strings are valid as documented.
pub unsafe fn generate_params(p: *const kf_generate_params) -> Outcome<GenerateParams> {
    let defaults = generate_params_default();
    // SAFETY: the caller's promise above.
    let p = unsafe { p.as_ref() }.unwrap_or(&defaults);
    // SAFETY: as above.
    let stops = unsafe { slice_arg(p.stop_strings, p.n_stop_strings, "stop_strings")? };
    let stop_strings = stops
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            // SAFETY: as above.
            let s = unsafe { str_arg(s, &format!("stop_strings[{i}]"))? };
            Ok(s.to_string())
        })
        .collect::<Outcome<Vec<_>>>()?;
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        seed: p.seed,
    };
    let params = GenerateParams {
        max_new_tokens: p.max_new_tokens,
        sampling,
        cache: cache_config(&p.cache)?,
        stop_strings,
        stop_at_eos: p.stop_at_eos != 0,
    };
    // The same check as the command line's and the library's.
    params.validate()?;
    Ok(params)
}

pub fn stats(s: &CacheStats) -> kf_stats {
    kf_stats {
        policy: policy_value(s.policy),
        budget: s.budget.unwrap_or(0),
        sinks: s.sinks,
        recent: s.recent,
        tokens_seen: s.tokens_seen,
        layers: s.layers.len(),
        kv_heads: s.layers.first().map_or(0, |l| l.kept.len()),
        kept: s
            .layers
            .iter()
            .flat_map(|l| l.kept.iter().copied())
            .max()
            .unwrap_or(0),
        kv_bytes_held: s.kv_bytes_held,
        kv_bytes_full: s.kv_bytes_full,
        evictions: s.evictions,
        compression_ratio: s.compression_ratio,
        tau: s.tau,
    }
}

/// Copies a statistics snapshot out to C: the struct, and the per-(layer, head) counts into
/// an optional buffer.
///
/// # Safety
/// `out` is NULL or writable; `kept` is NULL or has `kept_len` writable entries.
pub unsafe fn report_stats(
    latest: &Mutex<Option<CacheStats>>,
    owner: &str,
    out: *mut kf_stats,
    kept: *mut usize,
    kept_len: usize,
) -> Outcome {
    // SAFETY: the caller's promises above.
    let (out, kept) = unsafe { (out_arg(out, "stats")?, buffer_arg(kept, kept_len, "kept")?) };
    let latest = snapshot(latest).clone().ok_or_else(|| {
        Failure::new(
            kf_status::KF_ERR_INVALID_STATE,
            format!("nothing has run on this {owner} yet, so it has no cache"),
        )
    })?;
    *out = stats(&latest);
    let counts: Vec<usize> = latest.layers.iter().flat_map(|l| l.kept.clone()).collect();
    fill(&counts, kept, &mut 0, "the kept counts")
}
