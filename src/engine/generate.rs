//! The prefill/decode loop: prompt in, tokens out one at a time, with the cache's statistics
//! readable between tokens.

use std::time::Instant;

use crate::backend::Backend;
use crate::engine::Session;
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::kv::policy::{CacheConfig, CachePlan};
use crate::kv::stats::CacheStats;
use crate::model::Model;
use crate::model::tokenizer::TextTokenizer;

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub cache: CacheConfig,
    /// Generation stops when the text contains one of these; the text ends before it.
    pub stop_strings: Vec<String>,
    /// Stop at the model's end-of-sequence tokens.
    pub stop_at_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 128,
            sampling: SamplingParams::default(),
            cache: CacheConfig::default(),
            stop_strings: Vec::new(),
            stop_at_eos: true,
        }
    }
}

impl GenerateParams {
    /// The one check of a request's parameters, the same for the library, the batch API, the
    /// command line, the C ABI and Python: it needs no model, so callers run it before loading
    /// one. The model-dependent checks (prompt length, budget minimum) come with the request.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidInput(
                "max new tokens is 0: it must be at least 1".into(),
            ));
        }
        if let Some(i) = self.stop_strings.iter().position(String::is_empty) {
            return Err(Error::InvalidInput(format!(
                "stop string {i} is empty: it would stop before the first token"
            )));
        }
        self.sampling.validate()?;
        self.cache.validate()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString,
    /// The per-token callback asked to stop.
    Callback,
    /// The model's context length was reached.
    Context,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// The cache at the end of generation.
    pub stats: CacheStats,
}

impl Generation {
    /// Decode speed over the tokens produced after the first one (which prefill yields).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        if steps == 0 || self.decode_ms <= 0.0 {
            0.0
        } else {
            steps as f64 / (self.decode_ms / 1000.0)
        }
    }
}

/// A generation in progress: call `next_token` until it returns None.
pub struct Generator<'m, B: Backend> {
    model: &'m Model<B>,
    pub session: Session<B>,
    params: GenerateParams,
    sampler: Sampler,
    /// The next token, sampled but not yet handed out (the first one, from the prefill).
    sampled: Option<u32>,
    tokens: Vec<u32>,
    text: TextStream,
    stop: Option<StopReason>,
    prompt_tokens: usize,
    prefill_ms: f64,
    decode_start: Instant,
}

impl<B: Backend> Model<B> {
    /// Checks a request's parameters and prompt, and plans its cache.
    pub fn plan_request(&self, prompt: &[u32], params: &GenerateParams) -> Result<CachePlan> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        if prompt.len() > self.config.max_context {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens, more than the model's context of {}",
                prompt.len(),
                self.config.max_context
            )));
        }
        params.cache.plan(prompt.len())
    }

    /// Checks the parameters, plans the cache and runs the prefill.
    pub fn start(&self, prompt: &[u32], params: &GenerateParams) -> Result<Generator<'_, B>> {
        let plan = self.plan_request(prompt, params)?;
        let mut session = self.new_session_for(plan, prompt.len(), params.max_new_tokens)?;
        let t0 = Instant::now();
        let logits = self.prefill(&mut session, prompt)?;
        let mut sampler = Sampler::new(params.sampling.clone());
        // Sampling waits for the device, so the prefill time is the time to the first token.
        let first = self
            .backend
            .sample(&logits, self.config.vocab_size, &mut sampler)?;
        Ok(Generator {
            model: self,
            session,
            params: params.clone(),
            sampler,
            sampled: Some(first),
            tokens: Vec::new(),
            text: TextStream::default(),
            stop: None,
            prompt_tokens: prompt.len(),
            prefill_ms: t0.elapsed().as_secs_f64() * 1e3,
            decode_start: Instant::now(),
        })
    }

    /// Generates from `prompt` token ids. `on_token(id, new_text)` is called for every token
    /// with the text it completes (possibly empty mid-character); returning false stops.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        let mut g = self.start(prompt, params)?;
        while let Some((id, piece)) = g.next_token()? {
            if !on_token(id, &piece) {
                g.stop_callback();
            }
        }
        g.finish()
    }
}

