//! Sessions and the forward pass, written once for every backend.

pub mod batch;
pub mod conversation;
pub mod generate;
pub mod loglik;
pub mod planner;
pub mod sampling;
pub mod select;

use crate::backend::{AttentionSpec, Backend, NormSpec, SeqStep};
use crate::error::{Error, Result};
use crate::kv::policy::{CachePlan, Policy};
use crate::kv::stats::{CacheStats, LayerStats};
use crate::kv::{CacheShape, Keep, StepScore};
use crate::model::Model;
use crate::model::config::{Activation, ModelConfig};
use crate::model::weights::{Linear, Norm};

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
    /// The most slots one layer has held at once (per kv head): the budget plus a prompt, or
    /// plus a chunk of it, while a prefill runs.
    pub peak_slots: usize,
    /// Activation buffers reused by every decode step.
    workspace: Option<Workspace<B>>,
}

/// The activations of one forward pass over `rows` rows.
struct Workspace<B: Backend> {
    rows: usize,
    x: B::Buf,
    normed: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    proj: B::Buf,
    mlp_mid: B::Buf,
    mlp_act: B::Buf,
}

impl<B: Backend> Workspace<B> {
    fn new(model: &Model<B>, rows: usize) -> Result<Workspace<B>> {
        let b = &model.backend;
        let [x, normed, qkv, attn, proj, mlp_mid, mlp_act] =
            activation_widths(&model.config).map(|width| b.scratch(rows * width));
        Ok(Workspace {
            rows,
            x: x?,
            normed: normed?,
            qkv: qkv?,
            attn: attn?,
            proj: proj?,
            mlp_mid: mlp_mid?,
            mlp_act: mlp_act?,
        })
    }
}

/// Values per row of each workspace buffer, in the order of `Workspace`'s fields.
fn activation_widths(c: &ModelConfig) -> [usize; 7] {
    let mlp_in = if c.activation.gated() {
        2 * c.ffn_hidden
    } else {
        c.ffn_hidden
    };
    let h = c.hidden;
    [
        h,
        h,
        c.q_dim() + 2 * c.kv_dim(),
        c.q_dim(),
        h,
        mlp_in,
        c.ffn_hidden,
    ]
}

/// How a layer's attention runs: `(layer, qkv rows, out rows)`.
type Attend<'a, B> =
    dyn FnMut(usize, &<B as Backend>::Buf, &mut <B as Backend>::Buf) -> Result<()> + 'a;

impl<B: Backend> Session<B> {
    /// What running `rows` new tokens does to the cache: this step's score accumulation, and
    /// what eviction keeps when the cache outgrows its budget.
    fn cache_step(&self, rows: usize) -> (Option<StepScore>, Option<Keep>) {
        let score = self.plan.scoring.map(|sc| StepScore {
            noise: sc.noise,
            tau: sc.tau(self.step, self.steps),
            seed: sc.seed,
        });
        let keep = self
            .plan
            .budget
            .filter(|&k| self.cached + rows > k)
            .map(|budget| Keep {
                budget,
                sinks: self.plan.sinks,
                recent: self.plan.recent,
            });
        (score, keep)
    }

    /// `cache_step` for one layer: a sliding-window layer (attending to `window` tokens) is
    /// never scored and keeps exactly the `window - 1` tokens before the next one.
    fn layer_step(
        &self,
        window: Option<usize>,
        rows: usize,
        step: (Option<StepScore>, Option<Keep>),
    ) -> (Option<StepScore>, Option<Keep>) {
        let Some(w) = window else {
            return step;
        };
        let keep = w - 1;
        let held = self.position.min(keep);
        let evict = (held + rows > keep).then_some(Keep {
            budget: keep,
            sinks: 0,
            recent: keep,
        });
        (None, evict)
    }

