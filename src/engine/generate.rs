//! The prefill/decode loop: prompt in, tokens out, streamed through a callback.

use std::time::Instant;

use crate::backend::Backend;
use crate::engine::sampling::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::model::Model;

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
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
            stop_strings: Vec::new(),
            stop_at_eos: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString,
    /// The per-token callback asked to stop.
    Callback,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
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

impl<B: Backend> Model<B> {
    /// Generates from `prompt` token ids. `on_token(id, new_text)` is called for every token
    /// with the text it completes (possibly empty mid-character); returning false stops.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        params.sampling.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        let needed = prompt.len() + params.max_new_tokens;
        if prompt.len() > self.config.max_context {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens, more than the model's context of {}",
                prompt.len(),
                self.config.max_context
            )));
        }
        let capacity = needed.min(self.config.max_context);
        let mut session = self.new_session(capacity)?;
        let mut sampler = Sampler::new(params.sampling.clone());
        let mut text = TextStream::default();
        let mut tokens = Vec::new();
        let t0 = Instant::now();
        let mut logits = self.forward(&mut session, prompt, false)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut stop = StopReason::MaxTokens;
        while tokens.len() < params.max_new_tokens {
            let next = sampler.sample(&logits);
            if params.stop_at_eos && self.config.eos.contains(&next) {
                stop = StopReason::Eos;
                break;
            }
            tokens.push(next);
            let piece = match &self.tokenizer {
                Some(tok) => text.push(tok, &tokens)?,
                None => String::new(),
            };
            if let Some(cut) = params
                .stop_strings
                .iter()
                .filter_map(|s| text.full.find(s.as_str()))
                .min()
            {
                text.full.truncate(cut);
                stop = StopReason::StopString;
                break;
            }
            if !on_token(next, &piece) {
                stop = StopReason::Callback;
                break;
            }
            if tokens.len() == params.max_new_tokens || session.position >= self.config.max_context
            {
                break;
            }
            logits = self.forward(&mut session, &[next], false)?;
        }
        if let (Some(tok), false) = (&self.tokenizer, stop == StopReason::StopString) {
            text.full = tok.decode(&tokens)?;
        }
        Ok(Generation {
            prompt_tokens: prompt.len(),
            tokens,
            text: text.full,
            stop,
            prefill_ms,
            decode_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Incremental detokenisation: emits only text whose UTF-8 characters are complete.
#[derive(Default)]
struct TextStream {
    full: String,
}

impl TextStream {
    fn push(
        &mut self,
        tok: &crate::model::tokenizer::TextTokenizer,
        tokens: &[u32],
    ) -> Result<String> {
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
