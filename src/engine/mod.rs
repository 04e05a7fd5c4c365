//! Sessions and the forward pass, written once for every backend.

pub mod conversation;
pub mod generate;
pub mod loglik;
pub mod sampling;
pub mod select;

use crate::backend::{AttentionSpec, Backend};
use crate::error::{Error, Result};
use crate::kv::policy::{CachePlan, Policy};
use crate::kv::stats::{CacheStats, LayerStats};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::Model;
use crate::model::config::Activation;

/// One sequence: its KV cache, its cache plan and where it is in generation.
pub struct Session<B: Backend> {
    pub cache: B::Cache,
    pub shape: CacheShape,
    pub plan: CachePlan,
    /// Original position of the next token (tokens seen so far, never the cache length).
    pub position: usize,
    /// Tokens held in every layer and kv head (all hold the same count).
    pub cached: usize,
    /// Tokens evicted so far, summed over layers and kv heads.
    pub evictions: u64,
    /// Forward calls so far: 0 before prefill, the decode step t after.
    pub step: usize,
    /// T, the number of steps tau rises over (max new tokens).
    pub steps: usize,
    /// Activation buffers reused by every decode step.
    workspace: Option<Workspace<B>>,
}

/// The activations of one forward pass.
struct Workspace<B: Backend> {
    x: B::Buf,
    normed: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    mlp_mid: B::Buf,
    mlp_act: B::Buf,
}

impl<B: Backend> Model<B> {
    /// A session with a full cache of `capacity` tokens per layer and head.
    pub fn new_session(&self, capacity: usize) -> Result<Session<B>> {
        let plan = CachePlan {
            policy: Policy::Full,
            budget: None,
            sinks: 0,
            recent: 0,
            scoring: None,
        };
        self.session_with(plan, capacity, 0)
    }

    /// A session for a prompt of `prompt_len` tokens followed by up to `max_new` tokens:
    /// an evicting plan allocates its budget plus the one slot a decode step appends.
    pub fn new_session_for(
        &self,
        plan: CachePlan,
        prompt_len: usize,
        max_new: usize,
    ) -> Result<Session<B>> {
        let needed = (prompt_len + max_new).min(self.config.max_context);
        let capacity = plan.budget.map_or(needed, |k| needed.min(k + 1));
        self.session_with(plan, capacity, max_new)
    }

    fn session_with(&self, plan: CachePlan, capacity: usize, steps: usize) -> Result<Session<B>> {
        let c = &self.config;
        let shape = CacheShape {
            layers: c.layers,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            capacity,
        };
        let cache = self.backend.new_cache(&shape)?;
        Ok(Session {
            cache,
            shape,
            plan,
            position: 0,
            cached: 0,
            evictions: 0,
            step: 0,
            steps,
            workspace: None,
        })
    }

    /// What the session's cache holds now; `with_positions` reads back every kept position.
    pub fn cache_stats(&self, s: &Session<B>, with_positions: bool) -> Result<CacheStats> {
        let b = &self.backend;
        let layers: Vec<LayerStats> = (0..s.shape.layers)
            .map(|l| LayerStats {
                kept: vec![b.cache_len(&s.cache, l); s.shape.kv_heads],
                capacity: b.cache_capacity(&s.cache, l),
            })
            .collect();
        // K and V bytes of one slot in every kv head of one layer.
        let slot_bytes = 2 * s.shape.kv_heads * s.shape.head_dim * b.kv_value_bytes();
        let kv_bytes_held = layers
            .iter()
            .map(|l| l.capacity * slot_bytes)
            .sum::<usize>();
        let kv_bytes_full = s.shape.kv_bytes(s.position, b.kv_value_bytes());
        let positions = if with_positions {
            let mut all = (0..s.shape.layers)
                .map(|l| b.cache_positions(&s.cache, l))
                .collect::<Result<Vec<_>>>()?;
            // GPU backends keep slots in any order; people and tests read positions sorted.
            all.iter_mut()
                .flatten()
                .for_each(|head| head.sort_unstable());
            Some(all)
        } else {
            None
        };
        Ok(CacheStats {
            policy: s.plan.policy,
            budget: s.plan.budget,
            sinks: s.plan.sinks,
            recent: s.plan.recent,
            tokens_seen: s.position,
            layers,
            kv_bytes_held,
            kv_bytes_full,
            evictions: s.evictions,
            compression_ratio: kv_bytes_full as f64 / kv_bytes_held.max(1) as f64,
            tau: s
                .plan
                .scoring
                .map_or(1.0, |sc| sc.tau(s.step.saturating_sub(1), s.steps)),
            positions,
        })
    }

    /// Runs `tokens` through the model at the session's next positions and returns logits on
    /// the host: of every row when `all_rows`, otherwise of the last row only.
    pub fn forward(&self, s: &mut Session<B>, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        let rows = if all_rows { tokens.len() } else { 1 };
        let logits = self.forward_logits(s, tokens, all_rows)?;
        self.backend
            .download(&logits, rows * self.config.vocab_size)
    }

