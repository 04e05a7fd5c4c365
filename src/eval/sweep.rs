//! Policy x cache-size sweeps: summaries scored by ROUGE (against the reference summaries and
//! against the full cache's output) and streaming perplexity, for `keyformer eval`.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::engine::generate::GenerateParams;
use crate::error::Result;
use crate::eval::aclsum::Document;
use crate::eval::rouge::{rouge_l, rouge_n};
use crate::kv::policy::{Budget, CacheConfig, Policy};
use crate::model::Model;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Rouge {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
}

impl Rouge {
    fn of(candidate: &str, reference: &str) -> Rouge {
        Rouge {
            rouge1: rouge_n(candidate, reference, 1).f1,
            rouge2: rouge_n(candidate, reference, 2).f1,
            rouge_l: rouge_l(candidate, reference).f1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SummaryResult {
    pub doc: String,
    #[serde(serialize_with = "policy_name", deserialize_with = "policy_from_name")]
    pub policy: Policy,
    /// None for the full cache.
    pub kv_ratio: Option<f32>,
    pub prompt_tokens: usize,
    pub summary: String,
    pub vs_reference: Rouge,
    pub vs_full: Rouge,
    pub kv_bytes_held: usize,
    pub kv_bytes_full: usize,
}

fn policy_name<S: serde::Serializer>(p: &Policy, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

fn policy_from_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Policy, D::Error> {
    let name = String::deserialize(d)?;
    Policy::parse(&name).map_err(serde::de::Error::custom)
}

/// The runs of a sweep: the full cache once, then every other policy at every ratio.
pub fn runs(policies: &[Policy], ratios: &[f32]) -> Vec<(Policy, Option<f32>)> {
    let mut out = vec![(Policy::Full, None)];
    for &p in policies.iter().filter(|&&p| p != Policy::Full) {
        out.extend(ratios.iter().map(|&r| (p, Some(r))));
    }
    out
}

/// Summarises each prompt (already chat-formatted token ids) under every run; `progress`
/// gets (runs done, runs in all).
pub fn summarize<B: Backend>(
    model: &Model<B>,
    docs: &[(&Document, Vec<u32>)],
    policies: &[Policy],
    ratios: &[f32],
    new_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SummaryResult>> {
    let runs = runs(policies, ratios);
    let total = runs.len() * docs.len();
    let mut results = Vec::new();
    for (d, (doc, prompt)) in docs.iter().enumerate() {
        let mut full_text = String::new();
        for (r, &(policy, ratio)) in runs.iter().enumerate() {
            let params = GenerateParams {
                max_new_tokens: new_tokens,
                cache: CacheConfig {
                    policy,
                    budget: Budget::Ratio(ratio.unwrap_or(1.0)),
                    ..Default::default()
                },
                ..Default::default()
            };
            let g = model.generate(prompt, &params, &mut |_, _| true)?;
            if policy == Policy::Full {
                full_text = g.text.clone();
            }
            results.push(SummaryResult {
                doc: doc.id.clone(),
                policy,
                kv_ratio: ratio,
                prompt_tokens: prompt.len(),
                vs_reference: Rouge::of(&g.text, &doc.summary),
                vs_full: Rouge::of(&g.text, &full_text),
                summary: g.text,
                kv_bytes_held: g.stats.kv_bytes_held,
                kv_bytes_full: g.stats.kv_bytes_full,
            });
            progress(d * runs.len() + r + 1, total);
        }
    }
    Ok(results)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerplexityResult {
    #[serde(serialize_with = "policy_name", deserialize_with = "policy_from_name")]
    pub policy: Policy,
    pub kv_ratio: Option<f32>,
    pub tokens: usize,
    pub budget: Option<usize>,
    pub perplexity: f64,
    pub kv_bytes_held: usize,
    pub kv_bytes_full: usize,
}

/// Feeds `tokens` one at a time through a cache of `ratio` x the text length (as StreamingLLM
/// evaluates) and returns the perplexity of every token after the first.
pub fn streaming_perplexity<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    policy: Policy,
    ratio: Option<f32>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityResult> {
    let budget = ratio.map(|r| ((tokens.len() as f32 * r) as usize).max(1));
    let config = CacheConfig {
        policy,
        budget: Budget::Tokens(budget.unwrap_or(tokens.len())),
        ..Default::default()
    };
    let budget = budget.map(|k| k.max(config.min_budget()));
    let plan = CacheConfig {
        budget: Budget::Tokens(budget.unwrap_or(tokens.len())),
        ..config
    }
    .plan(1)?;
    let mut session = model.new_session_for(plan, 1, tokens.len())?;
    let vocab = model.config.vocab_size;
    let mut nll = 0f64;
    for (i, pair) in tokens.windows(2).enumerate() {
        let logits = model.forward(&mut session, &pair[..1], false)?;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - logits[pair[1] as usize % vocab] as f64;
        progress(i + 1, tokens.len() - 1);
    }
    let stats = model.cache_stats(&session, false)?;
    Ok(PerplexityResult {
        policy,
        kv_ratio: ratio,
        tokens: tokens.len(),
        budget: plan.budget,
        perplexity: (nll / (tokens.len() - 1).max(1) as f64).exp(),
        kv_bytes_held: stats.kv_bytes_held,
        kv_bytes_full: stats.kv_bytes_full,
    })
}
