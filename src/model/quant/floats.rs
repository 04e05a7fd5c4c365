//! Plain floats: one value per block.

use half::bf16;

use super::f16_at;

#[inline(always)]
pub fn f32_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

#[inline(always)]
pub fn f16_block(b: &[u8], out: &mut [f32]) {
    out[0] = f16_at(b, 0);
}

#[inline(always)]
pub fn bf16_block(b: &[u8], out: &mut [f32]) {
    out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}
