//! WGSL sources (shaders/*.wgsl, embedded) and the compute pipelines built from them once, when
//! the backend opens. Each source is specialised by a small prelude: the weight and KV storage
//! types, and tree or subgroup reductions.

use std::borrow::Cow;

use super::device::{Gpu, Kernel};
use crate::error::Result;

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");
const NOISE: &str = include_str!("../../../shaders/noise.wgsl");
const EMBED: &str = include_str!("../../../shaders/embed.wgsl");
const ADD: &str = include_str!("../../../shaders/add.wgsl");
pub(super) const NORM_ROW: &str = include_str!("../../../shaders/norm_row.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const MATMUL_COOP: &str = include_str!("../../../shaders/matmul_coop.wgsl");
const ACTIVATION: &str = include_str!("../../../shaders/activation.wgsl");
pub(super) const GELU: &str = include_str!("../../../shaders/gelu.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const EVICT: &str = include_str!("../../../shaders/evict.wgsl");
const SAMPLE: &str = include_str!("../../../shaders/sample.wgsl");

/// How the shaders are specialised.
#[derive(Clone, Copy)]
pub(super) struct Variant {
    /// Weights (and so the KV cache) stored as f16 rather than f32.
    pub f16: bool,
    pub subgroups: bool,
    /// Many-row products on cooperative matrices (matmul_coop.wgsl); implies f16 and
    /// subgroups of 32.
    pub coop: bool,
}

/// The many-row product on cooperative matrices: the input rounded to f16, then the product.
pub(super) struct CoopMatmul {
    pub to_half: Kernel,
    pub matmul: Kernel,
}

pub(super) struct Kernels {
    pub embed: Kernel,
    /// x += y with y in the weight type (learned positions) and with y f32 (residuals).
    pub add_weight: Kernel,
    pub add: Kernel,
    pub norm: Kernel,
    pub matmul: Kernel,
    pub matmul_coop: Option<CoopMatmul>,
    pub gemv: Kernel,
    pub gemv_units: Kernel,
    pub gemv_units_rms: Kernel,
    pub gemv_swiglu_units_rms: Kernel,
    pub gemv_swiglu: Kernel,
    pub gemv_pair: Kernel,
    pub gemv_sum: Kernel,
    pub gemv_spans: Kernel,
    pub gelu_erf: Kernel,
    pub gelu_tanh: Kernel,
    pub swiglu: Kernel,
    pub geglu: Kernel,
    pub attention_prepare: Kernel,
    pub attention: Kernel,
    pub decode_partial: Kernel,
    pub decode_combine: Kernel,
    pub attention_score: Kernel,
    pub attention_score_sum: Kernel,
    pub decode_score_evict: Kernel,
    pub evict_rank: Kernel,
    pub evict_compact: Kernel,
    pub argmax: Kernel,
    pub sample: Kernel,
}

impl Kernels {
    pub fn build(gpu: &Gpu, v: Variant) -> Result<Kernels> {
        let wt = if v.f16 { "f16" } else { "f32" };
        let module = |name: &str, weight: &str, parts: &[&str], loop_bounds: bool| {
            module(gpu, v, name, weight, parts, loop_bounds)
        };
        let kernel = |module: &wgpu::ShaderModule, entry: &str| kernel(gpu, module, entry);
        let embed = module("embed", wt, &[EMBED], false);
        let add_weight = module("add", wt, &[ADD], false);
        let add = module("add f32", "f32", &[ADD], false);
        let norm = module("norm", wt, &[NORM_ROW, NORM], false);
        let matmul = module("matmul", wt, &[GELU, NORM_ROW, MATMUL], false);
        // The tiled matmul (prefill) is faster with the counters: on the H100, GPT-J's
        // 512-token prefill took 710 ms with them and 851-894 ms without.
        let tiled_parts: &[&str] = if v.coop {
            &[GELU, NORM_ROW, MATMUL, MATMUL_COOP]
        } else {
            &[GELU, NORM_ROW, MATMUL]
        };
        let matmul_tiled = module("matmul tiled", wt, tiled_parts, true);
        let activation = module("activation", wt, &[GELU, ACTIVATION], false);
        let attention = module("attention", wt, &[NOISE, ATTENTION], false);
        let evict = module("evict", wt, &[EVICT], false);
        let sample = module("sample", wt, &[SAMPLE], false);
        let kernels = Kernels {
            embed: kernel(&embed, "embed"),
            add_weight: kernel(&add_weight, "add"),
            add: kernel(&add, "add"),
            norm: kernel(&norm, "norm"),
            matmul: kernel(&matmul_tiled, "matmul"),
            matmul_coop: v.coop.then(|| CoopMatmul {
                to_half: kernel(&matmul_tiled, "to_half"),
                matmul: kernel(&matmul_tiled, "matmul_coop"),
            }),
            gemv: kernel(&matmul, "gemv"),
            gemv_units: kernel(&matmul, "gemv_units"),
            gemv_units_rms: kernel(&matmul, "gemv_units_rms"),
            gemv_swiglu_units_rms: kernel(&matmul, "gemv_swiglu_units_rms"),
            gemv_swiglu: kernel(&matmul, "gemv_swiglu"),
            gemv_pair: kernel(&matmul, "gemv_pair"),
            gemv_sum: kernel(&matmul, "gemv_sum"),
            gemv_spans: kernel(&matmul, "gemv_spans"),
            gelu_erf: kernel(&activation, "gelu_erf"),
            gelu_tanh: kernel(&activation, "gelu_tanh"),
            swiglu: kernel(&activation, "swiglu"),
            geglu: kernel(&activation, "geglu"),
            attention_prepare: kernel(&attention, "attention_prepare"),
            attention: kernel(&attention, "attention"),
            decode_partial: kernel(&attention, "decode_partial"),
            decode_combine: kernel(&attention, "decode_combine"),
            attention_score: kernel(&attention, "attention_score"),
            attention_score_sum: kernel(&attention, "attention_score_sum"),
            decode_score_evict: kernel(&attention, "decode_score_evict"),
            evict_rank: kernel(&evict, "evict_rank"),
            evict_compact: kernel(&evict, "evict_compact"),
            argmax: kernel(&sample, "argmax"),
            sample: kernel(&sample, "sample"),
        };
        // Shader and pipeline errors arrive through the device's error callback.
        gpu.check()?;
        Ok(kernels)
    }
}

/// A shader module of `parts` for weights stored as `weight` ("f16" or "f32"), after the
/// prelude every source shares (storage type aliases, common.wgsl, the reductions).
/// `loop_bounds`: whether naga adds a counter to every loop, so that a runaway loop cannot hang
/// the GPU.
pub(super) fn module(
    gpu: &Gpu,
    v: Variant,
    name: &str,
    weight: &str,
    parts: &[&str],
    loop_bounds: bool,
) -> wgpu::ShaderModule {
    let mut src = String::new();
    if weight == "f16" {
        src.push_str("enable f16;\n");
    }
    if parts.contains(&MATMUL_COOP) {
        src.push_str("enable wgpu_cooperative_matrix;\n");
    }
    let bytes = if weight == "f16" { 2 } else { 4 };
    // The KV cache is stored in the weights' type.
    src.push_str(&format!(
        "alias wt = {weight};\nalias kt = {weight};\nconst WT_BYTES: u32 = {bytes}u;\n"
    ));
    src.push_str(COMMON);
    src.push_str(if v.subgroups { REDUCE_SUBGROUP } else { REDUCE });
    parts.iter().for_each(|p| src.push_str(p));
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
    };
    // The counter cost SmolLM2's decode 12% on the H100, so most modules go without. Every
    // loop here is bounded by its dispatch's parameters, which the host checks; bounds and
    // division checks stay on.
    let checks = wgpu::ShaderRuntimeChecks {
        force_loop_bounding: loop_bounds,
        ..wgpu::ShaderRuntimeChecks::checked()
    };
    // SAFETY: the loops terminate (above); every other runtime check is on.
    unsafe { gpu.device.create_shader_module_trusted(desc, checks) }
}

/// The compute pipeline of `entry` in `module`, its bind group layout derived from the shader.
pub(super) fn kernel(gpu: &Gpu, module: &wgpu::ShaderModule, entry: &str) -> Kernel {
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
    let layout = pipeline.get_bind_group_layout(0);
    Kernel { pipeline, layout }
}
