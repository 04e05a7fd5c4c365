//! Gumbel noise that every backend reproduces bit for bit: a stateless hash of
//! (seed, layer, query head, query position, key position) using only 32-bit wrapping
//! multiply, add, xor and shifts, so CUDA and WGSL compute the same integers as this code.

/// murmur3's 32-bit finaliser: a bijection that spreads every input bit over the output.
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The noise hash: each word is folded in as in murmur3's body, then finalised.
pub fn noise_hash(seed: u32, layer: u32, head: u32, query_pos: u32, key_pos: u32) -> u32 {
    let mut h = seed;
    for word in [layer, head, query_pos, key_pos] {
        h = fmix32(h ^ word.wrapping_mul(0xcc9e_2d51))
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    fmix32(h)
}

/// Uniform in (0, 1) from the hash's top 23 bits: (h + 0.5) / 2^23, exact in f32. (With 24
/// bits, as KEYFORMER.md first said, h + 0.5 needs 25 bits: the top value rounds to u = 1 and
/// the noise becomes infinite.)
pub fn uniform(hash: u32) -> f32 {
    ((hash >> 9) as f32 + 0.5) / 8_388_608.0
}

/// A standard Gumbel variate, -ln(-ln(u)).
pub fn gumbel(seed: u32, layer: u32, head: u32, query_pos: u32, key_pos: u32) -> f32 {
    -(-uniform(noise_hash(seed, layer, head, query_pos, key_pos)).ln()).ln()
}

/// The 32-bit seed the hash takes, from the user's 64-bit seed.
pub fn fold_seed(seed: u64) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32)
}
