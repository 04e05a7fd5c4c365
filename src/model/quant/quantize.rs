//! Block quantizers: f32 values to the bytes of a GGML block, the inverse of the dequantizers.
//!
//! Each format stores small integer levels under one or more scales. A block is encoded by
//! searching its scale (and, for the `_1` and affine K formats, its minimum): several candidate
//! scales around "largest value over largest level", each refined by least squares on the levels
//! it gives, keeping the one whose reconstruction has the least squared error. Errors are measured
//! on the values the dequantizer will produce: after the scales are rounded to f16 (and, for the K
//! formats, the sub-block scales to their 4 or 6 bits), the levels are computed again from the
//! stored scales.
//!
//! The helpers here fit one group of values; `legacy` packs the 32-value formats and `kquants`
//! the 256-value super-blocks.

pub(super) mod kquants;
pub(super) mod legacy;

use half::f16;

/// Encodes one block: `values` is `block_values` long, `out` is `block_bytes` long.
pub type QuantizeFn = fn(values: &[f32], out: &mut [u8]);

/// The largest magnitude a value may have: every format here keeps f16 scales, and values
/// within f16's range keep every scale finite.
pub const MAX_ABS: f32 = 65504.0;

/// The most values one scale covers (a legacy block or a K sub-block).
const MAX_GROUP: usize = 32;

/// `v` rounded to f16, saturating at f16's largest finite magnitude.
fn to_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-MAX_ABS, MAX_ABS))
}

/// Writes `v` as a little-endian f16 at `out[i..i + 2]`.
fn put_f16(out: &mut [u8], i: usize, v: f16) {
    out[i..i + 2].copy_from_slice(&v.to_le_bytes());
}

/// `x` rounded to the nearest level in `lo..=hi` (ties away from zero).
#[inline]
fn level(x: f32, lo: i32, hi: i32) -> i32 {
    // Add a half and truncate: `f32::round` is a library call on baseline x86-64, and this runs
    // for every value of every candidate scale. `as` saturates (NaN, never reached for finite
    // scales, becomes 0).
    ((x + 0.5f32.copysign(x)) as i32).clamp(lo, hi)
}

/// The signed value of largest magnitude (the first one on ties) and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((0.0f32, 0.0f32), |(max, amax), &v| {
        if v.abs() > amax {
            (v, v.abs())
        } else {
            (max, amax)
        }
    })
}

/// Least-squares scale `s` for `x ~ s * l`, and its squared error; `None` when all levels are 0.
fn fit_scale(x: &[f32], l: &[i32]) -> Option<(f32, f32)> {
    let (mut sxl, mut sll, mut sxx) = (0.0f32, 0.0f32, 0.0f32);
    for (&v, &q) in x.iter().zip(l) {
        let q = q as f32;
        sxl += v * q;
        sll += q * q;
        sxx += v * v;
    }
    (sll > 0.0).then(|| (sxl / sll, (sxx - sxl * sxl / sll).max(0.0)))
}

/// Least-squares `(s, m)` for `x ~ s * l + m`, `m` at most 0 when `nonpositive_offset`, and its
/// squared error; `None` when the levels cannot determine a scale.
fn fit_affine(x: &[f32], l: &[i32], nonpositive_offset: bool) -> Option<(f32, f32, f32)> {
    let n = x.len() as f32;
    let (mut sl, mut sll, mut sx, mut sxl, mut sxx) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for (&v, &q) in x.iter().zip(l) {
        let q = q as f32;
        sl += q;
        sll += q * q;
        sx += v;
        sxl += v * q;
        sxx += v * v;
    }
    if sll == 0.0 {
        return None;
    }
    let det = n * sll - sl * sl;
    // With a single level in use (det 0) the offset is free: fit the scale alone.
    let (mut s, mut m) = if det > 0.0 {
        ((n * sxl - sx * sl) / det, (sll * sx - sl * sxl) / det)
    } else {
        (sxl / sll, 0.0)
    };
    if nonpositive_offset && m > 0.0 {
        (s, m) = (sxl / sll, 0.0);
    }
    // sum (s l + m - x)^2, expanded.
    let err = sxx + s * s * sll + n * m * m + 2.0 * (s * m * sl - s * sxl - m * sx);
    Some((s, m, err.max(0.0)))
}

/// A symmetric fit `x ~ s * l`, `l` in `lo..=hi`: candidate scales map the largest-magnitude
/// value to targets within 0.8 of `lo` and of `hi` by 0.2, each refined by least squares on its
/// levels; then two rounds of "levels from the scale, scale from the levels". Returns the scale
/// (0 for an all-zero group).
fn symmetric_fit(x: &[f32], lo: i32, hi: i32) -> f32 {
    let (max, amax) = signed_max(x);
    if amax == 0.0 {
        return 0.0;
    }
    let mut buf = [0i32; MAX_GROUP];
    let l = &mut buf[..x.len()];
    let mut best = (f32::INFINITY, 0.0f32);
    for end in [lo, hi] {
        for k in -4..=4 {
            let iscale = (end as f32 + 0.2 * k as f32) / max;
            for (q, &v) in l.iter_mut().zip(x) {
                *q = level(v * iscale, lo, hi);
            }
            if let Some((s, err)) = fit_scale(x, l)
                && err < best.0
            {
                best = (err, s);
            }
        }
    }
    for _ in 0..2 {
        let inv = 1.0 / best.1;
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level(v * inv, lo, hi);
        }
        match fit_scale(x, l) {
            Some((s, err)) if err < best.0 => best = (err, s),
            _ => break,
        }
    }
    best.1
}

/// An affine fit `x ~ s * l + m`, `l` in `0..=nmax`: candidate scales `(nmax + r) / (max - min)`
/// for `r` in -1..=1 by 0.2, each refined by least squares, then two rounds of refinement as in
/// `symmetric_fit`. With `nonpositive_offset` (the K formats store `-m` unsigned) the minimum is
/// clamped to at most 0 first. Returns `(s, m)`.
fn affine_fit(x: &[f32], nmax: i32, nonpositive_offset: bool) -> (f32, f32) {
    let mut min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if nonpositive_offset {
        min = min.min(0.0);
    }
    if max <= min {
        return (0.0, min);
    }
    let mut buf = [0i32; MAX_GROUP];
    let l = &mut buf[..x.len()];
    let mut best = (f32::INFINITY, 0.0f32, min);
    for k in -5..=5 {
        let iscale = (nmax as f32 + 0.2 * k as f32) / (max - min);
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level((v - min) * iscale, 0, nmax);
        }
        if let Some((s, m, err)) = fit_affine(x, l, nonpositive_offset)
            && err < best.0
        {
            best = (err, s, m);
        }
    }
    for _ in 0..2 {
        let (_, s, m) = best;
        if s == 0.0 {
            break;
        }
        let inv = 1.0 / s;
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level((v - m) * inv, 0, nmax);
        }
        match fit_affine(x, l, nonpositive_offset) {
            Some((s, m, err)) if err < best.0 => best = (err, s, m),
            _ => break,
        }
    }
    (best.1, best.2)
}

/// Plain floats: one value per block.
pub(super) mod floats {
    use half::{bf16, f16};

    pub fn f32_block(x: &[f32], out: &mut [u8]) {
        out[..4].copy_from_slice(&x[0].to_le_bytes());
    }

    pub fn f16_block(x: &[f32], out: &mut [u8]) {
        out[..2].copy_from_slice(&f16::from_f32(x[0]).to_le_bytes());
    }

    pub fn bf16_block(x: &[f32], out: &mut [u8]) {
        out[..2].copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes());
    }
}
