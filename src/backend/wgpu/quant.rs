//! Weights kept in their file's block formats (Q4_K, Q8_0, ...): the format table, their
//! upload as segments of whole rows, and the products and embedding rows that read the blocks
//! directly (shaders/quant*.wgsl).

use std::cell::RefCell;

use super::device::{Kernel, backend_error};
use super::kernels::{self, GELU, NORM_ROW};
use super::{WgpuBackend, WgpuBuf, word};
use crate::error::Result;
use crate::model::quant::Format;
use crate::model::tensor::BlockMatrix;

const QUANT: &str = include_str!("../../../shaders/quant.wgsl");
const BLOCKS32: &str = include_str!("../../../shaders/quant_blocks32.wgsl");
const KQUANTS: &str = include_str!("../../../shaders/quant_kquants.wgsl");

/// A format the shaders read: ggml's name, and the WGSL function (in `source`) that decodes
/// eight values of a block.
struct ShaderFormat {
    name: &'static str,
    function: &'static str,
    source: &'static str,
}

const fn shader(name: &'static str, function: &'static str, source: &'static str) -> ShaderFormat {
    ShaderFormat {
        name,
        function,
        source,
    }
}

/// Every block format the wgpu backend keeps; others are dequantized when they are uploaded.
static SHADER_FORMATS: &[ShaderFormat] = &[
    shader("Q4_K", "q4_k", KQUANTS),
    shader("Q6_K", "q6_k", KQUANTS),
    shader("Q8_0", "q8_0", BLOCKS32),
    shader("Q5_K", "q5_k", KQUANTS),
    shader("Q5_0", "q5_0", BLOCKS32),
    shader("Q5_1", "q5_1", BLOCKS32),
    shader("Q4_0", "q4_0", BLOCKS32),
    shader("Q4_1", "q4_1", BLOCKS32),
    shader("Q2_K", "q2_k", KQUANTS),
    shader("Q3_K", "q3_k", KQUANTS),
    shader("IQ4_NL", "iq4_nl", BLOCKS32),
    shader("IQ4_XS", "iq4_xs", KQUANTS),
];

fn shader_format(f: &Format) -> Option<&'static ShaderFormat> {
    SHADER_FORMATS.iter().find(|s| s.name == f.name)
}

/// One format's pipelines (entry points of shaders/quant.wgsl).
pub(super) struct QuantKernels {
    /// Products of up to GEMV_ROWS rows.
    gemv: Kernel,
    /// The same over a fused [gate | up] weight, writing the gated unit's activation too.
    gemv_gated: Kernel,
    /// Products of more rows, tile by tile.
    matmul: Kernel,
    /// A segment's values in the weight type, for a prompt's product on the plain kernels.
    dequantize: Kernel,
    /// Embedding rows.
    embed: Kernel,
}

/// Most input rows `quant_gemv` takes (GEMV_ROWS in shaders/quant.wgsl).
pub(super) const GEMV_ROWS: usize = 8;

/// Fewest input rows whose product dequantizes the weight into a scratch matrix and runs the
/// plain kernels (cooperative matrices where the adapter has them): from a whole 64-row tile,
/// decoding each weight once beats decoding it in every row tile.
pub(super) const DEQUANTIZE_ROWS: usize = 65;

/// The pipelines of each format in use by GGUF type id, built when the first weight of the
/// format is uploaded (while a model loads), so a model compiles only the formats it holds.
#[derive(Default)]
pub(super) struct QuantTable {
    built: RefCell<Vec<(u32, QuantKernels)>>,
}

impl QuantTable {
    /// Builds the pipelines of `f` unless they are built.
    fn ensure(&self, be: &WgpuBackend, f: &Format, s: &ShaderFormat) -> Result<()> {
        if self.built.borrow().iter().any(|(id, _)| *id == f.id) {
            return Ok(());
        }
        let prelude = format!(
            "const BLOCK_VALUES: u32 = {}u;\nconst BLOCK_BYTES: u32 = {}u;\n\
             fn eight(base: u32, g: u32) -> Eight {{ return {}(base, g); }}\n",
            f.block_values, f.block_bytes, s.function
        );
        let wt = if be.variant.f16 { "f16" } else { "f32" };
        let name = format!("quant {}", f.name);
        let parts = [prelude.as_str(), GELU, NORM_ROW, QUANT, s.source];
        let module = kernels::module(&be.gpu, be.variant, &name, wt, &parts, false);
        let k = QuantKernels {
            gemv: kernels::kernel(&be.gpu, &module, "quant_gemv"),
            gemv_gated: kernels::kernel(&be.gpu, &module, "quant_gemv_gated"),
            matmul: kernels::kernel(&be.gpu, &module, "quant_matmul"),
            dequantize: kernels::kernel(&be.gpu, &module, "quant_dequantize"),
            embed: kernels::kernel(&be.gpu, &module, "quant_embed"),
        };
        be.gpu.check()?;
        self.built.borrow_mut().push((f.id, k));
        Ok(())
    }

