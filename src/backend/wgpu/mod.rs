//! The wgpu backend: WGSL compute shaders (shaders/*.wgsl) on Vulkan, Metal or DX12, including
//! software Vulkan (lavapipe) in CI. Weights are stored in f16 where the adapter supports it,
//! activations in f32, and every sum accumulates in f32. Ops are recorded into a command
//! encoder that is submitted every few dozen dispatches and when the host reads something back.

mod cache;
mod device;
mod kernels;
mod quant;

use std::cell::RefCell;
use std::collections::HashMap;

pub use cache::WgpuCache;

/// Widest row whose norm the one-row gemvs fold in. Each workgroup recomputes the row's
/// statistics and normalises every input it reads: on the H100 that saved SmolLM2 (576) a
/// dispatch per norm, but made GPT-J (4096) decode 20% slower.
const FOLD_NORM_MAX_WIDTH: usize = 1024;

use crate::backend::{
    AttentionSpec, Backend, NormSpec, SeqStep, linear_residual_pair_in_turn, norm_input,
    norm_linear_pair_in_turn,
};
use crate::engine::sampling::Sampler;
use crate::error::{Error, Result};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::{Activation, NormKind};
use crate::model::tensor::BlockMatrix;
use crate::model::weights::Linear;
use cache::SpanCombine;
use device::{Gpu, backend_error};
use kernels::{CoopMatmul, Kernels, Variant};

/// The storage type of weights (and of the KV cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WgpuDtype {
    /// f16 where the adapter supports it, else f32.
    #[default]
    Auto,
    F32,
    /// f16, or an error where the adapter lacks SHADER_F16.
    F16,
}

#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// An index into wgpu's adapter list; None picks the high-performance adapter.
    pub adapter: Option<usize>,
    pub dtype: WgpuDtype,
    /// Use subgroup operations for reductions where the adapter has them.
    pub subgroups: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter: None,
            dtype: WgpuDtype::Auto,
            subgroups: true,
        }
    }
}

/// Device weights: f16 or f32 values, as the backend's dtype says, or a matrix kept in its
/// file's block formats (src/backend/wgpu/quant.rs).
pub struct WgpuWeight {
    store: Store,
    /// Values in all.
    len: usize,
}

enum Store {
    Values(wgpu::Buffer),
    /// Segments of whole rows, top to bottom.
    Blocks(Vec<quant::Segment>),
}

impl WgpuWeight {
    /// The buffer of a weight stored as values; an error for one kept in block formats, which
    /// only products and the embedding read.
    fn values(&self, what: &str) -> Result<&wgpu::Buffer> {
        match &self.store {
            Store::Values(b) => Ok(b),
            Store::Blocks(_) => Err(backend_error(format!(
                "the {what} is in a block format, which this op does not read"
            ))),
        }
    }

    /// The segments of a weight kept in block formats.
    fn segments(&self) -> Option<&[quant::Segment]> {
        match &self.store {
            Store::Values(_) => None,
            Store::Blocks(s) => Some(s),
        }
    }
}

/// Device f32 activations.
pub struct WgpuBuf {
    buffer: wgpu::Buffer,
    len: usize,
}

/// The wgpu backend on one adapter; see the module documentation.
pub struct WgpuBackend {
    gpu: Gpu,
    kernels: Kernels,
    variant: Variant,
    /// Bound where a kernel's optional input (a bias, a position table) is absent.
    unused: wgpu::Buffer,
    /// The latest rotary angles or ALiBi slopes, one table per position scheme: every layer
    /// and step uses the same table, or (Gemma 3) its window layers one and the others another.
    position_tables: RefCell<Vec<cache::PositionTable>>,
    /// Scratch buffers by use, grown as needed and reused: the command stream orders their
    /// uses, so a later op's writes wait for an earlier op's reads.
    scratch: RefCell<HashMap<&'static str, wgpu::Buffer>>,
    /// The pipelines of the block formats in use.
    quant: quant::QuantTable,
}

fn check_len(what: &str, len: usize, needed: usize) -> Result<()> {
    if len < needed {
        return Err(backend_error(format!(
            "{what} buffer holds {len} values, op needs {needed}"
        )));
    }
    Ok(())
}

/// Sizes of gemv_spans' workgroup arrays (SPAN_INPUT_RUNS and SPAN_WEIGHTS in
/// shaders/matmul.wgsl): vec4 runs of the combined input, and heads x spans.
const GEMV_SPAN_RUNS: usize = 512;
const GEMV_SPAN_WEIGHTS: usize = 512;

/// matmul_coop.wgsl's tile (COOP_ROWS x COOP_OUTS there): x is rounded to f16 in whole row
/// tiles, so the host sizes that buffer and both grids by it.
const COOP_TILE_ROWS: usize = 64;
const COOP_TILE_OUTS: usize = 128;

