//! Chunked prefill (`CacheConfig::prefill_chunk`, `--prefill-chunk`): the prompt runs a chunk
//! at a time, each chunk attending to what the cache kept plus itself, evicting down to the
//! budget after each chunk. A chunk as long as the prompt is the one-pass prefill exactly; a
//! smaller one bounds the cache's high-water mark by budget + chunk, keeps tau at its prefill
//! value, and its decisions are those of feeding the chunks in by hand.

mod common;

use common::{load_cpu, long_context_fixture, random_prompt};
use keyformer::engine::sampling::argmax;
use keyformer::{Budget, CacheConfig, CpuBackend, GenerateParams, Model, Policy};

const PROMPT: usize = 120;

fn config(policy: Policy, chunk: Option<usize>) -> CacheConfig {
    CacheConfig {
        policy,
        budget: Budget::Tokens(24),
        seed: 5,
        prefill_chunk: chunk,
        ..Default::default()
    }
}

/// Every step's logits, the final kept positions, the peak slots and tau after the prefill.
type Run = (Vec<Vec<f32>>, Vec<Vec<Vec<u32>>>, usize, f32);

/// Prefill then `steps` greedy steps.
fn run(model: &Model<CpuBackend>, cache: CacheConfig, prompt: &[u32], steps: usize) -> Run {
    let plan = cache.plan(prompt.len()).unwrap();
    let mut s = model.new_session_for(plan, prompt.len(), steps).unwrap();
    let vocab = model.config.vocab_size;
    let first = model.prefill(&mut s, prompt).unwrap();
    let mut logits = vec![first];
    let after_prefill = model.cache_stats(&s, false).unwrap();
    for _ in 0..steps {
        let next = argmax(logits.last().unwrap());
        logits.push(model.forward(&mut s, &[next], false).unwrap());
    }
    assert!(logits.iter().all(|l| l.len() == vocab));
    let stats = model.cache_stats(&s, true).unwrap();
    (
        logits,
        stats.positions.unwrap(),
        after_prefill.peak_slots,
        after_prefill.tau,
    )
}

#[test]
fn a_chunk_as_long_as_the_prompt_is_the_one_pass_prefill() {
    for arch in ["llama", "gemma3", "gpt2"] {
        let model = load_cpu(&long_context_fixture(arch, 256, "prefill_chunk_one_pass"));
        let prompt = random_prompt(model.config.vocab_size, PROMPT, 7);
        for policy in Policy::ALL {
            let one_pass = run(&model, config(policy, None), &prompt, 4);
            for chunk in [PROMPT, PROMPT + 1, 10_000] {
                let chunked = run(&model, config(policy, Some(chunk)), &prompt, 4);
                assert_eq!(
                    one_pass.0,
                    chunked.0,
                    "{arch} {} chunk {chunk}",
                    policy.name()
                );
                assert_eq!(one_pass.1, chunked.1, "{arch} {}", policy.name());
            }
        }
        println!("{arch}: chunks of the prompt's length or more are bit-identical to one pass");
    }
}

#[test]
fn chunks_bound_the_cache_by_budget_plus_chunk() {
    let model = load_cpu(&long_context_fixture("llama", 256, "prefill_chunk_bound"));
    let prompt = random_prompt(model.config.vocab_size, PROMPT, 8);
    for policy in [
        Policy::H2o,
        Policy::Keyformer,
        Policy::Streaming,
        Policy::Window,
    ] {
        let (_, _, one_pass_peak, tau) = run(&model, config(policy, None), &prompt, 2);
        assert_eq!(one_pass_peak, PROMPT, "{}", policy.name());
        for chunk in [1, 5, 16, 48] {
            let (logits, kept, peak, chunked_tau) =
                run(&model, config(policy, Some(chunk)), &prompt, 2);
            println!(
                "{} chunk {chunk}: peak {peak} slots (one pass {one_pass_peak}), tau {chunked_tau}",
                policy.name()
            );
            assert!(
                peak <= 24 + chunk,
                "{} chunk {chunk}: {peak}",
                policy.name()
            );
            assert_eq!(chunked_tau, tau, "tau stays at its prefill value");
            assert!(kept.iter().flatten().all(|head| head.len() == 24));
            assert!(logits.iter().flatten().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn chunked_prefill_is_the_chunks_fed_in_by_hand() {
    // Position-only policies decide the same by hand (their eviction does not depend on the
    // prefill step); for the scoring ones, the hand-fed run must keep tau at step 0 as the
    // engine does, which only a fresh plan with tau_init = tau_end guarantees.
    let model = load_cpu(&long_context_fixture("qwen2", 256, "prefill_chunk_by_hand"));
    let prompt = random_prompt(model.config.vocab_size, PROMPT, 9);
    for policy in Policy::ALL {
        let mut cache = config(policy, Some(16));
        cache.tau_end = cache.tau_init;
        let (logits, kept, _, _) = run(&model, cache.clone(), &prompt, 0);
        let plan = CacheConfig {
            prefill_chunk: None,
            ..cache
        }
        .plan(PROMPT)
        .unwrap();
        let mut s = model.new_session_for(plan, PROMPT, 0).unwrap();
        let mut last = Vec::new();
        for part in prompt.chunks(16) {
            last = model.forward(&mut s, part, false).unwrap();
        }
        let by_hand = model.cache_stats(&s, true).unwrap().positions.unwrap();
        assert_eq!(logits[0], last, "{}", policy.name());
        assert_eq!(kept, by_hand, "{}", policy.name());
    }
}

#[test]
fn generate_reports_the_chunked_prefill() {
    let model = load_cpu(&long_context_fixture(
        "llama",
        256,
        "prefill_chunk_generate",
    ));
    let prompt = random_prompt(model.config.vocab_size, PROMPT, 10);
    let params = GenerateParams {
        max_new_tokens: 8,
        stop_at_eos: false,
        cache: config(Policy::Keyformer, Some(32)),
        ..Default::default()
    };
    let g = model.generate(&prompt, &params, &mut |_, _| true).unwrap();
    let line = g.stats.to_string();
    println!("{line}");
    assert!(line.contains("(chunks of 32)"), "{line}");
    assert_eq!(g.stats.prefill_chunk, Some(32));
    assert!(g.stats.peak_slots <= 24 + 32);
    let bad = GenerateParams {
        cache: config(Policy::Keyformer, Some(0)),
        ..params
    };
    let e = model.generate(&prompt, &bad, &mut |_, _| true).unwrap_err();
    assert!(e.to_string().contains("prefill chunk 0"), "{e}");
}
