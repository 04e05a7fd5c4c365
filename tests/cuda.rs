//! The CUDA backend against the CPU oracle. Each test prints SKIP and returns where there is no
//! CUDA device (CI); they run on the GPU machine.

mod common;

use common::ops::{Rng, op_table, rel_error};
use common::{fixture, greedy_matches_cpu, load_cpu, smollm2_path};
use keyformer::backend::cuda::{CudaBackend, CudaDtype};
use keyformer::backend::{AttentionSpec, Backend, SeqStep};
use keyformer::engine::sampling::argmax;
use keyformer::kv::{CacheShape, Keep, StepScore};
use keyformer::model::config::{Activation, Positions, RopePairs};
use keyformer::{Budget, CacheConfig, CpuBackend, Model, Policy};

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
    common::each_architecture(
        &common::ARCHS,
        "cuda",
        "cuda_every_architecture",
        || CudaBackend::new(0, CudaDtype::F32).unwrap(),
        |arch, cpu, gpu| {
            common::every_policy_matches_cpu(arch, cpu, gpu, 32);
        },
    );
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

/// The features of Gemma-style layers through the backend's own ops, against the CPU: a
/// sliding-window layer (window 8, its own rotary) and a global one sharing a cache, both with
/// soft-capped scores and a scaled partial rotary, over a prompt, a second prompt chunk that
/// must mask the window over the tokens the first one left, and decode steps that evict in the
/// attention launch; then GeGLU.
#[test]
fn window_softcap_and_geglu_match_cpu_in_f32() {
    let Some(b) = cuda("window_softcap_and_geglu_match_cpu_in_f32", CudaDtype::F32) else {
        return;
    };
    let mut rng = Rng(23);
    let (heads, kv_heads, hd) = (4, 2, 64);
    let width = (heads + 2 * kv_heads) * hd;
    let inputs: Vec<Vec<f32>> = [20, 6, 1, 1, 1]
        .iter()
        .map(|&rows| rng.values(rows * width, 1.5))
        .collect();
    let got = window_layers(&b, &inputs).unwrap();
    let want = window_layers(&CpuBackend, &inputs).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let error = rel_error(g, w);
        println!("window layers: output {i} error {error:e}");
        assert!(error < 1e-4, "window layers: output {i} differs by {error}");
    }

    let (rows, ffn) = (3, 300);
    let x = rng.values(rows * 2 * ffn, 4.0);
    let got = gated(&b, &x, rows, ffn).unwrap();
    let want = gated(&CpuBackend, &x, rows, ffn).unwrap();
    let error = rel_error(&got, &want);
    println!("geglu error {error:e}");
    assert!(error < 1e-5, "GeGLU differs by {error}");
}

/// GeGLU of `rows` fused [gate | up] rows of 2 * width.
fn gated<B: Backend>(b: &B, x: &[f32], rows: usize, width: usize) -> keyformer::Result<Vec<f32>> {
    let mut x = b.upload(x)?;
    let mut out = b.zeros(rows * width)?;
    b.activation(Activation::GeGluTanh, &mut x, rows, width, &mut out)?;
    b.download(&out, rows * width)
}

/// Runs `inputs` (fused [q | k | v] rows: two prompt chunks, then one row per decode step)
/// through layer 0 (window 8, evicting to 7 tokens after every step, unscored) and layer 1
/// (global, scored with noise); returns each step's attention outputs of both layers, then
/// layer 1's scores in position order.
fn window_layers<B: Backend>(b: &B, inputs: &[Vec<f32>]) -> keyformer::Result<Vec<Vec<f32>>> {
    let rotary = |base: f32| Positions::Rotary {
        dims: 32,
        pairs: RopePairs::Halves,
        inv_freq: (0..16).map(|i| base.powf(-(i as f32) / 16.0)).collect(),
        scale: 0.8,
    };
    let (local, global) = (rotary(10_000.0), rotary(1_000_000.0));
    let spec = |positions, window| AttentionSpec {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        scale: 0.5,
        positions,
        softcap: Some(2.0),
        window,
    };
    let specs = [spec(&local, Some(8)), spec(&global, None)];
    let keep = Keep {
        budget: 7,
        sinks: 0,
        recent: 7,
    };
    let score = StepScore {
        noise: true,
        tau: 1.3,
        seed: 5,
    };
    let shape = CacheShape {
        layers: 2,
        kv_heads: 2,
        head_dim: 64,
        capacity: 16,
    };
    let mut cache = b.new_cache(&shape)?;
    let (width, out_width) = (8 * 64, 4 * 64);
    let mut outputs = Vec::new();
    let mut position = 0;
    for input in inputs {
        let rows = input.len() / width;
        let qkv = b.upload(input)?;
        for (layer, spec) in specs.iter().enumerate() {
            let mut out = b.zeros(rows * out_width)?;
            let local = layer == 0;
            let step_score = (!local).then_some(score);
            if rows == 1 {
                let seq = SeqStep {
                    cache: &mut cache,
                    position,
                    score: step_score,
                    keep: local.then_some(keep),
                };
                b.attention_batch(spec, &qkv, &mut [seq], layer, &mut out)?;
            } else {
                let sc = step_score.as_ref();
                b.attention(spec, &qkv, rows, position, &mut cache, layer, sc, &mut out)?;
                if local {
                    b.evict(&mut cache, layer, &keep)?;
                }
            }
            outputs.push(b.download(&out, rows * out_width)?);
        }
        position += rows;
    }
    let (positions, scores) = (b.cache_positions(&cache, 1)?, b.cache_scores(&cache, 1)?);
    for (pos, score) in positions.iter().zip(&scores) {
        let mut slots: Vec<(u32, f32)> = pos.iter().copied().zip(score.iter().copied()).collect();
        slots.sort_by_key(|s| s.0);
        outputs.push(slots.iter().map(|s| s.1).collect());
    }
    Ok(outputs)
}

#[test]
fn chunked_prefill_matches_cpu_in_f32() {
    let test = "chunked_prefill_matches_cpu_in_f32";
    let Some(b) = cuda(test, CudaDtype::F32) else {
        return;
    };
    drop(b);
    common::each_architecture(
        &common::ARCHS,
        "cuda",
        "cuda_chunked_prefill",
        || CudaBackend::new(0, CudaDtype::F32).unwrap(),
        |arch, cpu, gpu| {
            // A 40-token prompt in chunks of 7 against a budget of 16: evictions between chunks.
            common::policies_match_cpu(arch, cpu, gpu, 8, Some(7));
        },
    );
}
