//! Loads the tensors an architecture names (src/model/arch/) into one weight layout, uploading tensor by tensor.
//! Attention projections are fused into one [q | k | v] matrix and SwiGLU's gate and up into
//! one [gate | up] matrix, so each becomes a single matmul on every backend.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::arch::{Layout, NormTensors, Proj, ProjTensors};
use crate::model::config::ModelConfig;
use crate::model::source::TensorSource;
use crate::model::tensor::BlockMatrix;

pub struct Linear<T> {
    pub weight: T,
    pub bias: Option<T>,
    pub n_out: usize,
    pub n_in: usize,
}

pub struct Norm<T> {
    pub weight: T,
    pub bias: Option<T>,
}

pub struct Layer<T> {
    pub attn_norm: Norm<T>,
    pub qkv: Linear<T>,
    pub attn_out: Linear<T>,
    /// None when the MLP reads the attention's norm (GPT-J's parallel block).
    pub mlp_norm: Option<Norm<T>>,
    /// [ffn] for GELU models, fused [gate | up] of 2*ffn for gated ones.
    pub mlp_in: Linear<T>,
    pub mlp_out: Linear<T>,
    /// RMSNorms of each query and key head (head_dim wide) before the rotary (Qwen3, Gemma 3).
    pub qk_norm: Option<(Norm<T>, Norm<T>)>,
    /// Norms of the attention's and the MLP's outputs before they join the residual (Gemma).
    pub post_attn_norm: Option<Norm<T>>,
    pub post_mlp_norm: Option<Norm<T>>,
}

pub struct Weights<T> {
    pub embed: T,
    pub pos_embed: Option<T>,
    pub layers: Vec<Layer<T>>,
    pub final_norm: Norm<T>,
    /// None when the output projection is tied to the embedding.
    pub lm_head: Option<Linear<T>>,
    /// Weight values in all, and those of the embedding table (which decoding reads one row of).
    pub values: usize,
    pub embed_values: usize,
}

impl<T> Norm<T> {
    fn each(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.weight).chain(&self.bias)
    }
}

impl<T> Linear<T> {
    fn each(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.weight).chain(&self.bias)
    }
}

impl<T> Weights<T> {
    /// Every weight, in no particular order.
    pub fn each(&self) -> Vec<&T> {
        let mut all: Vec<&T> = vec![&self.embed];
        all.extend(&self.pos_embed);
        for l in &self.layers {
            all.extend(
                l.attn_norm
                    .each()
                    .chain(l.qkv.each())
                    .chain(l.attn_out.each()),
            );
            all.extend(l.mlp_in.each().chain(l.mlp_out.each()));
            let norms = [&l.mlp_norm, &l.post_attn_norm, &l.post_mlp_norm];
            all.extend(norms.into_iter().flatten().flat_map(Norm::each));
            if let Some((q, k)) = &l.qk_norm {
                all.extend(q.each().chain(k.each()));
            }
        }
        all.extend(self.final_norm.each());
        all.extend(self.lm_head.iter().flat_map(Linear::each));
        all
    }

    /// Bytes of every weight (`bytes` tells one weight's, `Backend::weight_bytes`), and the
    /// bytes a decode step reads: all of them but the embedding table, of which it reads one
    /// row, unless the output projection is tied to it.
    pub fn bytes(&self, bytes: impl Fn(&T) -> usize) -> (usize, usize) {
        let all: usize = self.each().into_iter().map(&bytes).sum();
        let per_token = match self.lm_head {
            Some(_) => all - bytes(&self.embed),
            None => all,
        };
        (all, per_token)
    }
}