/// Whether matmul_coop.wgsl can run on the adapter: 16 x 16 x 16 cooperative matrices of f16
/// with f32 accumulation (tensor cores), a subgroup size of exactly 32 (the kernel splits its
/// tile among 8 subgroups) and room for its workgroup arrays (15 KiB of slices, 8 KiB of
/// results).
fn has_matrix_units(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && adapter.cooperative_matrix_properties().iter().any(|m| {
            (m.m_size, m.n_size, m.k_size) == (16, 16, 16)
                && m.ab_type == wgpu::CooperativeScalarType::F16
                && m.cr_type == wgpu::CooperativeScalarType::F32
        })
        && (info.subgroup_min_size, info.subgroup_max_size) == (32, 32)
        && adapter.limits().max_compute_workgroup_storage_size >= 23 * 1024
}

/// Workgroups for one invocation per value, 256 invocations each.
fn groups_for(values: usize) -> usize {
    values.div_ceil(256)
}

/// That x, w (and its bias) and out hold `rows` rows of a product of (n_out, n_in).
fn check_product(
    x: &WgpuBuf,
    rows: usize,
    w: &WgpuWeight,
    bias: Option<&WgpuWeight>,
    (n_out, n_in): (usize, usize),
    out: &WgpuBuf,
) -> Result<()> {
    check_len("linear input", x.len, rows * n_in)?;
    check_len("linear weight", w.len, n_out * n_in)?;
    check_len("linear output", out.len, rows * n_out)?;
    if let Some(b) = bias {
        check_len("linear bias", b.len, n_out)?;
    }
    Ok(())
}

/// A kernel parameter word from a size (kernels index with u32).
fn word(n: usize) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| backend_error(format!("{n} does not fit the kernels' u32 indices")))
}

impl WgpuBackend {
    pub fn new(options: WgpuOptions) -> Result<WgpuBackend> {
        let adapter = device::adapter(options.adapter)?;
        let available = adapter.features();
        let has_f16 = available.contains(wgpu::Features::SHADER_F16);
        let f16 = match options.dtype {
            WgpuDtype::F32 => false,
            WgpuDtype::Auto => has_f16,
            WgpuDtype::F16 if has_f16 => true,
            WgpuDtype::F16 => {
                return Err(backend_error(format!(
                    "f16 was requested but {} does not support SHADER_F16",
                    adapter.get_info().name
                )));
            }
        };
        // Every kernel takes its parameters as immediates: push constants on Vulkan, root
        // constants on DX12, inline bytes on Metal.
        if !available.contains(wgpu::Features::IMMEDIATES) {
            return Err(backend_error(format!(
                "{} does not support immediates (push constants), which the kernels take their \
                 parameters in",
                adapter.get_info().name
            )));
        }
        let subgroups = options.subgroups && available.contains(wgpu::Features::SUBGROUP);
        let coop = f16 && subgroups && has_matrix_units(&adapter);
        let mut features = wgpu::Features::IMMEDIATES;
        features.set(wgpu::Features::SHADER_F16, f16);
        features.set(wgpu::Features::SUBGROUP, subgroups);
        features.set(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, coop);
        let gpu = Gpu::open(&adapter, features)?;
        let variant = Variant {
            f16,
            subgroups,
            coop,
        };
        let kernels = Kernels::build(&gpu, variant)?;
        // 16 bytes: the smallest binding of the kernels' largest element (vec4).
        let unused = gpu.buffer(16, "unused")?;
        Ok(WgpuBackend {
            gpu,
            kernels,
            variant,
            unused,
            position_tables: RefCell::new(Vec::new()),
            scratch: RefCell::new(HashMap::new()),
            quant: quant::QuantTable::default(),
        })
    }

