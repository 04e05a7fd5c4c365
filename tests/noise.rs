//! The Gumbel noise: known-answer vectors from an independent Python implementation
//! (tests/fixtures/noise_reference.py) and the distribution's moments.

use keyformer::kv::noise::{gumbel, noise_hash, uniform};

/// (seed, layer, head, query position, key position) -> (hash, Gumbel variate).
type Case = ((u32, u32, u32, u32, u32), u32, f64);

const KNOWN: [Case; 9] = [
    ((0, 0, 0, 0, 0), 0x6a345465, 0.12804737378391418),
    ((1, 0, 0, 0, 0), 0xb4d9d797, 1.0569782237928793),
    ((0, 1, 0, 0, 0), 0xad26cb83, 0.9390213553361069),
    ((0, 0, 1, 0, 0), 0x82eb37e0, 0.3995822961106787),
    ((0, 0, 0, 1, 0), 0x0f93e8ae, -1.0293809196908341),
    ((0, 0, 0, 0, 1), 0x97478f57, 0.6423625209966548),
    ((42, 3, 7, 1500, 1234), 0x78d643df, 0.2867022235356053),
    (
        (0xdeadbeef, 29, 8, 8191, 17),
        0xc4a69cad,
        1.3327622804929347,
    ),
    (
        (u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX),
        0x6e9da64f,
        0.17540841723846387,
    ),
];

#[test]
fn hash_known_answers() {
    for ((s, l, h, q, k), want_hash, want_gumbel) in KNOWN {
        assert_eq!(
            noise_hash(s, l, h, q, k),
            want_hash,
            "hash of {:?}",
            (s, l, h, q, k)
        );
        let g = gumbel(s, l, h, q, k) as f64;
        assert!(
            (g - want_gumbel).abs() <= 1e-6 * want_gumbel.abs().max(1.0),
            "gumbel {g} vs {want_gumbel}"
        );
    }
}

#[test]
fn gumbel_moments() {
    // Standard Gumbel: mean = Euler-Mascheroni constant, variance = pi^2 / 6.
    let n = 1_000_000u32;
    let (mut sum, mut sum_sq) = (0f64, 0f64);
    for i in 0..n {
        let g = gumbel(7, i % 30, i % 9, i / 1000, i % 1000) as f64;
        sum += g;
        sum_sq += g * g;
    }
    let mean = sum / n as f64;
    let var = sum_sq / n as f64 - mean * mean;
    println!("mean {mean:.5} variance {var:.5}");
    assert!((mean - 0.5772).abs() <= 0.01, "mean {mean}");
    assert!(
        (var - std::f64::consts::PI.powi(2) / 6.0).abs() <= 0.02,
        "variance {var}"
    );
}

#[test]
fn extreme_hashes_give_finite_noise() {
    // The largest and smallest hashes must map strictly inside (0, 1), or -ln(-ln(u)) is infinite.
    for h in [0, 1, u32::MAX - 1, u32::MAX] {
        let u = uniform(h);
        assert!(u > 0.0 && u < 1.0, "hash {h:#x}: u = {u}");
        assert!((-(-u.ln()).ln()).is_finite(), "hash {h:#x}");
    }
}
