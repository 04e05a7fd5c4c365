//! The CUDA KV cache, attention (custom kernels for decode, cuBLAS tiles for prefill) with fused
//! score accumulation, and eviction on the device.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DeviceRepr};

use super::kernels::Arg;
use super::{CudaBackend, cuda_err};
use crate::backend::{AttentionSpec, Backend, SeqStep};
use crate::error::{Error, Result};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::{Positions, RopePairs};

/// Keys per step of a decode block's loop (SUB in kernels/attention.cu); spans are multiples.
const SUB: usize = 32;
/// Sequences per batched decode launch (MAX_SEQS in kernels/common.cuh).
const MAX_SEQS: usize = 128;
/// Upper bound on the prefill logits tile, in bytes.
const TILE_BYTES: usize = 512 << 20;

/// One layer's block; slots are unordered on the GPU, positions say which token each holds.
pub struct CudaLayer {
    pub k: CudaSlice<u8>,
    pub v: CudaSlice<u8>,
    pub pos: CudaSlice<u32>,
    pub score: CudaSlice<f32>,
    pub len: usize,
    pub capacity: usize,
    /// Tokens the sequence has seen (the next token's position).
    seen: usize,
    /// The block the layer had at the cache's capacity, set aside while a prompt longer than
    /// that holds the layer in a larger temporary block. Eviction compacts back into it, so
    /// long-lived blocks never move and a prefill allocates and frees only its temporaries:
    /// reallocating every layer of every admitted sequence fragments the memory pool.
    parked: Option<Box<CudaLayer>>,
}

pub struct CudaCache {
    pub shape: CacheShape,
    pub layers: Vec<CudaLayer>,
    /// The rotary inverse frequencies or ALiBi slopes the layers use, each uploaded on first
    /// use next to its host copy (one table, or two where sliding-window layers have a rotary
    /// of their own).
    position_tables: Vec<(Vec<f32>, CudaSlice<f32>)>,
}

/// One sequence of a batched decode step, laid out as SeqDesc in kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SeqDesc {
    k: u64,
    v: u64,
    pos: u64,
    score: u64,
    capacity: u32,
    len: u32,
    qpos: u32,
    scoring: u32,
    noise: u32,
    tau: f32,
    seed: u32,
    evict: u32,
    sinks: u32,
    window_start: u32,
}

/// The sequences of one decode launch, passed to the kernels by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SeqBatch {
    s: [SeqDesc; MAX_SEQS],
}

// SAFETY: plain data in the layout the kernels declare.
unsafe impl DeviceRepr for SeqBatch {}

impl Default for SeqBatch {
    fn default() -> SeqBatch {
        SeqBatch {
            s: [SeqDesc::default(); MAX_SEQS],
        }
    }
}

impl CudaLayer {
    /// The layer's buffers as a decode descriptor holding `len` tokens.
    fn desc(&self, b: &CudaBackend, len: usize) -> SeqDesc {
        SeqDesc {
            k: b.ptr(&self.k),
            v: b.ptr(&self.v),
            pos: b.ptr(&self.pos),
            score: b.ptr(&self.score),
            capacity: self.capacity as u32,
            len: len as u32,
            ..SeqDesc::default()
        }
    }
}

fn new_layer(b: &CudaBackend, shape: &CacheShape, capacity: usize) -> Result<CudaLayer> {
    let slots = shape.kv_heads * capacity;
    Ok(CudaLayer {
        k: b.wt_alloc(slots * shape.head_dim)?,
        v: b.wt_alloc(slots * shape.head_dim)?,
        pos: b.alloc(slots)?,
        score: b.alloc(slots)?,
        len: 0,
        capacity,
        seen: 0,
        parked: None,
    })
}

pub fn new_cache(b: &CudaBackend, shape: &CacheShape) -> Result<CudaCache> {
    let layers = (0..shape.layers)
        .map(|_| new_layer(b, shape, shape.capacity))
        .collect::<Result<_>>()?;
    Ok(CudaCache {
        shape: *shape,
        layers,
        position_tables: Vec::new(),
    })
}

