//! The CPU cache, attention with fused score accumulation, and eviction.

use rayon::prelude::*;

use super::{apply_rotary, check_len, dot};
use crate::backend::AttentionSpec;
use crate::error::{Error, Result};
use crate::kv::noise::gumbel;
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::Positions;

/// One layer's block: [kv_head][slot][head_dim] for K and V, [kv_head][slot] for positions and
/// scores, with `capacity` slots per head.
pub struct CpuLayerCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub pos: Vec<u32>,
    pub score: Vec<f32>,
    pub len: usize,
    pub capacity: usize,
}

pub struct CpuCache {
    pub shape: CacheShape,
    pub layers: Vec<CpuLayerCache>,
}

impl CpuLayerCache {
    pub fn new(kv_heads: usize, head_dim: usize, capacity: usize) -> CpuLayerCache {
        let slots = kv_heads * capacity;
        CpuLayerCache {
            k: vec![0.0; slots * head_dim],
            v: vec![0.0; slots * head_dim],
            pos: vec![0; slots],
            score: vec![0.0; slots],
            len: 0,
            capacity,
        }
    }

    /// Moves the block to `capacity` slots per head, keeping the first `len` of each head.
    fn resize(&mut self, kv_heads: usize, hd: usize, capacity: usize) {
        let mut next = CpuLayerCache::new(kv_heads, hd, capacity);
        let n = self.len.min(capacity);
        for g in 0..kv_heads {
            let (src, dst) = (g * self.capacity, g * capacity);
            next.k[dst * hd..(dst + n) * hd].copy_from_slice(&self.k[src * hd..(src + n) * hd]);
            next.v[dst * hd..(dst + n) * hd].copy_from_slice(&self.v[src * hd..(src + n) * hd]);
            next.pos[dst..dst + n].copy_from_slice(&self.pos[src..src + n]);
            next.score[dst..dst + n].copy_from_slice(&self.score[src..src + n]);
        }
        next.len = n;
        *self = next;
    }
}

