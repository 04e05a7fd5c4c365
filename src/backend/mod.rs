//! The Backend trait: coarse, fused ops over device-resident buffers. The forward pass in
//! `engine` is written once against this trait; backends know nothing about architectures or
//! cache policies beyond the parameters each op receives.

pub mod cpu;
pub mod cuda;
pub mod wgpu;

use crate::engine::sampling::Sampler;
use crate::error::{Error, Result};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::{Activation, NormKind, Positions};
use crate::model::tensor::BlockMatrix;
use crate::model::weights::Linear;

/// A token id read back from a device sampling kernel: the kernels (kernels/sample.cu,
/// shaders/sample.wgsl) answer u32::MAX for logits that hold a NaN.
fn device_token(id: u32) -> Result<u32> {
    match id {
        u32::MAX => Err(Error::NanLogits),
        id => Ok(id),
    }
}

/// The error of a backend that lacks an op a model needs.
pub(crate) fn missing(backend: &'static str, what: &str) -> Error {
    Error::Backend {
        backend,
        reason: format!("{what} is not implemented on this backend yet (the CPU backend runs it)"),
    }
}

/// Architecture features a backend's kernels may lack, for `Backend::check_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Activation::GeGluTanh.
    GeGlu,
    /// AttentionSpec::softcap.
    AttentionSoftcap,
    /// Sliding-window layers with a rotary of their own (ModelConfig::window_positions).
    WindowRotary,
    /// A rotary that scales the dimensions it turns (Positions::Rotary::scale != 1).
    ScaledRotary,
    /// Sliding-window layers, whose prompt attention masks keys past the window
    /// (`Backend::masks_windows`).
    WindowMask,
}

impl Feature {
    fn describe(self) -> &'static str {
        match self {
            Feature::GeGlu => "the GeGLU activation",
            Feature::AttentionSoftcap => "attention soft-capping",
            Feature::WindowRotary => "a separate rotary for sliding-window layers",
            Feature::ScaledRotary => "a scaled partial rotary",
            Feature::WindowMask => "sliding-window attention",
        }
    }

    /// Whether a model of `c` needs this feature.
    fn needed_by(self, c: &crate::model::config::ModelConfig) -> bool {
        match self {
            Feature::GeGlu => c.activation == Activation::GeGluTanh,
            Feature::AttentionSoftcap => c.block.attn_softcap.is_some(),
            Feature::WindowRotary => c.block.window_positions.is_some(),
            Feature::ScaledRotary => {
                matches!(c.positions, Positions::Rotary { scale, .. } if scale != 1.0)
            }
            Feature::WindowMask => !c.block.layer_window.is_empty(),
        }
    }
}

/// An error naming the first of `lacking` that a model of `c` needs.
pub(crate) fn refuse_lacking(
    backend: &'static str,
    c: &crate::model::config::ModelConfig,
    lacking: &[Feature],
) -> Result<()> {
    match lacking.iter().find(|f| f.needed_by(c)) {
        Some(f) => Err(missing(
            backend,
            &format!("{} ({})", f.describe(), c.arch.name),
        )),
        None => Ok(()),
    }
}

/// What the attention op needs to know about the model.
pub struct AttentionSpec<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub positions: &'a Positions,
    /// Soft-capping of the scaled scores before the softmax: cap * tanh(score / cap) (Gemma 2).
    pub softcap: Option<f32>,
    /// A sliding-window layer's window: a query sees the `window` latest positions up to its
    /// own. The cache of such a layer keeps `window - 1` tokens between steps, so only a
    /// prompt longer than that needs masking (see `Backend::masks_windows`).
    pub window: Option<usize>,
}

/// A norm's weights and settings, for the ops that normalise their input first.
pub struct NormSpec<'a, W> {
    pub kind: NormKind,
    pub weight: &'a W,
    pub bias: Option<&'a W>,
    pub eps: f32,
}

/// One sequence's part in a batched decode step.
pub struct SeqStep<'a, C> {
    pub cache: &'a mut C,
    /// Original position of the sequence's new token.
    pub position: usize,
    pub score: Option<StepScore>,
    /// What the sequence keeps after this step's attention, when it evicts.
    pub keep: Option<Keep>,
}