    /// Whether the adapter is a software renderer (lavapipe, WARP): slower than the CPU
    /// backend, so `auto` passes it over.
    pub fn is_software(&self) -> bool {
        self.gpu.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The scratch buffer for `what`, of at least `bytes`.
    fn scratch(&self, what: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut pool = self.scratch.borrow_mut();
        if let Some(b) = pool.get(what)
            && b.size() >= bytes
        {
            return Ok(b.clone());
        }
        let b = self.gpu.buffer(bytes, what)?;
        pool.insert(what, b.clone());
        Ok(b)
    }

    fn elementwise(
        &self,
        kernel: &device::Kernel,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        values: usize,
    ) -> Result<()> {
        self.gpu
            .dispatch(kernel, params, buffers, groups_for(values))
    }

    /// out[rows, n_out] = norm(x) . w^T (+ bias), then as `then` says; x itself where `norm`
    /// is None (a norm is folded into one-row products only).
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        x: &WgpuBuf,
        rows: usize,
        norm: Option<&NormSpec<WgpuWeight>>,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        (n_out, n_in): (usize, usize),
        out: &mut WgpuBuf,
        then: Product,
    ) -> Result<()> {
        check_product(x, rows, w, bias, (n_out, n_in), out)?;
        if norm.is_some() && rows != 1 {
            return Err(backend_error("a norm is folded into one-row products only"));
        }
        let (accumulate, gelu) = match then {
            Product::Accumulate => (true, 0),
            Product::Gelu(form) => (false, form),
            Product::Plain | Product::Gated(..) => (false, 0),
        };
        if let Some(segments) = w.segments() {
            // The segments write every row of the weight into out: the shape must be exact.
            let w_rows: usize = segments.iter().map(quant::Segment::rows).sum();
            if w_rows != n_out || w_rows * n_in != w.len {
                return Err(backend_error(format!(
                    "a product of {n_out} outputs x {n_in} inputs over a block-format weight of \
                     {w_rows} rows x {} values",
                    w.len / w_rows.max(1)
                )));
            }
            // Many rows: no folded norm (one-row products only, checked above).
            let value_bytes = (n_out * n_in * self.kv_value_bytes()) as u64;
            if rows >= quant::DEQUANTIZE_ROWS && value_bytes <= self.gpu.max_binding() {
                let values = self.scratch("dequantized weight", value_bytes)?;
                quant::dequantize(self, segments, n_in, &values)?;
                let plain = WgpuWeight {
                    store: Store::Values(values),
                    len: n_out * n_in,
                };
                return self.product(x, rows, None, &plain, bias, (n_out, n_in), out, then);
            }
            let bias = bias.map(|b| b.values("linear bias")).transpose()?;
            let fold = self.folded_norm(norm, n_in)?;
            let dims = (n_out, n_in);
            if let Product::Gated(act, act_out) = &then {
                check_len("gated output", act_out.len, rows * n_out / 2)?;
                let gate = (&**act_out, *act == Activation::GeGluTanh);
                if quant::gated(self, x, rows, fold, segments, dims, (out, bias), gate)? {
                    return Ok(());
                }
            }
            let then_q = quant::Epilogue {
                bias,
                accumulate,
                gelu,
            };
            quant::product(self, x, rows, fold, segments, dims, out, then_q)?;
            if let Product::Gated(act, act_out) = then {
                return self.activation(act, out, rows, n_out / 2, act_out);
            }
            return Ok(());
        }
        let w_buf = w.values("linear weight")?;
        let (norm_flags, eps, norm_buffers) = self.folded_norm(norm, n_in)?;
        // GATE_GELU in shaders/matmul.wgsl: the gated gemvs' gate is GELU-tanh (GeGLU).
        let gelu_gate = matches!(then, Product::Gated(Activation::GeGluTanh, _)) as u32;
        let params = [
            word(rows)?,
            word(n_out)?,
            word(n_in)?,
            bias.is_some() as u32
                | (accumulate as u32) << 1
                | gelu << 2
                | norm_flags
                | gelu_gate << 7,
            eps.to_bits(),
        ];
        let bias = self.or_unused(bias)?;
        // x is bound as vec4 runs (and as scalars for the matmul); w as scalars, and as vec4
        // runs for the matmul or raw 16-byte units for the gemv.
        let mut buffers = vec![(2, w_buf), (3, bias), (4, &out.buffer), (5, &x.buffer)];
        if rows == 1 {
            // The gemvs share their dot products with gemv_sum, which also reads binding 11's
            // weights and binding 14's inputs.
            buffers.extend([(7, w_buf), (11, &self.unused), (14, &self.unused)]);
            buffers.extend(norm_buffers);
        }
        // The whole-unit gemvs take no norm or an RMSNorm without bias.
        let rms = norm.map(|n| n.kind == NormKind::RmsNorm && n.bias.is_none());
        let units = rows == 1 && n_in.is_multiple_of(self.weight_unit()) && rms != Some(false);
        let k = &self.kernels;
        let (kernel, groups) = match then {
            Product::Gated(_, act) => {
                buffers.push((8, &act.buffer));
                let kernel = if units && rms.is_some() {
                    &k.gemv_swiglu_units_rms
                } else {
                    &k.gemv_swiglu
                };
                // 8 (gate, up) pairs per workgroup.
                (kernel, (n_out / 2).div_ceil(8))
            }
            // 8 outputs per workgroup.
            _ if units && rms.is_some() => (&k.gemv_units_rms, n_out.div_ceil(8)),
            _ if units => (&k.gemv_units, n_out.div_ceil(8)),
            _ if rows == 1 => (&k.gemv, n_out.div_ceil(8)),
            _ => match &k.matmul_coop {
                Some(coop) if n_in.is_multiple_of(32) && n_out.is_multiple_of(16) => {
                    return self.matmul_coop(coop, &params, x, rows, w_buf, n_out, n_in, bias, out);
                }
                _ => {
                    buffers.extend([(1, &x.buffer), (6, w_buf)]);
                    // 64 x 64 tiles.
                    (&k.matmul, rows.div_ceil(64) * n_out.div_ceil(64))
                }
            },
        };
        // The whole-unit gemvs bind only what they read.
        let whole_units = [&k.gemv_units, &k.gemv_units_rms, &k.gemv_swiglu_units_rms];
        if whole_units.iter().any(|&u| std::ptr::eq(u, kernel)) {
            buffers.retain(|(binding, _)| [3, 4, 5, 7, 8].contains(binding));
            let norm_weight = norm.map(|n| n.weight.values("norm weight")).transpose()?;
            buffers.push((17, norm_weight.unwrap_or(&self.unused)));
        }
        self.gpu.dispatch(kernel, &params, &buffers, groups)
    }