/// Reads tensors from a source, reshapes them to the common layout and uploads them.
struct Loader<'a, B: Backend> {
    cfg: &'a ModelConfig,
    src: &'a dyn TensorSource,
    backend: &'a B,
    layout: Layout,
    loaded: usize,
    total: usize,
    values: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl<B: Backend> Loader<'_, B> {
    /// Counts one tensor of `values` values as loaded and reports the progress.
    fn count(&mut self, values: usize) {
        self.loaded += 1;
        self.values += values;
        (self.progress)(self.loaded, self.total);
    }

    fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.src.load(name, shape)?;
        self.count(data.len());
        Ok(data)
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        if let &[rows, cols] = shape {
            return self.stacked(&[name.to_string()], &[rows], cols);
        }
        let data = self.host(name, shape)?;
        self.backend.upload_weight(data)
    }

    /// The matrices `names` of `parts` rows each, stacked: kept in their files' block formats
    /// when every one is stored in one, else as f32.
    fn stacked(&mut self, names: &[String], parts: &[usize], n_in: usize) -> Result<B::Weight> {
        let mut blocks = Vec::new();
        for (name, &n) in names.iter().zip(parts) {
            match self.src.load_blocks(name, [n, n_in])? {
                Some(b) => blocks.push(b),
                None => break,
            }
        }
        if blocks.len() == names.len() {
            parts.iter().for_each(|&n| self.count(n * n_in));
            return self.backend.upload_blocks(BlockMatrix::stack(blocks)?);
        }
        drop(blocks);
        let mut w = Vec::new();
        for (name, &n) in names.iter().zip(parts) {
            w.extend(self.host(name, &[n, n_in])?);
        }
        self.backend.upload_weight(w)
    }

    fn norm(&mut self, t: &NormTensors, dim: usize) -> Result<Norm<B::Weight>> {
        let mut weight = self.host(&format!("{}.weight", t.prefix), &[dim])?;
        if t.plus_one {
            weight.iter_mut().for_each(|w| *w += 1.0);
        }
        let weight = self.backend.upload_weight(weight)?;
        let bias = if t.bias {
            Some(self.tensor(&format!("{}.bias", t.prefix), &[dim])?)
        } else {
            None
        };
        Ok(Norm { weight, bias })
    }

    /// A projection whose output rows are `parts` (one entry per stacked matrix, or their sum
    /// for a single one).
    fn proj(&mut self, t: &ProjTensors, parts: &[usize], n_in: usize) -> Result<Linear<B::Weight>> {
        let n_out = parts.iter().sum();
        let (weight, bias) = match &t.proj {
            Proj::One(name) => (
                self.stacked(&[format!("{name}.weight")], &[n_out], n_in)?,
                self.bias(t.bias, name, n_out)?,
            ),
            // GPT-2's Conv1D stores [n_in, n_out]: transpose to the common layout.
            Proj::Conv1d(name) => {
                let w = self.host(&format!("{name}.weight"), &[n_in, n_out])?;
                let mut t_w = vec![0.0; w.len()];
                for i in 0..n_in {
                    for o in 0..n_out {
                        t_w[o * n_in + i] = w[i * n_out + o];
                    }
                }
                (
                    self.backend.upload_weight(t_w)?,
                    self.bias(t.bias, name, n_out)?,
                )
            }
            Proj::Stack(names) => {
                if names.len() != parts.len() {
                    return Err(Error::Config(format!(
                        "{} stacked tensors for {} parts",
                        names.len(),
                        parts.len()
                    )));
                }
                let mut b = t.bias.then(Vec::new);
                for (name, &n) in names.iter().zip(parts) {
                    if let (Some(b), Some(part)) = (&mut b, self.bias(t.bias, name, n)?) {
                        b.extend(part);
                    }
                }
                let weights: Vec<String> = names.iter().map(|n| format!("{n}.weight")).collect();
                (self.stacked(&weights, parts, n_in)?, b)
            }
        };
        let bias = bias.map(|b| self.backend.upload_weight(b)).transpose()?;
        Ok(Linear {
            weight,
            bias,
            n_out,
            n_in,
        })
    }

    fn bias(&mut self, has: bool, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        has.then(|| self.host(&format!("{name}.bias"), &[n]))
            .transpose()
    }

    fn layer(&mut self, i: usize) -> Result<Layer<B::Weight>> {
        let c = self.cfg;
        let (h, f, q, kv) = (c.hidden, c.ffn_hidden, c.q_dim(), c.kv_dim());
        let t = (c.arch.layer)(c, self.layout, i);
        let mlp_parts: &[usize] = if c.activation.gated() { &[f, f] } else { &[f] };
        let qkv_parts: &[usize] = match t.qkv.proj {
            Proj::Stack(_) => &[q, kv, kv],
            _ => &[q + 2 * kv],
        };
        let mlp_in_parts = match t.mlp_in.proj {
            Proj::Stack(_) => mlp_parts.to_vec(),
            _ => vec![mlp_parts.iter().sum()],
        };
        Ok(Layer {
            attn_norm: self.norm(&t.attn_norm, h)?,
            qkv: self.proj(&t.qkv, qkv_parts, h)?,
            attn_out: self.proj(&t.attn_out, &[h], q)?,
            mlp_norm: t.mlp_norm.map(|n| self.norm(&n, h)).transpose()?,
            mlp_in: self.proj(&t.mlp_in, &mlp_in_parts, h)?,
            mlp_out: self.proj(&t.mlp_out, &[h], f)?,
            qk_norm: match &t.qk_norm {
                Some((qn, kn)) => Some((self.norm(qn, c.head_dim)?, self.norm(kn, c.head_dim)?)),
                None => None,
            },
            post_attn_norm: t.post_attn_norm.map(|n| self.norm(&n, h)).transpose()?,
            post_mlp_norm: t.post_mlp_norm.map(|n| self.norm(&n, h)).transpose()?,
        })
    }
}

