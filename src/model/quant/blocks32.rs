//! Formats with 32-value blocks and one f16 scale (and for `_1` types an f16 minimum).
//!
//! The 4-bit quants of a block are packed 16 bytes: byte `j` holds value `j` in its low nibble
//! and value `j + 16` in its high nibble. The 5-bit types keep each value's fifth bit in a
//! little-endian u32 (`qh`), bit `i` for value `i`.

use super::{IQ4_VALUES, f16_at};

/// Low nibbles are values 0..16, high nibbles 16..32.
#[inline(always)]
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0f
    } else {
        qs[i - 16] >> 4
    }
}

#[inline(always)]
fn fifth_bit(qh: u32, i: usize) -> u8 {
    ((qh >> i) & 1) as u8
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// d (f16), 16 bytes of nibbles; value = d * (q - 8).
#[inline(always)]
pub fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (low, high) = out.split_at_mut(16);
    for ((&q, l), h) in b[2..18].iter().zip(low).zip(high) {
        *l = d * f32::from((q & 0x0f) as i8 - 8);
        *h = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// d, m (f16), 16 bytes of nibbles; value = d * q + m.
#[inline(always)]
pub fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs: &[u8; 16] = b[4..20].try_into().unwrap_or(&[0; 16]);
    let (low, high) = out.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(low).zip(high) {
        *l = d * f32::from(q & 0x0f) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

/// d (f16), qh (u32), 16 bytes of nibbles; value = d * (q - 16) with q of 5 bits.
#[inline(always)]
pub fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32_at(b, 2);
    let (low, high) = out.split_at_mut(16);
    for (j, ((&q, l), h)) in b[6..22].iter().zip(low).zip(high).enumerate() {
        let lq = (q & 0x0f) | (fifth_bit(qh, j) << 4);
        let hq = (q >> 4) | (fifth_bit(qh, j + 16) << 4);
        *l = d * f32::from(lq as i8 - 16);
        *h = d * f32::from(hq as i8 - 16);
    }
}

/// d, m (f16), qh (u32), 16 bytes of nibbles; value = d * q + m with q of 5 bits.
#[inline(always)]
pub fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32_at(b, 4);
    let (low, high) = out.split_at_mut(16);
    for (j, ((&q, l), h)) in b[8..24].iter().zip(low).zip(high).enumerate() {
        let lq = (q & 0x0f) | (fifth_bit(qh, j) << 4);
        let hq = (q >> 4) | (fifth_bit(qh, j + 16) << 4);
        *l = d * f32::from(lq) + m;
        *h = d * f32::from(hq) + m;
    }
}

/// d (f16), 32 signed bytes; value = d * q.
#[inline(always)]
pub fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in out.iter_mut().zip(&b[2..34]) {
        *y = d * f32::from(q as i8);
    }
}

/// d (f16), 16 bytes of nibbles that index the IQ4 codebook; value = d * codebook[q].
#[inline(always)]
pub fn iq4_nl(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for (i, y) in out.iter_mut().enumerate() {
        *y = d * f32::from(IQ4_VALUES[usize::from(nibble(qs, i))]);
    }
}
