// The Gumbel noise of src/kv/noise.rs, bit for bit in the integer part: 32-bit wrapping
// multiply, add, xor and shifts. Only the final logarithms may differ by a few ulp.

// murmur3's 32-bit finaliser.
fn fmix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

fn noise_hash(seed: u32, layer: u32, head: u32, query_pos: u32, key_pos: u32) -> u32 {
    let words = array<u32, 4>(layer, head, query_pos, key_pos);
    var h = seed;
    for (var i = 0u; i < 4u; i++) {
        h = fmix32(h ^ (words[i] * 0xcc9e2d51u)) * 5u + 0xe6546b64u;
    }
    return fmix32(h);
}

// -ln(u) for u = (h + 0.5) / 2^23 from the hash's top 23 bits (exact in f32). Near u = 1 the
// builtin log may only be accurate to an absolute 2^-21, which would swamp -ln(u) itself, so
// there the series -ln(1 - w) = w + w^2/2 + w^3/3 + ... runs on w = 1 - u (exact for u >= 1/2).
fn neg_log_uniform(hash: u32) -> f32 {
    let u = (f32(hash >> 9u) + 0.5) / 8388608.0;
    let w = 1.0 - u;
    if w >= 0.25 {
        return -log(u);
    }
    var power = w;
    var sum = w;
    for (var n = 2u; n <= 16u; n++) {
        power *= w;
        sum += power / f32(n);
    }
    return sum;
}

// A standard Gumbel variate, -ln(-ln(u)).
fn gumbel(seed: u32, layer: u32, head: u32, query_pos: u32, key_pos: u32) -> f32 {
    return -log(neg_log_uniform(noise_hash(seed, layer, head, query_pos, key_pos)));
}