pub trait Backend {
    /// Weights as the backend stores them (f32 on the CPU; f16, bf16 or f32 on a GPU).
    type Weight;
    /// A device buffer of f32 activations or logits.
    type Buf;
    /// The KV cache of one sequence, every layer, resident on the device.
    type Cache;

    /// Human-readable backend and device name, e.g. "cpu (2 threads)".
    fn name(&self) -> String;

    /// Moves host f32 weights to the device in the backend's storage type.
    fn upload_weight(&self, data: Vec<f32>) -> Result<Self::Weight>;
    /// Moves a matrix kept in its file's block formats (Q4_K, Q8_0, ...) to the device. A
    /// backend keeps the formats its kernels read (its format table) and the default
    /// dequantizes to f32 for `upload_weight`. Products and `embed` take either kind of weight.
    fn upload_blocks(&self, m: BlockMatrix) -> Result<Self::Weight> {
        self.upload_weight(m.dequantize()?)
    }
    /// Bytes a weight takes on the device.
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// Moves host f32 values into a new activation buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer whose contents the next op overwrites (GPU backends skip the clearing).
    fn scratch(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    fn download(&self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>>;

    /// out[r] = table[ids[r]] for `dim`-wide rows.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// x[r] += table[first_row + r]: learned absolute positions.
    fn add_positions(
        &self,
        x: &mut Self::Buf,
        table: &Self::Weight,
        first_row: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// out[out_row + r] = src[first_row + r] for `rows` rows of `dim`.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: &Self::Buf,
        first_row: usize,
        rows: usize,
        dim: usize,
        out: &mut Self::Buf,
        out_row: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        kind: NormKind,
        x: &Self::Buf,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// out[rows, n_out] = x[rows, n_in] . w[n_out, n_in]^T (+ bias).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        n_out: usize,
        n_in: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// residual[rows, n_out] += x . w^T (+ bias): a product added into the residual stream.
    /// The default computes it into `scratch` and adds; GPU backends add inside the product.
    #[allow(clippy::too_many_arguments)]
    fn linear_residual(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        n_out: usize,
        n_in: usize,
        scratch: &mut Self::Buf,
        residual: &mut Self::Buf,
    ) -> Result<()> {
        self.linear(x, rows, w, bias, n_out, n_in, scratch)?;
        self.add(residual, scratch, rows * n_out)
    }
    /// The MLP's first product and its activation: mid = act(x . w^T + bias) for GELU, or
    /// mid = the fused [gate | up] product and out = SwiGLU(mid). The default runs `linear`
    /// then `activation`; GPU backends apply a GELU inside the product.
    #[allow(clippy::too_many_arguments)]
    fn linear_activation(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        (n_out, n_in): (usize, usize),
        act: Activation,
        mid: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.linear(x, rows, w, bias, n_out, n_in, mid)?;
        let width = if act.gated() { n_out / 2 } else { n_out };
        self.activation(act, mid, rows, width, out)
    }
    /// A parallel block's two products of norm(x), with `normed` as in `norm_linear`: `a_out` =
    /// norm(x) . a^T (+ bias), and b with its activation into `mid` and `out` as
    /// `linear_activation`. The default normalises once, or folds the norm into each product
    /// where the backend folds, and runs the products in turn; the GPU backends run GELU pairs
    /// of a few rows (wgpu: one) in one launch.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear_pair(
        &self,
        norm: &NormSpec<Self::Weight>,
        x: &Self::Buf,
        rows: usize,
        normed: &mut Self::Buf,
        a: (&Linear<Self::Weight>, &mut Self::Buf),
        b: &Linear<Self::Weight>,
        act: Activation,
        mid: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        norm_linear_pair_in_turn(self, norm, x, rows, normed, a, b, act, mid, out)
    }
    /// residual += x_a . a^T + x_b . b^T (+ their biases): a parallel block's two output
    /// products. x_a is the older input (the MLP's; x_b is the attention output just
    /// computed), so a backend may start on a's product while x_b is being written. The
    /// default runs two `linear_residual`; wgpu one launch for a single row.
    fn linear_residual_pair(
        &self,
        rows: usize,
        a: (&Self::Buf, &Linear<Self::Weight>),
        b: (&Self::Buf, &Linear<Self::Weight>),
        scratch: &mut Self::Buf,
        residual: &mut Self::Buf,
    ) -> Result<()> {
        linear_residual_pair_in_turn(self, rows, a, b, scratch, residual)
    }
    /// Whether `norm_linear` and `norm_linear_activation` fold the norm of `rows` rows of
    /// `width` into the product. Where they do not, `normed` holds the normalised rows after.
    fn folds_norm(&self, _rows: usize, _width: usize) -> bool {
        false
    }
    /// `linear` over norm(x), with `normed` for the normalised rows (see `folds_norm`). The
    /// default runs `norm` then `linear`; the GPU backends fold the norm of narrow rows (one
    /// on wgpu, up to four on CUDA) into the product, saving a launch.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear(
        &self,
        norm: &NormSpec<Self::Weight>,
        x: &Self::Buf,
        rows: usize,
        normed: &mut Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        (n_out, n_in): (usize, usize),
        out: &mut Self::Buf,
    ) -> Result<()> {
        let (kind, eps) = (norm.kind, norm.eps);
        self.norm(kind, x, norm.weight, norm.bias, eps, rows, n_in, normed)?;
        self.linear(normed, rows, w, bias, n_out, n_in, out)
    }
    /// `linear_activation` over norm(x), as `norm_linear`.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear_activation(
        &self,
        norm: &NormSpec<Self::Weight>,
        x: &Self::Buf,
        rows: usize,
        normed: &mut Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        (n_out, n_in): (usize, usize),
        act: Activation,
        mid: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let (kind, eps) = (norm.kind, norm.eps);
        self.norm(kind, x, norm.weight, norm.bias, eps, rows, n_in, normed)?;
        self.linear_activation(normed, rows, w, bias, (n_out, n_in), act, mid, out)
    }
    /// GELU over rows x width in place, or SwiGLU from fused [gate | up] rows of 2*width into
    /// `out` rows of width.
    fn activation(
        &self,
        act: Activation,
        x: &mut Self::Buf,
        rows: usize,
        width: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// x += y over `len` values.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()>;
    /// x = f(x) over `len` values, for the rare elementwise steps of some architectures (an
    /// embedding scale, logit soft-capping). The default goes through the host; the CPU runs
    /// it in place.
    fn map(&self, x: &mut Self::Buf, len: usize, f: &(dyn Fn(f32) -> f32 + Sync)) -> Result<()> {
        let mut values = self.download(x, len)?;
        values.iter_mut().for_each(|v| *v = f(*v));
        let mapped = self.upload(&values)?;
        self.copy_rows(&mapped, 0, 1, len, x, 0)
    }
    /// RMSNorm of each head_dim-wide query head of `rows` fused [q | k | v] rows with `q`'s
    /// weight, and of each key head with `k`'s (Qwen3, Gemma 3). The default gathers the heads
    /// with `copy_rows`, normalises them with `norm` and scatters them back.
    fn head_norm(
        &self,
        spec: &AttentionSpec,
        qkv: &mut Self::Buf,
        rows: usize,
        (q, k): (&NormSpec<Self::Weight>, &NormSpec<Self::Weight>),
    ) -> Result<()> {
        let hd = spec.head_dim;
        let per_row = spec.heads + 2 * spec.kv_heads;
        for (first, heads, norm) in [(0, spec.heads, q), (spec.heads, spec.kv_heads, k)] {
            let mut gathered = self.scratch(rows * heads * hd)?;
            for r in 0..rows {
                self.copy_rows(
                    qkv,
                    r * per_row + first,
                    heads,
                    hd,
                    &mut gathered,
                    r * heads,
                )?;
            }
            let mut normed = self.scratch(rows * heads * hd)?;
            let (kind, eps) = (norm.kind, norm.eps);
            let n = rows * heads;
            self.norm(
                kind,
                &gathered,
                norm.weight,
                norm.bias,
                eps,
                n,
                hd,
                &mut normed,
            )?;
            for r in 0..rows {
                self.copy_rows(&normed, r * heads, heads, hd, qkv, r * per_row + first)?;
            }
        }
        Ok(())
    }
    /// Whether this backend runs every op `config` needs; GPU backends refuse the few
    /// architecture features their kernels do not have yet, with a clear error at load.
    fn check_model(&self, _config: &crate::model::config::ModelConfig) -> Result<()> {
        Ok(())
    }
    /// The next token from one row of logits. The default reads the logits back and samples
    /// on the host; GPU backends sample on the device and return only the id.
    fn sample(&self, logits: &Self::Buf, vocab: usize, sampler: &mut Sampler) -> Result<u32> {
        let logits = self.download(logits, vocab)?;
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::NanLogits);
        }
        Ok(sampler.sample(&logits))
    }

    /// Bytes of one cached K or V value (4 for f32, 2 for f16).
    fn kv_value_bytes(&self) -> usize;
    fn new_cache(&self, shape: &CacheShape) -> Result<Self::Cache>;
    /// Attention for `rows` new tokens at positions first_pos.. whose fused [q | k | v] rows are
    /// in `qkv`: positions are applied, k and v are appended to the layer's cache with their
    /// original positions, and each row attends causally over the cache. The layer's block
    /// grows if the rows do not fit (a prompt longer than the budget, until `evict`). With
    /// `score`, every row also adds its (noisy) attention probabilities into the slot scores,
    /// summed over the query heads of each kv head.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        spec: &AttentionSpec,
        qkv: &Self::Buf,
        rows: usize,
        first_pos: usize,
        cache: &mut Self::Cache,
        layer: usize,
        score: Option<&StepScore>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// One decode token for each sequence of a batch: row i of `qkv` is seqs[i]'s new token and
    /// row i of `out` receives its attention output; then each sequence evicts as its `keep`
    /// says. The default runs the single-sequence ops row by row; GPU backends override it
    /// with kernels that take the whole batch at once.
    fn attention_batch(
        &self,
        spec: &AttentionSpec,
        qkv: &Self::Buf,
        seqs: &mut [SeqStep<'_, Self::Cache>],
        layer: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        if let [seq] = seqs {
            return decode_one(self, spec, qkv, seq, layer, out);
        }
        let qkv_width = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
        let out_width = spec.heads * spec.head_dim;
        let mut row_qkv = self.scratch(qkv_width)?;
        let mut row_out = self.scratch(out_width)?;
        for (i, seq) in seqs.iter_mut().enumerate() {
            self.copy_rows(qkv, i, 1, qkv_width, &mut row_qkv, 0)?;
            decode_one(self, spec, &row_qkv, seq, layer, &mut row_out)?;
            self.copy_rows(&row_out, 0, 1, out_width, out, i)?;
        }
        Ok(())
    }
    /// Device memory free for caches and activations, where the backend can tell.
    fn free_memory(&self) -> Option<usize> {
        None
    }
    /// Evicts down to `keep.budget` tokens in every kv head of the layer (lowest scores among
    /// the tokens that are neither sinks nor recent, earliest first on ties), compacts the
    /// survivors in position order and gives back memory beyond the cache's capacity.
    fn evict(&self, cache: &mut Self::Cache, layer: usize, keep: &Keep) -> Result<()>;
    /// Whether `attention` masks keys outside `AttentionSpec::window` (every backend here
    /// does); the engine refuses a prompt longer than a window on one that does not.
    fn masks_windows(&self) -> bool {
        false
    }
    /// Tokens currently held by the cache in a layer (the same in every kv head).
    fn cache_len(&self, cache: &Self::Cache, layer: usize) -> usize;
    /// Slots allocated in a layer, per kv head.
    fn cache_capacity(&self, cache: &Self::Cache, layer: usize) -> usize;
    /// The original positions held in each kv head of a layer (a readback, not for the loop).
    fn cache_positions(&self, cache: &Self::Cache, layer: usize) -> Result<Vec<Vec<u32>>>;
    /// The accumulated scores of each kv head of a layer, in slot order (a readback).
    fn cache_scores(&self, cache: &Self::Cache, layer: usize) -> Result<Vec<Vec<f32>>>;
}

