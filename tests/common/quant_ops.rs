//! Products and embedding rows of weights kept in block formats (Q4_K, Q8_0, ...) on any
//! backend, against the CPU backend on the same blocks (which dequantizes them with the
//! bit-exact reference dequantizers of src/model/quant): every quantized format the crate reads,
//! decode and prompt row counts, whole and part tiles, each epilogue (bias, residual, GELU,
//! SwiGLU, a norm before the product), a weight stacked from several formats, embedding rows.
//!
//! Test weights are random bits, which are valid quants in every format, with each block's f16
//! scales and minimums replaced by small finite values: no quantizer is needed.

use keyformer::backend::{Backend, NormSpec};
use keyformer::model::config::{Activation, NormKind};
use keyformer::model::quant::{FORMATS, Format};
use keyformer::model::tensor::{BlockMatrix, BlockRows};
use keyformer::{CpuBackend, Result};

use super::ops::{Rng, rel_error};

/// The quantized formats, in the order issue 24 asks for them.
pub const QUANT_FORMATS: [&str; 12] = [
    "Q4_K", "Q6_K", "Q8_0", "Q5_K", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q2_K", "Q3_K", "IQ4_NL",
    "IQ4_XS",
];

/// Input rows of the products: decode (one to a few sequences), a part tile of rows, and a
/// prompt past a whole 64-row tile.
pub const ROWS: [usize; 7] = [1, 2, 3, 4, 5, 37, 70];

pub fn format(name: &str) -> &'static Format {
    FORMATS
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no format {name}"))
}

/// Byte offsets of the f16 fields (scales, minimums) in one block of `f` (ggml's block
/// structs).
fn f16_fields(f: &Format) -> &'static [usize] {
    match f.name {
        "Q4_0" | "Q5_0" | "Q8_0" | "IQ4_NL" | "IQ4_XS" => &[0],
        "Q4_1" | "Q5_1" | "Q4_K" | "Q5_K" => &[0, 2],
        "Q2_K" => &[80, 82],
        "Q3_K" => &[108],
        "Q6_K" => &[208],
        other => panic!("no f16 fields known for {other}"),
    }
}

/// A splitmix64 stream of bytes, separate from the value generator.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `rows` rows of `cols` values of `f` from random bits, each f16 field set to a value of
/// magnitude 0.0025 to 0.01 and random sign.
pub fn random_blocks(seed: u64, f: &'static Format, rows: usize, cols: usize) -> BlockRows {
    let mut bits = Bytes(seed);
    let len = f.bytes_for(cols).expect("whole blocks") * rows;
    let mut bytes: Vec<u8> = (0..len).map(|_| bits.next() as u8).collect();
    for block in bytes.chunks_exact_mut(f.block_bytes) {
        for &at in f16_fields(f) {
            let r = bits.next();
            let magnitude = 0.0025 + 0.0075 * (r >> 11) as f32 / (1u64 << 53) as f32;
            let value = if r & 1 == 0 { magnitude } else { -magnitude };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(value).to_le_bytes());
        }
    }
    BlockRows::new(f, rows, cols, bytes).expect("a valid block matrix")
}