fn rotate(positions: &Positions, x: &mut [f32], pos: usize) {
    if let Positions::Rotary {
        dims,
        pairs,
        inv_freq,
        scale,
    } = positions
    {
        apply_rotary(x, pos, *dims, *pairs, inv_freq);
        if *scale != 1.0 {
            x[..*dims].iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// ALiBi bias from original positions: slope * (key - query), zero for other schemes.
fn alibi(positions: &Positions, head: usize, key_pos: u32, query_pos: u32) -> f32 {
    match positions {
        Positions::Alibi { slopes } => slopes[head] * (key_pos as f32 - query_pos as f32),
        _ => 0.0,
    }
}

/// What one query head produces: its output rows and its contribution to the slot scores.
struct HeadResult {
    out: Vec<f32>,
    score: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
pub fn attention(
    spec: &AttentionSpec,
    qkv: &[f32],
    rows: usize,
    first_pos: usize,
    cache: &mut CpuCache,
    layer: usize,
    step_score: Option<&StepScore>,
    out: &mut [f32],
) -> Result<()> {
    let (hd, nh, nkv) = (spec.head_dim, spec.heads, spec.kv_heads);
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    let stride = q_dim + 2 * kv_dim;
    check_len("qkv", qkv, rows * stride)?;
    check_len("attention output", out, rows * q_dim)?;
    if layer >= cache.layers.len() {
        return Err(Error::InvalidInput(format!(
            "layer {layer} is outside the cache"
        )));
    }
    let c = &mut cache.layers[layer];
    if c.len + rows > c.capacity {
        c.resize(nkv, hd, c.len + rows);
    }
    let cap = c.capacity;

    // Queries with positions applied; keys rotated before they are cached.
    let mut q = qkv
        .chunks_exact(stride)
        .take(rows)
        .flat_map(|r| &r[..q_dim])
        .copied()
        .collect::<Vec<f32>>();
    for r in 0..rows {
        let row = &qkv[r * stride..(r + 1) * stride];
        let pos = first_pos + r;
        for h in 0..nh {
            rotate(
                spec.positions,
                &mut q[(r * nh + h) * hd..(r * nh + h + 1) * hd],
                pos,
            );
        }
        for g in 0..nkv {
            let slot = g * cap + c.len + r;
            let k = &mut c.k[slot * hd..(slot + 1) * hd];
            k.copy_from_slice(&row[q_dim + g * hd..q_dim + (g + 1) * hd]);
            rotate(spec.positions, k, pos);
            c.v[slot * hd..(slot + 1) * hd]
                .copy_from_slice(&row[q_dim + kv_dim + g * hd..q_dim + kv_dim + (g + 1) * hd]);
            c.pos[slot] = pos as u32;
            c.score[slot] = 0.0;
        }
    }
    c.len += rows;

    let c = &*c;
    let group = nh / nkv;
    let per_head: Vec<HeadResult> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let base = (h / group) * cap;
            let mut res = HeadResult {
                out: vec![0.0; rows * hd],
                score: vec![0.0; c.len],
            };
            let mut x = vec![0f32; c.len];
            for r in 0..rows {
                let q_pos = (first_pos + r) as u32;
                let qh = &q[(r * nh + h) * hd..(r * nh + h + 1) * hd];
                // Causal: the prompt's later tokens are already cached during prefill. Slots
                // are in position order, so a window starts at the first slot it reaches.
                let n = (0..c.len).take_while(|&s| c.pos[base + s] <= q_pos).count();
                let first = spec.window.map_or(0, |w| {
                    (0..n)
                        .take_while(|&s| c.pos[base + s] as usize + w <= q_pos as usize)
                        .count()
                });
                x[..first].fill(f32::NEG_INFINITY);
                for (s, xs) in x[..n].iter_mut().enumerate().skip(first) {
                    let slot = base + s;
                    let mut score = dot(qh, &c.k[slot * hd..(slot + 1) * hd]) * spec.scale;
                    if let Some(cap) = spec.softcap {
                        score = cap * (score / cap).tanh();
                    }
                    *xs = score + alibi(spec.positions, h, c.pos[slot], q_pos);
                }
                let probs = softmax(&x[..n], |_, v| v);
                let o = &mut res.out[r * hd..(r + 1) * hd];
                for (s, p) in probs.iter().enumerate() {
                    let slot = base + s;
                    for (acc, v) in o.iter_mut().zip(&c.v[slot * hd..(slot + 1) * hd]) {
                        *acc += p * v;
                    }
                }
                if let Some(sc) = step_score {
                    let noisy = |s: usize, v: f32| {
                        let g = if sc.noise {
                            gumbel(sc.seed, layer as u32, h as u32, q_pos, c.pos[base + s])
                        } else {
                            0.0
                        };
                        (v + g) / sc.tau
                    };
                    for (acc, p) in res.score.iter_mut().zip(softmax(&x[..n], noisy)) {
                        *acc += p;
                    }
                }
            }
            res
        })
        .collect();

    for (h, res) in per_head.iter().enumerate() {
        for r in 0..rows {
            out[(r * nh + h) * hd..(r * nh + h + 1) * hd]
                .copy_from_slice(&res.out[r * hd..(r + 1) * hd]);
        }
    }
    if step_score.is_some() {
        let c = &mut cache.layers[layer];
        // Query heads add into their kv head in a fixed order, so results are reproducible.
        for (h, res) in per_head.iter().enumerate() {
            let base = (h / group) * cap;
            for (s, p) in res.score.iter().enumerate() {
                c.score[base + s] += p;
            }
        }
    }
    Ok(())
}

/// Softmax of f(index, x) over x, via the row's log-sum-exp.
fn softmax(x: &[f32], f: impl Fn(usize, f32) -> f32) -> Vec<f32> {
    let y: Vec<f32> = x.iter().enumerate().map(|(i, &v)| f(i, v)).collect();
    let max = y.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f32> = y.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

pub fn evict(cache: &mut CpuCache, layer: usize, keep: &Keep) -> Result<()> {
    let shape = cache.shape;
    let hd = shape.head_dim;
    let c = &mut cache.layers[layer];
    if c.len > keep.budget {
        if keep.sinks + keep.recent > keep.budget {
            return Err(Error::InvalidInput(format!(
                "eviction keeps {} sinks and {} recent tokens, more than a budget of {}",
                keep.sinks, keep.recent, keep.budget
            )));
        }
        let evict_count = c.len - keep.budget;
        let candidates = keep.sinks..c.len - keep.recent;
        for g in 0..shape.kv_heads {
            let base = g * c.capacity;
            let mut order: Vec<usize> = candidates.clone().collect();
            // Lowest score first; the earlier token first among equal scores.
            order.sort_by(|&a, &b| {
                c.score[base + a]
                    .total_cmp(&c.score[base + b])
                    .then(a.cmp(&b))
            });
            let mut evicted = vec![false; c.len];
            for &s in &order[..evict_count] {
                evicted[s] = true;
            }
            let survivors = (0..c.len).filter(|&s| !evicted[s]);
            for (dst, src) in survivors.enumerate() {
                let (from, to) = (base + src, base + dst);
                c.k.copy_within(from * hd..(from + 1) * hd, to * hd);
                c.v.copy_within(from * hd..(from + 1) * hd, to * hd);
                c.pos[to] = c.pos[from];
                c.score[to] = c.score[from];
            }
        }
        c.len = keep.budget;
    }
    if c.capacity > shape.capacity && c.len <= shape.capacity {
        c.resize(shape.kv_heads, hd, shape.capacity);
    }
    Ok(())
}
