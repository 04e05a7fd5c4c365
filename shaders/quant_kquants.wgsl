// "K" formats and IQ4_XS: super-blocks of 256 values in sub-blocks of 16 or 32, each with a
// small integer scale (and for some a minimum) under f16 super-block scales; eight values
// 8g..8g + 8 (i = 8g) of the block at byte `base` (see quant.wgsl). Eight values never cross
// a sub-block, and lie in 8 consecutive bytes of each bit plane:
// - 2-bit quants, four to a byte in 32-byte groups: value i in byte (i / 128) * 32 + i % 32 at
//   bits 2 * (i % 128 / 32);
// - 4-bit quants in 32-byte groups: value i in byte (i / 64) * 32 + i % 32 at nibble
//   i % 64 / 32;
// - single-bit planes (Q3_K's hmask, Q5_K's qh): value i is bit i / 32 of byte i % 32.

// The 2-bit quants of eight g from the 64 bytes at `qs`.
fn crumbs(qs: u32, i: u32) -> Fields {
    let w = i % 128u;
    return fields8(qs + i / 128u * 32u + w % 32u, 2u * (w / 32u), 3u);
}

// The 4-bit quants of eight g from the 128 bytes at `qs`.
fn nibbles256(qs: u32, i: u32) -> Fields {
    let w = i % 64u;
    return fields8(qs + i / 64u * 32u + w % 32u, 4u * (w / 32u), 15u);
}

// Bit i / 32 of bytes i % 32.. of the plane at `bits`.
fn plane(bits: u32, i: u32) -> Fields {
    return fields8(bits + i % 32u, i / 32u, 1u);
}

// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block j from the 12 bytes at `s`:
// sub-blocks 0..4 in the low 6 bits of bytes j and j + 4; 4..8 take their low 4 bits from
// byte j + 4 (scale low nibble, minimum high) and their top 2 from the tops of bytes j - 4
// (scale) and j (minimum).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2(f32(byte_at(s + j) & 63u), f32(byte_at(s + j + 4u) & 63u));
    }
    let both = byte_at(s + j + 4u);
    let sc = (both & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u);
    let m = (both >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    return vec2(f32(sc), f32(m));
}

// scales[16] (low nibble scale, high nibble minimum per 16), qs[64], d, dmin.
fn q2_k(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let sc = byte_at(base + i / 16u);
    let dl = f16_at(base + 80u) * f32(sc & 15u);
    let ml = f16_at(base + 82u) * f32(sc >> 4u);
    return affine(crumbs(base + 16u, i), dl, -ml);
}

// hmask[32] (set: no -4), qs[64] (low 2 bits), scales[12] (sixteen 6-bit, offset 32), d.
fn q3_k(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let sub = i / 16u;
    var low = byte_at(base + 96u + sub % 8u);
    if sub >= 8u {
        low >>= 4u;
    }
    let top = (byte_at(base + 104u + sub % 4u) >> (2u * (sub / 4u))) & 3u;
    let dl = f16_at(base + 108u) * f32(i32((low & 15u) | (top << 4u)) - 32);
    // q - (h ? 0 : 4) = (q + 4h) - 4.
    let q = join(crumbs(base + 32u, i), plane(base, i), 2u);
    return centred(q, dl, 4);
}

// d, dmin, scales[12], qs[128].
fn q4_k(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let sm = scale_min_k4(base + 4u, i / 32u);
    let d1 = f16_at(base) * sm.x;
    let m1 = f16_at(base + 2u) * sm.y;
    return affine(nibbles256(base + 16u, i), d1, -m1);
}

// d, dmin, scales[12], qh[32] (fifth bits), qs[128] (low 4 bits).
fn q5_k(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let sm = scale_min_k4(base + 4u, i / 32u);
    let d1 = f16_at(base) * sm.x;
    let m1 = f16_at(base + 2u) * sm.y;
    let q = join(nibbles256(base + 48u, i), plane(base + 16u, i), 4u);
    return affine(q, d1, -m1);
}

// ql[128] (low 4 bits: in each half of 64 bytes, value m low, m + 64 high), qh[64] (high 2
// bits, as 2-bit quants), scales[16] (i8 per 16), d; value = d * scale * (q - 32).
fn q6_k(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let w = i % 128u;
    let low = fields8(base + i / 128u * 64u + w % 64u, 4u * (w / 64u), 15u);
    let q = join(low, crumbs(base + 128u, i), 4u);
    let dl = f16_at(base + 208u) * f32(i8_at(base + 192u + i / 16u));
    return centred(q, dl, 32);
}

// d, scales_h (u16: top 2 bits per sub-block of 32), scales_l[4] (low 4 bits, two a byte),
// qs[128] (16 bytes per sub-block: low nibbles values 0..16, high 16..32), codebook indices.
fn iq4_xs(base: u32, g: u32) -> Eight {
    let i = 8u * g;
    let sub = i / 32u;
    let l = i % 32u;
    let q = fields8(base + 8u + sub * 16u + l % 16u, 4u * (l / 16u), 15u);
    let low = (byte_at(base + 4u + sub / 2u) >> (4u * (sub % 2u))) & 15u;
    let top = (u32_at(base) >> (16u + 2u * sub)) & 3u;
    let dl = f16_at(base) * f32(i32(low | (top << 4u)) - 32);
    return codebook(q, dl);
}
