// Formats of 32-value blocks with one f16 scale (d) and, for the `_1` types, an f16 minimum
// (m): eight values 8g..8g + 8 of the block at byte `base` (see quant.wgsl). Their 4-bit
// quants are 16 bytes: byte j holds value j in its low nibble and value j + 16 in its high
// one, so eight g lie in bytes 8 (g % 2).. at nibble g / 2. The 5-bit types keep value i's
// fifth bit in bit i of a little-endian u32 (qh).

// The low 4 bits of eight g from the nibbles at byte `qs`.
fn nibbles32(qs: u32, g: u32) -> Fields {
    return fields8(qs + 8u * (g % 2u), 4u * (g / 2u), 15u);
}

// d, qs[16]; value = d * (q - 8).
fn q4_0(base: u32, g: u32) -> Eight {
    return centred(nibbles32(base + 2u, g), f16_at(base), 8);
}

// d, m, qs[16]; value = d * q + m.
fn q4_1(base: u32, g: u32) -> Eight {
    return affine(nibbles32(base + 4u, g), f16_at(base), f16_at(base + 2u));
}

// d, qh, qs[16]; value = d * (q - 16) with q of 5 bits.
fn q5_0(base: u32, g: u32) -> Eight {
    let q = join(nibbles32(base + 6u, g), bits8(u32_at(base + 2u) >> (8u * g), 0u), 4u);
    return centred(q, f16_at(base), 16);
}

// d, m, qh, qs[16]; value = d * q + m with q of 5 bits.
fn q5_1(base: u32, g: u32) -> Eight {
    let q = join(nibbles32(base + 8u, g), bits8(u32_at(base + 4u) >> (8u * g), 0u), 4u);
    return affine(q, f16_at(base), f16_at(base + 2u));
}

// d, 32 signed bytes; value = d * q.
fn q8_0(base: u32, g: u32) -> Eight {
    let q = fields8(base + 2u + 8u * g, 0u, 255u);
    let d = f16_at(base);
    return Eight(d * vec4<f32>(signed8(q.lo)), d * vec4<f32>(signed8(q.hi)));
}

// d, qs[16] indexing the IQ4 codebook; value = d * codebook[q].
fn iq4_nl(base: u32, g: u32) -> Eight {
    return codebook(nibbles32(base + 2u, g), f16_at(base));
}
