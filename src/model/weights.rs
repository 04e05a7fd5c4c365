//! Maps each architecture's tensor names onto one weight layout, uploading tensor by tensor.
//! Attention projections are fused into one [q | k | v] matrix and SwiGLU's gate and up into
//! one [gate | up] matrix, so each becomes a single matmul on every backend.

use crate::backend::Backend;
use crate::error::Result;
use crate::model::config::{Arch, ModelConfig, NormKind};
use crate::model::source::TensorSource;

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
    /// [ffn] for GELU models, fused [gate | up] of 2*ffn for SwiGLU.
    pub mlp_in: Linear<T>,
    pub mlp_out: Linear<T>,
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

/// Tensor names of one architecture's checkpoint format.
struct Names {
    prefix: String,
}

/// Reads tensors from a source, reshapes them to the common layout and uploads them.
struct Loader<'a, B: Backend> {
    cfg: &'a ModelConfig,
    src: &'a dyn TensorSource,
    backend: &'a B,
    gguf: bool,
    loaded: usize,
    total: usize,
    values: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl<B: Backend> Loader<'_, B> {
    fn host(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.src.load(name, shape)?;
        self.loaded += 1;
        self.values += data.len();
        (self.progress)(self.loaded, self.total);
        Ok(data)
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let data = self.host(name, shape)?;
        self.backend.upload_weight(data)
    }

    fn optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<B::Weight>> {
        if self.src.has(name) {
            self.tensor(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn norm(&mut self, prefix: &str, dim: usize) -> Result<Norm<B::Weight>> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[dim])?;
        let bias = match self.cfg.norm {
            NormKind::LayerNorm => self.optional(&format!("{prefix}.bias"), &[dim])?,
            NormKind::RmsNorm => None,
        };
        Ok(Norm { weight, bias })
    }

    /// A [n_out, n_in] linear stored as PyTorch does (out-major).
    fn linear(
        &mut self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
        bias: bool,
    ) -> Result<Linear<B::Weight>> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[n_out, n_in])?;
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[n_out])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            n_out,
            n_in,
        })
    }

    /// GPT-2's Conv1D stores [n_in, n_out]: transpose to the common layout.
    fn conv1d(&mut self, prefix: &str, n_out: usize, n_in: usize) -> Result<Linear<B::Weight>> {
        let w = self.host(&format!("{prefix}.weight"), &[n_in, n_out])?;
        let mut t = vec![0.0; w.len()];
        for i in 0..n_in {
            for o in 0..n_out {
                t[o * n_in + i] = w[i * n_out + o];
            }
        }
        let weight = self.backend.upload_weight(t)?;
        let bias = Some(self.tensor(&format!("{prefix}.bias"), &[n_out])?);
        Ok(Linear {
            weight,
            bias,
            n_out,
            n_in,
        })
    }

    /// Several [n_i, n_in] matrices stacked into one [sum n_i, n_in] linear.
    fn stacked(
        &mut self,
        parts: &[(&str, usize)],
        n_in: usize,
        bias: bool,
    ) -> Result<Linear<B::Weight>> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (name, n) in parts {
            w.extend(self.host(&format!("{name}.weight"), &[*n, n_in])?);
            if bias {
                b.extend(self.host(&format!("{name}.bias"), &[*n])?);
            }
        }
        let n_out = parts.iter().map(|p| p.1).sum();
        let bias = if bias {
            Some(self.backend.upload_weight(b)?)
        } else {
            None
        };
        Ok(Linear {
            weight: self.backend.upload_weight(w)?,
            bias,
            n_out,
            n_in,
        })
    }

    fn layer(&mut self, i: usize) -> Result<Layer<B::Weight>> {
        let c = self.cfg;
        let (h, f, q, kv) = (c.hidden, c.ffn_hidden, c.q_dim(), c.kv_dim());
        let names = Names::layer(c.arch, self.gguf, i);
        let p = |s: &str| names.get(s);
        Ok(match (c.arch, self.gguf) {
            (Arch::Gpt2, _) => Layer {
                attn_norm: self.norm(&p("ln_1"), h)?,
                qkv: self.conv1d(&p("attn.c_attn"), q + 2 * kv, h)?,
                attn_out: self.conv1d(&p("attn.c_proj"), h, q)?,
                mlp_norm: Some(self.norm(&p("ln_2"), h)?),
                mlp_in: self.conv1d(&p("mlp.c_fc"), f, h)?,
                mlp_out: self.conv1d(&p("mlp.c_proj"), h, f)?,
            },
            (Arch::GptJ, _) => Layer {
                attn_norm: self.norm(&p("ln_1"), h)?,
                qkv: self.stacked(
                    &[
                        (&p("attn.q_proj"), q),
                        (&p("attn.k_proj"), kv),
                        (&p("attn.v_proj"), kv),
                    ],
                    h,
                    false,
                )?,
                attn_out: self.linear(&p("attn.out_proj"), h, q, false)?,
                mlp_norm: None,
                mlp_in: self.linear(&p("mlp.fc_in"), f, h, true)?,
                mlp_out: self.linear(&p("mlp.fc_out"), h, f, true)?,
            },
            (Arch::Mpt, _) => Layer {
                attn_norm: self.norm(&p("norm_1"), h)?,
                qkv: self.linear(&p("attn.Wqkv"), q + 2 * kv, h, false)?,
                attn_out: self.linear(&p("attn.out_proj"), h, q, false)?,
                mlp_norm: Some(self.norm(&p("norm_2"), h)?),
                mlp_in: self.linear(&p("ffn.up_proj"), f, h, false)?,
                mlp_out: self.linear(&p("ffn.down_proj"), h, f, false)?,
            },
            (Arch::Llama, false) => Layer {
                attn_norm: self.norm(&p("input_layernorm"), h)?,
                qkv: self.stacked(
                    &[
                        (&p("self_attn.q_proj"), q),
                        (&p("self_attn.k_proj"), kv),
                        (&p("self_attn.v_proj"), kv),
                    ],
                    h,
                    false,
                )?,
                attn_out: self.linear(&p("self_attn.o_proj"), h, q, false)?,
                mlp_norm: Some(self.norm(&p("post_attention_layernorm"), h)?),
                mlp_in: self.stacked(
                    &[(&p("mlp.gate_proj"), f), (&p("mlp.up_proj"), f)],
                    h,
                    false,
                )?,
                mlp_out: self.linear(&p("mlp.down_proj"), h, f, false)?,
            },
            (Arch::Llama, true) => Layer {
                attn_norm: self.norm(&p("attn_norm"), h)?,
                qkv: self.stacked(
                    &[(&p("attn_q"), q), (&p("attn_k"), kv), (&p("attn_v"), kv)],
                    h,
                    false,
                )?,
                attn_out: self.linear(&p("attn_output"), h, q, false)?,
                mlp_norm: Some(self.norm(&p("ffn_norm"), h)?),
                mlp_in: self.stacked(&[(&p("ffn_gate"), f), (&p("ffn_up"), f)], h, false)?,
                mlp_out: self.linear(&p("ffn_down"), h, f, false)?,
            },
        })
    }
}

