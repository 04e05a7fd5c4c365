//! Batched and continuous generation. A decode step runs one new token of every running
//! sequence through the model together: the matrix products see one row per sequence, and
//! attention runs for each row over its own sequence's cache, which evicts by its own plan.
//! The scheduler queues requests, admits them while the planner says they fit (each prompt
//! prefilled on its own, between decode steps), and gives a finished sequence's place to the
//! next waiting request.

use std::collections::VecDeque;

use crate::backend::{Backend, SeqStep};
use crate::engine::generate::{GenerateParams, Generation, Generator};
use crate::engine::planner::{Footprint, Planner};
use crate::engine::{Session, Workspace};
use crate::error::{Error, Result};
use crate::model::Model;

impl<B: Backend> Model<B> {
    /// One decode step for a batch: `tokens[i]` goes through the model at `sessions[i]`'s next
    /// position, over its cache and with its plan's scoring and eviction, exactly as
    /// `forward_logits` runs a single token. Returns the logits [sessions][vocab] on the
    /// device. `ws` holds the activations between steps.
    fn forward_batch(
        &self,
        sessions: &mut [&mut Session<B>],
        tokens: &[u32],
        ws: &mut Option<Workspace<B>>,
    ) -> Result<B::Buf> {
        let (c, w, b) = (&self.config, &self.weights, &self.backend);
        let rows = tokens.len();
        if rows == 0 || rows != sessions.len() {
            return Err(Error::InvalidInput(format!(
                "a batch step needs one token per session ({} tokens, {} sessions)",
                rows,
                sessions.len()
            )));
        }
        for s in sessions.iter() {
            self.check_context(s, 1)?;
        }
        let mut work = match ws.take() {
            Some(work) if work.rows == rows => work,
            _ => Workspace::new(self, rows)?,
        };
        b.embed(&w.embed, tokens, c.hidden, &mut work.x)?;
        if let Some(scale) = c.block.embed_scale {
            b.map(&mut work.x, rows * c.hidden, &|v| v * scale)?;
        }
        if let Some(table) = &w.pos_embed {
            // Each row has its own position: gather them as an embedding of the positions.
            let positions: Vec<u32> = sessions.iter().map(|s| s.position as u32).collect();
            b.embed(table, &positions, c.hidden, &mut work.proj)?;
            b.add(&mut work.x, &work.proj, rows * c.hidden)?;
        }
        let cache_steps: Vec<_> = sessions.iter().map(|s| s.cache_step(1)).collect();
        // Each layer's window changes what its sessions keep.
        let layer_steps: Vec<Vec<_>> = (0..c.layers)
            .map(|layer| {
                let window = c.window(layer);
                sessions
                    .iter()
                    .zip(&cache_steps)
                    .map(|(s, &step)| s.layer_step(window, 1, step))
                    .collect()
            })
            .collect();
        let mut caches: Vec<(&mut B::Cache, usize)> = sessions
            .iter_mut()
            .map(|s| (&mut s.cache, s.position))
            .collect();
        self.layers(&mut work, rows, &mut |layer, qkv, attn| {
            let spec = self.attention_spec(layer);
            let mut steps: Vec<SeqStep<'_, B::Cache>> = caches
                .iter_mut()
                .zip(&layer_steps[layer])
                .map(|((cache, position), &(score, keep))| SeqStep {
                    position: *position,
                    cache: &mut **cache,
                    score,
                    keep,
                })
                .collect();
            b.attention_batch(&spec, qkv, &mut steps, layer, attn)
        })?;
        drop(caches);
        for (s, (_, keep)) in sessions.iter_mut().zip(&cache_steps) {
            s.advance(1, keep.as_ref(), &c.block.layer_window);
        }
        let logits = self.head(&work.x, rows, &mut work.normed)?;
        *ws = Some(work);
        Ok(logits)
    }
}

/// A request's number in its scheduler, from 0 in order of submission.
pub type RequestId = usize;

struct Waiting {
    id: RequestId,
    prompt: Vec<u32>,
    params: GenerateParams,
    footprint: Footprint,
}

struct Running<'m, B: Backend> {
    id: RequestId,
    generator: Generator<'m, B>,
    footprint: Footprint,
}

