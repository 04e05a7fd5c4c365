//! The block-format op table: products and embedding rows of weights kept in ggml block formats
//! (`Backend::upload_blocks`) on a backend, against the CPU backend's f32 result of the same
//! weight dequantized (`upload_weight`), for every format the seam reads, decode and prompt
//! row counts, shapes with part tiles and long rows, and weights stacked from several formats.
//!
//! Test weights are random bytes with small f16 scales written over the scale fields, so every
//! block is valid without a quantizer.

use keyformer::backend::{Backend, NormSpec};
use keyformer::model::config::{Activation, NormKind};
use keyformer::model::quant::{FORMATS, Format};
use keyformer::model::tensor::{BlockMatrix, BlockRows};
use keyformer::{CpuBackend, Result};

use super::ops::{Rng, rel_error};

/// Every block format the seam reads, with the byte offsets of its f16 scales in a block (the
/// rest of a block is quants and small integer scales, valid for any bytes).
pub const QUANT_FORMATS: [(&str, &[usize]); 12] = [
    ("Q4_0", &[0]),
    ("Q4_1", &[0, 2]),
    ("Q5_0", &[0]),
    ("Q5_1", &[0, 2]),
    ("Q8_0", &[0]),
    ("IQ4_NL", &[0]),
    ("Q2_K", &[80, 82]),
    ("Q3_K", &[108]),
    ("Q4_K", &[0, 2]),
    ("Q5_K", &[0, 2]),
    ("Q6_K", &[208]),
    ("IQ4_XS", &[0]),
];

/// Row counts: the decode kernels' one to four, then prompt products.
pub const ROWS: [usize; 6] = [1, 2, 3, 4, 5, 37];

pub fn format(name: &str) -> &'static Format {
    FORMATS.iter().find(|f| f.name == name).unwrap()
}

fn scales_of(name: &str) -> &'static [usize] {
    QUANT_FORMATS.iter().find(|f| f.0 == name).unwrap().1
}

/// `rows` random rows of `cols` values in format `name`, its f16 scales in [0.002, 0.02).
pub fn random_rows(rng: &mut Rng, name: &str, rows: usize, cols: usize) -> BlockRows {
    let f = format(name);
    let n = f.bytes_for(cols).unwrap() * rows;
    let mut bytes: Vec<u8> = rng
        .values(n, 1.0)
        .iter()
        .map(|v| ((v + 1.0) * 127.99) as u8)
        .collect();
    for block in bytes.chunks_exact_mut(f.block_bytes) {
        for &at in scales_of(name) {
            let s = 0.011 + rng.values(1, 0.009)[0];
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(s).to_le_bytes());
        }
    }
    BlockRows::new(f, rows, cols, bytes).unwrap()
}

/// A matrix stacked from `parts` (format, rows) of `cols` columns.
pub fn random_matrix(rng: &mut Rng, parts: &[(&str, usize)], cols: usize) -> BlockMatrix {
    let rows = parts
        .iter()
        .map(|&(name, n)| random_rows(rng, name, n, cols))
        .collect();
    BlockMatrix::stack(rows).unwrap()
}

fn copy(m: &BlockMatrix) -> BlockMatrix {
    let parts = m
        .parts
        .iter()
        .map(|p| BlockRows::new(p.format, p.rows, p.cols, p.bytes.clone()).unwrap())
        .collect();
    BlockMatrix::stack(parts).unwrap()
}

/// The weights of one case: the matrix, its bias and a norm's weight.
struct Case {
    label: String,
    matrix: BlockMatrix,
    bias: Vec<f32>,
    norm: Vec<f32>,
}

/// Every case's matrix shape for a format of `block_values`: part tiles (outputs not a multiple
/// of the kernels' warps per block, rows shorter than a warp's loads), a row of whole tiles and
/// rows long enough to be split over several warps.
fn shapes(block_values: usize) -> [(usize, usize); 3] {
    if block_values == 32 {
        [(37, 96), (130, 576), (5, 8224)]
    } else {
        [(37, 256), (130, 512), (5, 8448)]
    }
}

/// Runs the table on `b`: errors of products of up to four rows must stay within `decode`,
/// larger ones (which a backend may run through its storage type) within `prompt`. Panics on
/// the first over its tolerance, after printing the table so far; returns the number of rows.
pub fn quant_table<B: Backend>(b: &B, seed: u64, decode: f32, prompt: f32) -> usize {
    println!(
        "block-format op table on {} (seed {seed}, tolerance {decode:e} decode, {prompt:e} prompt)",
        b.name()
    );
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    for (name, _) in QUANT_FORMATS {
        for (n_out, n_in) in shapes(format(name).block_values) {
            cases.push((format!("{name} {n_out}x{n_in}"), vec![(name, n_out)], n_in));
        }
    }
    // Stacked weights: a fused [q | k | v] of Q4_K, Q6_K and Q4_K rows; a 32-value pair.
    cases.push((
        "Q4_K|Q6_K|Q4_K 20+9+11 x 512".into(),
        vec![("Q4_K", 20), ("Q6_K", 9), ("Q4_K", 11)],
        512,
    ));
    cases.push((
        "Q8_0|Q5_0 33+6 x 160".into(),
        vec![("Q8_0", 33), ("Q5_0", 6)],
        160,
    ));
    let mut count = 0;
    for (label, parts, n_in) in cases {
        let matrix = random_matrix(&mut rng, &parts, n_in);
        let n_out = matrix.rows();
        let case = Case {
            label,
            matrix,
            bias: rng.values(n_out, 0.5),
            norm: rng
                .values(n_in, 1.0)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect(),
        };
        count += run_case(b, &case, &mut rng, (decode, prompt)).unwrap();
    }
    count
}