/// Tensors a model of this config reads, for progress reporting.
fn tensor_count(cfg: &ModelConfig, layout: Layout, head: Option<&ProjTensors>) -> usize {
    let norm = |n: &NormTensors| 1 + n.bias as usize;
    let proj = |p: &ProjTensors| {
        let matrices = match &p.proj {
            Proj::Stack(names) => names.len(),
            _ => 1,
        };
        matrices * (1 + p.bias as usize)
    };
    let per_layer: usize = (0..cfg.layers)
        .map(|i| {
            let t = (cfg.arch.layer)(cfg, layout, i);
            let norms = [&t.mlp_norm, &t.post_attn_norm, &t.post_mlp_norm];
            norm(&t.attn_norm)
                + norms.into_iter().flatten().map(norm).sum::<usize>()
                + t.qk_norm.as_ref().map_or(0, |(q, k)| norm(q) + norm(k))
                + [&t.qkv, &t.attn_out, &t.mlp_in, &t.mlp_out]
                    .into_iter()
                    .map(proj)
                    .sum::<usize>()
        })
        .sum();
    let g = (cfg.arch.globals)(layout);
    per_layer + 1 + norm(&g.final_norm) + g.pos_embed.is_some() as usize + head.map_or(0, proj)
}

/// Loads every weight of `cfg` from `src` onto `backend`, reporting (done, total) tensors.
pub fn load_weights<B: Backend>(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    layout: Layout,
    backend: &B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Weights<B::Weight>> {
    let (v, h) = (cfg.vocab_size, cfg.hidden);
    let g = (cfg.arch.globals)(layout);
    // A checkpoint may hold its output matrix even where the config ties it to the embedding.
    let head_name = format!("{}.weight", g.head);
    let head = if src.has(&head_name) {
        Some(ProjTensors::one(g.head.clone(), g.head_bias))
    } else if cfg.tied_embeddings {
        None
    } else {
        return Err(Error::MissingTensor(head_name));
    };
    let mut l = Loader {
        cfg,
        src,
        backend,
        layout,
        loaded: 0,
        total: tensor_count(cfg, layout, head.as_ref()),
        values: 0,
        progress,
    };
    let embed = l.tensor(&g.embed, &[v, h])?;
    let pos_embed = match &g.pos_embed {
        Some(name) => Some(l.tensor(name, &[cfg.max_context, h])?),
        None => None,
    };
    let layers = (0..cfg.layers)
        .map(|i| l.layer(i))
        .collect::<Result<Vec<_>>>()?;
    let final_norm = l.norm(&g.final_norm, h)?;
    let lm_head = head.map(|head| l.proj(&head, &[v], h)).transpose()?;
    Ok(Weights {
        embed,
        pos_embed,
        layers,
        final_norm,
        lm_head,
        values: l.values,
        embed_values: v * h,
    })
}
