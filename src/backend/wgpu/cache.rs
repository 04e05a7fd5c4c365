//! The device KV cache (src/kv's layout, one block per layer), attention with fused score
//! accumulation, and eviction. Lengths stay on the host: every kv head of a layer holds the
//! same count, so it follows from the ops alone and no readback is needed.

use super::device::backend_error;
use super::{WgpuBackend, WgpuBuf, check_len, groups_for, word};
use crate::backend::{AttentionSpec, Backend, SeqStep};
use crate::error::{Error, Result};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::{Positions, RopePairs};

/// One layer's block: k and v [kv_head][slot][head_dim] in the KV type, pos (u32) and score
/// (f32) [kv_head][slot], `capacity` slots per kv head.
pub(super) struct LayerBlock {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    pub pos: wgpu::Buffer,
    pub score: wgpu::Buffer,
    pub len: usize,
    pub capacity: usize,
}

pub struct WgpuCache {
    shape: CacheShape,
    pub(super) layers: Vec<LayerBlock>,
}

/// Query rows per partial sum of the slot scores: prefill spreads its rows over invocations.
const SCORE_ROW_BLOCK: usize = 16;

/// Keys per step of decode_partial (CHUNK in shaders/attention.wgsl); spans are multiples.
const DECODE_CHUNK: usize = 64;
/// Workgroups a decode step's attention aims for: enough to spread a long cache over a large
/// GPU (wgpu does not say how many compute units there are).
const DECODE_WORKGROUPS: usize = 256;

/// The attention kernels take at most this head size (64 vec4 runs in workgroup memory).
const MAX_HEAD_DIM: usize = 256;

fn block(b: &WgpuBackend, shape: &CacheShape, capacity: usize) -> Result<LayerBlock> {
    let slots = (shape.kv_heads * capacity) as u64;
    let kv_bytes = slots * shape.head_dim as u64 * b.kv_value_bytes() as u64;
    Ok(LayerBlock {
        k: b.gpu.buffer(kv_bytes, "cached keys")?,
        v: b.gpu.buffer(kv_bytes, "cached values")?,
        pos: b.gpu.buffer(4 * slots, "cached positions")?,
        score: b.gpu.buffer(4 * slots, "cached scores")?,
        len: 0,
        capacity,
    })
}

pub(super) fn new_cache(b: &WgpuBackend, shape: &CacheShape) -> Result<WgpuCache> {
    if shape.head_dim > MAX_HEAD_DIM {
        return Err(backend_error(format!(
            "head_dim {} is larger than the {MAX_HEAD_DIM} the attention kernels take",
            shape.head_dim
        )));
    }
    if !shape.head_dim.is_multiple_of(4) {
        return Err(backend_error(format!(
            "head_dim {} is not a multiple of 4, which the attention kernels read as vec4 runs",
            shape.head_dim
        )));
    }
    let layers = (0..shape.layers)
        .map(|_| block(b, shape, shape.capacity))
        .collect::<Result<_>>()?;
    Ok(WgpuCache {
        shape: *shape,
        layers,
    })
}

/// Moves a layer to a new block of `capacity` slots per head, keeping the first `len` of each.
fn resize(b: &WgpuBackend, shape: &CacheShape, c: &mut LayerBlock, capacity: usize) -> Result<()> {
    let mut next = block(b, shape, capacity)?;
    let n = c.len.min(capacity) as u64;
    let value = (shape.head_dim * b.kv_value_bytes()) as u64;
    for g in 0..shape.kv_heads as u64 {
        let (from, to) = (g * c.capacity as u64, g * capacity as u64);
        b.gpu
            .copy(&c.k, from * value, &next.k, to * value, n * value)?;
        b.gpu
            .copy(&c.v, from * value, &next.v, to * value, n * value)?;
        b.gpu.copy(&c.pos, 4 * from, &next.pos, 4 * to, 4 * n)?;
        b.gpu.copy(&c.score, 4 * from, &next.score, 4 * to, 4 * n)?;
    }
    next.len = n as usize;
    *c = next;
    Ok(())
}

