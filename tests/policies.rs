//! The five cache policies on the CPU backend: compacted attention equals masked full attention,
//! and the eviction invariants hold at every step.

mod common;

use common::reference::Reference;
use common::{fixture, load_cpu, long_context_fixture, max_rel_error, random_prompt};
use keyformer::engine::sampling::argmax;
use keyformer::kv::policy::CachePlan;
use keyformer::{Budget, CacheConfig, CpuBackend, Model, Policy};

const ARCHS: [&str; 4] = ["gpt2", "gptj", "mpt", "llama"];
const PROMPT: usize = 40;
const DECODE: usize = 64;

/// A fixed pseudo-random prompt (seeded; the seed is printed by the tests that use it).
fn prompt(vocab: usize, seed: u64) -> Vec<u32> {
    random_prompt(vocab, PROMPT, seed)
}

fn plan(policy: Policy, budget: Budget, prompt_len: usize) -> CachePlan {
    CacheConfig {
        policy,
        budget,
        seed: 11,
        ..Default::default()
    }
    .plan(prompt_len)
    .unwrap()
}

type Kept = Vec<Vec<Vec<u32>>>;

/// Greedy generation under `plan`, returning each step's logits and each step's kept positions.
fn run(
    model: &Model<CpuBackend>,
    plan: CachePlan,
    prompt: &[u32],
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<Kept>) {
    let mut s = model.new_session_for(plan, prompt.len(), steps).unwrap();
    let mut logits = vec![model.forward(&mut s, prompt, false).unwrap()];
    let mut kept = vec![model.cache_stats(&s, true).unwrap().positions.unwrap()];
    for _ in 0..steps {
        let next = argmax(logits.last().unwrap());
        logits.push(model.forward(&mut s, &[next], false).unwrap());
        kept.push(model.cache_stats(&s, true).unwrap().positions.unwrap());
    }
    (logits, kept)
}

#[test]
fn compacted_cache_equals_masked_full_attention() {
    let seed = 5;
    println!("prompt seed {seed}");
    for arch in ARCHS {
        let model = load_cpu(&long_context_fixture(
            arch,
            PROMPT + DECODE + 8,
            "compacted_cache_equals_masked_full_attention",
        ));
        let prompt = prompt(model.config.vocab_size, seed);
        let full_logits = run(
            &model,
            plan(Policy::Full, Budget::Ratio(0.5), PROMPT),
            &prompt,
            DECODE,
        )
        .0;
        for policy in Policy::ALL {
            let (logits, kept) = run(
                &model,
                plan(policy, Budget::Ratio(0.5), PROMPT),
                &prompt,
                DECODE,
            );
            // The comparison only means something if eviction changes the logits.
            let moved = logits
                .iter()
                .zip(&full_logits)
                .map(|(a, b)| max_rel_error(a, b))
                .fold(0f32, f32::max);
            assert_eq!(
                moved > 1e-3,
                policy != Policy::Full,
                "{arch} {}: eviction moved logits by {moved}",
                policy.name()
            );
            let mut reference = Reference::new(&model.config, &model.weights);
            let mut ref_logits = Vec::new();
            for (i, &id) in prompt.iter().enumerate() {
                ref_logits = reference.step(id, i, &|_, _, _| true);
            }
            let mut worst = 0f32;
            for t in 0..=DECODE {
                let want: Vec<f32> = ref_logits.iter().map(|&v| v as f32).collect();
                let err = max_rel_error(&logits[t], &want);
                worst = worst.max(err);
                assert!(
                    err <= 1e-5,
                    "{arch} {}: step {t} error {err}",
                    policy.name()
                );
                if t == DECODE {
                    break;
                }
                // The next token sees what the cache kept after this step, plus itself.
                let visible = &kept[t];
                let next = argmax(&logits[t]);
                ref_logits = reference.step(next, PROMPT + t, &|l, g, j| {
                    visible[l][g].binary_search(&(j as u32)).is_ok()
                });
            }
            println!(
                "{arch} {:>9}: max relative error {worst:.2e} over {DECODE} decode steps",
                policy.name()
            );
        }
    }
}