/// Moves a layer into a block of `capacity` slots (its parked block when that has the size),
/// keeping the slots `dest` maps (all slots, in place, when None) and ending with `new_len`
/// tokens. Growing past the cache's capacity parks the block the layer leaves.
fn rebuild(
    b: &CudaBackend,
    shape: &CacheShape,
    l: &mut CudaLayer,
    capacity: usize,
    dest: Option<&CudaSlice<u32>>,
    new_len: usize,
) -> Result<()> {
    let mut next = match l.parked.take() {
        Some(home) if home.capacity == capacity => *home,
        parked => {
            l.parked = parked;
            new_layer(b, shape, capacity)?
        }
    };
    if l.len > 0 {
        let args = [
            Arg::P(dest.map_or(0, |d| b.ptr(d))),
            Arg::U(l.len as u32),
            Arg::P(b.ptr(&l.k)),
            Arg::P(b.ptr(&l.v)),
            Arg::P(b.ptr(&l.pos)),
            Arg::P(b.ptr(&l.score)),
            Arg::U(l.capacity as u32),
            Arg::P(b.ptr(&next.k)),
            Arg::P(b.ptr(&next.v)),
            Arg::P(b.ptr(&next.pos)),
            Arg::P(b.ptr(&next.score)),
            Arg::U(capacity as u32),
            Arg::U(shape.head_dim as u32),
        ];
        b.launch(
            &b.k.compact_copy,
            (l.len as u32, shape.kv_heads as u32),
            128,
            &args,
        )?;
    }
    next.len = new_len;
    next.seen = l.seen;
    next.parked = l.parked.take();
    let old = std::mem::replace(l, next);
    if old.capacity == shape.capacity && capacity > shape.capacity {
        l.parked = Some(Box::new(old));
    }
    Ok(())
}

/// Grows a layer's block, in place, to hold `rows` more tokens if it is full.
fn make_room(b: &CudaBackend, shape: &CacheShape, l: &mut CudaLayer, rows: usize) -> Result<()> {
    if l.len + rows > l.capacity {
        let len = l.len;
        rebuild(b, shape, l, len + rows, None, len)?;
    }
    Ok(())
}