    /// The many-row product on cooperative matrices (shaders/matmul_coop.wgsl): x rounded to
    /// f16 in whole row tiles, then the product tile by tile.
    #[allow(clippy::too_many_arguments)]
    fn matmul_coop(
        &self,
        coop: &CoopMatmul,
        params: &[u32],
        x: &WgpuBuf,
        rows: usize,
        w: &wgpu::Buffer,
        n_out: usize,
        n_in: usize,
        bias: &wgpu::Buffer,
        out: &WgpuBuf,
    ) -> Result<()> {
        let padded = rows.next_multiple_of(COOP_TILE_ROWS);
        let half = self.scratch("x half", (padded * n_in * 2) as u64)?;
        self.gpu.dispatch(
            &coop.to_half,
            params,
            &[(5, &x.buffer), (19, &half)],
            groups_for(padded * n_in / 4),
        )?;
        let buffers = [(2, w), (3, bias), (4, &out.buffer), (18, &half)];
        let groups = rows.div_ceil(COOP_TILE_ROWS) * n_out.div_ceil(COOP_TILE_OUTS);
        self.gpu.dispatch(&coop.matmul, params, &buffers, groups)
    }

    /// Weights per 16-byte unit (UNIT in shaders/matmul.wgsl): the gemvs read whole units.
    fn weight_unit(&self) -> usize {
        16 / self.kv_value_bytes()
    }

    /// Whether gemv_spans can take a product of `n_in` inputs over `spans`: one row, the
    /// attention output whole, within the kernel's workgroup arrays, in whole weight units.
    fn gemv_spans_fits(&self, spans: &SpanCombine, n_in: usize) -> bool {
        spans.row == 0
            && n_in == spans.heads * spans.head_dim
            && n_in <= 4 * GEMV_SPAN_RUNS
            // Whole 16-byte units of weights (stored in the KV cache's type).
            && n_in.is_multiple_of(self.weight_unit())
            && spans.heads * spans.splits <= GEMV_SPAN_WEIGHTS
    }

    /// residual += x . w^T (+ bias) for the one row x that a decode step's attention left in
    /// spans (see `SpanCombine`): gemv_spans combines them and runs the product in one
    /// dispatch.
    fn gemv_spans(
        &self,
        spans: SpanCombine,
        x: &WgpuBuf,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        (n_out, n_in): (usize, usize),
        residual: &mut WgpuBuf,
    ) -> Result<()> {
        let params = [
            1,
            word(n_out)?,
            word(n_in)?,
            bias.is_some() as u32 | 1 << 1,
            0,
            word(spans.heads)?,
            word(spans.splits)?,
        ];
        let buffers = [
            (3, self.or_unused(bias)?),
            (4, &residual.buffer),
            (7, w.values("linear weight")?),
            (15, &spans.parts),
            (16, &x.buffer),
        ];
        self.gpu.dispatch(
            &self.kernels.gemv_spans,
            &params,
            &buffers,
            n_out.div_ceil(8),
        )
    }