    /// Counts `rows` tokens run through every layer, and what `keep` (of the layers without a
    /// window of their own) and the windows evicted.
    fn advance(&mut self, rows: usize, keep: Option<&Keep>, windows: &[Option<usize>]) {
        let heads = self.shape.kv_heads as u64;
        for &w in windows.iter().flatten() {
            let held = self.position.min(w - 1);
            self.evictions += (held + rows).saturating_sub(w - 1) as u64 * heads;
        }
        let policy_layers = self.shape.layers - windows.iter().flatten().count();
        self.position += rows;
        self.step += 1;
        self.cached += rows;
        if let Some(keep) = keep {
            let per_layer_head = self.cached - keep.budget;
            self.evictions += (per_layer_head * policy_layers) as u64 * heads;
            self.cached = keep.budget;
        }
    }
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
            prefill_chunk: None,
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
        let capacity = self.config.cache_slots(&plan, prompt_len, max_new);
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
            peak_slots: capacity,
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
                window: self.config.window(l),
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
            prefill_chunk: s.plan.prefill_chunk,
            peak_slots: s.peak_slots,
            positions,
        })
    }

    /// Runs a prompt (or a chat turn's new tokens) through the model and returns the last
    /// row's logits on the device: in one pass, or with the plan's `prefill_chunk` a chunk at a
    /// time, each chunk attending to what the cache kept plus itself and the cache evicting
    /// down to its budget after each one, so no layer holds more than budget + chunk tokens.
    /// Every chunk is scored as part of the prefill step (tau at its prefill value).
    pub fn prefill(&self, s: &mut Session<B>, tokens: &[u32]) -> Result<B::Buf> {
        let chunk = match s.plan.prefill_chunk {
            Some(chunk) if chunk < tokens.len() => chunk,
            _ => return self.forward_logits(s, tokens, false),
        };
        let step = s.step;
        let (head, last) = tokens.split_at((tokens.len() - 1) / chunk * chunk);
        for part in head.chunks(chunk) {
            self.forward_logits(s, part, false)?;
            s.step = step;
        }
        self.forward_logits(s, last, false)
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
        self.check_context(s, rows)?;
        // Decode steps reuse one set of buffers; a prefill gets its own for its row count.
        let mut ws = match s.workspace.take() {
            Some(ws) if rows == 1 => ws,
            _ => Workspace::new(self, rows)?,
        };
        b.embed(&w.embed, tokens, c.hidden, &mut ws.x)?;
        if let Some(scale) = c.block.embed_scale {
            b.map(&mut ws.x, rows * c.hidden, &|v| v * scale)?;
        }
        if let Some(table) = &w.pos_embed {
            b.add_positions(&mut ws.x, table, s.position, rows, c.hidden)?;
        }
        let step = s.cache_step(rows);
        self.layers(&mut ws, rows, &mut |layer, qkv, attn| {
            let spec = self.attention_spec(layer);
            let (score, keep) = s.layer_step(spec.window, rows, step);
            if rows == 1 {
                // A decode step: backends may fuse the eviction into the attention.
                let seq = SeqStep {
                    cache: &mut s.cache,
                    position: s.position,
                    score,
                    keep,
                };
                return b.attention_batch(&spec, qkv, &mut [seq], layer, attn);
            }
            if let Some(w) = spec.window {
                let held = s.position.min(w - 1);
                if held + rows > w && !b.masks_windows() {
                    return Err(Error::Backend {
                        backend: "forward",
                        reason: format!(
                            "{} runs {rows} prompt tokens through a sliding window of {w} without masking it: use the CPU backend, or a prompt of at most {w} tokens",
                            b.name()
                        ),
                    });
                }
            }
            b.attention(
                &spec,
                qkv,
                rows,
                s.position,
                &mut s.cache,
                layer,
                score.as_ref(),
                attn,
            )?;
            s.peak_slots = s.peak_slots.max(b.cache_capacity(&s.cache, layer));
            // Evict after each layer's attention, so a long prompt never sits in every layer
            // at once.
            if let Some(keep) = &keep {
                b.evict(&mut s.cache, layer, keep)?;
            }
            Ok(())
        })?;
        s.advance(rows, step.1.as_ref(), &c.block.layer_window);

        // Only the rows whose logits are wanted go through the final norm and the head.
        let logits = if all_rows || rows == 1 {
            self.head(&ws.x, rows, &mut ws.normed)?
        } else {
            let last = self.row(&ws.x, rows - 1, c.hidden)?;
            self.head(&last, 1, &mut ws.normed)?
        };
        if rows == 1 {
            s.workspace = Some(ws);
        }
        Ok(logits)
    }

    /// The model's context must hold `rows` more tokens after the session's.
    fn check_context(&self, s: &Session<B>, rows: usize) -> Result<()> {
        let context = self.config.max_context;
        if s.position + rows > context {
            return Err(Error::InvalidInput(format!(
                "{} tokens exceed the model's context of {context} tokens",
                s.position + rows
            )));
        }
        Ok(())
    }

    /// What the attention of `layer` needs to know.
    fn attention_spec(&self, layer: usize) -> AttentionSpec<'_> {
        let c = &self.config;
        AttentionSpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            positions: c.positions_of(layer),
            softcap: c.block.attn_softcap,
            window: c.window(layer),
        }
    }

    /// Every layer over `rows` rows of `ws.x`, in place. `attend(layer, qkv, out)` runs the
    /// attention of a layer from its fused [q | k | v] rows into `out`: over one session's
    /// cache, or over each row's own session in a batch.
    fn layers(&self, ws: &mut Workspace<B>, rows: usize, attend: &mut Attend<'_, B>) -> Result<()> {
        let (c, w, b) = (&self.config, &self.weights, &self.backend);
        let Workspace {
            x,
            normed,
            qkv,
            attn,
            proj,
            mlp_mid,
            mlp_act,
            ..
        } = ws;
        for (i, l) in w.layers.iter().enumerate() {
            let (q, m, act) = (&l.qkv, &l.mlp_in, c.activation);
            let attn_norm = self.norm_spec(&l.attn_norm);
            let Some(mlp_norm) = &l.mlp_norm else {
                // A parallel block: one norm of x feeds both input products, which go to the
                // backend together, as do the two output products.
                let qkv_out = (q, &mut *qkv);
                b.norm_linear_pair(
                    &attn_norm, x, rows, normed, qkv_out, m, act, mlp_mid, mlp_act,
                )?;
                attend(i, qkv, attn)?;
                let mid = mlp_output(act, mlp_mid, mlp_act);
                b.linear_residual_pair(rows, (mid, &l.mlp_out), (attn, &l.attn_out), proj, x)?;
                continue;
            };
            let dims = (q.n_out, q.n_in);
            b.norm_linear(
                &attn_norm,
                x,
                rows,
                normed,
                &q.weight,
                q.bias.as_ref(),
                dims,
                qkv,
            )?;
            if let Some((qn, kn)) = &l.qk_norm {
                let spec = self.attention_spec(i);
                b.head_norm(&spec, qkv, rows, (&self.norm_spec(qn), &self.norm_spec(kn)))?;
            }
            attend(i, qkv, attn)?;
            // The MLP reads its own norm of x with the attention's output added in.
            self.join(
                &l.attn_out,
                l.post_attn_norm.as_ref(),
                rows,
                attn,
                proj,
                normed,
                x,
            )?;
            let (weight, bias, dims) = (&m.weight, m.bias.as_ref(), (m.n_out, m.n_in));
            let mlp_norm = self.norm_spec(mlp_norm);
            b.norm_linear_activation(
                &mlp_norm, x, rows, normed, weight, bias, dims, act, mlp_mid, mlp_act,
            )?;
            let mid = mlp_output(act, mlp_mid, mlp_act);
            self.join(
                &l.mlp_out,
                l.post_mlp_norm.as_ref(),
                rows,
                mid,
                proj,
                normed,
                x,
            )?;
        }
        Ok(())
    }

    /// x += lin(input), or x += post_norm(lin(input)) where the block norms its outputs.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &self,
        lin: &Linear<B::Weight>,
        post_norm: Option<&Norm<B::Weight>>,
        rows: usize,
        input: &B::Buf,
        scratch: &mut B::Buf,
        normed: &mut B::Buf,
        x: &mut B::Buf,
    ) -> Result<()> {
        let b = &self.backend;
        let (bias, n_out, n_in) = (lin.bias.as_ref(), lin.n_out, lin.n_in);
        let Some(post) = post_norm else {
            return b.linear_residual(input, rows, &lin.weight, bias, n_out, n_in, scratch, x);
        };
        b.linear(input, rows, &lin.weight, bias, n_out, n_in, scratch)?;
        let post = self.norm_spec(post);
        let (kind, eps) = (post.kind, post.eps);
        b.norm(
            kind,
            scratch,
            post.weight,
            post.bias,
            eps,
            rows,
            n_out,
            normed,
        )?;
        b.add(x, normed, rows * n_out)
    }

    /// A norm with the model's kind and epsilon.
    fn norm_spec<'a>(&self, n: &'a Norm<B::Weight>) -> NormSpec<'a, B::Weight> {
        NormSpec {
            kind: self.config.norm,
            weight: &n.weight,
            bias: n.bias.as_ref(),
            eps: self.config.norm_eps,
        }
    }

    /// The final norm and the output head over `rows` rows of `x`: logits [rows][vocab].
    fn head(&self, x: &B::Buf, rows: usize, normed: &mut B::Buf) -> Result<B::Buf> {
        let (c, w, b) = (&self.config, &self.weights, &self.backend);
        let (h, v) = (c.hidden, c.vocab_size);
        let norm = self.norm_spec(&w.final_norm);
        let mut logits = b.scratch(rows * v)?;
        let (weight, bias) = match &w.lm_head {
            Some(lin) => (&lin.weight, lin.bias.as_ref()),
            None => (&w.embed, None),
        };
        b.norm_linear(&norm, x, rows, normed, weight, bias, (v, h), &mut logits)?;
        if let Some(cap) = c.block.final_softcap {
            b.map(&mut logits, rows * v, &|x| cap * (x / cap).tanh())?;
        }
        Ok(logits)
    }

    /// Row `row` of `width`-wide rows, in a buffer of its own.
    fn row(&self, x: &B::Buf, row: usize, width: usize) -> Result<B::Buf> {
        let mut out = self.backend.scratch(width)?;
        self.backend.copy_rows(x, row, 1, width, &mut out, 0)?;
        Ok(out)
    }
}

/// The MLP's activated rows: `mid` itself after a GELU, `swiglu_out` after SwiGLU.
fn mlp_output<'a, T>(act: Activation, mid: &'a T, swiglu_out: &'a T) -> &'a T {
    if act.gated() { swiglu_out } else { mid }
}
