//! The CUDA backend against the CPU oracle. Each test prints SKIP and returns where there is no
//! CUDA device (CI); they run on the GPU machine.

mod common;

use common::ops::op_table;
use common::{fixture, load_cpu, long_context_fixture, max_rel_error, smollm2_path};
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::engine::sampling::argmax;
use keyformer::{Budget, CacheConfig, GenerateParams, Model, Policy};

fn cuda(test: &str, dtype: CudaDtype) -> Option<CudaBackend> {
    match CudaBackend::new(0, dtype) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("SKIP {test}: {e}");
            None
        }
    }
}

#[test]
fn op_table_f32() {
    let Some(b) = cuda("op_table_f32", CudaDtype::F32) else {
        return;
    };
    op_table(&b, 1e-5, 17);
}

#[test]
fn op_table_f16() {
    let Some(b) = cuda("op_table_f16", CudaDtype::F16) else {
        return;
    };
    op_table(&b, 2e-3, 18);
}

#[test]
fn every_architecture_and_policy_matches_cpu_in_f32() {
    let Some(b) = cuda(
        "every_architecture_and_policy_matches_cpu_in_f32",
        CudaDtype::F32,
    ) else {
        return;
    };
    drop(b);
    for arch in ["gpt2", "gptj", "mpt", "llama"] {
        let dir = long_context_fixture(arch, 96, "cuda_every_architecture");
        let cpu = load_cpu(&dir);
        let gpu = Model::load(
            &dir,
            CudaBackend::new(0, CudaDtype::F32).unwrap(),
            &mut |_, _| {},
        )
        .unwrap();
        let prompt: Vec<u32> = (0..40)
            .map(|i| (i * 13 % cpu.config.vocab_size) as u32)
            .collect();
        for policy in Policy::ALL {
            let plan = CacheConfig {
                policy,
                budget: Budget::Tokens(16),
                seed: 3,
                ..Default::default()
            }
            .plan(40)
            .unwrap();
            let (mut sc, mut sg) = (
                cpu.new_session_for(plan, 40, 32).unwrap(),
                gpu.new_session_for(plan, 40, 32).unwrap(),
            );
            let mut worst = 0f32;
            let (mut lc, mut lg) = (
                cpu.forward(&mut sc, &prompt, false).unwrap(),
                gpu.forward(&mut sg, &prompt, false).unwrap(),
            );
            for _ in 0..32 {
                worst = worst.max(max_rel_error(&lg, &lc));
                let next = argmax(&lc);
                lc = cpu.forward(&mut sc, &[next], false).unwrap();
                lg = gpu.forward(&mut sg, &[next], false).unwrap();
            }
            let (kc, kg) = (
                cpu.cache_stats(&sc, true).unwrap().positions,
                gpu.cache_stats(&sg, true).unwrap().positions,
            );
            println!(
                "{arch} {:>9}: max relative logit error {worst:.2e}, kept sets equal: {}",
                policy.name(),
                kc == kg
            );
            assert!(worst <= 1e-4, "{arch} {}: {worst}", policy.name());
            assert_eq!(kc, kg, "{arch} {}", policy.name());
        }
    }
}

#[test]
fn smollm2_greedy_matches_cpu_in_f32() {
    let test = "smollm2_greedy_matches_cpu_in_f32";
    let Some(path) = smollm2_path(test) else {
        return;
    };
    let Some(b) = cuda(test, CudaDtype::F32) else {
        return;
    };
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let cpu = load_cpu(&path);
    let prompt = cpu
        .tokenizer()
        .unwrap()
        .encode("The capital of France is")
        .unwrap();
    let params = GenerateParams {
        max_new_tokens: 64,
        stop_at_eos: false,
        ..Default::default()
    };
    let want = cpu.generate(&prompt, &params, &mut |_, _| true).unwrap();
    let got = gpu.generate(&prompt, &params, &mut |_, _| true).unwrap();
    println!("cuda: {:?}", got.text);
    assert_eq!(got.tokens, want.tokens);
}

#[test]
fn smollm2_keyformer_kept_sets_match_cpu() {
    let test = "smollm2_keyformer_kept_sets_match_cpu";
    let Some(path) = smollm2_path(test) else {
        return;
    };
    let Some(b) = cuda(test, CudaDtype::F32) else {
        return;
    };
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let cpu = load_cpu(&path);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap())
            .unwrap();
    let passage = reference["perplexity"]["text"].as_str().unwrap();
    let prompt = cpu
        .tokenizer()
        .unwrap()
        .encode(&[passage; 3].join("\n\n"))
        .unwrap();
    let plan = CacheConfig {
        policy: Policy::Keyformer,
        budget: Budget::Ratio(0.5),
        seed: 7,
        ..Default::default()
    }
    .plan(prompt.len())
    .unwrap();
    let (mut sc, mut sg) = (
        cpu.new_session_for(plan, prompt.len(), 24).unwrap(),
        gpu.new_session_for(plan, prompt.len(), 24).unwrap(),
    );
    let mut logits = cpu.forward(&mut sc, &prompt, false).unwrap();
    gpu.forward(&mut sg, &prompt, false).unwrap();
    let (mut same, mut total) = (0, 0);
    for step in 0..=24 {
        let (kc, kg) = (
            cpu.cache_stats(&sc, true).unwrap().positions.unwrap(),
            gpu.cache_stats(&sg, true).unwrap().positions.unwrap(),
        );
        for (a, b) in kc.iter().flatten().zip(kg.iter().flatten()) {
            same += (a == b) as usize;
            total += 1;
        }
        if step == 24 {
            break;
        }
        // Both caches see the same tokens: the CPU's greedy choices.
        let next = argmax(&logits);
        logits = cpu.forward(&mut sc, &[next], false).unwrap();
        gpu.forward(&mut sg, &[next], false).unwrap();
    }
    println!(
        "{} prompt tokens, budget {:?}: {same} of {total} (layer, head, step) kept sets identical",
        prompt.len(),
        plan.budget
    );
    assert!(same as f64 >= 0.99 * total as f64);
}
