//! Sessions and the forward pass, written once for every backend.

pub mod generate;
pub mod sampling;

use crate::backend::{AttentionSpec, Backend};
use crate::error::{Error, Result};
use crate::kv::CacheShape;
use crate::model::Model;
use crate::model::config::Activation;

/// One sequence: its KV cache and the position of the next token.
pub struct Session<B: Backend> {
    pub cache: B::Cache,
    pub shape: CacheShape,
    /// Original position of the next token (tokens seen so far, never the cache length).
    pub position: usize,
}

impl<B: Backend> Model<B> {
    /// A session whose cache holds up to `capacity` tokens per layer and head.
    pub fn new_session(&self, capacity: usize) -> Result<Session<B>> {
        let c = &self.config;
        let shape = CacheShape {
            layers: c.layers,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            capacity,
        };
        Ok(Session {
            cache: self.backend.new_cache(&shape)?,
            shape,
            position: 0,
        })
    }

    /// Runs `tokens` through the model at the session's next positions and returns logits:
    /// of every row when `all_rows`, otherwise of the last row only.
    pub fn forward(&self, s: &mut Session<B>, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        let (c, w, b) = (&self.config, &self.weights, &self.backend);
        let rows = tokens.len();
        if rows == 0 {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        if s.position + rows > c.max_context {
            return Err(Error::InvalidInput(format!(
                "{} tokens exceed the model's context of {} tokens",
                s.position + rows,
                c.max_context
            )));
        }
        let (h, f) = (c.hidden, c.ffn_hidden);
        let mlp_in_width = if c.activation == Activation::SwiGlu {
            2 * f
        } else {
            f
        };
        let mut x = b.zeros(rows * h)?;
        let mut normed = b.zeros(rows * h)?;
        let mut qkv = b.zeros(rows * (c.q_dim() + 2 * c.kv_dim()))?;
        let mut attn = b.zeros(rows * c.q_dim())?;
        let mut proj = b.zeros(rows * h)?;
        let mut mlp_mid = b.zeros(rows * mlp_in_width)?;
        let mut mlp_act = b.zeros(rows * f)?;

        b.embed(&w.embed, tokens, h, &mut x)?;
        if let Some(table) = &w.pos_embed {
            b.add_rows(&mut x, table, s.position, rows, h)?;
        }
        let spec = AttentionSpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            positions: &c.positions,
        };
        for (i, l) in w.layers.iter().enumerate() {
            let an = &l.attn_norm;
            b.norm(
                c.norm,
                &x,
                &an.weight,
                an.bias.as_ref(),
                c.norm_eps,
                rows,
                h,
                &mut normed,
            )?;
            let lin = &l.qkv;
            b.linear(
                &normed,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                &mut qkv,
            )?;
            b.attention(&spec, &qkv, rows, s.position, &mut s.cache, i, &mut attn)?;
            let lin = &l.attn_out;
            b.linear(
                &attn,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                &mut proj,
            )?;
            if let Some(mn) = &l.mlp_norm {
                b.add(&mut x, &proj, rows * h)?;
                b.norm(
                    c.norm,
                    &x,
                    &mn.weight,
                    mn.bias.as_ref(),
                    c.norm_eps,
                    rows,
                    h,
                    &mut normed,
                )?;
            }
            // The MLP reads `normed`: the attention's norm in a parallel block, its own otherwise.
            let lin = &l.mlp_in;
            b.linear(
                &normed,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                &mut mlp_mid,
            )?;
            b.activation(c.activation, &mut mlp_mid, rows, f, &mut mlp_act)?;
            let mid = if c.activation == Activation::SwiGlu {
                &mlp_act
            } else {
                &mlp_mid
            };
            let lin = &l.mlp_out;
            if l.mlp_norm.is_none() {
                b.add(&mut x, &proj, rows * h)?;
            }
            b.linear(
                mid,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                &mut proj,
            )?;
            b.add(&mut x, &proj, rows * h)?;
        }
        s.position += rows;

        // Only the rows whose logits are wanted go through the final norm and the head.
        let (out_rows, last) = if all_rows {
            (rows, x)
        } else {
            (1, self.last_row(&x, rows)?)
        };
        let fnorm = &w.final_norm;
        b.norm(
            c.norm,
            &last,
            &fnorm.weight,
            fnorm.bias.as_ref(),
            c.norm_eps,
            out_rows,
            h,
            &mut normed,
        )?;
        let v = c.vocab_size;
        let mut logits = b.zeros(out_rows * v)?;
        match &w.lm_head {
            Some(lin) => b.linear(
                &normed,
                out_rows,
                &lin.weight,
                lin.bias.as_ref(),
                v,
                h,
                &mut logits,
            )?,
            None => b.linear(&normed, out_rows, &w.embed, None, v, h, &mut logits)?,
        }
        b.download(&logits, out_rows * v)
    }

    fn last_row(&self, x: &B::Buf, rows: usize) -> Result<B::Buf> {
        let h = self.config.hidden;
        // Adding row rows-1 onto zeros copies it with an op every backend already has.
        let mut last = self.backend.zeros(h)?;
        self.backend.add_rows(&mut last, x, rows - 1, 1, h)?;
        Ok(last)
    }
}