    /// A gemv's folded norm: its flag bits, epsilon and bindings (9 and 10), unused ones for
    /// none.
    fn folded_norm<'a>(
        &'a self,
        norm: Option<&NormSpec<'a, WgpuWeight>>,
        n_in: usize,
    ) -> Result<(u32, f32, Bindings<'a, 2>)> {
        let Some(n) = norm else {
            return Ok((0, 0.0, [(9, &self.unused), (10, &self.unused)]));
        };
        check_len("norm weight", n.weight.len, n_in)?;
        if let Some(b) = n.bias {
            check_len("norm bias", b.len, n_in)?;
        }
        let flags =
            1 << 4 | ((n.kind == NormKind::RmsNorm) as u32) << 5 | (n.bias.is_some() as u32) << 6;
        let buffers = [
            (9, n.weight.values("norm weight")?),
            (10, self.or_unused(n.bias)?),
        ];
        Ok((flags, n.eps, buffers))
    }

    /// An optional weight's buffer (a bias, a norm's), or the placeholder for a binding the
    /// kernel skips.
    fn or_unused<'a>(&'a self, w: Option<&'a WgpuWeight>) -> Result<&'a wgpu::Buffer> {
        w.map_or(Ok(&self.unused), |w| w.values("bias"))
    }

    /// Whether gemv_pair and gemv_sum take products of these widths: one row of whole 16-byte
    /// weight units.
    fn pairs(&self, rows: usize, widths: &[usize]) -> bool {
        let unit = if self.variant.f16 { 8 } else { 4 };
        rows == 1 && widths.iter().all(|n| n % unit == 0)
    }

    /// `linear_activation` over norm(x) where `norm` is Some (one row only).
    #[allow(clippy::too_many_arguments)]
    fn product_activation(
        &self,
        x: &WgpuBuf,
        rows: usize,
        norm: Option<&NormSpec<WgpuWeight>>,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        (n_out, n_in): (usize, usize),
        act: Activation,
        mid: &mut WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        let dims = (n_out, n_in);
        let gelu = match act {
            Activation::GeluErf => 1,
            Activation::GeluTanh => 2,
            // One row, or a few over block formats: the gemv writes the activation too.
            Activation::SwiGlu | Activation::GeGluTanh
                if rows == 1 || (w.segments().is_some() && rows <= quant::GEMV_ROWS) =>
            {
                check_len("gated output", out.len, rows * n_out / 2)?;
                let then = Product::Gated(act, out);
                return self.product(x, rows, norm, w, bias, dims, mid, then);
            }
            Activation::SwiGlu | Activation::GeGluTanh => {
                self.product(x, rows, norm, w, bias, dims, mid, Product::Plain)?;
                return self.activation(act, mid, rows, n_out / 2, out);
            }
        };
        self.product(x, rows, norm, w, bias, dims, mid, Product::Gelu(gelu))
    }
}

/// Whether any of the products' weights is kept in block formats, which the pair kernels do not
/// read: those run one product at a time.
fn blocks(products: &[&Linear<WgpuWeight>]) -> bool {
    products.iter().any(|l| l.weight.segments().is_some())
}

/// Buffers at their binding numbers.
type Bindings<'a, const N: usize> = [(u32, &'a wgpu::Buffer); N];

/// What a product does with its result.
enum Product<'a> {
    Plain,
    /// Adds it into what the output holds.
    Accumulate,
    /// Through a GELU: form 1 erf, 2 tanh.
    Gelu(u32),
    /// Keeps the fused [gate | up] row and writes its SwiGLU or GeGLU (the activation says
    /// which) into the buffer (one row, or up to quant::GEMV_ROWS over block formats).
    Gated(Activation, &'a mut WgpuBuf),
}

impl Backend for WgpuBackend {
    type Weight = WgpuWeight;
    type Buf = WgpuBuf;
    type Cache = WgpuCache;

    fn name(&self) -> String {
        let info = &self.gpu.info;
        format!(
            "wgpu ({}, {:?}, {}{}{})",
            info.name,
            info.backend,
            if self.variant.f16 { "f16" } else { "f32" },
            if self.variant.subgroups {
                ", subgroups"
            } else {
                ""
            },
            if self.variant.coop {
                ", cooperative matrices"
            } else {
                ""
            }
        )
    }

    fn upload_weight(&self, data: Vec<f32>) -> Result<WgpuWeight> {
        let buffer = if self.variant.f16 {
            let halves: Vec<u16> = data
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect();
            self.gpu
                .buffer_with(bytemuck::cast_slice(&halves), "weight")?
        } else {
            self.gpu
                .buffer_with(bytemuck::cast_slice(&data), "weight")?
        };
        Ok(WgpuWeight {
            store: Store::Values(buffer),
            len: data.len(),
        })
    }

    /// Keeps the formats quant.rs has shaders for; a matrix with any other part is dequantized.
    fn upload_blocks(&self, m: BlockMatrix) -> Result<WgpuWeight> {
        match quant::upload(self, &m)? {
            Some(segments) => Ok(WgpuWeight {
                store: Store::Blocks(segments),
                len: m.rows() * m.cols,
            }),
            None => self.upload_weight(m.dequantize()?),
        }
    }

