//! Quantizers of the K formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); layouts as in
//! `quant/kquants.rs`.
//!
//! A super-block of 256 values is encoded in three steps:
//! 1. each sub-block gets its own continuous scale (and minimum) from the fits in the parent
//!    module;
//! 2. the super-block scale is the largest sub-block scale over the largest integer sub-block
//!    scale, rounded to f16, and each sub-block scale becomes an integer multiple of it;
//! 3. each sub-block's integer scale (and minimum) is then searched among its neighbours and the
//!    least-squares fit of its current levels, every candidate scored by the error of the values
//!    the dequantizer will produce, until no candidate improves.

use half::f16;

use super::{
    MAX_GROUP, affine_fit, fit_affine, fit_scale, level, put_f16, signed_max, symmetric_fit, to_f16,
};

const QK_K: usize = 256;

/// Super-blocks whose sub-blocks store `value = d * sc * l - dmin * m` with `l` in `0..=nmax`
/// and `sc`, `m` in `0..=smax`.
struct Affine {
    sub: usize,
    nmax: i32,
    smax: i32,
}

/// One sub-block's integer scale and minimum, its levels and its squared error.
#[derive(Clone, Copy)]
struct AffineSub {
    sc: i32,
    m: i32,
    levels: [i32; MAX_GROUP],
    err: f32,
}

impl Affine {
    /// The sub-block `x` quantized with integer scale `sc` and minimum `m` under `d`, `dmin`.
    fn eval(&self, x: &[f32], d: f32, dmin: f32, sc: i32, m: i32) -> AffineSub {
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let inv = if d1 != 0.0 { 1.0 / d1 } else { 0.0 };
        let mut levels = [0i32; MAX_GROUP];
        let mut err = 0.0f32;
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = level((v + m1) * inv, 0, self.nmax);
            err += (v - (d1 * *q as f32 - m1)).powi(2);
        }
        AffineSub { sc, m, levels, err }
    }

    /// Step 3: the best integer scale and minimum near `(sc, m)`.
    fn refine(&self, x: &[f32], d: f32, dmin: f32, sc: i32, m: i32) -> AffineSub {
        let clamp = |v: i32| v.clamp(0, self.smax);
        let mut best = self.eval(x, d, dmin, clamp(sc), clamp(m));
        for _ in 0..4 {
            let mut next = best;
            let mut consider = |sc: i32, m: i32| {
                let c = self.eval(x, d, dmin, clamp(sc), clamp(m));
                if c.err < next.err {
                    next = c;
                }
            };
            for (a, b) in (-1..=1).flat_map(|a| (-1..=1).map(move |b| (a, b))) {
                consider(best.sc + a, best.m + b);
            }
            if let Some((s, off, _)) = fit_affine(x, &best.levels[..x.len()], true) {
                let sc = if d != 0.0 { (s / d).round() as i32 } else { 0 };
                let m = if dmin != 0.0 {
                    (-off / dmin).round() as i32
                } else {
                    0
                };
                consider(sc, m);
            }
            if next.err >= best.err {
                break;
            }
            best = next;
        }
        best
    }

    /// Encodes 256 values: returns `d`, `dmin`, and fills the sub-block scales, minimums and
    /// the 256 levels.
    fn encode(&self, x: &[f32], sc: &mut [u8], mins: &mut [u8], levels: &mut [u8]) -> (f16, f16) {
        let subs = QK_K / self.sub;
        let mut fits = [(0.0f32, 0.0f32); 16];
        for (fit, xs) in fits.iter_mut().zip(x.chunks_exact(self.sub)) {
            let (s, off) = affine_fit(xs, self.nmax, true);
            *fit = (s, -off);
        }
        let fits = &fits[..subs];
        let max_s = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
        let max_m = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
        let d = to_f16(max_s / self.smax as f32);
        let dmin = to_f16(max_m / self.smax as f32);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        for (j, (&(s, m), xs)) in fits.iter().zip(x.chunks_exact(self.sub)).enumerate() {
            let sc0 = if df != 0.0 {
                (s / df).round() as i32
            } else {
                0
            };
            let m0 = if dminf != 0.0 {
                (m / dminf).round() as i32
            } else {
                0
            };
            let best = self.refine(xs, df, dminf, sc0, m0);
            sc[j] = best.sc as u8;
            mins[j] = best.m as u8;
            for (o, &q) in levels[j * self.sub..(j + 1) * self.sub]
                .iter_mut()
                .zip(&best.levels)
            {
                *o = q as u8;
            }
        }
        (d, dmin)
    }
}