/// A matrix stacked from (format, rows) parts of `cols`, each from its own seed.
pub fn random_matrix(seed: u64, parts: &[(&'static Format, usize)], cols: usize) -> BlockMatrix {
    let rows = parts
        .iter()
        .enumerate()
        .map(|(i, &(f, n))| random_blocks(seed + i as u64, f, n, cols))
        .collect();
    BlockMatrix::stack(rows).expect("parts of one width")
}

/// What follows a product.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// linear with a bias.
    Bias,
    /// linear_residual: added into a residual stream, with a bias.
    Residual,
    /// linear_activation through a GELU or a gated unit.
    Activation(Activation),
    /// norm_linear over an RMSNorm of the input.
    Norm,
    /// norm_linear (act None) or norm_linear_activation over a LayerNorm with a bias: GPU
    /// backends fold a norm of one narrow row into the product.
    LayerNorm(Option<Activation>),
}

/// One product on backend `b` over the weight `m()` (a fresh copy per backend).
fn product<B: Backend>(
    b: &B,
    m: BlockMatrix,
    x: &[f32],
    rows: usize,
    host: (&[f32], &[f32]),
    then: Then,
) -> Result<Vec<f32>> {
    let (n_out, n_in) = (m.rows(), m.cols);
    let (bias, residual) = host;
    let w = b.upload_blocks(m)?;
    let x = b.upload(x)?;
    let bias_w = b.upload_weight(bias[..n_out].to_vec())?;
    let bias = &bias;
    let mut out = b.zeros(rows * n_out)?;
    match then {
        Then::Bias => b.linear(&x, rows, &w, Some(&bias_w), n_out, n_in, &mut out)?,
        Then::Residual => {
            let mut scratch = b.zeros(rows * n_out)?;
            out = b.upload(&residual[..rows * n_out])?;
            b.linear_residual(
                &x,
                rows,
                &w,
                Some(&bias_w),
                n_out,
                n_in,
                &mut scratch,
                &mut out,
            )?;
        }
        Then::Activation(act) => {
            let mut gated = b.zeros(rows * n_out / 2)?;
            let dims = (n_out, n_in);
            b.linear_activation(&x, rows, &w, Some(&bias_w), dims, act, &mut out, &mut gated)?;
            if act.gated() {
                return b.download(&gated, rows * n_out / 2);
            }
        }
        Then::Norm => {
            let weight = b.upload_weight(residual[..n_in].to_vec())?;
            let norm = NormSpec {
                kind: NormKind::RmsNorm,
                weight: &weight,
                bias: None,
                eps: 1e-5,
            };
            let mut normed = b.zeros(rows * n_in)?;
            let dims = (n_out, n_in);
            b.norm_linear(&norm, &x, rows, &mut normed, &w, None, dims, &mut out)?;
        }
        Then::LayerNorm(act) => {
            let weight = b.upload_weight(residual[..n_in].to_vec())?;
            let shift = b.upload_weight(bias.iter().cycle().take(n_in).copied().collect())?;
            let norm = NormSpec {
                kind: NormKind::LayerNorm,
                weight: &weight,
                bias: Some(&shift),
                eps: 1e-5,
            };
            let mut normed = b.zeros(rows * n_in)?;
            let dims = (n_out, n_in);
            let Some(act) = act else {
                b.norm_linear(&norm, &x, rows, &mut normed, &w, None, dims, &mut out)?;
                return b.download(&out, rows * n_out);
            };
            let mut gated = b.zeros(rows * n_out / 2)?;
            b.norm_linear_activation(
                &norm,
                &x,
                rows,
                &mut normed,
                &w,
                Some(&bias_w),
                dims,
                act,
                &mut out,
                &mut gated,
            )?;
            if act.gated() {
                return b.download(&gated, rows * n_out / 2);
            }
        }
    }
    b.download(&out, rows * n_out)
}

/// One embedding lookup on `b`.
fn embed<B: Backend>(b: &B, m: BlockMatrix, ids: &[u32]) -> Result<Vec<f32>> {
    let dim = m.cols;
    let table = b.upload_blocks(m)?;
    let mut out = b.zeros(ids.len() * dim)?;
    b.embed(&table, ids, dim, &mut out)?;
    b.download(&out, ids.len() * dim)
}

/// A case's label and its error against the CPU.
pub struct QuantRow {
    pub case: String,
    pub error: f32,
}

/// Runs every quantized case on `b` and on the CPU; panics on the first error over
/// `tolerance(format)` (the stacked weights take the largest of their formats'), after
/// printing the rows so far. Returns the rows.
pub fn check_quant_products<B: Backend>(
    b: &B,
    tolerance: &dyn Fn(&Format) -> f32,
    seed: u64,
) -> Vec<QuantRow> {
    println!("quantized products on {} (seed {seed})", b.name());
    let cpu = CpuBackend;
    let mut rng = Rng(seed);
    let mut rows_out = Vec::new();
    let mut record = |case: String, error: f32, limit: f32| {
        println!("  {case:<64} {error:.2e}");
        assert!(
            error <= limit,
            "{case}: relative error {error:e} over {limit:e}"
        );
        rows_out.push(QuantRow { case, error });
    };
    let thens = [
        Then::Bias,
        Then::Residual,
        Then::Activation(Activation::GeluTanh),
        Then::Activation(Activation::SwiGlu),
        Then::Norm,
        Then::Activation(Activation::GeGluTanh),
    ];
    let mut case_seed = seed.wrapping_mul(1000);
    // Every format: a part tile of outputs narrower than a workgroup's 8 and 64, and one past
    // a whole tile; one block per row and several.
    for name in QUANT_FORMATS {
        let f = format(name);
        let limit = tolerance(f);
        let k = f.block_values;
        for (shape, (n_out, n_in)) in [(14, k.max(64)), (70, 5 * k)].into_iter().enumerate() {
            for (i, rows) in ROWS.into_iter().enumerate() {
                // Each shape's 37 rows take a different epilogue.
                let then = thens[(i + 3 * shape) % thens.len()];
                let x = rng.values(rows * n_in, 1.0);
                let bias = rng.values(n_out, 1.0);
                let residual = rng.values(rows * n_out.max(n_in), 1.0);
                case_seed += 1;
                let m = || random_matrix(case_seed, &[(f, n_out)], n_in);
                let host = (&bias[..], &residual[..]);
                let got = product(b, m(), &x, rows, host, then).unwrap();
                let want = product(&cpu, m(), &x, rows, host, then).unwrap();
                record(
                    format!("{name} {then:?} rows {rows} out {n_out} in {n_in}"),
                    rel_error(&got, &want),
                    limit,
                );
            }
        }
        // One row's norm, which GPU backends fold into the product where the row is narrow.
        let n_in = k.max(64);
        for act in [None, Some(Activation::GeluTanh), Some(Activation::SwiGlu)] {
            let then = Then::LayerNorm(act);
            let x = rng.values(n_in, 3.0);
            let bias = rng.values(14, 1.0);
            let residual = rng.values(n_in, 1.0);
            case_seed += 1;
            let m = || random_matrix(case_seed, &[(f, 14)], n_in);
            let host = (&bias[..], &residual[..]);
            let got = product(b, m(), &x, 1, host, then).unwrap();
            let want = product(&cpu, m(), &x, 1, host, then).unwrap();
            record(
                format!("{name} {then:?} rows 1 out 14 in {n_in}"),
                rel_error(&got, &want),
                limit,
            );
        }
        // Embedding rows, first and last included.
        let ids = [0, 36, 5, 5, 17];
        case_seed += 1;
        let m = || random_matrix(case_seed, &[(f, 37)], 2 * k);
        let (got, want) = (
            embed(b, m(), &ids).unwrap(),
            embed(&cpu, m(), &ids).unwrap(),
        );
        record(
            format!("{name} embed 37 x {}", 2 * k),
            rel_error(&got, &want),
            limit,
        );
    }
    // Weights stacked from several formats, as a fused [q | k | v] whose v differs.
    let stacks: [(&[(&str, usize)], usize); 2] = [
        (&[("Q4_K", 40), ("Q6_K", 30)], 512),
        (&[("Q8_0", 20), ("Q5_0", 50), ("Q8_0", 3)], 96),
    ];
    for (parts, n_in) in stacks {
        let parts: Vec<(&'static Format, usize)> =
            parts.iter().map(|&(n, r)| (format(n), r)).collect();
        let limit = parts.iter().map(|(f, _)| tolerance(f)).fold(0f32, f32::max);
        let n_out: usize = parts.iter().map(|(_, r)| r).sum();
        let names: Vec<String> = parts
            .iter()
            .map(|(f, r)| format!("{} {r}", f.name))
            .collect();
        for (i, rows) in ROWS.into_iter().enumerate() {
            let then = thens[i % 2];
            let x = rng.values(rows * n_in, 1.0);
            let bias = rng.values(n_out, 1.0);
            let residual = rng.values(rows * n_out.max(n_in), 1.0);
            case_seed += 1;
            let m = || random_matrix(case_seed, &parts, n_in);
            let host = (&bias[..], &residual[..]);
            let got = product(b, m(), &x, rows, host, then).unwrap();
            let want = product(&cpu, m(), &x, rows, host, then).unwrap();
            record(
                format!("[{}] {then:?} rows {rows} in {n_in}", names.join(" | ")),
                rel_error(&got, &want),
                limit,
            );
        }
    }
    rows_out
}
