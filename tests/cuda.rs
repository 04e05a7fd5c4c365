//! The CUDA backend against the CPU oracle. Each test prints SKIP and returns where there is no
//! CUDA device (CI); they run on the GPU machine.

mod common;

use common::ops::op_table;
use common::{fixture, greedy_matches_cpu, load_cpu, long_context_fixture, smollm2_path};
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::engine::sampling::argmax;
use keyformer::{Budget, CacheConfig, Model, Policy};

fn cuda(test: &str, dtype: CudaDtype) -> Option<CudaBackend> {
    match CudaBackend::new(0, dtype) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skip_if_absent(test, &e);
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
    for arch in common::ARCHS {
        let dir = long_context_fixture(arch, 96, "cuda_every_architecture");
        let cpu = load_cpu(&dir);
        let gpu = match Model::load(
            &dir,
            CudaBackend::new(0, CudaDtype::F32).unwrap(),
            &mut |_, _| {},
        ) {
            Err(e) if common::lacks_feature(&format!("cuda {arch}"), &e) => continue,
            loaded => loaded.unwrap(),
        };
        common::every_policy_matches_cpu(arch, &cpu, &gpu, 32);
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
    let got = greedy_matches_cpu(&path, &gpu, 64);
    println!("cuda: {:?}", got.text);
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
    // Where a (layer, head) first keeps a different set than the CPU, the tokens only one side
    // kept must have been a near-tie: their scores within NEAR_TIE of each other. After that
    // the two caches hold different tokens, so that head is not compared again.
    let heads = cpu.config.layers * cpu.config.kv_heads;
    let mut diverged = vec![false; heads];
    let (mut same, mut ties) = (0, 0);
    for step in 0..=24 {
        for layer in 0..cpu.config.layers {
            let (c, g) = (
                scored_slots(&cpu.backend, &sc.cache, layer),
                scored_slots(&gpu.backend, &sg.cache, layer),
            );
            for (head, (ch, gh)) in c.iter().zip(&g).enumerate() {
                let id = layer * cpu.config.kv_heads + head;
                if diverged[id] {
                    continue;
                }
                let kept = |side: &[(u32, f32)], p: u32| side.iter().any(|x| x.0 == p);
                let cpu_only: Vec<&(u32, f32)> = ch.iter().filter(|x| !kept(gh, x.0)).collect();
                let gpu_only: Vec<&(u32, f32)> = gh.iter().filter(|x| !kept(ch, x.0)).collect();
                let only: Vec<f32> = cpu_only.iter().chain(&gpu_only).map(|x| x.1).collect();
                if only.is_empty() {
                    same += 1;
                    continue;
                }
                let (lo, hi) = only
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                assert!(
                    hi - lo <= common::ops::NEAR_TIE * hi.abs(),
                    "step {step} layer {layer} head {head}: kept sets differ beyond a near-tie: cpu only {cpu_only:?}, gpu only {gpu_only:?}"
                );
                diverged[id] = true;
                ties += 1;
            }
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
        "{} prompt tokens, budget {:?}: {same} (layer, head, step) kept sets identical; {ties} of {heads} heads met a near-tie and were not compared after it",
        prompt.len(),
        plan.budget
    );
    assert!(ties * 4 <= heads, "most heads agree all the way");
}

/// (position, score) of each kept token per kv head of a layer.
fn scored_slots<B: keyformer::Backend>(
    b: &B,
    cache: &B::Cache,
    layer: usize,
) -> Vec<Vec<(u32, f32)>> {
    let (p, s) = (
        b.cache_positions(cache, layer).unwrap(),
        b.cache_scores(cache, layer).unwrap(),
    );
    p.into_iter()
        .zip(s)
        .map(|(p, s)| p.into_iter().zip(s).collect())
        .collect()
}
