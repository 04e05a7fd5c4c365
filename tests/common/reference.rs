//! A brute-force reference forward pass, independent of the engine's cache and attention code:
//! it keeps every token's K and V for ever (f64 arithmetic) and masks out, per (layer, kv head),
//! the tokens a policy evicted. Attention over a compacted cache must give the same logits.

use keyformer::backend::cpu::CpuWeight;
use keyformer::model::config::{Activation, ModelConfig, NormKind, Positions, RopePairs};
use keyformer::model::weights::{Linear, Norm, Weights};

/// A weight's values: the reference reads models stored in plain floats only.
fn v(w: &CpuWeight) -> &[f32] {
    w.as_values()
        .expect("the reference reads plain float weights")
}

pub struct Reference<'a> {
    cfg: &'a ModelConfig,
    w: &'a Weights<CpuWeight>,
    /// [layer][token] -> (rotated k, v) of every kv head, concatenated.
    keys: Vec<Vec<Vec<f64>>>,
    values: Vec<Vec<Vec<f64>>>,
}

fn linear(x: &[f64], l: &Linear<CpuWeight>) -> Vec<f64> {
    product(x, v(&l.weight), l.bias.as_ref().map(v), l.n_out, l.n_in)
}

fn product(x: &[f64], w: &[f32], bias: Option<&[f32]>, n_out: usize, n_in: usize) -> Vec<f64> {
    (0..n_out)
        .map(|o| {
            let row = &w[o * n_in..(o + 1) * n_in];
            let b = bias.map_or(0.0, |b| b[o] as f64);
            row.iter().zip(x).map(|(w, x)| *w as f64 * x).sum::<f64>() + b
        })
        .collect()
}

fn norm(x: &[f64], n: &Norm<CpuWeight>, kind: NormKind, eps: f32) -> Vec<f64> {
    let d = x.len() as f64;
    let mean = if kind == NormKind::LayerNorm {
        x.iter().sum::<f64>() / d
    } else {
        0.0
    };
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
    let inv = 1.0 / (var + eps as f64).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, x)| {
            let bias = n.bias.as_ref().map_or(0.0, |b| v(b)[i] as f64);
            (x - mean) * inv * v(&n.weight)[i] as f64 + bias
        })
        .collect()
}

fn rotate(x: &mut [f64], pos: usize, positions: &Positions) {
    if let Positions::Rotary {
        dims,
        pairs,
        inv_freq,
        ..
    } = positions
    {
        for (i, f) in inv_freq.iter().enumerate() {
            // The angle is an f32 product, as the model's reference implementation computes it.
            let angle = (pos as f32 * f) as f64;
            let (a, b) = match pairs {
                RopePairs::Interleaved => (2 * i, 2 * i + 1),
                RopePairs::Halves => (i, i + dims / 2),
            };
            let (xa, xb) = (x[a], x[b]);
            x[a] = xa * angle.cos() - xb * angle.sin();
            x[b] = xb * angle.cos() + xa * angle.sin();
        }
    }
}

fn gelu(x: f64, act: Activation) -> f64 {
    match act {
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        _ => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
    }
}

impl<'a> Reference<'a> {
    pub fn new(cfg: &'a ModelConfig, w: &'a Weights<CpuWeight>) -> Self {
        Reference {
            cfg,
            w,
            keys: vec![Vec::new(); cfg.layers],
            values: vec![Vec::new(); cfg.layers],
        }
    }

    /// Logits of the token `id` at position `pos` (= tokens fed so far). `visible(layer,
    /// kv_head, key_pos)` says whether an earlier key may be attended to.
    pub fn step(
        &mut self,
        id: u32,
        pos: usize,
        visible: &dyn Fn(usize, usize, usize) -> bool,
    ) -> Vec<f64> {
        let (c, w) = (self.cfg, self.w);
        let (h, hd) = (c.hidden, c.head_dim);
        let mut x: Vec<f64> = v(&w.embed)[id as usize * h..(id as usize + 1) * h]
            .iter()
            .map(|&v| v as f64)
            .collect();
        if let Some(table) = &w.pos_embed {
            x.iter_mut()
                .zip(&v(table)[pos * h..(pos + 1) * h])
                .for_each(|(a, b)| *a += *b as f64);
        }
        for (l, layer) in w.layers.iter().enumerate() {
            let normed = norm(&x, &layer.attn_norm, c.norm, c.norm_eps);
            let qkv = linear(&normed, &layer.qkv);
            let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
            let mut k = qkv[q_dim..q_dim + kv_dim].to_vec();
            for g in 0..c.kv_heads {
                rotate(&mut k[g * hd..(g + 1) * hd], pos, &c.positions);
            }
            self.keys[l].push(k);
            self.values[l].push(qkv[q_dim + kv_dim..].to_vec());
            let mut attn = vec![0.0; q_dim];
            for head in 0..c.heads {
                let g = head / (c.heads / c.kv_heads);
                let mut q = qkv[head * hd..(head + 1) * hd].to_vec();
                rotate(&mut q, pos, &c.positions);
                let keys: Vec<usize> = (0..=pos)
                    .filter(|&j| j == pos || visible(l, g, j))
                    .collect();
                let logits: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kj = &self.keys[l][j][g * hd..(g + 1) * hd];
                        let dot: f64 = q.iter().zip(kj).map(|(a, b)| a * b).sum();
                        let bias = match &c.positions {
                            Positions::Alibi { slopes } => {
                                slopes[head] as f64 * (j as f64 - pos as f64)
                            }
                            _ => 0.0,
                        };
                        dot * c.attn_scale as f64 + bias
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (&j, p) in keys.iter().zip(&e) {
                    let vj = &self.values[l][j][g * hd..(g + 1) * hd];
                    for d in 0..hd {
                        attn[head * hd + d] += p / sum * vj[d];
                    }
                }
            }
            let proj = linear(&attn, &layer.attn_out);
            let mlp_input = match &layer.mlp_norm {
                Some(n) => {
                    x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
                    norm(&x, n, c.norm, c.norm_eps)
                }
                None => normed,
            };
            let mid = linear(&mlp_input, &layer.mlp_in);
            let act: Vec<f64> = match c.activation {
                Activation::SwiGlu => {
                    let f = c.ffn_hidden;
                    (0..f)
                        .map(|i| mid[i] / (1.0 + (-mid[i]).exp()) * mid[f + i])
                        .collect()
                }
                a => mid.iter().map(|&v| gelu(v, a)).collect(),
            };
            let out = linear(&act, &layer.mlp_out);
            if layer.mlp_norm.is_none() {
                x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            }
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
        let normed = norm(&x, &w.final_norm, c.norm, c.norm_eps);
        match &w.lm_head {
            Some(head) => linear(&normed, head),
            None => product(&normed, v(&w.embed), None, c.vocab_size, h),
        }
    }
}