    fn weight_bytes(&self, w: &WgpuWeight) -> usize {
        match &w.store {
            Store::Values(b) => b.size() as usize,
            Store::Blocks(segments) => segments.iter().map(quant::Segment::bytes).sum(),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<WgpuBuf> {
        Ok(WgpuBuf {
            buffer: self
                .gpu
                .buffer_with(bytemuck::cast_slice(data), "activations")?,
            len: data.len(),
        })
    }

    fn zeros(&self, len: usize) -> Result<WgpuBuf> {
        Ok(WgpuBuf {
            buffer: self.gpu.buffer(4 * len as u64, "activations")?,
            len,
        })
    }

    fn download(&self, buf: &WgpuBuf, len: usize) -> Result<Vec<f32>> {
        check_len("download", buf.len, len)?;
        let bytes = self.gpu.read(&buf.buffer, 0, 4 * len as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn embed(&self, table: &WgpuWeight, ids: &[u32], dim: usize, out: &mut WgpuBuf) -> Result<()> {
        check_len("embedding output", out.len, ids.len() * dim)?;
        let vocab = table.len / dim.max(1);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        // A scratch buffer rather than a new one per step, so the bind group is reused.
        let ids_buf = self.scratch("token ids", 4 * ids.len() as u64)?;
        self.gpu.write(&ids_buf, bytemuck::cast_slice(ids))?;
        if let Some(segments) = table.segments() {
            let rows: usize = segments.iter().map(quant::Segment::rows).sum();
            if rows * dim != table.len {
                return Err(backend_error(format!(
                    "an embedding of {rows} block-format rows read as rows of {dim}"
                )));
            }
            return quant::embed(self, segments, (&ids_buf, ids.len()), dim, out);
        }
        self.elementwise(
            &self.kernels.embed,
            &[word(ids.len())?, word(dim)?],
            &[
                (1, table.values("embedding")?),
                (2, &ids_buf),
                (3, &out.buffer),
            ],
            ids.len() * dim,
        )
    }

    fn add_positions(
        &self,
        x: &mut WgpuBuf,
        table: &WgpuWeight,
        first_row: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        check_len("position table", table.len, (first_row + rows) * dim)?;
        check_len("activations", x.len, rows * dim)?;
        self.elementwise(
            &self.kernels.add_weight,
            &[word(rows * dim)?, word(first_row * dim)?],
            &[(1, &x.buffer), (2, table.values("position table")?)],
            rows * dim,
        )
    }

    fn copy_rows(
        &self,
        src: &WgpuBuf,
        first_row: usize,
        rows: usize,
        dim: usize,
        out: &mut WgpuBuf,
        out_row: usize,
    ) -> Result<()> {
        check_len("copy source", src.len, (first_row + rows) * dim)?;
        check_len("copy destination", out.len, (out_row + rows) * dim)?;
        let bytes = |n: usize| 4 * n as u64;
        self.gpu.copy(
            &src.buffer,
            bytes(first_row * dim),
            &out.buffer,
            bytes(out_row * dim),
            bytes(rows * dim),
        )
    }

    fn norm(
        &self,
        kind: NormKind,
        x: &WgpuBuf,
        weight: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        check_len("norm input", x.len, rows * dim)?;
        check_len("norm output", out.len, rows * dim)?;
        check_len("norm weight", weight.len, dim)?;
        if let Some(b) = bias {
            check_len("norm bias", b.len, dim)?;
        }
        let params = [
            word(rows)?,
            word(dim)?,
            eps.to_bits(),
            (kind == NormKind::RmsNorm) as u32,
            bias.is_some() as u32,
        ];
        let bias = self.or_unused(bias)?;
        self.gpu.dispatch(
            &self.kernels.norm,
            &params,
            &[
                (1, &x.buffer),
                (2, weight.values("norm weight")?),
                (3, bias),
                (4, &out.buffer),
            ],
            rows,
        )
    }

    fn linear(
        &self,
        x: &WgpuBuf,
        rows: usize,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        n_out: usize,
        n_in: usize,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        self.product(x, rows, None, w, bias, (n_out, n_in), out, Product::Plain)
    }

    fn linear_residual(
        &self,
        x: &WgpuBuf,
        rows: usize,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        n_out: usize,
        n_in: usize,
        _scratch: &mut WgpuBuf,
        residual: &mut WgpuBuf,
    ) -> Result<()> {
        if rows == 1 && w.segments().is_none() {
            check_product(x, rows, w, bias, (n_out, n_in), residual)?;
            let fits = |s: &SpanCombine| self.gemv_spans_fits(s, n_in);
            if let Some(spans) = self.gpu.take_deferred(&x.buffer, fits) {
                return self.gemv_spans(spans, x, w, bias, (n_out, n_in), residual);
            }
        }
        let then = Product::Accumulate;
        self.product(x, rows, None, w, bias, (n_out, n_in), residual, then)
    }

    fn linear_activation(
        &self,
        x: &WgpuBuf,
        rows: usize,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        dims: (usize, usize),
        act: Activation,
        mid: &mut WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        self.product_activation(x, rows, None, w, bias, dims, act, mid, out)
    }

    /// One row of GELU products: one gemv_pair dispatch (the norm folded in where `folds_norm`).
    fn norm_linear_pair(
        &self,
        norm: &NormSpec<WgpuWeight>,
        x: &WgpuBuf,
        rows: usize,
        normed: &mut WgpuBuf,
        (a, a_out): (&Linear<WgpuWeight>, &mut WgpuBuf),
        b: &Linear<WgpuWeight>,
        act: Activation,
        mid: &mut WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        let gelu = match act {
            Activation::GeluErf => 1,
            Activation::GeluTanh => 2,
            Activation::SwiGlu | Activation::GeGluTanh => 0,
        };
        let n_in = a.n_in;
        if gelu == 0 || b.n_in != n_in || !self.pairs(rows, &[n_in]) || blocks(&[a, b]) {
            let a = (a, a_out);
            return norm_linear_pair_in_turn(self, norm, x, rows, normed, a, b, act, mid, out);
        }
        let (input, fold) = norm_input(self, norm, x, rows, n_in, normed)?;
        for (l, y) in [(a, &*a_out), (b, &*mid)] {
            check_product(input, rows, &l.weight, l.bias.as_ref(), (l.n_out, n_in), y)?;
        }
        let (norm_flags, eps, norm_buffers) = self.folded_norm(fold, n_in)?;
        let params = [
            1,
            word(a.n_out)?,
            word(n_in)?,
            a.bias.is_some() as u32 | norm_flags,
            eps.to_bits(),
            word(b.n_out)?,
            b.bias.is_some() as u32 | gelu << 2,
        ];
        let (wa, wb) = (a.weight.values("weight")?, b.weight.values("weight")?);
        let mut buffers = vec![
            (2, wa),
            (3, self.or_unused(a.bias.as_ref())?),
            (4, &a_out.buffer),
            (5, &input.buffer),
            (7, wa),
            (11, wb),
            (12, self.or_unused(b.bias.as_ref())?),
            (13, &mid.buffer),
            (14, &self.unused),
        ];
        buffers.extend(norm_buffers);
        let groups = (a.n_out + b.n_out).div_ceil(8);
        self.gpu
            .dispatch(&self.kernels.gemv_pair, &params, &buffers, groups)
    }

    /// One row: one gemv_sum dispatch.
    fn linear_residual_pair(
        &self,
        rows: usize,
        (x_a, a): (&WgpuBuf, &Linear<WgpuWeight>),
        (x_b, b): (&WgpuBuf, &Linear<WgpuWeight>),
        scratch: &mut WgpuBuf,
        residual: &mut WgpuBuf,
    ) -> Result<()> {
        if a.n_out != b.n_out || !self.pairs(rows, &[a.n_in, b.n_in]) || blocks(&[a, b]) {
            return linear_residual_pair_in_turn(self, rows, (x_a, a), (x_b, b), scratch, residual);
        }
        for (x, l) in [(x_a, a), (x_b, b)] {
            check_product(
                x,
                rows,
                &l.weight,
                l.bias.as_ref(),
                (l.n_out, l.n_in),
                residual,
            )?;
        }
        let params = [
            1,
            word(a.n_out)?,
            word(a.n_in)?,
            a.bias.is_some() as u32 | 1 << 1,
            0,
            word(b.n_in)?,
            b.bias.is_some() as u32,
        ];
        let (wa, wb) = (a.weight.values("weight")?, b.weight.values("weight")?);
        let buffers = [
            (2, wa),
            (3, self.or_unused(a.bias.as_ref())?),
            (4, &residual.buffer),
            (5, &x_a.buffer),
            (7, wa),
            (11, wb),
            (12, self.or_unused(b.bias.as_ref())?),
            (14, &x_b.buffer),
            // No norm, but the dot products gemv_sum shares with the gemvs name its bindings.
            (9, &self.unused),
            (10, &self.unused),
        ];
        let groups = a.n_out.div_ceil(8);
        self.gpu
            .dispatch(&self.kernels.gemv_sum, &params, &buffers, groups)
    }

    /// One row of up to FOLD_NORM_MAX_WIDTH: every gemv workgroup normalises the row itself.
    fn folds_norm(&self, rows: usize, width: usize) -> bool {
        rows == 1 && width <= FOLD_NORM_MAX_WIDTH
    }

    fn norm_linear(
        &self,
        norm: &NormSpec<WgpuWeight>,
        x: &WgpuBuf,
        rows: usize,
        normed: &mut WgpuBuf,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        (n_out, n_in): (usize, usize),
        out: &mut WgpuBuf,
    ) -> Result<()> {
        let (input, fold) = norm_input(self, norm, x, rows, n_in, normed)?;
        self.product(
            input,
            rows,
            fold,
            w,
            bias,
            (n_out, n_in),
            out,
            Product::Plain,
        )
    }

    fn norm_linear_activation(
        &self,
        norm: &NormSpec<WgpuWeight>,
        x: &WgpuBuf,
        rows: usize,
        normed: &mut WgpuBuf,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
        (n_out, n_in): (usize, usize),
        act: Activation,
        mid: &mut WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        let (input, fold) = norm_input(self, norm, x, rows, n_in, normed)?;
        let dims = (n_out, n_in);
        self.product_activation(input, rows, fold, w, bias, dims, act, mid, out)
    }

    fn activation(
        &self,
        act: Activation,
        x: &mut WgpuBuf,
        rows: usize,
        width: usize,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        let params = [word(rows)?, word(width)?];
        match act {
            Activation::GeluErf | Activation::GeluTanh => {
                check_len("activation", x.len, rows * width)?;
                let kernel = if act == Activation::GeluErf {
                    &self.kernels.gelu_erf
                } else {
                    &self.kernels.gelu_tanh
                };
                self.elementwise(kernel, &params, &[(1, &x.buffer)], rows * width)
            }
            Activation::SwiGlu | Activation::GeGluTanh => {
                check_len("gated input", x.len, rows * 2 * width)?;
                check_len("gated output", out.len, rows * width)?;
                let kernel = if act == Activation::SwiGlu {
                    &self.kernels.swiglu
                } else {
                    &self.kernels.geglu
                };
                self.elementwise(
                    kernel,
                    &params,
                    &[(2, &x.buffer), (3, &out.buffer)],
                    rows * width,
                )
            }
        }
    }

    fn add(&self, x: &mut WgpuBuf, y: &WgpuBuf, len: usize) -> Result<()> {
        check_len("add", x.len, len)?;
        check_len("add", y.len, len)?;
        self.elementwise(
            &self.kernels.add,
            &[word(len)?, 0],
            &[(1, &x.buffer), (2, &y.buffer)],
            len,
        )
    }

    fn sample(&self, logits: &WgpuBuf, vocab: usize, sampler: &mut Sampler) -> Result<u32> {
        check_len("logits", logits.len, vocab)?;
        if vocab == 0 {
            return Err(Error::InvalidInput("no logits to sample from".into()));
        }
        // Only the token id comes back.
        let len = word(vocab)?;
        let (kernel, params) = if sampler.is_greedy() {
            // The argmax reads only the length of the Params it shares with `sample`.
            (&self.kernels.argmax, [len, 0, 0, 0, 0])
        } else {
            // The host's generator supplies the uniform value; the draw itself runs here.
            let d = sampler.draw();
            let top_k = d.top_k.min(u32::MAX as usize) as u32;
            let (t, p, u) = (d.temperature, d.top_p, d.u as f32);
            (
                &self.kernels.sample,
                [len, t.to_bits(), top_k, p.to_bits(), u.to_bits()],
            )
        };
        let token = self.scratch("token", 4)?;
        self.gpu
            .dispatch(kernel, &params, &[(1, &logits.buffer), (2, &token)], 1)?;
        let bytes = self.gpu.read(&token, 0, 4)?;
        crate::backend::device_token(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn kv_value_bytes(&self) -> usize {
        if self.variant.f16 { 2 } else { 4 }
    }

    fn check_model(&self, c: &crate::model::config::ModelConfig) -> Result<()> {
        // The kernels have every `Feature`; list one here should a new one be missing.
        crate::backend::refuse_lacking("wgpu", c, &[])
    }

    fn new_cache(&self, shape: &CacheShape) -> Result<WgpuCache> {
        cache::new_cache(self, shape)
    }

    fn attention(
        &self,
        spec: &AttentionSpec,
        qkv: &WgpuBuf,
        rows: usize,
        first_pos: usize,
        cache: &mut WgpuCache,
        layer: usize,
        score: Option<&StepScore>,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        cache::attention(self, spec, qkv, rows, first_pos, cache, layer, score, out)
    }

    fn attention_batch(
        &self,
        spec: &AttentionSpec,
        qkv: &WgpuBuf,
        seqs: &mut [SeqStep<'_, WgpuCache>],
        layer: usize,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        cache::decode(self, spec, qkv, seqs, layer, out)
    }

    fn evict(&self, cache: &mut WgpuCache, layer: usize, keep: &Keep) -> Result<()> {
        cache::evict(self, cache, layer, keep)
    }

    /// The attention kernels mask keys past a layer's window (`sees` in
    /// shaders/attention.wgsl).
    fn masks_windows(&self) -> bool {
        true
    }

    fn cache_len(&self, cache: &WgpuCache, layer: usize) -> usize {
        cache.layers[layer].len
    }

    fn cache_capacity(&self, cache: &WgpuCache, layer: usize) -> usize {
        cache.layers[layer].capacity
    }

    fn cache_positions(&self, cache: &WgpuCache, layer: usize) -> Result<Vec<Vec<u32>>> {
        cache::read_slots(self, cache, layer, |c| &c.pos)
    }

    fn cache_scores(&self, cache: &WgpuCache, layer: usize) -> Result<Vec<Vec<f32>>> {
        cache::read_slots(self, cache, layer, |c| &c.score)
    }
}