impl Names {
    fn layer(arch: Arch, gguf: bool, i: usize) -> Names {
        let prefix = match (arch, gguf) {
            (_, true) => format!("blk.{i}"),
            (Arch::Gpt2 | Arch::GptJ, false) => format!("transformer.h.{i}"),
            (Arch::Mpt, false) => format!("transformer.blocks.{i}"),
            (Arch::Llama, false) => format!("model.layers.{i}"),
        };
        Names { prefix }
    }

    fn get(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }
}

/// Tensors a model of this config reads, for progress reporting.
fn tensor_count(cfg: &ModelConfig) -> usize {
    let per_layer = match cfg.arch {
        Arch::Gpt2 => 12,
        Arch::GptJ => 11,
        Arch::Mpt => 6,
        Arch::Llama => 9,
    };
    per_layer * cfg.layers + 4
}

/// Loads every weight of `cfg` from `src` onto `backend`, reporting (done, total) tensors.
pub fn load_weights<B: Backend>(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    gguf: bool,
    backend: &B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Weights<B::Weight>> {
    let mut l = Loader {
        cfg,
        src,
        backend,
        gguf,
        loaded: 0,
        total: tensor_count(cfg),
        values: 0,
        progress,
    };
    let (v, h) = (cfg.vocab_size, cfg.hidden);
    let (embed_name, final_norm, head) = match (cfg.arch, gguf) {
        (_, true) => ("token_embd.weight", "output_norm", "output"),
        (Arch::Gpt2 | Arch::GptJ, false) => {
            ("transformer.wte.weight", "transformer.ln_f", "lm_head")
        }
        (Arch::Mpt, false) => ("transformer.wte.weight", "transformer.norm_f", "lm_head"),
        (Arch::Llama, false) => ("model.embed_tokens.weight", "model.norm", "lm_head"),
    };
    let embed = l.tensor(embed_name, &[v, h])?;
    let pos_embed = match cfg.arch {
        Arch::Gpt2 => Some(l.tensor("transformer.wpe.weight", &[cfg.max_context, h])?),
        _ => None,
    };
    let layers = (0..cfg.layers)
        .map(|i| l.layer(i))
        .collect::<Result<Vec<_>>>()?;
    let final_norm = l.norm(final_norm, h)?;
    // A checkpoint without its own output matrix ties it to the embedding.
    let lm_head = if src.has(&format!("{head}.weight")) {
        let bias = src.has(&format!("{head}.bias"));
        Some(l.linear(head, v, h, bias)?)
    } else {
        None
    };
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
