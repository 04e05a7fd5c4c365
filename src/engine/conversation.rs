//! Multi-turn chat over one KV cache. Each turn runs only what the conversation adds (the end
//! of the previous reply, the new user message, the assistant header) through the session it
//! keeps, so earlier turns are never recomputed and the cache policy applies across the whole
//! chat: a Keyformer cache keeps its budget of key tokens from every turn so far.

use std::time::Instant;

use crate::backend::Backend;
use crate::engine::Session;
use crate::engine::generate::{GenerateParams, Generation, StopReason};
use crate::engine::sampling::Sampler;
use crate::error::{Error, Result};
use crate::kv::policy::CacheConfig;
use crate::kv::stats::CacheStats;
use crate::model::Model;

/// A chat whose cache lives between turns. Start a turn with [`Conversation::say`].
pub struct Conversation<B: Backend> {
    /// (role, content) of every message so far except the latest reply (see `reply`).
    messages: Vec<(String, String)>,
    /// The rendered conversation text that the session has seen.
    seen: String,
    session: Option<Session<B>>,
    /// The cache settings of the first turn, which every later turn must repeat.
    cache: Option<CacheConfig>,
    /// Tokens of the latest reply. They join `messages` when the next turn starts, so the
    /// history matches the cache however the turn ended.
    reply: Vec<u32>,
    /// The latest sampled token: part of the reply, not yet run through the model.
    pending: Option<u32>,
    /// Why the session cannot go on, once a forward pass failed halfway through the layers.
    broken: Option<String>,
}

impl<B: Backend> Conversation<B> {
    /// A conversation with an optional system message (None keeps the template's default).
    pub fn new(system: Option<&str>) -> Conversation<B> {
        Conversation {
            messages: system
                .map(|s| ("system".to_string(), s.to_string()))
                .into_iter()
                .collect(),
            seen: String::new(),
            session: None,
            cache: None,
            reply: Vec::new(),
            pending: None,
            broken: None,
        }
    }

    /// The session holding the cache, once the first turn has started.
    pub fn session(&self) -> Option<&Session<B>> {
        self.session.as_ref()
    }

    /// Why this conversation cannot continue, if an earlier turn failed inside the model.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Adds a user message and runs what it adds to the conversation through the model; the
    /// returned turn then yields the reply token by token. Sampling settings may change from
    /// turn to turn; the cache settings are those of the first turn. The budget of a
    /// `Budget::Ratio` is a fraction of the whole conversation so far, and tau rises over each
    /// turn's decode steps.
    pub fn say<'a>(
        &'a mut self,
        model: &'a Model<B>,
        message: &str,
        params: &GenerateParams,
    ) -> Result<Turn<'a, B>> {
        if let Some(why) = &self.broken {
            return Err(Error::InvalidInput(format!(
                "this conversation cannot continue: {why}"
            )));
        }
        params.validate()?;
        if self.cache.as_ref().is_some_and(|c| c != &params.cache) {
            return Err(Error::InvalidInput(
                "a conversation keeps the cache settings of its first turn".into(),
            ));
        }
        let tok = model.tokenizer()?;
        let mut messages = self.messages.clone();
        let mut seen = self.seen.clone();
        if !self.reply.is_empty() {
            let reply = tok.decode(&self.reply)?;
            seen.push_str(&reply);
            messages.push(("assistant".into(), reply));
        }
        messages.push(("user".into(), message.to_string()));
        let text = tok.render_chat(&messages)?;

        // Templates normally only extend what they rendered before; where one rewrites
        // earlier text, the session keeps what it saw and gets the rest from the first change.
        let start = common_prefix_len(&seen, &text);
        let added = &text[start..];
        let mut tokens: Vec<u32> = self.pending.into_iter().collect();
        if self.session.is_none() {
            tokens.extend(tok.encode(added)?);
        } else {
            let encoding = tok
                .inner
                .encode(added, false)
                .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
            tokens.extend_from_slice(encoding.get_ids());
        }
        if tokens.is_empty() {
            return Err(Error::InvalidInput(
                "the message adds nothing to the conversation".into(),
            ));
        }
        let position = self.session.as_ref().map_or(0, |s| s.position);
        if position + tokens.len() > model.config.max_context {
            return Err(Error::InvalidInput(format!(
                "the conversation would reach {} tokens, more than the model's context of {}",
                position + tokens.len(),
                model.config.max_context
            )));
        }

        let plan = params.cache.plan(position + tokens.len())?;
        let session = match &mut self.session {
            Some(s) => {
                s.plan = plan;
                s
            }
            slot => {
                slot.insert(model.new_session_for(plan, tokens.len(), params.max_new_tokens)?)
            }
        };
        session.step = 0;
        session.steps = params.max_new_tokens;
        let t0 = Instant::now();
        let logits = match model.prefill(session, &tokens) {
            Ok(logits) => logits,
            Err(e) => {
                self.broken = Some(format!("a forward pass failed: {e}"));
                return Err(e);
            }
        };
        self.messages = messages;
        self.seen = text;
        self.cache = Some(params.cache.clone());
        self.reply.clear();
        self.pending = None;
        Ok(Turn {
            model,
            conv: self,
            params: params.clone(),
            sampler: Sampler::new(params.sampling.clone()),
            logits,
            streamed: String::new(),
            stop: None,
            prompt_tokens: tokens.len(),
            prefill_ms: t0.elapsed().as_secs_f64() * 1e3,
            decode_start: Instant::now(),
        })
    }
}

