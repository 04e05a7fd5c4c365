//! Cache policies as data. Full, window, StreamingLLM, H2O and Keyformer are parameter sets of
//! one score-and-evict mechanism (KEYFORMER.md's table); no backend ever sees a policy name.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Full,
    Window,
    Streaming,
    H2o,
    Keyformer,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Full,
        Policy::Window,
        Policy::Streaming,
        Policy::H2o,
        Policy::Keyformer,
    ];

    pub fn parse(name: &str) -> Result<Policy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown policy '{name}' (full, window, streaming, h2o, keyformer)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Full => "full",
            Policy::Window => "window",
            Policy::Streaming => "streaming",
            Policy::H2o => "h2o",
            Policy::Keyformer => "keyformer",
        }
    }

    fn default_sinks(self) -> usize {
        if self == Policy::Streaming { 4 } else { 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fraction of the prompt length (the paper's "KV cache % of prompt").
    Ratio(f32),
    /// An absolute number of tokens per layer and head.
    Tokens(usize),
}

impl Budget {
    /// The budget from the two settings the command line, the C ABI and Python take: a
    /// token count, where 0 means none was given and the ratio decides.
    pub fn from_tokens_or_ratio(tokens: usize, ratio: f32) -> Budget {
        match tokens {
            0 => Budget::Ratio(ratio),
            k => Budget::Tokens(k),
        }
    }
}

/// What the user asks for; `plan` turns it into numbers for one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub policy: Policy,
    pub budget: Budget,
    /// Share of the budget kept as the recent window (H2O and Keyformer).
    pub recent_ratio: f32,
    /// Attention sinks kept at the start; None takes the policy's default (4 for streaming).
    pub sinks: Option<usize>,
    pub tau_init: f32,
    pub tau_end: f32,
    pub seed: u64,
    /// Prompt tokens run at a time, evicting down to the budget after each chunk, so a layer
    /// holds at most budget + chunk tokens during the prefill; None runs the prompt in one
    /// pass and scores it as a whole, as the paper does.
    pub prefill_chunk: Option<usize>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            policy: Policy::Full,
            budget: Budget::Ratio(0.5),
            recent_ratio: 0.3,
            sinks: None,
            tau_init: 1.0,
            tau_end: 2.0,
            seed: 0,
            prefill_chunk: None,
        }
    }
}

/// How scores are accumulated: the softmax of (logits + noise) / tau.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scoring {
    pub noise: bool,
    pub tau_init: f32,
    pub tau_end: f32,
    pub seed: u32,
}

impl Scoring {
    /// tau at step t of T (t = 0 at prefill, 1..=T at the decode steps).
    pub fn tau(&self, step: usize, steps: usize) -> f32 {
        if steps == 0 {
            return self.tau_init;
        }
        self.tau_init + step as f32 * (self.tau_end - self.tau_init) / steps as f32
    }
}

/// The resolved cache of one generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachePlan {
    pub policy: Policy,
    /// Tokens kept per layer and head (k); None keeps everything.
    pub budget: Option<usize>,
    pub sinks: usize,
    /// The recent window w.
    pub recent: usize,
    /// None for policies that evict by position alone.
    pub scoring: Option<Scoring>,
    /// CacheConfig::prefill_chunk.
    pub prefill_chunk: Option<usize>,
}

impl CachePlan {
    /// Key-token slots m = k - w - s.
    pub fn key_slots(&self) -> usize {
        self.budget.map_or(0, |k| k - self.recent - self.sinks)
    }

    /// Cache slots per layer and kv head for a prompt of `prompt_len` tokens followed by up to
    /// `max_new` tokens, within a context of `context`: an evicting plan holds its budget plus
    /// the one slot a decode step appends before evicting.
    pub fn capacity(&self, prompt_len: usize, max_new: usize, context: usize) -> usize {
        let needed = (prompt_len + max_new).min(context);
        self.budget.map_or(needed, |k| needed.min(k + 1))
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if let Budget::Ratio(r) = self.budget
            && !(r > 0.0 && r <= 1.0)
        {
            return bad(format!("kv ratio {r} must be in (0, 1]"));
        }
        if !(0.0..1.0).contains(&self.recent_ratio) {
            return bad(format!(
                "recent ratio {} must be in [0, 1)",
                self.recent_ratio
            ));
        }
        if self.prefill_chunk == Some(0) {
            return bad("prefill chunk 0 must be at least 1 token".to_string());
        }
        if !(self.tau_init > 0.0
            && self.tau_end > 0.0
            && self.tau_init.is_finite()
            && self.tau_end.is_finite())
        {
            return bad(format!(
                "tau must be positive (got {} -> {})",
                self.tau_init, self.tau_end
            ));
        }
        Ok(())
    }

