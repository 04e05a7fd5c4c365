//! The CPU reference backend: plain f32, written to be obviously right first. It is the oracle
//! every other backend is tested against, and the fallback when no GPU exists. Rayon spreads
//! the big loops over cores; nothing else is clever.

use rayon::prelude::*;

mod attention;
mod matmul;

pub use matmul::dot;

pub use attention::{CpuCache, CpuLayerCache};

use crate::backend::{AttentionSpec, Backend};
use crate::error::{Error, Result};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::config::{Activation, NormKind, RopePairs};
use crate::model::tensor::BlockMatrix;

pub struct CpuBackend;

/// A CPU weight: f32 values, or a matrix kept in its file's block formats, which products and
/// the embedding dequantize a block of rows at a time.
pub enum CpuWeight {
    Values(Vec<f32>),
    Blocks(BlockMatrix),
}

impl CpuWeight {
    fn rows(&self) -> matmul::Rows<'_> {
        match self {
            CpuWeight::Values(v) => matmul::Rows::Values(v),
            CpuWeight::Blocks(m) => matmul::Rows::Blocks(m),
        }
    }

    /// Values of a weight no source hands out in blocks (norms, biases, position tables).
    fn values(&self, what: &str) -> Result<&[f32]> {
        match self {
            CpuWeight::Values(v) => Ok(v),
            CpuWeight::Blocks(_) => Err(Error::Backend {
                backend: "cpu",
                reason: format!("the {what} is in a block format, which this op does not read"),
            }),
        }
    }

    /// The values, unless the weight is kept in block formats.
    pub fn as_values(&self) -> Option<&[f32]> {
        match self {
            CpuWeight::Values(v) => Some(v),
            CpuWeight::Blocks(_) => None,
        }
    }

    /// Values in all.
    fn len(&self) -> usize {
        match self {
            CpuWeight::Values(v) => v.len(),
            CpuWeight::Blocks(m) => m.rows() * m.cols,
        }
    }
}

fn check_len(what: &str, buf: &[f32], needed: usize) -> Result<()> {
    if buf.len() < needed {
        return Err(Error::Backend {
            backend: "cpu",
            reason: format!(
                "{what} buffer holds {} values, op needs {needed}",
                buf.len()
            ),
        });
    }
    Ok(())
}

/// Rotates one head vector in place for position `pos`.
pub fn apply_rotary(x: &mut [f32], pos: usize, dims: usize, pairs: RopePairs, inv_freq: &[f32]) {
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = match pairs {
            RopePairs::Interleaved => (2 * i, 2 * i + 1),
            RopePairs::Halves => (i, i + dims / 2),
        };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos - xb * sin;
        x[b] = xb * cos + xa * sin;
    }
}

fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Buf = Vec<f32>;
    type Cache = CpuCache;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn upload_weight(&self, data: Vec<f32>) -> Result<CpuWeight> {
        Ok(CpuWeight::Values(data))
    }

    /// Every readable format is kept: rows are dequantized when a product reads them.
    fn upload_blocks(&self, m: BlockMatrix) -> Result<CpuWeight> {
        Ok(CpuWeight::Blocks(m))
    }

    fn weight_bytes(&self, w: &CpuWeight) -> usize {
        match w {
            CpuWeight::Values(v) => v.len() * 4,
            CpuWeight::Blocks(m) => m.bytes(),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn download(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        check_len("download", buf, len)?;
        Ok(buf[..len].to_vec())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], dim: usize, out: &mut Vec<f32>) -> Result<()> {
        check_len("embedding output", out, ids.len() * dim)?;
        let vocab = table.len() / dim;
        for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::InvalidInput(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            match table {
                CpuWeight::Values(t) => row.copy_from_slice(&t[id * dim..(id + 1) * dim]),
                CpuWeight::Blocks(m) => m.dequantize_rows(id, row)?,
            }
        }
        Ok(())
    }

    fn add_positions(
        &self,
        x: &mut Vec<f32>,
        table: &CpuWeight,
        first_row: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let table = table.values("position table")?;
        let start = first_row * dim;
        check_len("position table", table, start + rows * dim)?;
        check_len("activations", x, rows * dim)?;
        for (a, b) in x[..rows * dim]
            .iter_mut()
            .zip(&table[start..start + rows * dim])
        {
            *a += b;
        }
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        first_row: usize,
        rows: usize,
        dim: usize,
        out: &mut Vec<f32>,
        out_row: usize,
    ) -> Result<()> {
        let (start, to) = (first_row * dim, out_row * dim);
        check_len("copy source", src, start + rows * dim)?;
        check_len("copy destination", out, to + rows * dim)?;
        out[to..to + rows * dim].copy_from_slice(&src[start..start + rows * dim]);
        Ok(())
    }

    fn norm(
        &self,
        kind: NormKind,
        x: &Vec<f32>,
        weight: &CpuWeight,
        bias: Option<&CpuWeight>,
        eps: f32,
        rows: usize,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let weight = weight.values("norm weight")?;
        let bias = bias.map(|b| b.values("norm bias")).transpose()?;
        check_len("norm input", x, rows * dim)?;
        check_len("norm output", out, rows * dim)?;
        for (xr, yr) in x
            .chunks_exact(dim)
            .zip(out.chunks_exact_mut(dim))
            .take(rows)
        {
            let mean = match kind {
                NormKind::LayerNorm => xr.iter().sum::<f32>() / dim as f32,
                NormKind::RmsNorm => 0.0,
            };
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..dim {
                yr[i] = (xr[i] - mean) * inv * weight[i] + bias.map_or(0.0, |b| b[i]);
            }
        }
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        n_out: usize,
        n_in: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("linear input", x, rows * n_in)?;
        if w.len() < n_out * n_in {
            return Err(Error::Backend {
                backend: "cpu",
                reason: format!(
                    "linear weight holds {} values, op needs {}",
                    w.len(),
                    n_out * n_in
                ),
            });
        }
        check_len("linear output", out, rows * n_out)?;
        let bias = bias.map(|b| b.values("bias")).transpose()?;
        matmul::matmul(x, rows, w.rows(), bias, n_out, n_in, out)
    }

    fn activation(
        &self,
        act: Activation,
        x: &mut Vec<f32>,
        rows: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match act {
            Activation::GeluErf | Activation::GeluTanh => {
                check_len("activation", x, rows * width)?;
                let f = if act == Activation::GeluErf {
                    gelu_erf
                } else {
                    gelu_tanh
                };
                x[..rows * width].par_iter_mut().for_each(|v| *v = f(*v));
            }
            Activation::SwiGlu | Activation::GeGluTanh => {
                check_len("gated input", x, rows * 2 * width)?;
                check_len("gated output", out, rows * width)?;
                let f = if act == Activation::SwiGlu {
                    silu
                } else {
                    gelu_tanh
                };
                for (xr, yr) in x
                    .chunks_exact(2 * width)
                    .zip(out.chunks_exact_mut(width))
                    .take(rows)
                {
                    let (gate, up) = xr.split_at(width);
                    for i in 0..width {
                        yr[i] = f(gate[i]) * up[i];
                    }
                }
            }
        }
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        check_len("add", x, len)?;
        check_len("add", y, len)?;
        x[..len]
            .iter_mut()
            .zip(&y[..len])
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn kv_value_bytes(&self) -> usize {
        4
    }

    fn new_cache(&self, shape: &CacheShape) -> Result<CpuCache> {
        let layer = || CpuLayerCache::new(shape.kv_heads, shape.head_dim, shape.capacity);
        Ok(CpuCache {
            shape: *shape,
            layers: (0..shape.layers).map(|_| layer()).collect(),
        })
    }

    fn attention(
        &self,
        spec: &AttentionSpec,
        qkv: &Vec<f32>,
        rows: usize,
        first_pos: usize,
        cache: &mut CpuCache,
        layer: usize,
        score: Option<&StepScore>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::attention(spec, qkv, rows, first_pos, cache, layer, score, out)
    }

    fn evict(&self, cache: &mut CpuCache, layer: usize, keep: &Keep) -> Result<()> {
        attention::evict(cache, layer, keep)
    }

    fn masks_windows(&self) -> bool {
        true
    }

    fn map(&self, x: &mut Vec<f32>, len: usize, f: &(dyn Fn(f32) -> f32 + Sync)) -> Result<()> {
        check_len("map", x, len)?;
        x[..len].par_iter_mut().for_each(|v| *v = f(*v));
        Ok(())
    }

    fn cache_len(&self, cache: &CpuCache, layer: usize) -> usize {
        cache.layers[layer].len
    }

    fn cache_capacity(&self, cache: &CpuCache, layer: usize) -> usize {
        cache.layers[layer].capacity
    }

    fn cache_scores(&self, cache: &CpuCache, layer: usize) -> Result<Vec<Vec<f32>>> {
        let c = &cache.layers[layer];
        Ok((0..cache.shape.kv_heads)
            .map(|g| c.score[g * c.capacity..g * c.capacity + c.len].to_vec())
            .collect())
    }

    fn cache_positions(&self, cache: &CpuCache, layer: usize) -> Result<Vec<Vec<u32>>> {
        let c = &cache.layers[layer];
        Ok((0..cache.shape.kv_heads)
            .map(|g| c.pos[g * c.capacity..g * c.capacity + c.len].to_vec())
            .collect())
    }
}