    /// As `forward`, leaving the logits on the device.
    pub fn forward_logits(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        all_rows: bool,
    ) -> Result<B::Buf> {
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
        // Decode steps reuse one set of buffers; a prefill gets its own for its row count.
        let mut ws = match s.workspace.take() {
            Some(ws) if rows == 1 => ws,
            _ => Workspace {
                x: b.scratch(rows * h)?,
                normed: b.scratch(rows * h)?,
                qkv: b.scratch(rows * (c.q_dim() + 2 * c.kv_dim()))?,
                attn: b.scratch(rows * c.q_dim())?,
                proj: b.scratch(rows * h)?,
                mlp_mid: b.scratch(rows * mlp_in_width)?,
                mlp_act: b.scratch(rows * f)?,
            },
        };
        let Workspace {
            x,
            normed,
            qkv,
            attn,
            proj,
            mlp_mid,
            mlp_act,
        } = &mut ws;

        b.embed(&w.embed, tokens, h, x)?;
        if let Some(table) = &w.pos_embed {
            b.add_positions(x, table, s.position, rows, h)?;
        }
        let spec = AttentionSpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            positions: &c.positions,
        };
        let score = s.plan.scoring.map(|sc| StepScore {
            noise: sc.noise,
            tau: sc.tau(s.step, s.steps),
            seed: sc.seed,
        });
        // Evict after each layer's attention, so a long prompt never sits in every layer at once.
        let keep = s
            .plan
            .budget
            .filter(|&k| s.cached + rows > k)
            .map(|budget| Keep {
                budget,
                sinks: s.plan.sinks,
                recent: s.plan.recent,
            });
        for (i, l) in w.layers.iter().enumerate() {
            let an = &l.attn_norm;
            b.norm(
                c.norm,
                &*x,
                &an.weight,
                an.bias.as_ref(),
                c.norm_eps,
                rows,
                h,
                normed,
            )?;
            let lin = &l.qkv;
            b.linear(
                &*normed,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                qkv,
            )?;
            b.attention(
                &spec,
                &*qkv,
                rows,
                s.position,
                &mut s.cache,
                i,
                score.as_ref(),
                attn,
            )?;
            if let Some(keep) = &keep {
                b.evict(&mut s.cache, i, keep)?;
            }
            let lin = &l.attn_out;
            b.linear(
                &*attn,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                proj,
            )?;
            if let Some(mn) = &l.mlp_norm {
                b.add(x, &*proj, rows * h)?;
                b.norm(
                    c.norm,
                    &*x,
                    &mn.weight,
                    mn.bias.as_ref(),
                    c.norm_eps,
                    rows,
                    h,
                    normed,
                )?;
            }
            // The MLP reads `normed`: the attention's norm in a parallel block, its own otherwise.
            let lin = &l.mlp_in;
            b.linear(
                &*normed,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                mlp_mid,
            )?;
            b.activation(c.activation, mlp_mid, rows, f, mlp_act)?;
            let mid = if c.activation == Activation::SwiGlu {
                &*mlp_act
            } else {
                &*mlp_mid
            };
            let lin = &l.mlp_out;
            if l.mlp_norm.is_none() {
                b.add(x, &*proj, rows * h)?;
            }
            b.linear(
                mid,
                rows,
                &lin.weight,
                lin.bias.as_ref(),
                lin.n_out,
                lin.n_in,
                proj,
            )?;
            b.add(x, &*proj, rows * h)?;
        }
        s.position += rows;
        s.step += 1;
        s.cached += rows;
        if let Some(keep) = &keep {
            s.evictions += ((s.cached - keep.budget) * c.layers * c.kv_heads) as u64;
            s.cached = keep.budget;
        }

        // Only the rows whose logits are wanted go through the final norm and the head.
        let out_rows = if all_rows { rows } else { 1 };
        let last;
        let final_in: &B::Buf = if all_rows || rows == 1 {
            &*x
        } else {
            last = self.last_row(&*x, rows)?;
            &last
        };
        let fnorm = &w.final_norm;
        b.norm(
            c.norm,
            final_in,
            &fnorm.weight,
            fnorm.bias.as_ref(),
            c.norm_eps,
            out_rows,
            h,
            normed,
        )?;
        let v = c.vocab_size;
        let mut logits = b.scratch(out_rows * v)?;
        match &w.lm_head {
            Some(lin) => b.linear(
                &*normed,
                out_rows,
                &lin.weight,
                lin.bias.as_ref(),
                v,
                h,
                &mut logits,
            )?,
            None => b.linear(&*normed, out_rows, &w.embed, None, v, h, &mut logits)?,
        }
        if rows == 1 {
            s.workspace = Some(ws);
        }
        Ok(logits)
    }

    fn last_row(&self, x: &B::Buf, rows: usize) -> Result<B::Buf> {
        let h = self.config.hidden;
        let mut last = self.backend.zeros(h)?;
        self.backend.copy_rows(x, rows - 1, 1, h, &mut last, 0)?;
        Ok(last)
    }
}