impl<B: Backend> Generator<'_, B> {
    /// The next token and the text it completes, or None once generation has stopped.
    pub fn next_token(&mut self) -> Result<Option<(u32, String)>> {
        if let Some(input) = self.input() {
            let logits = self
                .model
                .forward_logits(&mut self.session, &[input], false)?;
            self.sample(&logits)?;
        }
        self.hand_out()
    }

    /// Whether generation has stopped; reaching max tokens stops it.
    pub(crate) fn ended(&mut self) -> bool {
        if self.stop.is_none() && self.tokens.len() >= self.params.max_new_tokens {
            self.stop = Some(StopReason::MaxTokens);
        }
        self.stop.is_some()
    }

    /// The token to run through the model before the next one can be sampled: None when a
    /// sampled token is waiting or generation has stopped (a full context stops it).
    pub(crate) fn input(&mut self) -> Option<u32> {
        if self.sampled.is_some() || self.ended() {
            return None;
        }
        if self.session.position >= self.model.config.max_context {
            self.stop = Some(StopReason::Context);
            return None;
        }
        // The previous token has not been through the model yet.
        self.tokens.last().copied()
    }

    /// Samples the next token from one row of logits on the device.
    pub(crate) fn sample(&mut self, logits: &B::Buf) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        let next = self
            .model
            .backend
            .sample(logits, vocab, &mut self.sampler)?;
        self.sampled = Some(next);
        Ok(())
    }

    /// Hands out the sampled token and the text it completes, or None once generation has
    /// stopped (at an end-of-sequence token or a stop string too).
    pub(crate) fn hand_out(&mut self) -> Result<Option<(u32, String)>> {
        if self.ended() {
            return Ok(None);
        }
        let Some(next) = self.sampled.take() else {
            return Ok(None);
        };
        if self.params.stop_at_eos && self.model.config.eos.contains(&next) {
            self.stop = Some(StopReason::Eos);
            return Ok(None);
        }
        self.tokens.push(next);
        let piece = match &self.model.tokenizer {
            Some(tok) => self.text.push(tok, &self.tokens)?,
            None => String::new(),
        };
        let stops = &self.params.stop_strings;
        if let Some(cut) = stops
            .iter()
            .filter_map(|s| self.text.full.find(s.as_str()))
            .min()
        {
            self.text.full.truncate(cut);
            self.stop = Some(StopReason::StopString);
            return Ok(None);
        }
        Ok(Some((next, piece)))
    }

    pub fn stop_callback(&mut self) {
        self.stop = Some(StopReason::Callback);
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn stats(&self, with_positions: bool) -> Result<CacheStats> {
        self.model.cache_stats(&self.session, with_positions)
    }

    pub fn finish(mut self) -> Result<Generation> {
        let stop = self.stop.unwrap_or(StopReason::MaxTokens);
        if let (Some(tok), false) = (&self.model.tokenizer, stop == StopReason::StopString) {
            self.text.full = tok.decode(&self.tokens)?;
        }
        Ok(Generation {
            prompt_tokens: self.prompt_tokens,
            stats: self.stats(false)?,
            tokens: self.tokens,
            text: self.text.full,
            stop,
            prefill_ms: self.prefill_ms,
            decode_ms: self.decode_start.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Incremental detokenisation: emits only text whose UTF-8 characters are complete.
#[derive(Default)]
struct TextStream {
    full: String,
}

impl TextStream {
    fn push(&mut self, tok: &TextTokenizer, tokens: &[u32]) -> Result<String> {
        let decoded = tok.decode(tokens)?;
        // A byte-level token can end inside a character: wait for the rest of it.
        if decoded.ends_with('\u{FFFD}') || !decoded.starts_with(&self.full) {
            return Ok(String::new());
        }
        let piece = decoded[self.full.len()..].to_string();
        self.full = decoded;
        Ok(piece)
    }
}
