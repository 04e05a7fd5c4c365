//! Log-likelihood of a continuation under a cache policy, for evaluation harnesses: the context
//! is the prompt, and the continuation's tokens go through the cache one decode step at a time,
//! exactly as if the model had generated them, so the policy evicts as it would in generation.

use crate::backend::Backend;
use crate::engine::sampling::argmax;
use crate::error::{Error, Result};
use crate::kv::policy::CacheConfig;
use crate::kv::stats::CacheStats;
use crate::model::Model;

#[derive(Clone, Debug)]
pub struct LogLikelihood {
    /// Sum of the continuation tokens' natural-log probabilities.
    pub logprob: f64,
    /// Whether every continuation token was the most likely one (greedy decoding makes it).
    pub greedy: bool,
    /// Each continuation token's log-probability.
    pub token_logprobs: Vec<f64>,
    /// The cache after the last continuation token's prediction.
    pub stats: CacheStats,
}

impl<B: Backend> Model<B> {
    /// The log-probability of `continuation` following `context` with the cache `cache`
    /// describes; a ratio budget is a fraction of the context.
    pub fn loglik(
        &self,
        context: &[u32],
        continuation: &[u32],
        cache: &CacheConfig,
    ) -> Result<LogLikelihood> {
        let vocab = self.config.vocab_size;
        if context.is_empty() || continuation.is_empty() {
            return Err(Error::InvalidInput(
                "log-likelihood needs at least one context and one continuation token".into(),
            ));
        }
        if let Some(&bad) = context
            .iter()
            .chain(continuation)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        // The last continuation token is scored, never run.
        let fed = context.len() + continuation.len() - 1;
        if fed > self.config.max_context {
            return Err(Error::InvalidInput(format!(
                "context and continuation need {fed} positions, more than the model's context of {}",
                self.config.max_context
            )));
        }
        let plan = cache.plan(context.len())?;
        let mut session = self.new_session_for(plan, context.len(), continuation.len())?;
        let mut logits = self.forward(&mut session, context, false)?;
        // Token i of `head` is run to predict token i + 1 of the continuation.
        let head = &continuation[..continuation.len() - 1];
        let mut scored = vec![score(&logits, continuation[0])];
        if plan.budget.is_none() && !head.is_empty() {
            // Nothing is evicted, so one pass over the continuation computes what
            // token-by-token decoding would, much faster.
            logits = self.forward(&mut session, head, true)?;
            scored.extend(
                logits
                    .chunks_exact(vocab)
                    .zip(&continuation[1..])
                    .map(|(row, &t)| score(row, t)),
            );
        } else {
            for (&token, &next) in head.iter().zip(&continuation[1..]) {
                logits = self.forward(&mut session, &[token], false)?;
                scored.push(score(&logits, next));
            }
        }
        Ok(LogLikelihood {
            logprob: scored.iter().map(|(lp, _)| lp).sum(),
            greedy: scored.iter().all(|&(_, greedy)| greedy),
            token_logprobs: scored.into_iter().map(|(lp, _)| lp).collect(),
            stats: self.cache_stats(&session, false)?,
        })
    }
}

/// log softmax(logits)[token] in f64, and whether the token is the argmax.
fn score(logits: &[f32], token: u32) -> (f64, bool) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let logprob = logits[token as usize] as f64 - max - sum.ln();
    (logprob, argmax(logits) == token)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn score_is_log_softmax() {
        let (lp, greedy) = score(&[1.0, 2.0, 3.0], 2);
        let expected = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lp - expected).abs() < 1e-12);
        assert!(greedy);
        assert!(!score(&[1.0, 2.0, 3.0], 0).1);
    }
}