/// One reply in progress: call `next_token` until it returns None, then `finish`.
pub struct Turn<'a, B: Backend> {
    model: &'a Model<B>,
    conv: &'a mut Conversation<B>,
    params: GenerateParams,
    sampler: Sampler,
    logits: B::Buf,
    /// The reply's text so far, complete characters only.
    streamed: String,
    stop: Option<StopReason>,
    prompt_tokens: usize,
    prefill_ms: f64,
    decode_start: Instant,
}

impl<B: Backend> Turn<'_, B> {
    /// The next token and the text it completes, or None once the reply has ended. Stops as
    /// `Generator::next_token` does.
    pub fn next_token(&mut self) -> Result<Option<(u32, String)>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.conv.reply.len() >= self.params.max_new_tokens {
            self.stop = Some(StopReason::MaxTokens);
            return Ok(None);
        }
        let (model, conv) = (self.model, &mut *self.conv);
        let session = conv.session.as_mut().expect("a turn has a session");
        if let Some(last) = conv.pending {
            if session.position >= model.config.max_context {
                self.stop = Some(StopReason::Context);
                return Ok(None);
            }
            self.logits = match model.forward_logits(session, &[last], false) {
                Ok(logits) => logits,
                Err(e) => {
                    conv.broken = Some(format!("a forward pass failed: {e}"));
                    return Err(e);
                }
            };
            conv.pending = None;
        }
        let next =
            model
                .backend
                .sample(&self.logits, model.config.vocab_size, &mut self.sampler)?;
        if self.params.stop_at_eos && model.config.eos.contains(&next) {
            self.stop = Some(StopReason::Eos);
            return Ok(None);
        }
        conv.reply.push(next);
        conv.pending = Some(next);
        let decoded = model.tokenizer()?.decode(&conv.reply)?;
        // A byte-level token can end inside a character: wait for the rest of it.
        let piece = if decoded.ends_with('\u{FFFD}') || !decoded.starts_with(&self.streamed) {
            String::new()
        } else {
            let piece = decoded[self.streamed.len()..].to_string();
            self.streamed = decoded;
            piece
        };
        if let Some(cut) = self
            .params
            .stop_strings
            .iter()
            .filter_map(|s| self.streamed.find(s.as_str()))
            .min()
        {
            self.streamed.truncate(cut);
            self.stop = Some(StopReason::StopString);
            return Ok(None);
        }
        Ok(Some((next, piece)))
    }

    pub fn stop_callback(&mut self) {
        self.stop = Some(StopReason::Callback);
    }

    pub fn stats(&self, with_positions: bool) -> Result<CacheStats> {
        let session = self.conv.session.as_ref().expect("a turn has a session");
        self.model.cache_stats(session, with_positions)
    }

    /// The reply. Its text ends before a stop string; the conversation goes on with
    /// everything the model produced, stop string included, since the cache holds it.
    pub fn finish(self) -> Result<Generation> {
        let stop = self.stop.unwrap_or(StopReason::MaxTokens);
        let text = if stop == StopReason::StopString {
            self.streamed.clone()
        } else {
            self.model.tokenizer()?.decode(&self.conv.reply)?
        };
        Ok(Generation {
            prompt_tokens: self.prompt_tokens,
            stats: self.stats(false)?,
            tokens: self.conv.reply.clone(),
            text,
            stop,
            prefill_ms: self.prefill_ms,
            decode_ms: self.decode_start.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::common_prefix_len;

    #[test]
    fn common_prefix_stops_at_the_first_different_character() {
        assert_eq!(common_prefix_len("abc", "abd"), 2);
        assert_eq!(common_prefix_len("ab", "abcd"), 2);
        assert_eq!(common_prefix_len("abcd", "ab"), 2);
        assert_eq!(common_prefix_len("é1", "é2"), 2);
        assert_eq!(common_prefix_len("", "x"), 0);
    }
}