/// Every op of one case on `b` and on the CPU's dequantized weight, for each of ROWS.
fn run_case<B: Backend>(
    b: &B,
    case: &Case,
    rng: &mut Rng,
    (decode, prompt): (f32, f32),
) -> Result<usize> {
    let (n_out, n_in) = (case.matrix.rows(), case.matrix.cols);
    let cpu = CpuBackend;
    let got_w = Weights::new(b, b.upload_blocks(copy(&case.matrix))?, case)?;
    let want_w = Weights::new(&cpu, cpu.upload_weight(case.matrix.dequantize()?)?, case)?;
    let mut count = 0;
    let mut check = |op: &str, rows: usize, got: Vec<f32>, want: Vec<f32>| {
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        assert!(
            finite(&want),
            "{} {op}: the reference is not finite",
            case.label
        );
        assert!(finite(&got), "{} {op} rows {rows}: not finite", case.label);
        let error = rel_error(&got, &want);
        let tolerance = if rows <= 4 { decode } else { prompt };
        let label = format!("{} {op} rows {rows}", case.label);
        println!("  {label:<60} {error:.2e}");
        assert!(
            error <= tolerance,
            "{label}: relative error {error:e} over {tolerance:e}"
        );
        count += 1;
    };
    for rows in ROWS {
        let x = rng.values(rows * n_in, 1.0);
        let residual = rng.values(rows * n_out, 1.0);
        for op in Op::ALL {
            let got = op.run(b, &got_w, &x, rows, (n_out, n_in), &residual)?;
            let want = op.run(&cpu, &want_w, &x, rows, (n_out, n_in), &residual)?;
            check(op.name(), rows, got, want);
        }
    }
    // Embedding rows, in and out of order, the first and the last included.
    let ids: Vec<u32> = [0, n_out - 1, n_out / 2, 1.min(n_out - 1)]
        .iter()
        .map(|&i| i as u32)
        .collect();
    let got = embed_rows(b, &got_w.w, &ids, n_in)?;
    let want = embed_rows(&cpu, &want_w.w, &ids, n_in)?;
    assert!(got.iter().all(|x| x.is_finite()), "{}: embed", case.label);
    let error = rel_error(&got, &want);
    let label = format!("{} embed {} rows", case.label, ids.len());
    println!("  {label:<60} {error:.2e}");
    assert!(error <= decode, "{label}: relative error {error:e}");
    Ok(count + 1)
}

/// A weight with the bias and norm of its case, on one backend.
struct Weights<W> {
    w: W,
    bias: W,
    norm: W,
}

impl<W> Weights<W> {
    fn new<B: Backend<Weight = W>>(b: &B, w: W, case: &Case) -> Result<Self> {
        Ok(Weights {
            w,
            bias: b.upload_weight(case.bias.clone())?,
            norm: b.upload_weight(case.norm.clone())?,
        })
    }
}

/// The products each case runs.
#[derive(Clone, Copy)]
enum Op {
    /// out = x . w^T
    Linear,
    /// out = GELU(x . w^T + bias)
    BiasGelu,
    /// residual += x . w^T + bias
    Residual,
    /// out = RMSNorm(x) . w^T, the norm folded in where the backend folds
    NormLinear,
}

impl Op {
    const ALL: [Op; 4] = [Op::Linear, Op::BiasGelu, Op::Residual, Op::NormLinear];

    fn name(self) -> &'static str {
        match self {
            Op::Linear => "linear",
            Op::BiasGelu => "linear+bias+gelu",
            Op::Residual => "linear+bias into residual",
            Op::NormLinear => "rmsnorm+linear",
        }
    }

    fn run<B: Backend>(
        self,
        b: &B,
        w: &Weights<B::Weight>,
        x: &[f32],
        rows: usize,
        (n_out, n_in): (usize, usize),
        residual: &[f32],
    ) -> Result<Vec<f32>> {
        let xb = b.upload(x)?;
        let mut out = b.zeros(rows * n_out)?;
        match self {
            Op::Linear => b.linear(&xb, rows, &w.w, None, n_out, n_in, &mut out)?,
            Op::BiasGelu => {
                let mut unused = b.zeros(rows * n_out)?;
                let act = Activation::GeluTanh;
                let dims = (n_out, n_in);
                let bias = Some(&w.bias);
                b.linear_activation(&xb, rows, &w.w, bias, dims, act, &mut out, &mut unused)?
            }
            Op::Residual => {
                out = b.upload(residual)?;
                let mut scratch = b.zeros(rows * n_out)?;
                let bias = Some(&w.bias);
                b.linear_residual(&xb, rows, &w.w, bias, n_out, n_in, &mut scratch, &mut out)?
            }
            Op::NormLinear => {
                let norm = NormSpec {
                    kind: NormKind::RmsNorm,
                    weight: &w.norm,
                    bias: None,
                    eps: 1e-5,
                };
                let mut normed = b.zeros(rows * n_in)?;
                let dims = (n_out, n_in);
                b.norm_linear(&norm, &xb, rows, &mut normed, &w.w, None, dims, &mut out)?
            }
        }
        b.download(&out, rows * n_out)
    }
}

fn embed_rows<B: Backend>(b: &B, table: &B::Weight, ids: &[u32], dim: usize) -> Result<Vec<f32>> {
    let mut out = b.zeros(ids.len() * dim)?;
    b.embed(table, ids, dim, &mut out)?;
    b.download(&out, ids.len() * dim)
}