/// Super-blocks of 16 sub-blocks of 16 values storing `value = d * sc * l` with `l` in
/// `lo..=hi` and `sc` in `sc_lo..=sc_hi`.
struct Symmetric {
    lo: i32,
    hi: i32,
    sc_lo: i32,
    sc_hi: i32,
}

const SUB16: usize = 16;

impl Symmetric {
    fn eval(&self, x: &[f32], d: f32, sc: i32) -> (f32, [i32; SUB16]) {
        let dl = d * sc as f32;
        let inv = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let mut levels = [0i32; SUB16];
        let mut err = 0.0f32;
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = level(v * inv, self.lo, self.hi);
            err += (v - dl * *q as f32).powi(2);
        }
        (err, levels)
    }

    /// Encodes 256 values: returns `d` and fills the sub-block scales and levels.
    fn encode(&self, x: &[f32], scales: &mut [i32; 16], levels: &mut [i32; QK_K]) -> f16 {
        let mut fits = [0.0f32; 16];
        for (s, xs) in fits.iter_mut().zip(x.chunks_exact(SUB16)) {
            *s = symmetric_fit(xs, self.lo, self.hi);
        }
        let (max, amax) = signed_max(&fits);
        scales.fill(0);
        levels.fill(0);
        if amax == 0.0 {
            return f16::ZERO;
        }
        let d = to_f16(max / self.sc_lo as f32);
        let df = d.to_f32();
        if df == 0.0 {
            return f16::ZERO;
        }
        let clamp = |v: i32| v.clamp(self.sc_lo, self.sc_hi);
        for (j, (&s, xs)) in fits.iter().zip(x.chunks_exact(SUB16)).enumerate() {
            let mut sc = clamp((s / df).round() as i32);
            let mut best = self.eval(xs, df, sc);
            for _ in 0..4 {
                let fitted = fit_scale(xs, &best.1).map(|(s, _)| (s / df).round() as i32);
                let prev = best.0;
                let near = [sc - 2, sc - 1, sc + 1, sc + 2];
                for c in near.into_iter().chain(fitted).map(clamp) {
                    let e = self.eval(xs, df, c);
                    if e.0 < best.0 {
                        (sc, best) = (c, e);
                    }
                }
                if best.0 >= prev {
                    break;
                }
            }
            scales[j] = sc;
            levels[j * SUB16..(j + 1) * SUB16].copy_from_slice(&best.1);
        }
        d
    }
}

/// Packs 256 two-bit values: byte `l` of each 32-byte group holds values `l`, `l + 32`,
/// `l + 64`, `l + 96` of its 128 (bits 0-1, 2-3, 4-5, 6-7).
fn put_crumbs(out: &mut [u8], q: impl Fn(usize) -> u8) {
    out[..64].fill(0);
    for i in 0..QK_K {
        let (group, within) = (i / 128, i % 128);
        out[group * 32 + within % 32] |= (q(i) & 3) << (2 * (within / 32));
    }
}

/// Packs 256 four-bit values: each 32-byte group holds 64, value `l` in the low nibble of byte
/// `l` and value `l + 32` in its high nibble.
fn put_nibbles(out: &mut [u8], q: &[u8]) {
    out[..128].fill(0);
    for (i, &v) in q.iter().enumerate() {
        let (group, within) = (i / 64, i % 64);
        out[group * 32 + within % 32] |= (v & 0x0f) << (4 * (within / 32));
    }
}

/// Bit `bit` of each value: value `i` at bit `i / 32` of byte `i % 32`.
fn put_planes(out: &mut [u8], q: &[u8], bit: u32) {
    out[..32].fill(0);
    for (i, &v) in q.iter().enumerate() {
        out[i % 32] |= ((v >> bit) & 1) << (i / 32);
    }
}