    fn with<R>(&self, f: &Format, use_kernels: impl FnOnce(&QuantKernels) -> R) -> Result<R> {
        let built = self.built.borrow();
        let (_, k) = built
            .iter()
            .find(|(id, _)| *id == f.id)
            .ok_or_else(|| backend_error(format!("no {} kernels were built", f.name)))?;
        Ok(use_kernels(k))
    }
}

/// Rows `first_row..first_row + rows` of a weight, in one format, in a buffer of their own.
pub(super) struct Segment {
    format: &'static Format,
    first_row: usize,
    rows: usize,
    buffer: wgpu::Buffer,
}

impl Segment {
    pub fn bytes(&self) -> usize {
        self.buffer.size() as usize
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Bytes past a segment's last block, so that the shaders' unaligned 4-byte loads
/// (u32_at in shaders/quant.wgsl) never read past the buffer.
const PAD: usize = 8;

/// The segments of `m`, or None where some part's format has no shader (the caller then
/// dequantizes). Parts larger than one binding may hold are split by rows.
pub(super) fn upload(be: &WgpuBackend, m: &BlockMatrix) -> Result<Option<Vec<Segment>>> {
    let mut formats = Vec::new();
    for part in &m.parts {
        match shader_format(part.format) {
            Some(s) if m.cols.is_multiple_of(8) => formats.push(s),
            _ => return Ok(None),
        }
    }
    let max_bytes = (be.gpu.max_binding() as usize).saturating_sub(PAD + 16);
    let mut segments = Vec::new();
    let mut first_row = 0;
    for (part, s) in m.parts.iter().zip(formats) {
        be.quant.ensure(be, part.format, s)?;
        let row_bytes = part.row_bytes();
        // At least one row a segment: a row larger than a binding fails in `buffer_with`.
        let rows_each = (max_bytes / row_bytes.max(1)).max(1);
        for start in (0..part.rows).step_by(rows_each) {
            let rows = rows_each.min(part.rows - start);
            let mut bytes = part.bytes[start * row_bytes..(start + rows) * row_bytes].to_vec();
            bytes.resize(bytes.len() + PAD, 0);
            let what = format!("{} weight", part.format.name);
            segments.push(Segment {
                format: part.format,
                first_row: first_row + start,
                rows,
                buffer: be.gpu.buffer_with(&bytes, &what)?,
            });
        }
        first_row += part.rows;
    }
    Ok(Some(segments))
}

/// A norm folded into a one-row gemv: its flag bits (NORM_* in shaders/quant.wgsl; 0 for
/// none), epsilon, and weight and bias bindings (9 and 10; placeholders without a norm).
pub(super) type FoldedNorm<'a> = (u32, f32, [(u32, &'a wgpu::Buffer); 2]);

/// What a product does with its sums (the flags of shaders/quant.wgsl's QuantParams).
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a wgpu::Buffer>,
    pub accumulate: bool,
    /// GELU form: 0 none, 1 erf, 2 tanh.
    pub gelu: u32,
}

/// out[rows, n_out] (=, +=) norm(x)[rows, n_in] . w^T (+ bias), through a GELU where asked,
/// one dispatch per segment of `w`; a folded norm of one row only.
#[allow(clippy::too_many_arguments)]
pub(super) fn product(
    be: &WgpuBackend,
    x: &WgpuBuf,
    rows: usize,
    (norm_flags, eps, norm_buffers): FoldedNorm,
    w: &[Segment],
    (n_out, n_in): (usize, usize),
    out: &WgpuBuf,
    then: Epilogue,
) -> Result<()> {
    if norm_flags != 0 && rows != 1 {
        return Err(backend_error("a norm is folded into one-row products only"));
    }
    let flags =
        then.bias.is_some() as u32 | (then.accumulate as u32) << 1 | then.gelu << 2 | norm_flags;
    let bias = then.bias.unwrap_or(&be.unused);
    for s in w {
        let params = [
            word(rows)?,
            word(s.rows)?,
            word(n_in)?,
            flags,
            word(n_out)?,
            word(s.first_row)?,
            eps.to_bits(),
        ];
        let mut buffers = vec![(1, &x.buffer), (2, &s.buffer), (3, bias), (4, &out.buffer)];
        let (kernel, groups) = if rows <= GEMV_ROWS {
            // Only the gemv folds a norm (and so binds one).
            buffers.extend(norm_buffers);
            // 8 outputs per workgroup.
            let kernel = be.quant.with(s.format, |k| k.gemv.clone())?;
            (kernel, s.rows.div_ceil(8))
        } else {
            // 64 x 64 tiles.
            let tiles = rows.div_ceil(64) * s.rows.div_ceil(64);
            (be.quant.with(s.format, |k| k.matmul.clone())?, tiles)
        };
        be.gpu.dispatch(&kernel, &params, &buffers, groups)?;
    }
    Ok(())
}

