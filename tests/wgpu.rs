//! The wgpu backend against the CPU oracle: the cross-backend op table in f32 and f16 storage,
//! with and without subgroup reductions; the tiny fixture models of every architecture under
//! every policy; SmolLM2 end to end (greedy tokens, Keyformer's kept sets); and Gemma-3-270M
//! past its sliding window. Each test prints SKIP and returns where there is no adapter (or no
//! f16 support).

mod common;

use std::time::Instant;

use common::ops::{NEAR_TIE, op_table};
use common::quant_ops::check_quant_products;
use common::{fixture, gemma3_path, greedy_matches_cpu, load_cpu, smollm2_path};
use keyformer::backend::wgpu::{WgpuBackend, WgpuDtype, WgpuOptions};
use keyformer::engine::sampling::argmax;
use keyformer::{Backend, Budget, CacheConfig, Error, Model, Policy};

/// The backend, or None (with a SKIP line) where the machine cannot provide it; any other
/// failure to open is a test failure.
fn wgpu(test: &str, dtype: WgpuDtype, subgroups: bool) -> Option<WgpuBackend> {
    let options = WgpuOptions {
        dtype,
        subgroups,
        ..Default::default()
    };
    match WgpuBackend::new(options) {
        Ok(b) => Some(b),
        Err(Error::Backend { reason, .. })
            if reason.starts_with("no GPU adapter found") || reason.contains("SHADER_F16") =>
        {
            println!("SKIP {test}: {reason}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn run_op_table(test: &str, dtype: WgpuDtype, subgroups: bool, tolerance: f32, seed: u64) {
    let Some(b) = wgpu(test, dtype, subgroups) else {
        return;
    };
    let t0 = Instant::now();
    let rows = op_table(&b, tolerance, seed);
    let worst = rows
        .iter()
        .max_by(|a, b| a.error.total_cmp(&b.error))
        .unwrap();
    println!(
        "{test}: {} ops within {tolerance:e}, largest error {:.2e} ({}), {:.1} s",
        rows.len(),
        worst.error,
        worst.op,
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn op_table_f32() {
    run_op_table("op_table_f32", WgpuDtype::F32, true, 1e-5, 21);
}

#[test]
fn op_table_f16() {
    run_op_table("op_table_f16", WgpuDtype::F16, true, 2e-3, 22);
}

#[test]
fn op_table_f32_without_subgroups() {
    run_op_table(
        "op_table_f32_without_subgroups",
        WgpuDtype::F32,
        false,
        1e-5,
        23,
    );
}

#[test]
fn op_table_f16_without_subgroups() {
    run_op_table(
        "op_table_f16_without_subgroups",
        WgpuDtype::F16,
        false,
        2e-3,
        24,
    );
}

/// Every quantized format's products and embedding rows against the CPU on the same blocks.
/// The shaders decode blocks to the same f32 values as the CPU's dequantizers and accumulate in
/// f32, so one tolerance fits every format: f32 rounding, or in f16 storage that of the bias
/// and norm weights, which are stored in f16 (the op table's f16 tolerance).
fn run_quant_products(test: &str, dtype: WgpuDtype, subgroups: bool, tolerance: f32, seed: u64) {
    let Some(b) = wgpu(test, dtype, subgroups) else {
        return;
    };
    let t0 = Instant::now();
    let rows = check_quant_products(&b, &|_| tolerance, seed);
    let worst = rows
        .iter()
        .max_by(|a, b| a.error.total_cmp(&b.error))
        .unwrap();
    println!(
        "{test}: {} cases, largest error {:.2e} ({}), {:.1} s",
        rows.len(),
        worst.error,
        worst.case,
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn quant_products_f32() {
    run_quant_products("quant_products_f32", WgpuDtype::F32, true, 1e-5, 41);
}

#[test]
fn quant_products_f16_without_subgroups() {
    run_quant_products(
        "quant_products_f16_without_subgroups",
        WgpuDtype::F16,
        false,
        2e-3,
        42,
    );
}

/// A product or embedding whose shape is not the block-format weight's is an error naming
/// both, not a wrong result.
#[test]
fn quant_shape_mismatch_is_an_error() {
    let test = "quant_shape_mismatch_is_an_error";
    let Some(b) = wgpu(test, WgpuDtype::F32, true) else {
        return;
    };
    let weight = || {
        let m = common::quant_ops::random_matrix(7, &[(common::quant_ops::format("Q4_K"), 8)], 512);
        b.upload_blocks(m).unwrap()
    };
    let x = b.upload(&vec![0.5; 2 * 512]).unwrap();
    let mut out = b.zeros(512).unwrap();
    for (n_out, n_in) in [(16, 256), (4, 512), (8, 256)] {
        let e = b
            .linear(&x, 1, &weight(), None, n_out, n_in, &mut out)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("block-format weight of 8 rows x 512"),
            "{e}"
        );
    }
    let e = b.embed(&weight(), &[1], 256, &mut out).unwrap_err();
    assert!(e.to_string().contains("read as rows of 256"), "{e}");
}

#[test]
fn every_architecture_and_policy_matches_cpu() {
    let test = "every_architecture_and_policy_matches_cpu";
    if wgpu(test, WgpuDtype::F32, true).is_none() {
        return;
    }
    let t0 = Instant::now();
    common::each_architecture(
        &common::ARCHS,
        test,
        "wgpu_every_architecture",
        || wgpu(test, WgpuDtype::F32, true).unwrap(),
        |arch, cpu, gpu| {
            for (kc, kg) in common::every_policy_matches_cpu(arch, cpu, gpu, 24) {
                assert_eq!(
                    kc.kv_bytes_held,
                    kg.kv_bytes_held,
                    "{arch} {}",
                    kc.policy.name()
                );
            }
        },
    );
    println!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn smollm2_greedy_matches_cpu() {
    let test = "smollm2_greedy_matches_cpu";
    let Some(path) = smollm2_path(test) else {
        return;
    };
    let Some(b) = wgpu(test, WgpuDtype::F32, true) else {
        return;
    };
    let t0 = Instant::now();
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let got = greedy_matches_cpu(&path, &gpu, 32);
    let (held, kept) = assert_kept_in_blocks(&path, &gpu);
    println!(
        "{}: {} tokens {:?}, {:.1} tokens/s, {:.1} s in all; weights {held:.1} MB ({kept:.1} MB on the CPU)",
        gpu.backend.name(),
        got.tokens.len(),
        got.text,
        got.decode_tokens_per_s(),
        t0.elapsed().as_secs_f64()
    );
}

/// That `gpu`'s weights take at most 1% more device memory than the CPU backend's, which keeps
/// every block format of the file at `path`: the blocks stayed blocks. Returns the MB of each.
fn assert_kept_in_blocks(path: &std::path::Path, gpu: &Model<WgpuBackend>) -> (f64, f64) {
    let cpu = load_cpu(path);
    let kept = cpu.weights.bytes(|w| cpu.backend.weight_bytes(w)).0;
    let held = gpu.weights.bytes(|w| gpu.backend.weight_bytes(w)).0;
    assert!(
        held as f64 <= kept as f64 * 1.01,
        "{}: {held} bytes of weights on wgpu, {kept} on the CPU",
        path.display()
    );
    (held as f64 / 1e6, kept as f64 / 1e6)
}

/// Where two kept sets differ, the tokens in only one of them must have near-equal scores
/// (each backend's score of the tokens it kept): a swap at the eviction threshold.
fn assert_near_tie(what: &str, cpu: (&[u32], &[f32]), gpu: (&[u32], &[f32])) {
    let only = |a: (&[u32], &[f32]), b: &[u32]| -> Vec<f32> {
        a.0.iter()
            .zip(a.1)
            .filter(|(p, _)| !b.contains(p))
            .map(|(_, s)| *s)
            .collect()
    };
    let differing = [only(cpu, gpu.0), only(gpu, cpu.0)].concat();
    let max = differing.iter().fold(f32::MIN, |m, &s| m.max(s));
    let min = differing.iter().fold(f32::MAX, |m, &s| m.min(s));
    assert!(
        max - min <= NEAR_TIE * max.abs(),
        "{what}: kept sets differ beyond a near-tie: {:?} vs {:?} (scores {differing:?})",
        cpu.0,
        gpu.0
    );
}

#[test]
fn smollm2_keyformer_kept_sets_match_cpu() {
    let test = "smollm2_keyformer_kept_sets_match_cpu";
    let Some(path) = smollm2_path(test) else {
        return;
    };
    let Some(b) = wgpu(test, WgpuDtype::F32, true) else {
        return;
    };
    let t0 = Instant::now();
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let cpu = load_cpu(&path);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/reference.json")).unwrap())
            .unwrap();
    let passage = reference["perplexity"]["text"].as_str().unwrap();
    let mut prompt = cpu.tokenizer().unwrap().encode(passage).unwrap();
    prompt.truncate(200);
    let steps = 4;
    let plan = CacheConfig {
        policy: Policy::Keyformer,
        budget: Budget::Tokens(64),
        seed: 5,
        ..Default::default()
    }
    .plan(prompt.len())
    .unwrap();
    let (mut sc, mut sg) = (
        cpu.new_session_for(plan, prompt.len(), steps).unwrap(),
        gpu.new_session_for(plan, prompt.len(), steps).unwrap(),
    );
    let mut logits = cpu.forward(&mut sc, &prompt, false).unwrap();
    gpu.forward(&mut sg, &prompt, false).unwrap();
    let layers = cpu.config.layers;
    let mut identical = 0;
    'steps: for step in 0..=steps {
        for layer in 0..layers {
            let (pc, pg) = (
                cpu.backend.cache_positions(&sc.cache, layer).unwrap(),
                gpu.backend.cache_positions(&sg.cache, layer).unwrap(),
            );
            if pc == pg {
                identical += 1;
                continue;
            }
            let (scores_c, scores_g) = (
                cpu.backend.cache_scores(&sc.cache, layer).unwrap(),
                gpu.backend.cache_scores(&sg.cache, layer).unwrap(),
            );
            for head in 0..pc.len() {
                assert_near_tie(
                    &format!("step {step} layer {layer} head {head}"),
                    (&pc[head], &scores_c[head]),
                    (&pg[head], &scores_g[head]),
                );
            }
            // Past a near-tie the caches differ, and so does everything after.
            println!("near-tie at step {step} layer {layer}: comparison stops there");
            break 'steps;
        }
        if step == steps {
            break;
        }
        // Both caches see the same tokens: the CPU's greedy choices.
        let next = argmax(&logits);
        logits = cpu.forward(&mut sc, &[next], false).unwrap();
        gpu.forward(&mut sg, &[next], false).unwrap();
    }
    println!(
        "{}: {} prompt tokens, budget 64, {steps} decode steps: kept positions identical in {identical} (step, layer) pairs of {}, {:.1} s",
        gpu.backend.name(),
        prompt.len(),
        (steps + 1) * layers,
        t0.elapsed().as_secs_f64()
    );
}

/// Gemma-3-270M from its own Q4_K_M file, its weights kept in their blocks (Q4_K, Q5_0, Q6_K,
/// Q8_0; the Q8_0 embedding in two buffers on adapters whose bindings hold 128 MiB, such as
/// lavapipe's): the CPU's greedy tokens in f32. A few tokens keep it short on lavapipe.
#[test]
fn gemma3_270m_greedy_matches_cpu() {
    let test = "gemma3_270m_greedy_matches_cpu";
    let Some(path) = gemma3_path(test) else {
        return;
    };
    let Some(b) = wgpu(test, WgpuDtype::F32, true) else {
        return;
    };
    let t0 = Instant::now();
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let got = greedy_matches_cpu(&path, &gpu, 8);
    let (held, kept) = assert_kept_in_blocks(&path, &gpu);
    println!(
        "{}: {} tokens {:?}, {:.1} tokens/s, {:.1} s in all; weights {held:.1} MB ({kept:.1} MB on the CPU)",
        gpu.backend.name(),
        got.tokens.len(),
        got.text,
        got.decode_tokens_per_s(),
        t0.elapsed().as_secs_f64()
    );
}

/// Gemma-3-270M over 640 tokens of aclsum text, past its local layers' window of 512 (masked
/// prompt attention, GeGLU, the local layers' own rotary): the prompt's next-token logits and
/// four decode steps' against the CPU in f32. Software adapters print SKIP: the prompt takes
/// lavapipe minutes.
#[test]
fn gemma3_270m_past_its_window_matches_cpu() {
    let test = "gemma3_270m_past_its_window_matches_cpu";
    let Some(path) = gemma3_path(test) else {
        return;
    };
    let Some(b) = wgpu(test, WgpuDtype::F32, true) else {
        return;
    };
    if b.is_software() {
        println!("SKIP {test}: a software adapter takes minutes over 640 tokens");
        return;
    }
    let t0 = Instant::now();
    let gpu = Model::load(&path, b, &mut |_, _| {}).unwrap();
    let cpu = load_cpu(&path);
    let passage: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gemma3/perplexity_ids.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<u32> = passage
        .as_array()
        .unwrap()
        .iter()
        .take(640)
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let steps = 4;
    let (mut sc, mut sg) = (
        cpu.new_session(prompt.len() + steps).unwrap(),
        gpu.new_session(prompt.len() + steps).unwrap(),
    );
    let mut want = cpu.forward(&mut sc, &prompt, false).unwrap();
    let mut got = gpu.forward(&mut sg, &prompt, false).unwrap();
    for step in 0..=steps {
        let error = common::max_rel_error(&got, &want);
        println!("step {step}: max relative logit error {error:.2e}");
        assert!(error <= 1e-3, "step {step}: logits differ by {error:e}");
        if step == steps {
            break;
        }
        // Both see the CPU's greedy token.
        let next = argmax(&want);
        want = cpu.forward(&mut sc, &[next], false).unwrap();
        got = gpu.forward(&mut sg, &[next], false).unwrap();
    }
    println!(
        "{}: {} prompt tokens and {steps} steps, {:.1} s",
        gpu.backend.name(),
        prompt.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn chunked_prefill_matches_cpu() {
    let test = "chunked_prefill_matches_cpu";
    if wgpu(test, WgpuDtype::F32, true).is_none() {
        return;
    }
    // Two architectures on lavapipe (a sliding-window one among them); the GPU machine's CUDA
    // test runs all of them.
    common::each_architecture(
        &["llama", "gemma3"],
        test,
        "wgpu_chunked_prefill",
        || wgpu(test, WgpuDtype::F32, true).unwrap(),
        |arch, cpu, gpu| {
            common::policies_match_cpu(arch, cpu, gpu, 6, Some(7));
        },
    );
}