/// The head shapes the kernels support.
fn check_heads(b: &CudaBackend, spec: &AttentionSpec) -> Result<()> {
    let (heads, kv_heads, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
    // The decode kernels read heads with 16-byte loads into fixed-size shared arrays.
    let vec = 16 / b.dtype.bytes();
    if hd % vec != 0 || hd > 512 || heads / kv_heads > 64 {
        return Err(Error::Backend {
            backend: "cuda",
            reason: format!(
                "head_dim {hd} must be a multiple of {vec} and at most 512, with at most 64 query heads per kv head"
            ),
        });
    }
    Ok(())
}

/// The layer's position table on the device, uploaded on its first use in this cache; returns
/// the table and the ALiBi slopes pointers (0 when unused).
fn position_table(
    b: &CudaBackend,
    spec: &AttentionSpec,
    cache: &mut CudaCache,
) -> Result<(u64, u64)> {
    let values: &[f32] = match spec.positions {
        Positions::Rotary { inv_freq, .. } => inv_freq,
        Positions::Alibi { slopes } => slopes,
        Positions::Learned => &[0.0],
    };
    let tables = &mut cache.position_tables;
    let at = match tables.iter().position(|(host, _)| host[..] == *values) {
        Some(at) => at,
        None => {
            tables.push((values.to_vec(), b.upload(values)?));
            tables.len() - 1
        }
    };
    let table = b.ptr(&tables[at].1);
    let slopes = if matches!(spec.positions, Positions::Alibi { .. }) {
        table
    } else {
        0
    };
    Ok((table, slopes))
}

/// The rotary's kernel arguments: dimensions turned, pairing, and the scale of the turned
/// dimensions.
fn rope(spec: &AttentionSpec) -> [Arg<'static>; 3] {
    let (dims, halves, scale) = match spec.positions {
        Positions::Rotary {
            dims, pairs, scale, ..
        } => (*dims as u32, (*pairs == RopePairs::Halves) as u32, *scale),
        _ => (0, 0, 1.0),
    };
    [Arg::U(dims), Arg::U(halves), Arg::F(scale)]
}

/// The score kernels' soft-capping and window arguments (0 for none).
fn score_shape(spec: &AttentionSpec) -> [Arg<'static>; 2] {
    let window = spec.window.map_or(0, |w| w.min(u32::MAX as usize) as u32);
    [Arg::F(spec.softcap.unwrap_or(0.0)), Arg::U(window)]
}

fn check_layer(cache: &CudaCache, layer: usize) -> Result<()> {
    if layer >= cache.layers.len() {
        return Err(Error::InvalidInput(format!(
            "layer {layer} is outside the cache"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn attention(
    b: &CudaBackend,
    spec: &AttentionSpec,
    qkv: &CudaSlice<f32>,
    rows: usize,
    first_pos: usize,
    cache: &mut CudaCache,
    layer: usize,
    score: Option<&StepScore>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    if rows == 1 {
        let mut seq = [SeqStep {
            cache,
            position: first_pos,
            score: score.copied(),
            keep: None,
        }];
        return decode(b, spec, qkv, &mut seq, layer, out);
    }
    let (heads, kv_heads, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
    super::check("qkv", qkv.len(), rows * (heads + 2 * kv_heads) * hd)?;
    super::check("attention output", out.len(), rows * heads * hd)?;
    check_layer(cache, layer)?;
    check_heads(b, spec)?;
    let (table, slopes) = position_table(b, spec, cache)?;
    let [rope_dims, rope_halves, rope_scale] = rope(spec);
    let shape = cache.shape;
    let l = &mut cache.layers[layer];
    make_room(b, &shape, l, rows)?;
    let q = b.uninit::<u8>(rows * heads * hd * b.dtype.bytes())?;
    let args = [
        Arg::P(b.ptr(qkv)),
        Arg::U(heads as u32),
        Arg::U(kv_heads as u32),
        Arg::U(hd as u32),
        Arg::U(first_pos as u32),
        rope_dims,
        rope_halves,
        Arg::P(table),
        rope_scale,
        Arg::P(b.ptr(&q)),
        Arg::P(b.ptr(&l.k)),
        Arg::P(b.ptr(&l.v)),
        Arg::P(b.ptr(&l.pos)),
        Arg::P(b.ptr(&l.score)),
        Arg::U(l.capacity as u32),
        Arg::U(l.len as u32),
    ];
    b.launch(
        &b.k.attn_append,
        (rows as u32, (heads + kv_heads) as u32),
        128,
        &args,
    )?;
    l.len += rows;
    l.seen = first_pos + rows;
    let step = Step {
        heads,
        kv_heads,
        hd,
        scale: spec.scale,
        score_shape: score_shape(spec),
        slopes,
        score,
        layer: layer as u32,
    };
    prefill(b, &step, &q, l, rows, first_pos, out)
}

struct Step<'a> {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
    /// Soft-capping and window (`score_shape`).
    score_shape: [Arg<'static>; 2],
    slopes: u64,
    score: Option<&'a StepScore>,
    layer: u32,
}

impl Step<'_> {
    fn score_args(&self) -> [Arg<'static>; 4] {
        let s = self.score.copied().unwrap_or(StepScore {
            noise: false,
            tau: 1.0,
            seed: 0,
        });
        [
            Arg::U(s.noise as u32),
            Arg::F(s.tau),
            Arg::U(s.seed),
            Arg::U(self.layer),
        ]
    }
}

/// One decode token for each sequence (row i of qkv and out is seqs[i]), in launches of up to
/// MAX_SEQS sequences: split attention (which appends the token to the cache first, and whose
/// last block for each kv head combines the spans with score accumulation), and the one-token
/// eviction of the sequences whose `keep` asks for it.
pub fn decode(
    b: &CudaBackend,
    spec: &AttentionSpec,
    qkv: &CudaSlice<f32>,
    seqs: &mut [SeqStep<'_, CudaCache>],
    layer: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let (heads, kv_heads, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
    let (width, out_width) = ((heads + 2 * kv_heads) * hd, heads * hd);
    super::check("qkv", qkv.len(), seqs.len() * width)?;
    super::check("attention output", out.len(), seqs.len() * out_width)?;
    check_heads(b, spec)?;
    let [rope_dims, rope_halves, rope_scale] = rope(spec);
    let [softcap, window] = score_shape(spec);
    for (launch, group) in seqs.chunks_mut(MAX_SEQS).enumerate() {
        let first_row = launch * MAX_SEQS;
        let n = group.len();
        let mut batch = SeqBatch::default();
        let (mut table, mut slopes, mut max_len, mut scoring) = (0, 0, 0, false);
        for (desc, seq) in batch.s.iter_mut().zip(group.iter_mut()) {
            check_layer(seq.cache, layer)?;
            (table, slopes) = position_table(b, spec, seq.cache)?;
            let shape = seq.cache.shape;
            let l = &mut seq.cache.layers[layer];
            make_room(b, &shape, l, 1)?;
            let len = l.len + 1;
            *desc = l.desc(b, len);
            desc.qpos = seq.position as u32;
            if let Some(sc) = &seq.score {
                (desc.scoring, desc.noise, desc.tau, desc.seed) =
                    (1, sc.noise as u32, sc.tau, sc.seed);
            }
            // The usual step of an evicting policy drops one token per kv head here; anything
            // else goes through `evict` below.
            if let Some(k) = &seq.keep
                && len == k.budget + 1
                && k.sinks + k.recent <= k.budget
                && l.capacity <= shape.capacity
            {
                desc.evict = 1;
                desc.sinks = k.sinks as u32;
                desc.window_start = (seq.position + 1).saturating_sub(k.recent) as u32;
            }
            max_len = max_len.max(len);
            scoring |= desc.scoring == 1;
        }
        // About three blocks per SM, in spans of whole SUB-key steps. Register use allows four,
        // but the fourth's room lets the next kernels start: an early product streams its
        // weights beside the attention (H100, GPT-J full: 4.75 -> 4.59 ms/token).
        let want = (3 * b.sms).div_ceil(n * heads).max(1);
        let span = max_len.div_ceil(want).div_ceil(SUB).max(1) * SUB;
        let splits = max_len.div_ceil(span);
        let logits = b.uninit::<f32>(if scoring { n * heads * max_len } else { 1 })?;
        let part_stat = b.uninit::<f32>(n * heads * splits * 4)?;
        let part_o = b.uninit::<f32>(n * heads * splits * hd)?;
        let qkv_at = b.ptr(qkv) + (first_row * width * 4) as u64;
        let out_at = b.ptr(out) + (first_row * out_width * 4) as u64;
        let args = [
            Arg::P(qkv_at),
            Arg::Seqs(&batch),
            Arg::U(heads as u32),
            Arg::U(kv_heads as u32),
            Arg::U(hd as u32),
            rope_dims,
            rope_halves,
            Arg::P(table),
            rope_scale,
            Arg::U(span as u32),
            Arg::U(splits as u32),
            Arg::U(max_len as u32),
            Arg::F(spec.scale),
            softcap,
            window,
            Arg::P(slopes),
            Arg::U(layer as u32),
            Arg::P(b.ptr(&logits)),
            Arg::P(b.ptr(&part_stat)),
            Arg::P(b.ptr(&part_o)),
            Arg::P(out_at),
            Arg::P(b.decode_counters(n * kv_heads)?),
        ];
        // Lanes per key: one 16-byte load each across the head, a power of two from 4 to 32.
        let lanes = (hd / (16 / b.dtype.bytes()))
            .next_power_of_two()
            .clamp(4, 32);
        let log2_teams = (32 / lanes).trailing_zeros() as usize;
        b.launch3(
            &b.k.decode_partial[log2_teams],
            (heads as u32, splits as u32, n as u32),
            128,
            &args,
        )?;
        if batch.s[..n].iter().any(|d| d.evict == 1) {
            let args = [Arg::Seqs(&batch), Arg::U(hd as u32)];
            b.launch(&b.k.decode_evict, (kv_heads as u32, n as u32), 256, &args)?;
        }
        for (desc, seq) in batch.s.iter().zip(group.iter_mut()) {
            let l = &mut seq.cache.layers[layer];
            l.len = desc.len as usize - desc.evict as usize;
            l.seen = seq.position + 1;
            if let Some(keep) = seq.keep.as_ref().filter(|_| desc.evict == 0) {
                evict(b, seq.cache, layer, keep)?;
            }
        }
    }
    Ok(())
}

/// A batch of column-major products C_i = op(A_i) B_i through cuBLAS: A_i at a + i * stride_a
/// (elements), and so on. Strides instead of pointer arrays keep the host out of the stream.
struct Batch {
    a: (u64, usize, i64),
    b: (u64, usize, i64),
    c: (u64, usize, i64),
    count: usize,
}

fn batched_gemm(
    b: &CudaBackend,
    ta: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: Batch,
) -> Result<()> {
    let op = if ta {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let ty = b.dtype.blas_type();
    // SAFETY: the strided matrices lie inside live device buffers (the callers' shapes).
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *b.blas.handle(),
            op,
            cublasOperation_t::CUBLAS_OP_N,
            m as i32,
            n as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            batch.a.0 as *const _,
            ty,
            batch.a.1 as i32,
            batch.a.2,
            batch.b.0 as *const _,
            ty,
            batch.b.1 as i32,
            batch.b.2,
            &beta as *const f32 as *const _,
            batch.c.0 as *mut _,
            cudaDataType::CUDA_R_32F,
            batch.c.1 as i32,
            batch.c.2,
            batch.count as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(cuda_err)
}

#[allow(clippy::too_many_arguments)]
fn prefill(
    b: &CudaBackend,
    s: &Step,
    q: &CudaSlice<u8>,
    l: &CudaLayer,
    rows: usize,
    first_pos: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let (heads, hd, len) = (s.heads, s.hd, l.len);
    let group = heads / s.kv_heads;
    let wb = b.dtype.bytes() as u64;
    // Query rows per tile, so the heads x tile x len logits stay within TILE_BYTES.
    let tile = (TILE_BYTES / (heads * len * 4)).clamp(1, rows);
    let logits = b.uninit::<f32>(heads * tile * len)?;
    let probs = b.uninit::<u8>(heads * tile * len * b.dtype.bytes())?;
    let (kp, vp, qp, lp, pp, op) = (
        b.ptr(&l.k),
        b.ptr(&l.v),
        b.ptr(q),
        b.ptr(&logits),
        b.ptr(&probs),
        b.ptr(out),
    );
    let kv_head = |h: usize| ((h / group) * l.capacity * hd) as u64 * wb;
    // (first head, heads in the batch, stride between their K or V blocks in elements).
    let groups: Vec<(usize, usize, i64)> = if group == 1 {
        vec![(0, heads, (l.capacity * hd) as i64)]
    } else {
        (0..s.kv_heads).map(|g| (g * group, group, 0)).collect()
    };
    for t0 in (0..rows).step_by(tile) {
        let tr = tile.min(rows - t0);
        let q_at = |h: usize| qp + ((t0 * heads + h) * hd) as u64 * wb;
        // S_h^T (len x tr) = K_g (hd x len)^T . Q_h (hd x tr), all column-major: one batch over
        // every head when each has its own kv head, else one batch per kv head's group.
        for &(first, count, k_stride) in &groups {
            let batch = Batch {
                a: (kp + kv_head(first), hd, k_stride),
                b: (q_at(first), heads * hd, hd as i64),
                c: (lp + (first * tr * len * 4) as u64, len, (tr * len) as i64),
                count,
            };
            batched_gemm(b, true, len, tr, hd, batch)?;
        }
        let [noise, tau, seed, layer] = s.score_args();
        let [softcap, window] = s.score_shape;
        let args = [
            Arg::P(lp),
            Arg::P(pp),
            Arg::P(b.ptr(&l.pos)),
            Arg::U(l.capacity as u32),
            Arg::U(len as u32),
            Arg::U(heads as u32),
            Arg::U(s.kv_heads as u32),
            Arg::U(tr as u32),
            Arg::U((first_pos + t0) as u32),
            Arg::F(s.scale),
            softcap,
            window,
            Arg::P(s.slopes),
            Arg::U(s.score.is_some() as u32),
            noise,
            tau,
            seed,
            layer,
        ];
        b.launch(
            &b.k.attn_prefill_softmax,
            (heads as u32, tr as u32),
            256,
            &args,
        )?;
        // O_h^T (hd x tr) = V_g (hd x len) . P_h (len x tr), written into out's rows.
        for &(first, count, v_stride) in &groups {
            let batch = Batch {
                a: (vp + kv_head(first), hd, v_stride),
                b: (pp + (first * tr * len) as u64 * wb, len, (tr * len) as i64),
                c: (
                    op + ((t0 * heads + first) * hd * 4) as u64,
                    heads * hd,
                    hd as i64,
                ),
                count,
            };
            batched_gemm(b, false, hd, tr, len, batch)?;
        }
        if s.score.is_some() {
            let args = [
                Arg::P(lp),
                Arg::P(b.ptr(&l.score)),
                Arg::U(l.capacity as u32),
                Arg::U(len as u32),
                Arg::U(heads as u32),
                Arg::U(s.kv_heads as u32),
                Arg::U(tr as u32),
            ];
            b.launch(
                &b.k.attn_prefill_columns,
                (s.kv_heads as u32, len.div_ceil(256) as u32),
                256,
                &args,
            )?;
        }
    }
    Ok(())
}

pub fn evict(b: &CudaBackend, cache: &mut CudaCache, layer: usize, keep: &Keep) -> Result<()> {
    let shape = cache.shape;
    let l = &mut cache.layers[layer];
    if l.len > keep.budget {
        if keep.sinks + keep.recent > keep.budget {
            return Err(Error::InvalidInput(format!(
                "eviction keeps {} sinks and {} recent tokens, more than a budget of {}",
                keep.sinks, keep.recent, keep.budget
            )));
        }
        let window_start = l.seen.saturating_sub(keep.recent) as u32;
        let evict_count = l.len - keep.budget;
        if evict_count == 1 && l.capacity <= shape.capacity {
            let mut batch = SeqBatch::default();
            batch.s[0] = SeqDesc {
                evict: 1,
                sinks: keep.sinks as u32,
                window_start,
                ..l.desc(b, l.len)
            };
            let args = [Arg::Seqs(&batch), Arg::U(shape.head_dim as u32)];
            b.launch(&b.k.decode_evict, (shape.kv_heads as u32, 1), 256, &args)?;
            l.len -= 1;
        } else {
            let n = shape.kv_heads * l.len;
            let (flags, dest) = (b.alloc::<u32>(n)?, b.alloc::<u32>(n)?);
            let args = [
                Arg::P(b.ptr(&l.pos)),
                Arg::P(b.ptr(&l.score)),
                Arg::P(b.ptr(&flags)),
                Arg::U(l.capacity as u32),
                Arg::U(l.len as u32),
                Arg::U(keep.sinks as u32),
                Arg::U(window_start),
                Arg::U(evict_count as u32),
            ];
            b.launch(
                &b.k.evict_rank,
                (shape.kv_heads as u32, l.len.div_ceil(256) as u32),
                256,
                &args,
            )?;
            let args = [
                Arg::P(b.ptr(&flags)),
                Arg::P(b.ptr(&dest)),
                Arg::U(l.len as u32),
            ];
            b.launch(&b.k.compact_index, (shape.kv_heads as u32, 1), 1, &args)?;
            let capacity = shape.capacity.max(keep.budget);
            rebuild(b, &shape, l, capacity, Some(&dest), keep.budget)?;
        }
    }
    if l.capacity > shape.capacity && l.len <= shape.capacity {
        let len = l.len;
        rebuild(b, &shape, l, shape.capacity, None, len)?;
    }
    Ok(())
}