/// Position tables a backend keeps: a model uses one, or two where its window layers turn by
/// their own rotary (Gemma 3); a few more spare rebuilding tables for models that alternate.
const POSITION_TABLES: usize = 4;

/// A position table of `position_tables` and what it was made for.
pub(super) struct PositionTable {
    key: Vec<u32>,
    /// Positions 0.. that the table covers (every one for ALiBi's slopes).
    positions: usize,
    buffer: wgpu::Buffer,
}

fn layer_block(cache: &mut WgpuCache, layer: usize) -> Result<&mut LayerBlock> {
    let layers = cache.layers.len();
    cache.layers.get_mut(layer).ok_or_else(|| {
        Error::InvalidInput(format!(
            "layer {layer} is outside the cache of {layers} layers"
        ))
    })
}

/// The attention kernels' position scheme word and table: rotary (cos, sin) per position and
/// pair, computed here with the CPU's f32 arithmetic so every backend rotates by the same
/// angles; or the ALiBi slopes. The rotary table covers every position from 0 and grows by
/// doubling, so decode steps bind the same buffer token after token (and reuse their bind
/// groups) instead of a new table per token. Tables are kept per scheme and frequencies, so
/// layers with different rotaries each find their own.
fn position_table(
    b: &WgpuBackend,
    positions: &Positions,
    heads: usize,
    head_dim: usize,
    end_pos: usize,
) -> Result<(u32, u32, wgpu::Buffer)> {
    let (scheme, dims, key) = match positions {
        Positions::Learned => return Ok((0, 0, b.unused.clone())),
        Positions::Rotary {
            dims,
            pairs,
            inv_freq,
            ..
        } => {
            if inv_freq.len() * 2 != *dims || *dims > head_dim {
                return Err(Error::InvalidInput(format!(
                    "rotary embedding on {dims} of {head_dim} dims with {} frequencies",
                    inv_freq.len()
                )));
            }
            let scheme = match pairs {
                RopePairs::Interleaved => 1,
                RopePairs::Halves => 2,
            };
            let mut key = vec![scheme, word(*dims)?];
            key.extend(inv_freq.iter().map(|f| f.to_bits()));
            (scheme, *dims, key)
        }
        Positions::Alibi { slopes } => {
            if slopes.len() < heads {
                return Err(Error::InvalidInput(format!(
                    "{} ALiBi slopes for {heads} heads",
                    slopes.len()
                )));
            }
            let mut key = vec![3];
            key.extend(slopes.iter().map(|s| s.to_bits()));
            (3, 0, key)
        }
    };
    let mut tables = b.position_tables.borrow_mut();
    let found = tables.iter().position(|t| t.key == key);
    if let Some(t) = found.map(|i| &tables[i])
        && t.positions >= end_pos
    {
        return Ok((scheme, word(dims)?, t.buffer.clone()));
    }
    let (values, positions): (Vec<f32>, usize) = match positions {
        Positions::Rotary { inv_freq, .. } => {
            let n = end_pos.next_power_of_two();
            let values = (0..n)
                .flat_map(|pos| {
                    inv_freq.iter().flat_map(move |&f| {
                        let (sin, cos) = (pos as f32 * f).sin_cos();
                        [cos, sin]
                    })
                })
                .collect();
            (values, n)
        }
        // ALiBi (learned positions returned above): the slopes the key holds, for every
        // position.
        _ => (
            key[1..].iter().map(|&s| f32::from_bits(s)).collect(),
            usize::MAX,
        ),
    };
    let buffer = b
        .gpu
        .buffer_with(bytemuck::cast_slice(&values), "position table")?;
    let table = PositionTable {
        key,
        positions,
        buffer: buffer.clone(),
    };
    match found {
        Some(i) => tables[i] = table,
        None => {
            if tables.len() == POSITION_TABLES {
                tables.remove(0);
            }
            tables.push(table);
        }
    }
    Ok((scheme, word(dims)?, buffer))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    b: &WgpuBackend,
    spec: &AttentionSpec,
    qkv: &WgpuBuf,
    rows: usize,
    first_pos: usize,
    cache: &mut WgpuCache,
    layer: usize,
    score: Option<&StepScore>,
    out: &mut WgpuBuf,
) -> Result<()> {
    let step = Step {
        batch_row: 0,
        keep: None,
    };
    attend(
        b, spec, qkv, rows, first_pos, cache, layer, score, out, step,
    )
}