    /// Sinks and recent window for a budget of k tokens.
    fn split(&self, k: usize) -> (usize, usize) {
        let sinks = self.sinks.unwrap_or(self.policy.default_sinks());
        let recent = match self.policy {
            Policy::Window | Policy::Streaming => k.saturating_sub(sinks),
            _ => (k as f32 * self.recent_ratio).floor() as usize,
        };
        (sinks, recent)
    }

    /// The smallest budget that holds the sinks, the recent window and one more token.
    pub fn min_budget(&self) -> usize {
        (1..).find(|&k| self.fits(k)).unwrap_or(usize::MAX)
    }

    fn fits(&self, k: usize) -> bool {
        let (sinks, recent) = self.split(k);
        match self.policy {
            // The one more token is the window's own: w = k - s must be at least 1.
            Policy::Window | Policy::Streaming => k > sinks,
            _ => k > sinks + recent,
        }
    }

    /// Resolves the budget for a prompt of `prompt_len` tokens. A ratio that lands below the
    /// minimum is raised to it (short prompts); an explicit budget below it is an error.
    pub fn plan(&self, prompt_len: usize) -> Result<CachePlan> {
        self.validate()?;
        if self.policy == Policy::Full {
            return Ok(CachePlan {
                policy: Policy::Full,
                budget: None,
                sinks: 0,
                recent: 0,
                scoring: None,
                prefill_chunk: self.prefill_chunk,
            });
        }
        let min = self.min_budget();
        let k = match self.budget {
            Budget::Ratio(r) => ((prompt_len as f64 * r as f64).floor() as usize).max(min),
            Budget::Tokens(k) if k < min => {
                return Err(Error::InvalidInput(format!(
                    "kv budget {k} is too small for the {} policy: it must hold the sinks, the recent window and one more token; the minimum is {min}",
                    self.policy.name()
                )));
            }
            Budget::Tokens(k) => k,
        };
        let (sinks, recent) = self.split(k);
        let seed = crate::kv::noise::fold_seed(self.seed);
        let scoring = match self.policy {
            Policy::H2o => Some(Scoring {
                noise: false,
                tau_init: 1.0,
                tau_end: 1.0,
                seed,
            }),
            Policy::Keyformer => Some(Scoring {
                noise: true,
                tau_init: self.tau_init,
                tau_end: self.tau_end,
                seed,
            }),
            _ => None,
        };
        Ok(CachePlan {
            policy: self.policy,
            budget: Some(k),
            sinks,
            recent,
            scoring,
            prefill_chunk: self.prefill_chunk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: Policy, budget: Budget) -> CacheConfig {
        CacheConfig {
            policy,
            budget,
            ..Default::default()
        }
    }

    #[test]
    fn keyformer_plan_follows_the_table() {
        let p = config(Policy::Keyformer, Budget::Ratio(0.5))
            .plan(1000)
            .unwrap();
        assert_eq!(
            (p.budget, p.sinks, p.recent, p.key_slots()),
            (Some(500), 0, 150, 350)
        );
        assert!(p.scoring.unwrap().noise);
    }

    #[test]
    fn streaming_keeps_four_sinks_and_a_window() {
        let p = config(Policy::Streaming, Budget::Tokens(64))
            .plan(1000)
            .unwrap();
        assert_eq!((p.sinks, p.recent, p.key_slots()), (4, 60, 0));
        assert!(p.scoring.is_none());
    }

    #[test]
    fn h2o_is_keyformer_without_noise_at_tau_one() {
        let h2o = config(Policy::H2o, Budget::Tokens(64)).plan(100).unwrap();
        let s = h2o.scoring.unwrap();
        assert_eq!((s.noise, s.tau(0, 10), s.tau(10, 10)), (false, 1.0, 1.0));
    }

    #[test]
    fn tau_rises_linearly() {
        let p = config(Policy::Keyformer, Budget::Tokens(64))
            .plan(100)
            .unwrap();
        let s = p.scoring.unwrap();
        assert_eq!((s.tau(0, 4), s.tau(2, 4), s.tau(4, 4)), (1.0, 1.5, 2.0));
    }

    #[test]
    fn too_small_budget_names_the_minimum() {
        let c = CacheConfig {
            sinks: Some(4),
            ..config(Policy::Keyformer, Budget::Tokens(5))
        };
        // k = 5: w = floor(1.5) = 1, 4 + 1 + 1 = 6 > 5. k = 6: w = 1, fits.
        let err = c.plan(100).unwrap_err().to_string();
        assert!(err.contains("minimum is 6"), "{err}");
        // A ratio is raised to the minimum instead.
        let c = CacheConfig {
            budget: Budget::Ratio(0.01),
            ..c
        };
        assert_eq!(c.plan(100).unwrap().budget, Some(6));
    }
}