/// `product` of a fused [gate | up] weight that also writes act[rows, n_out / 2] = the gated
/// unit of each (gate, up) pair (SiLU or, with `gelu_gate`, GELU-tanh gates), in one dispatch.
/// Returns false, having done nothing, where the kernel does not take the product: more than
/// GEMV_ROWS rows, or gate and up rows in different segments.
#[allow(clippy::too_many_arguments)]
pub(super) fn gated(
    be: &WgpuBackend,
    x: &WgpuBuf,
    rows: usize,
    (norm_flags, eps, norm_buffers): FoldedNorm,
    w: &[Segment],
    (n_out, n_in): (usize, usize),
    (out, bias): (&WgpuBuf, Option<&wgpu::Buffer>),
    (act, gelu_gate): (&WgpuBuf, bool),
) -> Result<bool> {
    let [s] = w else {
        return Ok(false);
    };
    if rows > GEMV_ROWS || !n_out.is_multiple_of(2) {
        return Ok(false);
    }
    if norm_flags != 0 && rows != 1 {
        return Err(backend_error("a norm is folded into one-row products only"));
    }
    // GATE_GELU is bit 7.
    let flags = bias.is_some() as u32 | norm_flags | (gelu_gate as u32) << 7;
    let params = [
        word(rows)?,
        word(n_out)?,
        word(n_in)?,
        flags,
        word(n_out)?,
        0,
        eps.to_bits(),
    ];
    let [norm_weight, norm_bias] = norm_buffers;
    let buffers = [
        (1, &x.buffer),
        (2, &s.buffer),
        (3, bias.unwrap_or(&be.unused)),
        (4, &out.buffer),
        (7, &act.buffer),
        norm_weight,
        norm_bias,
    ];
    let kernel = be.quant.with(s.format, |k| k.gemv_gated.clone())?;
    // 8 (gate, up) pairs per workgroup.
    let groups = (n_out / 2).div_ceil(8);
    be.gpu.dispatch(&kernel, &params, &buffers, groups)?;
    Ok(true)
}

/// Every segment of `w` as values of the weight type into `dst`, a [n_out][n_in] matrix.
pub(super) fn dequantize(
    be: &WgpuBackend,
    w: &[Segment],
    n_in: usize,
    dst: &wgpu::Buffer,
) -> Result<()> {
    for s in w {
        let params = [0, word(s.rows)?, word(n_in)?, 0, 0, word(s.first_row)?];
        let kernel = be.quant.with(s.format, |k| k.dequantize.clone())?;
        // One invocation per eight values.
        let groups = (s.rows * n_in / 8).div_ceil(256);
        be.gpu
            .dispatch(&kernel, &params, &[(2, &s.buffer), (6, dst)], groups)?;
    }
    Ok(())
}

/// out[r] = table[ids[r]] for rows of `dim`, whose ids the caller checked; `ids` already on
/// the device.
pub(super) fn embed(
    be: &WgpuBackend,
    table: &[Segment],
    ids: (&wgpu::Buffer, usize),
    dim: usize,
    out: &WgpuBuf,
) -> Result<()> {
    let (ids, count) = ids;
    for s in table {
        let params = [
            word(count)?,
            word(s.rows)?,
            word(dim)?,
            0,
            0,
            word(s.first_row)?,
        ];
        let buffers = [(2, &s.buffer), (4, &out.buffer), (5, ids)];
        let kernel = be.quant.with(s.format, |k| k.embed.clone())?;
        // One invocation per eight values.
        let groups = (count * dim / 8).div_ceil(256);
        be.gpu.dispatch(&kernel, &params, &buffers, groups)?;
    }
    Ok(())
}
