//! out[rows, n_out] = x[rows, n_in] . w[n_out, n_in]^T + bias, the CPU backend's hot loop.
//!
//! Threads take blocks of weight rows small enough to stay in cache and sweep every input row
//! over them, so each weight is read from memory once per call. The inner kernel computes a
//! tile of R input rows against C weight rows, with AVX2/FMA where the processor has it.

use rayon::prelude::*;

use crate::error::Result;
use crate::model::tensor::BlockMatrix;

/// Weight rows per block: 64 rows of up to a few thousand floats stay in L2.
const BLOCK: usize = 64;

/// A product's weight matrix: plain values, or rows in block formats that each block of rows
/// dequantizes for itself (the whole matrix is never expanded).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    Values(&'a [f32]),
    Blocks(&'a BlockMatrix),
}

pub fn matmul(
    x: &[f32],
    rows: usize,
    w: Rows,
    bias: Option<&[f32]>,
    n_out: usize,
    n_in: usize,
    out: &mut [f32],
) -> Result<()> {
    let x_row = |r: usize| &x[r * n_in..(r + 1) * n_in];
    // Each block's results as [rows][block width], gathered into `out` afterwards.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n_out.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| -> Result<(usize, Vec<f32>)> {
            let (o0, o1) = (b * BLOCK, ((b + 1) * BLOCK).min(n_out));
            let width = o1 - o0;
            if let Rows::Blocks(m) = w
                && rows <= FEW_ROWS
            {
                let mut tile = few_rows(m, (o0, o1), |r| x_row(r), rows)?;
                add_bias(&mut tile, bias, o0, width);
                return Ok((o0, tile));
            }
            let dequantized;
            let wb: &[f32] = match w {
                Rows::Values(v) => &v[o0 * n_in..o1 * n_in],
                Rows::Blocks(m) => {
                    let mut rows = vec![0f32; width * n_in];
                    m.dequantize_rows(o0, &mut rows)?;
                    dequantized = rows;
                    &dequantized
                }
            };
            let w_row = |o: usize| &wb[(o - o0) * n_in..(o - o0 + 1) * n_in];
            let mut tile = vec![0f32; rows * width];
            let mut r = 0;
            while r < rows {
                let rs = (rows - r).min(4);
                let mut o = o0;
                while o < o1 {
                    let cs = (o1 - o).min(2);
                    if rs == 4 && cs == 2 {
                        let d = kernel_4x2(
                            [x_row(r), x_row(r + 1), x_row(r + 2), x_row(r + 3)],
                            [w_row(o), w_row(o + 1)],
                        );
                        for (i, row) in d.iter().enumerate() {
                            tile[(r + i) * width + o - o0..(r + i) * width + o - o0 + 2]
                                .copy_from_slice(row);
                        }
                    } else {
                        for i in 0..rs {
                            for j in 0..cs {
                                tile[(r + i) * width + o - o0 + j] =
                                    dot(x_row(r + i), w_row(o + j));
                            }
                        }
                    }
                    o += cs;
                }
                r += rs;
            }
            add_bias(&mut tile, bias, o0, width);
            Ok((o0, tile))
        })
        .collect::<Result<_>>()?;
    for (o0, tile) in blocks {
        let width = tile.len() / rows.max(1);
        for r in 0..rows {
            out[r * n_out + o0..r * n_out + o0 + width]
                .copy_from_slice(&tile[r * width..(r + 1) * width]);
        }
    }
    Ok(())
}

/// Products of up to this many rows with a weight in block formats dequantize one weight row
/// at a time into a buffer that stays in L1, and take its dot product with each input row;
/// more rows dequantize a whole block of weight rows once for the tiled kernel.
const FEW_ROWS: usize = 4;

/// [rows][o1 - o0] results of `rows` input rows against weight rows o0..o1 of `m`.
fn few_rows<'x>(
    m: &BlockMatrix,
    (o0, o1): (usize, usize),
    x_row: impl Fn(usize) -> &'x [f32],
    rows: usize,
) -> Result<Vec<f32>> {
    let width = o1 - o0;
    let mut tile = vec![0f32; rows * width];
    let mut w = vec![0f32; m.cols];
    for o in o0..o1 {
        m.dequantize_rows(o, &mut w)?;
        for r in 0..rows {
            tile[r * width + o - o0] = dot(x_row(r), &w);
        }
    }
    Ok(tile)
}

fn add_bias(tile: &mut [f32], bias: Option<&[f32]>, o0: usize, width: usize) {
    if let Some(bias) = bias {
        for row in tile.chunks_exact_mut(width) {
            row.iter_mut()
                .zip(&bias[o0..o0 + width])
                .for_each(|(y, b)| *y += b);
        }
    }
}

/// One dot product, vectorised where the processor allows.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the processor supports AVX2 and FMA (checked above).
        return unsafe { avx2::dot(a, b) };
    }
    portable_dot(a, b)
}

fn kernel_4x2(x: [&[f32]; 4], w: [&[f32]; 2]) -> [[f32; 2]; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the processor supports AVX2 and FMA (checked above).
        return unsafe { avx2::kernel_4x2(x, w) };
    }
    x.map(|xr| w.map(|wr| portable_dot(xr, wr)))
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Eight independent accumulators so the compiler vectorises it on any target.
fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads 8 floats at i with i + 8 <= n (16 for the pair).
        unsafe {
            while i + 16 <= n {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    s0,
                );
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    s1,
                );
                i += 16;
            }
            if i + 8 <= n {
                s0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    s0,
                );
                i += 8;
            }
        }
        hsum(_mm256_add_ps(s0, s1))
            + a[i..n]
                .iter()
                .zip(&b[i..n])
                .map(|(x, y)| x * y)
                .sum::<f32>()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_4x2(x: [&[f32]; 4], w: [&[f32]; 2]) -> [[f32; 2]; 4] {
        let n = w[0].len();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        // SAFETY: all rows hold n floats and every load reads 8 at i with i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let w0 = _mm256_loadu_ps(w[0].as_ptr().add(i));
                let w1 = _mm256_loadu_ps(w[1].as_ptr().add(i));
                for r in 0..4 {
                    let xr = _mm256_loadu_ps(x[r].as_ptr().add(i));
                    acc[r][0] = _mm256_fmadd_ps(xr, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(xr, w1, acc[r][1]);
                }
                i += 8;
            }
        }
        let mut out = [[0f32; 2]; 4];
        for r in 0..4 {
            for c in 0..2 {
                out[r][c] = hsum(acc[r][c])
                    + x[r][i..n]
                        .iter()
                        .zip(&w[c][i..n])
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_loop_on_odd_shapes() {
        let (rows, n_out, n_in) = (7, 131, 37);
        let x: Vec<f32> = (0..rows * n_in)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let b: Vec<f32> = (0..n_out).map(|i| i as f32 / 10.0).collect();
        let mut out = vec![0.0; rows * n_out];
        matmul(&x, rows, Rows::Values(&w), Some(&b), n_out, n_in, &mut out).unwrap();
        for r in 0..rows {
            for o in 0..n_out {
                let want: f64 = (0..n_in)
                    .map(|i| x[r * n_in + i] as f64 * w[o * n_in + i] as f64)
                    .sum::<f64>()
                    + b[o] as f64;
                assert!(
                    (out[r * n_out + o] as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{r},{o}"
                );
            }
        }
    }
}