#[test]
fn eviction_invariants_hold_every_step() {
    for arch in ARCHS {
        let model = load_cpu(&long_context_fixture(
            arch,
            PROMPT + DECODE + 8,
            "eviction_invariants_hold_every_step",
        ));
        let prompt = prompt(model.config.vocab_size, 9);
        for policy in [
            Policy::Window,
            Policy::Streaming,
            Policy::H2o,
            Policy::Keyformer,
        ] {
            let plan = plan(policy, Budget::Tokens(12), PROMPT);
            let k = plan.budget.unwrap();
            let (_, kept) = run(&model, plan, &prompt, DECODE);
            let mut heads_differ = false;
            for (t, layers) in kept.iter().enumerate() {
                let seen = (PROMPT + t) as u32;
                for heads in layers {
                    heads_differ |= heads.iter().any(|h| h != &heads[0]);
                    for h in heads {
                        assert_eq!(h.len(), k, "{arch} {}: budget", policy.name());
                        assert!(
                            h.windows(2).all(|w| w[0] < w[1]),
                            "positions strictly increase: {h:?}"
                        );
                        let sinks: Vec<u32> = (0..plan.sinks as u32).collect();
                        assert_eq!(&h[..plan.sinks], &sinks[..], "sinks kept");
                        let recent: Vec<u32> = (seen - plan.recent as u32..seen).collect();
                        assert_eq!(&h[k - plan.recent..], &recent[..], "recent window kept");
                    }
                }
            }
            // Scored policies choose per head; position-only policies keep the same tokens.
            let scored = matches!(policy, Policy::H2o | Policy::Keyformer);
            assert_eq!(
                heads_differ,
                scored,
                "{arch} {}: heads differ",
                policy.name()
            );
        }
    }
}

#[test]
fn h2o_is_keyformer_without_noise_at_tau_one() {
    let model = load_cpu(&long_context_fixture(
        "llama",
        PROMPT + DECODE + 8,
        "h2o_is_keyformer_without_noise_at_tau_one",
    ));
    let prompt = prompt(model.config.vocab_size, 3);
    let h2o = plan(Policy::H2o, Budget::Ratio(0.5), PROMPT);
    let mut quiet_keyformer = plan(Policy::Keyformer, Budget::Ratio(0.5), PROMPT);
    let scoring = quiet_keyformer.scoring.as_mut().unwrap();
    (scoring.noise, scoring.tau_init, scoring.tau_end) = (false, 1.0, 1.0);
    let a = run(&model, h2o, &prompt, DECODE);
    let b = run(&model, quiet_keyformer, &prompt, DECODE);
    assert_eq!(a.1, b.1, "kept sets");
    assert_eq!(a.0, b.0, "logits");
    // And the noise matters: real keyformer keeps other tokens somewhere.
    let noisy = run(
        &model,
        plan(Policy::Keyformer, Budget::Ratio(0.5), PROMPT),
        &prompt,
        DECODE,
    );
    assert_ne!(a.1, noisy.1);
}

#[test]
fn full_policy_reproduces_the_golden_logits_exactly() {
    for arch in ARCHS {
        let model = load_cpu(&fixture(&format!("tiny-{arch}")));
        let prompt = prompt(model.config.vocab_size, 1)[..20].to_vec();
        let full = CacheConfig::default().plan(prompt.len()).unwrap();
        assert_eq!(full.policy, Policy::Full);
        let mut a = model.new_session_for(full, prompt.len(), 8).unwrap();
        let mut b = model.new_session(prompt.len() + 8).unwrap();
        assert_eq!(
            model.forward(&mut a, &prompt, true).unwrap(),
            model.forward(&mut b, &prompt, true).unwrap()
        );
        for id in [3, 1, 4, 1, 5, 9, 2, 6] {
            assert_eq!(
                model.forward(&mut a, &[id], false).unwrap(),
                model.forward(&mut b, &[id], false).unwrap()
            );
        }
        assert_eq!(model.cache_stats(&a, false).unwrap().evictions, 0);
    }
}

#[test]
fn half_budget_holds_at_most_52_percent_after_prefill() {
    let model = load_cpu(&long_context_fixture(
        "llama",
        160,
        "half_budget_holds_at_most_52_percent_after_prefill",
    ));
    let long_prompt: Vec<u32> = (0..120).map(|i| (i * 7 % 101) as u32).collect();
    for policy in [
        Policy::Window,
        Policy::Streaming,
        Policy::H2o,
        Policy::Keyformer,
    ] {
        let mut s = model
            .new_session_for(plan(policy, Budget::Ratio(0.5), 120), 120, 32)
            .unwrap();
        model.forward(&mut s, &long_prompt, false).unwrap();
        let stats = model.cache_stats(&s, false).unwrap();
        let share = stats.kv_bytes_held as f64 / stats.kv_bytes_full as f64;
        println!(
            "{}: {} of {} bytes ({:.1}%)",
            policy.name(),
            stats.kv_bytes_held,
            stats.kv_bytes_full,
            100.0 * share
        );
        assert!(share <= 0.52, "{}: {share}", policy.name());
        assert_eq!(
            stats.evictions as usize,
            60 * model.config.layers * model.config.kv_heads
        );
    }
}