/// A decode step's attention before decode_combine: `parts` holds its spans ([head][split] of
/// the statistics and head_dim unnormalised outputs), for attention output row `row`.
pub(super) struct SpanCombine {
    pub parts: wgpu::Buffer,
    pub heads: usize,
    pub head_dim: usize,
    pub splits: usize,
    pub row: usize,
}

/// Where a sequence's rows sit in qkv and out, and the eviction a decode step may run in the
/// dispatch that scores it.
struct Step<'a> {
    batch_row: usize,
    keep: Option<&'a Keep>,
}

/// Decode steps of one or more sequences, row i of qkv and out being seqs[i]'s, each evicting
/// as its `keep` says: a step that leaves one token over the budget evicts it in the dispatch
/// that scores the step, and `evict` finds nothing left to do but return spare capacity.
pub(super) fn decode(
    b: &WgpuBackend,
    spec: &AttentionSpec,
    qkv: &WgpuBuf,
    seqs: &mut [SeqStep<'_, WgpuCache>],
    layer: usize,
    out: &mut WgpuBuf,
) -> Result<()> {
    for (i, seq) in seqs.iter_mut().enumerate() {
        let step = Step {
            batch_row: i,
            keep: seq.keep.as_ref(),
        };
        let score = seq.score.as_ref();
        attend(
            b,
            spec,
            qkv,
            1,
            seq.position,
            seq.cache,
            layer,
            score,
            out,
            step,
        )?;
        if let Some(keep) = &seq.keep {
            evict(b, seq.cache, layer, keep)?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attend(
    b: &WgpuBackend,
    spec: &AttentionSpec,
    qkv: &WgpuBuf,
    rows: usize,
    first_pos: usize,
    cache: &mut WgpuCache,
    layer: usize,
    score: Option<&StepScore>,
    out: &mut WgpuBuf,
    Step { batch_row, keep }: Step,
) -> Result<()> {
    let (hd, nh, nkv) = (spec.head_dim, spec.heads, spec.kv_heads);
    let shape = cache.shape;
    if nkv != shape.kv_heads || hd != shape.head_dim || nkv == 0 || nh % nkv != 0 {
        return Err(backend_error(format!(
            "attention with {nh} heads, {nkv} kv heads of {hd} does not fit a cache of {} kv heads of {}",
            shape.kv_heads, shape.head_dim
        )));
    }
    check_len("qkv", qkv.len, (batch_row + rows) * (nh + 2 * nkv) * hd)?;
    check_len("attention output", out.len, (batch_row + rows) * nh * hd)?;
    let c = layer_block(cache, layer)?;
    if c.len + rows > c.capacity {
        resize(b, &shape, c, c.len + rows)?;
    }
    let (scheme, rot_dims, table) = position_table(b, spec.positions, nh, hd, first_pos + rows)?;
    let rot_scale = match spec.positions {
        Positions::Rotary { scale, .. } => *scale,
        _ => 1.0,
    };
    // The kernels read 0 as no soft-cap and no window.
    if let Some(cap) = spec.softcap
        && !(cap > 0.0 && cap.is_finite())
    {
        return Err(Error::InvalidInput(format!(
            "attention soft-cap {cap} is not a positive number"
        )));
    }
    if spec.window == Some(0) {
        return Err(Error::InvalidInput(
            "a sliding window of 0 tokens".to_string(),
        ));
    }
    let softcap = spec.softcap.unwrap_or(0.0);
    let old_len = c.len;
    c.len += rows;
    // Scratch, not new buffers: a new buffer per layer and token costs an allocation and the
    // zero fill wgpu records before its first use.
    let lse = b.scratch("noisy log-sum-exp", 4 * (rows * nh) as u64)?;
    let step = score.copied().unwrap_or(StepScore {
        noise: false,
        tau: 1.0,
        seed: 0,
    });
    // One eviction, run by the decode scoring kernel; any other is left to `evict`, which
    // also reports a keep that does not fit its budget.
    let evict_one =
        keep.filter(|k| rows == 1 && c.len == k.budget + 1 && k.sinks + k.recent <= k.budget);
    // A decode step's keys in spans of whole chunks, one workgroup per head and span.
    let span = c
        .len
        .div_ceil(DECODE_WORKGROUPS.div_ceil(nh))
        .next_multiple_of(DECODE_CHUNK);
    let splits = c.len.div_ceil(span);
    let params = [
        word(rows)?,
        word(nh)?,
        word(nkv)?,
        word(hd)?,
        word(c.capacity)?,
        word(old_len)?,
        word(c.len)?,
        word(first_pos)?,
        spec.scale.to_bits(),
        scheme,
        rot_dims,
        score.is_some() as u32,
        step.noise as u32,
        step.tau.to_bits(),
        step.seed,
        word(layer)?,
        SCORE_ROW_BLOCK as u32,
        word(batch_row)?,
        evict_one.is_some() as u32,
        word(evict_one.map_or(0, |k| k.sinks))?,
        word(evict_one.map_or(0, |k| c.len - k.recent))?,
        word(span)?,
        word(splits)?,
        softcap.to_bits(),
        word(spec.window.unwrap_or(0))?,
        rot_scale.to_bits(),
    ];
    let k = &b.kernels;
    if rows == 1 {
        let parts = b.scratch("decode partials", 4 * (nh * splits * (hd + 4)) as u64)?;
        // The row's noisy logits per head and slot, which decode_score_evict sums.
        let noisy_logits = b.scratch("decode noisy logits", 4 * (nh * c.capacity) as u64)?;
        b.gpu.dispatch(
            &k.decode_partial,
            &params,
            &[
                (1, &qkv.buffer),
                (2, &table),
                (6, &c.pos),
                (7, &c.score),
                (14, &c.k),
                (15, &c.v),
                (16, &parts),
                (17, &noisy_logits),
            ],
            nh * splits,
        )?;
        // The combine is deferred: a one-row product of the output may fuse it.
        let note = SpanCombine {
            parts: parts.clone(),
            heads: nh,
            head_dim: hd,
            splits,
            row: batch_row,
        };
        b.gpu.defer(
            &k.decode_combine,
            &params,
            &[(8, &out.buffer), (9, &lse), (16, &parts)],
            nh,
            (&out.buffer, Box::new(note)),
        )?;
        if score.is_some() || evict_one.is_some() {
            let buffers = [
                (6, &c.pos),
                (7, &c.score),
                (9, &lse),
                (14, &c.k),
                (15, &c.v),
                (17, &noisy_logits),
            ];
            b.gpu
                .dispatch(&k.decode_score_evict, &params, &buffers, nkv)?;
            if evict_one.is_some() {
                c.len -= 1;
            }
        }
        return Ok(());
    }
    let q = b.scratch("rotated queries", 4 * (rows * nh * hd) as u64)?;
    b.gpu.dispatch(
        &k.attention_prepare,
        &params,
        &[
            (1, &qkv.buffer),
            (2, &table),
            (3, &q),
            (4, &c.k),
            (5, &c.v),
            (6, &c.pos),
            (7, &c.score),
        ],
        groups_for(rows * (nh + nkv) * hd),
    )?;
    // k and v are bound as vec4 runs (14, 15).
    b.gpu.dispatch(
        &k.attention,
        &params,
        &[
            (1, &qkv.buffer),
            (2, &table),
            (6, &c.pos),
            (8, &out.buffer),
            (9, &lse),
            (14, &c.k),
            (15, &c.v),
        ],
        rows * nh,
    )?;
    if score.is_some() {
        let slots = nkv * c.len;
        let blocks = rows.div_ceil(SCORE_ROW_BLOCK);
        let partial = b.scratch("partial scores", 4 * (slots * blocks) as u64)?;
        let buffers = [
            (2, &table),
            (6, &c.pos),
            (7, &c.score),
            (9, &lse),
            (10, &q),
            (13, &partial),
            (14, &c.k),
        ];
        b.gpu.dispatch(
            &k.attention_score,
            &params,
            &buffers,
            groups_for(slots * blocks),
        )?;
        if blocks > 1 {
            b.gpu.dispatch(
                &k.attention_score_sum,
                &params,
                &[(7, &c.score), (13, &partial)],
                groups_for(slots),
            )?;
        }
    }
    Ok(())
}

pub(super) fn evict(
    b: &WgpuBackend,
    cache: &mut WgpuCache,
    layer: usize,
    keep: &Keep,
) -> Result<()> {
    let shape = cache.shape;
    let c = layer_block(cache, layer)?;
    if c.len > keep.budget {
        if keep.sinks + keep.recent > keep.budget {
            return Err(Error::InvalidInput(format!(
                "eviction keeps {} sinks and {} recent tokens, more than a budget of {}",
                keep.sinks, keep.recent, keep.budget
            )));
        }
        let nkv = shape.kv_heads;
        let keep_flags = b.scratch("keep flags", 4 * (nkv * c.len) as u64)?;
        let sources = b.scratch("survivor slots", 4 * (nkv * keep.budget) as u64)?;
        let params = [
            word(nkv)?,
            word(c.capacity)?,
            word(c.len)?,
            word(keep.budget)?,
            word(keep.sinks)?,
            word(c.len - keep.recent)?,
            word(c.len - keep.budget)?,
            word(shape.head_dim)?,
        ];
        let k = &b.kernels;
        b.gpu.dispatch(
            &k.evict_rank,
            &params,
            &[(1, &c.score), (2, &keep_flags)],
            groups_for(nkv * c.len),
        )?;
        let buffers = [
            (1, &c.score),
            (2, &keep_flags),
            (3, &sources),
            (4, &c.k),
            (5, &c.v),
            (6, &c.pos),
        ];
        b.gpu.dispatch(&k.evict_compact, &params, &buffers, nkv)?;
        c.len = keep.budget;
    }
    if c.capacity > shape.capacity && c.len <= shape.capacity {
        resize(b, &shape, c, shape.capacity)?;
    }
    Ok(())
}

/// Reads one [kv_head][slot] array of a layer back, each head cut to the held tokens.
pub(super) fn read_slots<T: bytemuck::Pod>(
    b: &WgpuBackend,
    cache: &WgpuCache,
    layer: usize,
    array: impl Fn(&LayerBlock) -> &wgpu::Buffer,
) -> Result<Vec<Vec<T>>> {
    let c = cache
        .layers
        .get(layer)
        .ok_or_else(|| Error::InvalidInput(format!("layer {layer} is outside the cache")))?;
    let heads = cache.shape.kv_heads;
    let bytes = b.gpu.read(array(c), 0, (4 * heads * c.capacity) as u64)?;
    let all: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
    Ok((0..heads)
        .map(|g| all[g * c.capacity..g * c.capacity + c.len].to_vec())
        .collect())
}
