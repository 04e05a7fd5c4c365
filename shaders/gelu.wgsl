// GELU in its erf and tanh forms, and the gates of gated units, shared by the activation op
// and the products that apply them.

const TWO_OVER_SQRT_PI: f32 = 1.1283791670955126;
const ONE_OVER_SQRT_PI: f32 = 0.5641895835477563;

// exp(-z * z) with the rounding error of z * z folded back in: for |z| near 3, z * z alone
// would cost 1e-6 relative.
fn exp_neg_square(z: f32) -> f32 {
    let sq = z * z;
    let lo = fma(z, z, -sq);
    return exp(-sq) * (1.0 - lo);
}

// erf(z) for 0 <= z < 1.5 from its all-positive series
// erf z = 2z/sqrt(pi) e^(-z^2) sum_n (2z^2)^n / (1 * 3 * ... * (2n + 1)): no cancellation, a
// few ulp.
fn erf_series(z: f32) -> f32 {
    let t = 2.0 * z * z;
    var term = 1.0;
    var sum = 1.0;
    for (var n = 1u; n < 20u; n++) {
        term *= t / f32(2u * n + 1u);
        sum += term;
    }
    return TWO_OVER_SQRT_PI * z * exp_neg_square(z) * sum;
}

// erfc(z) for z >= 1.5 from its continued fraction
// erfc z = e^(-z^2)/sqrt(pi) / (z + (1/2) / (z + 1 / (z + (3/2) / (z + ...)))), evaluated from
// a fixed depth; relatively accurate even where erfc underflows towards zero.
fn erfc_fraction(z: f32) -> f32 {
    var f = z;
    for (var k = 24u; k > 0u; k--) {
        f = z + 0.5 * f32(k) / f;
    }
    return exp_neg_square(z) * ONE_OVER_SQRT_PI / f;
}

// 1 + erf(z), computed without cancellation for negative z.
fn one_plus_erf(z: f32) -> f32 {
    let a = abs(z);
    if a < 1.5 {
        return 1.0 + sign(z) * erf_series(a);
    }
    let c = erfc_fraction(a);
    return select(2.0 - c, c, z < 0.0);
}

// GELU of v: form 1 with erf, form 2 with tanh; any other form leaves v as it is.
fn gelu(v: f32, form: u32) -> f32 {
    if form == 1u {
        return 0.5 * v * one_plus_erf(v / 1.4142135623730951);
    }
    if form == 2u {
        let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
        // tanh from exp(-2|u|), which cannot overflow.
        let e = exp(-2.0 * abs(u));
        let t = sign(u) * (1.0 - e) / (1.0 + e);
        return 0.5 * v * (1.0 + t);
    }
    return v;
}

// The gate of a gated unit: SiLU for SwiGLU, or GELU-tanh for GeGLU where `gelu_gate`.
fn gate_act(g: f32, gelu_gate: bool) -> f32 {
    if gelu_gate {
        return gelu(g, 2u);
    }
    return g / (1.0 + exp(-g));
}
