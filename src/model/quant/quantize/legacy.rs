//! Quantizers of the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); layouts as in
//! `quant/blocks32.rs`.
//!
//! Every candidate scale is judged by the error of the values the block will dequantize to:
//! scale (and minimum) rounded to f16, levels recomputed from the rounded scale. Symmetric
//! formats always map the largest-magnitude value to a negative level (the scale's sign is the
//! opposite of that value's) and keep every positive level smaller in magnitude, so a block has
//! one encoding and quantizing a dequantized block again gives its bytes back (where its scale
//! is a normal f16 number: a subnormal one's steps are coarse enough that the best encoding of
//! the dequantized block can differ).

use half::f16;

use super::{fit_affine, fit_scale, level, put_f16, signed_max, to_f16};

const QK: usize = 32;

/// Scale and levels (`lo..=hi`) for `x ~ d * l`. Candidate scales map the largest-magnitude value
/// to targets from `lo - 1` to `lo + 3` by `step` (which must divide 1, so that the integer
/// targets, the exact encodings of a dequantized block, are among them); each is refined by least
/// squares, rounded to f16 and scored with levels recomputed from the rounded scale. An all-zero
/// block gets scale 0 and levels 0.
fn symmetric_block(x: &[f32], lo: i32, hi: i32, step: f32, levels: &mut [i32; QK]) -> f16 {
    levels.fill(0);
    let (max, amax) = signed_max(x);
    if amax == 0.0 {
        return f16::ZERO;
    }
    let mut l = [0i32; QK];
    let mut best = (f32::INFINITY, f16::ZERO);
    let steps = (4.0 / step).round() as i32;
    for k in 0..=steps {
        let iscale = ((lo - 1) as f32 + step * k as f32) / max;
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level(v * iscale, lo, hi);
        }
        let Some((s, _)) = fit_scale(x, &l) else {
            continue;
        };
        let d = to_f16(s);
        let df = d.to_f32();
        if df == 0.0 {
            continue;
        }
        let (inv, mut err) = (1.0 / df, 0.0f32);
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level(v * inv, lo, hi);
            err += (v - df * *q as f32).powi(2);
        }
        // One encoding per block: the largest magnitude only on negative levels, so the
        // dequantized block's largest value says the scale's sign.
        let (most, least) = l.iter().fold((0, 0), |(a, b), &q| (a.max(q), b.min(q)));
        if err < best.0 && -least > most {
            best = (err, d);
            *levels = l;
        }
    }
    best.1
}

/// Scale, minimum and levels (`0..=nmax`) for `x ~ d * l + m`: candidates around
/// `(max - min) / nmax`, each refined by least squares, rounded to f16 and scored as above.
fn affine_block(x: &[f32], nmax: i32, levels: &mut [i32; QK]) -> (f16, f16) {
    levels.fill(0);
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max <= min {
        return (f16::ZERO, to_f16(min));
    }
    let mut l = [0i32; QK];
    let mut best = (f32::INFINITY, f16::ZERO, to_f16(min));
    // The plain range first, then least-squares refinements of nearby scales.
    let plain = ((max - min) / nmax as f32, min);
    let fits = (-5..=5).filter_map(|k| {
        let iscale = (nmax as f32 + 0.2 * k as f32) / (max - min);
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level((v - min) * iscale, 0, nmax);
        }
        fit_affine(x, &l, false).map(|(s, m, _)| (s, m))
    });
    let candidates: Vec<(f32, f32)> = std::iter::once(plain).chain(fits).collect();
    for (s, m) in candidates {
        let (d, m) = (to_f16(s), to_f16(m));
        let (df, mf) = (d.to_f32(), m.to_f32());
        if df == 0.0 {
            continue;
        }
        let (inv, mut err) = (1.0 / df, 0.0f32);
        for (q, &v) in l.iter_mut().zip(x) {
            *q = level((v - mf) * inv, 0, nmax);
            err += (v - (df * *q as f32 + mf)).powi(2);
        }
        if err < best.0 {
            best = (err, d, m);
            *levels = l;
        }
    }
    (best.1, best.2)
}

/// Packs 32 values of 0..16 (low nibble: values 0..16, high nibble: 16..32).
fn put_nibbles(out: &mut [u8], q: &[i32; QK]) {
    for j in 0..16 {
        out[j] = (q[j] as u8 & 0x0f) | ((q[j + 16] as u8 & 0x0f) << 4);
    }
}

/// The fifth bits of 32 values of 0..32, bit `i` for value `i`, little-endian.
fn put_fifth_bits(out: &mut [u8], q: &[i32; QK]) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | (((v as u32 >> 4) & 1) << i));
    out[..4].copy_from_slice(&qh.to_le_bytes());
}

pub fn q4_0(x: &[f32], out: &mut [u8]) {
    let mut l = [0i32; QK];
    let d = symmetric_block(x, -8, 7, 0.2, &mut l);
    put_f16(out, 0, d);
    put_nibbles(&mut out[2..18], &l.map(|v| v + 8));
}

pub fn q5_0(x: &[f32], out: &mut [u8]) {
    let mut l = [0i32; QK];
    let d = symmetric_block(x, -16, 15, 0.25, &mut l);
    let q = l.map(|v| v + 16);
    put_f16(out, 0, d);
    put_fifth_bits(&mut out[2..6], &q);
    put_nibbles(&mut out[6..22], &q);
}

pub fn q8_0(x: &[f32], out: &mut [u8]) {
    let mut l = [0i32; QK];
    let d = symmetric_block(x, -128, 127, 0.5, &mut l);
    put_f16(out, 0, d);
    for (o, v) in out[2..34].iter_mut().zip(l) {
        *o = v as i8 as u8;
    }
}

pub fn q4_1(x: &[f32], out: &mut [u8]) {
    let mut q = [0i32; QK];
    let (d, m) = affine_block(x, 15, &mut q);
    put_f16(out, 0, d);
    put_f16(out, 2, m);
    put_nibbles(&mut out[4..20], &q);
}

pub fn q5_1(x: &[f32], out: &mut [u8]) {
    let mut q = [0i32; QK];
    let (d, m) = affine_block(x, 31, &mut q);
    put_f16(out, 0, d);
    put_f16(out, 2, m);
    put_fifth_bits(&mut out[4..8], &q);
    put_nibbles(&mut out[8..24], &q);
}
