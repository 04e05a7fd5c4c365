//! The CUDA sources, compiled once per backend by NVRTC for the device's architecture with the
//! chosen storage type, and the launch helper.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, sys};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use super::{CudaDtype, cuda_err};
use crate::error::{Error, Result};

pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel file, by name, in kernels/; the matrix-vector files start with gemv.cuh.
pub const SOURCES: [(&str, &str); 7] = [
    ("embed.cu", include_str!("../../../kernels/embed.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    (
        "matmul.cu",
        concat!(
            include_str!("../../../kernels/gemv.cuh"),
            include_str!("../../../kernels/matmul.cu")
        ),
    ),
    (
        "activation.cu",
        include_str!("../../../kernels/activation.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("evict.cu", include_str!("../../../kernels/evict.cu")),
    ("sample.cu", include_str!("../../../kernels/sample.cu")),
];

/// kernels/quant.cu after gemv.cuh; `quant_source` instantiates its kernels for one format.
pub const QUANT: &str = concat!(
    include_str!("../../../kernels/gemv.cuh"),
    include_str!("../../../kernels/quant.cu")
);

/// The source of one block format's kernels (`name` as in quant::FORMATS): QUANT with the
/// format's instantiation line.
pub fn quant_source(name: &str) -> String {
    format!("{QUANT}\nQUANT_KERNELS({name}, {})\n", name.to_lowercase())
}

/// Compiles one kernel file to PTX for `arch` (e.g. "sm_90"); errors carry NVRTC's log.
pub fn compile(
    name: &str,
    source: &str,
    arch: &str,
    dtype: CudaDtype,
) -> Result<cudarc::nvrtc::Ptx> {
    let define = match dtype {
        CudaDtype::F16 => "W_F16",
        CudaDtype::Bf16 => "W_BF16",
        CudaDtype::F32 => "W_F32",
    };
    let full = format!("#define {define}\n{COMMON}\n{source}");
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(name.to_string()),
        ..Default::default()
    };
    compile_ptx_with_opts(full, options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Backend {
            backend: "cuda",
            reason: format!("NVRTC failed on kernels/{name}:\n{}", log.to_string_lossy()),
        },
        other => cuda_err(other),
    })
}

pub struct Kernels {
    pub embed: CudaFunction,
    pub add_positions: CudaFunction,
    pub norm: CudaFunction,
    /// gemv[r - 1] multiplies r rows, and so does gemv_pair.
    pub gemv: [CudaFunction; 4],
    pub gemv_pair: [CudaFunction; 4],
    pub to_wt: CudaFunction,
    pub bias_act: CudaFunction,
    pub gelu: CudaFunction,
    pub swiglu: CudaFunction,
    pub add: CudaFunction,
    pub attn_append: CudaFunction,
    pub attn_prefill_softmax: CudaFunction,
    pub attn_prefill_columns: CudaFunction,
    /// decode_partial[i] reads each key with 2^i teams of lanes per warp.
    pub decode_partial: [CudaFunction; 4],
    pub decode_evict: CudaFunction,
    pub evict_rank: CudaFunction,
    pub compact_index: CudaFunction,
    pub compact_copy: CudaFunction,
    pub argmax: CudaFunction,
    pub sample: CudaFunction,
}

impl Kernels {
    pub fn compile(ctx: &Arc<CudaContext>, arch: &str, dtype: CudaDtype) -> Result<Kernels> {
        let mut modules = Vec::new();
        for (name, source) in SOURCES {
            modules.push(
                ctx.load_module(compile(name, source, arch, dtype)?)
                    .map_err(cuda_err)?,
            );
        }
        let f = |file: usize, name: &str| modules[file].load_function(name).map_err(cuda_err);
        // A matrix-vector kernel's instances for one to four rows (kernels/matmul.cu).
        let by_rows = |name: &str| -> Result<[CudaFunction; 4]> {
            Ok([
                f(2, &format!("{name}1"))?,
                f(2, &format!("{name}2"))?,
                f(2, &format!("{name}3"))?,
                f(2, &format!("{name}4"))?,
            ])
        };
        Ok(Kernels {
            embed: f(0, "embed")?,
            add_positions: f(0, "add_positions")?,
            norm: f(1, "norm_rows")?,
            gemv: by_rows("gemv")?,
            gemv_pair: by_rows("gemv_pair")?,
            to_wt: f(2, "to_wt")?,
            bias_act: f(2, "bias_act")?,
            gelu: f(3, "gelu")?,
            swiglu: f(3, "swiglu")?,
            add: f(3, "add")?,
            attn_append: f(4, "attn_append")?,
            attn_prefill_softmax: f(4, "attn_prefill_softmax")?,
            attn_prefill_columns: f(4, "attn_prefill_columns")?,
            decode_partial: [
                f(4, "decode_partial1")?,
                f(4, "decode_partial2")?,
                f(4, "decode_partial4")?,
                f(4, "decode_partial8")?,
            ],
            decode_evict: f(5, "decode_evict")?,
            evict_rank: f(5, "evict_rank")?,
            compact_index: f(5, "compact_index")?,
            compact_copy: f(5, "compact_copy")?,
            argmax: f(6, "argmax")?,
            sample: f(6, "sample")?,
        })
    }
}

/// A kernel argument: a u32, a device pointer (0 for null), an f32 or a decode batch.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    U(u32),
    P(u64),
    F(f32),
    Seqs(&'a super::attention::SeqBatch),
}

/// Launches `f` on `stream`. With `overlap` (devices of compute capability 9.0 and later) the
/// kernel may start while the previous kernel in the stream finishes: every kernel waits in
/// `await_inputs` (kernels/common.cuh) before it reads what earlier kernels wrote.
pub fn launch(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg],
    overlap: bool,
) -> Result<()> {
    let mut params: Vec<*mut c_void> = args
        .iter()
        .map(|a| match a {
            Arg::U(v) => v as *const u32 as *mut c_void,
            Arg::P(v) => v as *const u64 as *mut c_void,
            Arg::F(v) => v as *const f32 as *mut c_void,
            Arg::Seqs(v) => *v as *const super::attention::SeqBatch as *mut c_void,
        })
        .collect();
    let mut attribute = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value: sys::CUlaunchAttributeValue {
            programmaticStreamSerializationAllowed: 1,
        },
    };
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: overlap as u32,
    };
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: every kernel's parameter list is the argument list its caller passes, the
    // pointers are live device buffers large enough for the launch (checked by the callers),
    // and `params` points into `args`, which outlives the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(cuda_err)
}