/// A product's input and the norm it still has to fold in, if any.
pub type NormInput<'a, 'n, B> = (
    &'a <B as Backend>::Buf,
    Option<&'a NormSpec<'n, <B as Backend>::Weight>>,
);

/// The input of a product over norm(x) on a backend that may fold the norm in (see
/// `Backend::folds_norm`): x itself with the norm to fold, or `normed` after running the norm.
pub fn norm_input<'a, 'n, B: Backend + ?Sized>(
    be: &B,
    norm: &'a NormSpec<'n, B::Weight>,
    x: &'a B::Buf,
    rows: usize,
    width: usize,
    normed: &'a mut B::Buf,
) -> Result<NormInput<'a, 'n, B>> {
    if be.folds_norm(rows, width) {
        return Ok((x, Some(norm)));
    }
    let (kind, eps) = (norm.kind, norm.eps);
    be.norm(kind, x, norm.weight, norm.bias, eps, rows, width, normed)?;
    Ok((normed, None))
}

/// `Backend::norm_linear_pair` as two products, one after the other.
#[allow(clippy::too_many_arguments)]
pub fn norm_linear_pair_in_turn<B: Backend + ?Sized>(
    be: &B,
    norm: &NormSpec<B::Weight>,
    x: &B::Buf,
    rows: usize,
    normed: &mut B::Buf,
    (a, a_out): (&Linear<B::Weight>, &mut B::Buf),
    b: &Linear<B::Weight>,
    act: Activation,
    mid: &mut B::Buf,
    out: &mut B::Buf,
) -> Result<()> {
    let (dims_a, bias_a) = ((a.n_out, a.n_in), a.bias.as_ref());
    let (dims_b, bias_b) = ((b.n_out, b.n_in), b.bias.as_ref());
    if be.folds_norm(rows, a.n_in) {
        be.norm_linear(norm, x, rows, normed, &a.weight, bias_a, dims_a, a_out)?;
        return be.norm_linear_activation(
            norm, x, rows, normed, &b.weight, bias_b, dims_b, act, mid, out,
        );
    }
    let (kind, eps) = (norm.kind, norm.eps);
    be.norm(kind, x, norm.weight, norm.bias, eps, rows, a.n_in, normed)?;
    be.linear(normed, rows, &a.weight, bias_a, a.n_out, a.n_in, a_out)?;
    be.linear_activation(normed, rows, &b.weight, bias_b, dims_b, act, mid, out)
}

/// `Backend::linear_residual_pair` as two products, one after the other.
pub fn linear_residual_pair_in_turn<B: Backend + ?Sized>(
    be: &B,
    rows: usize,
    a: (&B::Buf, &Linear<B::Weight>),
    b: (&B::Buf, &Linear<B::Weight>),
    scratch: &mut B::Buf,
    residual: &mut B::Buf,
) -> Result<()> {
    for (x, l) in [a, b] {
        let bias = l.bias.as_ref();
        be.linear_residual(x, rows, &l.weight, bias, l.n_out, l.n_in, scratch, residual)?;
    }
    Ok(())
}

/// One sequence's decode token: its attention over its own cache, then its eviction.
fn decode_one<B: Backend + ?Sized>(
    b: &B,
    spec: &AttentionSpec,
    qkv: &B::Buf,
    seq: &mut SeqStep<'_, B::Cache>,
    layer: usize,
    out: &mut B::Buf,
) -> Result<()> {
    let cache = &mut *seq.cache;
    let score = seq.score.as_ref();
    b.attention(spec, qkv, 1, seq.position, cache, layer, score, out)?;
    match &seq.keep {
        Some(keep) => b.evict(cache, layer, keep),
        None => Ok(()),
    }
}
