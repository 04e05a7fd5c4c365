//! "K" formats and IQ4_XS: super-blocks of 256 values in sub-blocks of 16 or 32 values, each
//! sub-block with its own small integer scale (and for some a minimum) under one or two f16
//! super-block scales. Value `i` of a super-block is computed as the reference does: the
//! sub-block's f32 scale first (`d * scale`), then `scale * q` (minus `dmin * min`).
//!
//! Bit planes: where 2-bit quants are packed four to a byte, byte `l` of a 32-byte group holds
//! value `l` in bits 0-1, `l + 32` in bits 2-3, `l + 64` in bits 4-5 and `l + 96` in bits 6-7;
//! 4-bit quants in a 32-byte group: value `l` in the low nibble, `l + 32` in the high one.

use super::{IQ4_VALUES, f16_at};

/// The 2 bits of value `i` (0..256) from 64 bytes packed as above (two 32-byte groups).
#[inline(always)]
fn crumb(qs: &[u8], i: usize) -> u8 {
    let (group, within) = (i / 128, i % 128);
    let (shift, l) = (within / 32, within % 32);
    (qs[group * 32 + l] >> (2 * shift)) & 3
}

/// Bit `i / 32` of byte `i % 32`: the high-bit planes of Q3_K and Q5_K.
#[inline(always)]
fn plane_bit(bits: &[u8], i: usize) -> u8 {
    (bits[i % 32] >> (i / 32)) & 1
}

/// Q4_K's and Q5_K's 12 scale bytes: eight 6-bit scales and eight 6-bit minimums. Sub-blocks
/// 0..4 keep theirs in the low 6 bits of bytes 0..4 (scale) and 4..8 (minimum); sub-blocks 4..8
/// take their low 4 bits from bytes 8..12 (scale low nibble, minimum high nibble) and their top
/// 2 bits from the top of bytes 0..4 (scale) and 4..8 (minimum).
#[inline(always)]
fn scale_min_k4(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

/// scales[16] (low nibble scale, high nibble minimum per 16 values), qs[64] (2 bits), d, dmin.
#[inline(always)]
pub fn q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (sub, ys) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * f32::from(scales[sub] & 0x0f);
        let ml = dmin * f32::from(scales[sub] >> 4);
        for (l, y) in ys.iter_mut().enumerate() {
            *y = dl * f32::from(crumb(qs, sub * 16 + l)) - ml;
        }
    }
}

/// Q3_K's sixteen 6-bit scales, stored with an offset of 32: the low 4 bits of scale `i` are
/// the low nibble of byte `i` (i < 8) or the high nibble of byte `i - 8`; its top 2 bits are
/// bits `2 * (i / 4)` of byte `8 + i % 4`.
#[inline(always)]
fn scale_q3_k(scales: &[u8], i: usize) -> i8 {
    let low = if i < 8 {
        scales[i] & 0x0f
    } else {
        scales[i - 8] >> 4
    };
    let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// hmask[32] (the third bit, set meaning "no -4"), qs[64] (low 2 bits), scales[12], d.
#[inline(always)]
pub fn q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (sub, ys) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * f32::from(scale_q3_k(scales, sub));
        for (l, y) in ys.iter_mut().enumerate() {
            let i = sub * 16 + l;
            let q = crumb(qs, i) as i8 - if plane_bit(hmask, i) == 1 { 0 } else { 4 };
            *y = dl * f32::from(q);
        }
    }
}

/// d, dmin, scales[12], qs[128] (4 bits); eight sub-blocks of 32.
#[inline(always)]
pub fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    // Sub-blocks 2g and 2g + 1 are the low and high nibbles of the 32 bytes of group g.
    for (sub, ys) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(scales, sub);
        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (sub % 2);
        for (y, &q) in ys.iter_mut().zip(&qs[sub / 2 * 32..sub / 2 * 32 + 32]) {
            *y = d1 * f32::from((q >> shift) & 0x0f) - m1;
        }
    }
}

/// d, dmin, scales[12], qh[32] (fifth bit planes), qs[128] (low 4 bits).
#[inline(always)]
pub fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (sub, ys) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(scales, sub);
        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (sub % 2);
        let low = &qs[sub / 2 * 32..sub / 2 * 32 + 32];
        for ((y, &q), &h) in ys.iter_mut().zip(low).zip(qh) {
            let q = ((q >> shift) & 0x0f) | (((h >> sub) & 1) << 4);
            *y = d1 * f32::from(q) - m1;
        }
    }
}

/// ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8 per 16 values), d.
///
/// Low bits: in each half (128 values, 64 bytes), byte `m` holds value `m` in its low nibble and
/// `m + 64` in its high nibble. High bits: packed four to a byte as described above.
#[inline(always)]
pub fn q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (sub, ys) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * f32::from(scales[sub] as i8);
        // Values sub * 16.. lie in one half (128 values), one nibble of its low bytes and one
        // crumb of its high bytes.
        let (half, within) = (sub / 8, sub % 8 * 16);
        let low = &ql[half * 64 + within % 64..][..16];
        let high = &qh[half * 32 + within % 32..][..16];
        let (low_shift, high_shift) = (4 * (within / 64), 2 * (within / 32));
        for ((y, &l), &h) in ys.iter_mut().zip(low).zip(high) {
            let q = ((l >> low_shift) & 0x0f) | (((h >> high_shift) & 3) << 4);
            *y = dl * f32::from(q as i8 - 32);
        }
    }
}

/// d, scales_h (u16: top 2 bits per sub-block), scales_l[4] (low 4 bits, two per byte),
/// qs[128] (4-bit codebook indices, 16 bytes per sub-block of 32: low nibbles first).
#[inline(always)]
pub fn iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (sub, ys) in out.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[sub / 2] >> (4 * (sub % 2))) & 0x0f;
        let high = ((scales_h >> (2 * sub)) & 3) as u8;
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        let bytes = &qs[sub * 16..sub * 16 + 16];
        for (l, y) in ys.iter_mut().enumerate() {
            let q = (bytes[l % 16] >> (4 * (l / 16))) & 0x0f;
            *y = dl * f32::from(IQ4_VALUES[usize::from(q)]);
        }
    }
}