/// Q4_K/Q5_K's 12 scale bytes: the inverse of the dequantizer's `scale_min_k4`.
fn put_scales_k4(out: &mut [u8], sc: &[u8], m: &[u8]) {
    out[..12].fill(0);
    for j in 0..8 {
        if j < 4 {
            out[j] = sc[j];
            out[j + 4] = m[j];
        } else {
            out[j + 4] = (sc[j] & 0x0f) | ((m[j] & 0x0f) << 4);
            out[j - 4] |= (sc[j] >> 4) << 6;
            out[j] |= (m[j] >> 4) << 6;
        }
    }
}

const Q2_K: Affine = Affine {
    sub: 16,
    nmax: 3,
    smax: 15,
};
const Q4_K: Affine = Affine {
    sub: 32,
    nmax: 15,
    smax: 63,
};
const Q5_K: Affine = Affine {
    sub: 32,
    nmax: 31,
    smax: 63,
};
const Q3_K: Symmetric = Symmetric {
    lo: -4,
    hi: 3,
    sc_lo: -32,
    sc_hi: 31,
};
const Q6_K: Symmetric = Symmetric {
    lo: -32,
    hi: 31,
    sc_lo: -128,
    sc_hi: 127,
};

pub fn q2_k(x: &[f32], out: &mut [u8]) {
    let (mut sc, mut m, mut q) = ([0u8; 16], [0u8; 16], [0u8; QK_K]);
    let (d, dmin) = Q2_K.encode(x, &mut sc, &mut m, &mut q);
    for j in 0..16 {
        out[j] = sc[j] | (m[j] << 4);
    }
    put_crumbs(&mut out[16..80], |i| q[i]);
    put_f16(out, 80, d);
    put_f16(out, 82, dmin);
}

pub fn q3_k(x: &[f32], out: &mut [u8]) {
    let (mut sc, mut l) = ([0i32; 16], [0i32; QK_K]);
    let d = Q3_K.encode(x, &mut sc, &mut l);
    let q: Vec<u8> = l.iter().map(|&v| (v + 4) as u8).collect();
    // hmask: the third bit of each level (set: no -4); qs: the low two bits.
    put_planes(&mut out[0..32], &q, 2);
    put_crumbs(&mut out[32..96], |i| q[i]);
    let scales = &mut out[96..108];
    scales.fill(0);
    for (i, &s) in sc.iter().enumerate() {
        let u = (s + 32) as u8;
        if i < 8 {
            scales[i] |= u & 0x0f;
        } else {
            scales[i - 8] |= (u & 0x0f) << 4;
        }
        scales[8 + i % 4] |= (u >> 4) << (2 * (i / 4));
    }
    put_f16(out, 108, d);
}

pub fn q4_k(x: &[f32], out: &mut [u8]) {
    let (mut sc, mut m, mut q) = ([0u8; 16], [0u8; 16], [0u8; QK_K]);
    let (d, dmin) = Q4_K.encode(x, &mut sc, &mut m, &mut q);
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    put_scales_k4(&mut out[4..16], &sc, &m);
    put_nibbles(&mut out[16..144], &q);
}

pub fn q5_k(x: &[f32], out: &mut [u8]) {
    let (mut sc, mut m, mut q) = ([0u8; 16], [0u8; 16], [0u8; QK_K]);
    let (d, dmin) = Q5_K.encode(x, &mut sc, &mut m, &mut q);
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    put_scales_k4(&mut out[4..16], &sc, &m);
    put_planes(&mut out[16..48], &q, 4);
    put_nibbles(&mut out[48..176], &q);
}

pub fn q6_k(x: &[f32], out: &mut [u8]) {
    let (mut sc, mut l) = ([0i32; 16], [0i32; QK_K]);
    let d = Q6_K.encode(x, &mut sc, &mut l);
    let q: Vec<u8> = l.iter().map(|&v| (v + 32) as u8).collect();
    let ql = &mut out[0..128];
    ql.fill(0);
    for (i, &v) in q.iter().enumerate() {
        let (half, within) = (i / 128, i % 128);
        ql[half * 64 + within % 64] |= (v & 0x0f) << (4 * (within / 64));
    }
    put_crumbs(&mut out[128..192], |i| q[i] >> 4);
    for (o, &s) in out[192..208].iter_mut().zip(&sc) {
        *o = s as i8 as u8;
    }
    put_f16(out, 208, d);
}