/// Continuous batching over one model: `submit` requests, then `step` (or `run`) delivers
/// each running sequence's next token to the callback, retires finished sequences and admits
/// waiting requests into their places. Requests are admitted in order of submission; one that
/// does not fit yet waits, and so do the ones behind it. After an error the sequences are in
/// an unknown state: drop the scheduler.
pub struct Scheduler<'m, B: Backend> {
    model: &'m Model<B>,
    planner: Planner,
    waiting: VecDeque<Waiting>,
    running: Vec<Running<'m, B>>,
    /// Bytes the running sequences hold.
    used: usize,
    submitted: usize,
    workspace: Option<Workspace<B>>,
}

impl<'m, B: Backend> Scheduler<'m, B> {
    pub fn new(model: &'m Model<B>, planner: Planner) -> Scheduler<'m, B> {
        Scheduler {
            model,
            planner,
            waiting: VecDeque::new(),
            running: Vec::new(),
            used: 0,
            submitted: 0,
            workspace: None,
        }
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Queues a request. It is checked now: invalid parameters, or a request that could not
    /// run even alone in the planner's memory, are an error.
    pub fn submit(&mut self, prompt: Vec<u32>, params: GenerateParams) -> Result<RequestId> {
        let footprint = self.planner.check(self.model, &prompt, &params)?;
        let id = self.submitted;
        self.submitted += 1;
        self.waiting.push_back(Waiting {
            id,
            prompt,
            params,
            footprint,
        });
        Ok(id)
    }

    /// Sequences decoding now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests not admitted yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// One round: admits the waiting requests that fit (prefilling each), runs one batched
    /// decode step for the running sequences, and hands each sequence's new token to
    /// `on_token(request, token, text)`, which returns false to stop that request. Returns the
    /// requests that finished in this round.
    pub fn step(
        &mut self,
        on_token: &mut dyn FnMut(RequestId, u32, &str) -> bool,
    ) -> Result<Vec<(RequestId, Generation)>> {
        self.admit()?;
        self.decode()?;
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            if let Some((token, piece)) = r.generator.hand_out()?
                && !on_token(r.id, token, &piece)
            {
                r.generator.stop_callback();
            }
            if r.generator.ended() {
                let r = self.running.remove(i);
                self.used -= r.footprint.steady();
                finished.push((r.id, r.generator.finish()?));
            } else {
                i += 1;
            }
        }
        Ok(finished)
    }

    /// Steps until every submitted request has finished; returns them in order of finishing.
    pub fn run(
        &mut self,
        on_token: &mut dyn FnMut(RequestId, u32, &str) -> bool,
    ) -> Result<Vec<(RequestId, Generation)>> {
        let mut finished = Vec::new();
        while !self.running.is_empty() || !self.waiting.is_empty() {
            finished.extend(self.step(on_token)?);
        }
        Ok(finished)
    }

    /// Prefills waiting requests while the planner admits them. With nothing running, the
    /// first waiting request is always admitted: `submit` checked that it fits alone.
    fn admit(&mut self) -> Result<()> {
        while let Some(next) = self.waiting.front() {
            if !self
                .planner
                .admits(self.running.len(), self.used, &next.footprint)
            {
                break;
            }
            let w = self.waiting.pop_front().expect("a front request");
            let generator = self.model.start(&w.prompt, &w.params)?;
            self.used += w.footprint.steady();
            self.running.push(Running {
                id: w.id,
                generator,
                footprint: w.footprint,
            });
        }
        Ok(())
    }

    /// One batched forward for every running sequence whose last token has not been through
    /// the model yet (not those just prefilled), and a sampled next token for each.
    fn decode(&mut self) -> Result<()> {
        let mut inputs = Vec::new();
        let mut rows: Vec<&mut Generator<'m, B>> = Vec::new();
        for r in &mut self.running {
            if let Some(token) = r.generator.input() {
                inputs.push(token);
                rows.push(&mut r.generator);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let model = self.model;
        let logits = {
            let mut sessions: Vec<&mut Session<B>> =
                rows.iter_mut().map(|g| &mut g.session).collect();
            model.forward_batch(&mut sessions, &inputs, &mut self.workspace)?
        };
        let vocab = model.config.vocab_size;
        for (i, g) in rows.into_iter().enumerate() {
            g.sample(&model.row(&logits, i, vocab)?)?;
        }
        Ok(())
    }
}
