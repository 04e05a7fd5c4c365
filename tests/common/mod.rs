//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod ops;
pub mod quant_ops;
pub mod reference;

use std::path::{Path, PathBuf};

use keyformer::{Backend, CpuBackend, GenerateParams, Generation, Model};

/// Prints SKIP where a GPU backend (or f16 on it) is absent from the machine: CI has no CUDA
/// device. Any other error, a kernel that fails to compile say, fails the test instead.
pub fn skip_if_absent(what: &str, error: &dyn std::fmt::Display) {
    let message = error.to_string();
    let absent = [
        "not available",
        "requested, 0 present",
        "NO_DEVICE",
        "no GPU adapter",
        "does not support SHADER_F16",
    ];
    assert!(
        absent.iter().any(|a| message.contains(a)),
        "{what}: {message}"
    );
    println!("SKIP {what}: {message}");
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The SmolLM2 GGUF, fetched by scripts/fetch.sh; None (and a printed SKIP) if absent.
pub fn smollm2_path(test: &str) -> Option<PathBuf> {
    model_path(test, "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma-3-270M's Q4_K_M GGUF (Q4_K, Q6_K, Q8_0 and others), fetched by scripts/fetch.sh; None
/// (and a printed SKIP) if absent.
pub fn gemma3_path(test: &str) -> Option<PathBuf> {
    model_path(test, "gemma-3-270m-q4_k_m.gguf")
}

/// models/`file`, or None and a printed SKIP when it is absent.
pub fn model_path(test: &str, file: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(file);
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIP {test}: {} not found (run scripts/fetch.sh)",
            path.display()
        );
        None
    }
}

pub fn load_cpu(path: &Path) -> Model<CpuBackend> {
    Model::load(path, CpuBackend, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Greedy decoding of "The capital of France is" for `tokens` tokens (past the end of
/// sequence, so every one is compared) on `gpu` and on the CPU from `path`: the token ids must
/// be identical. Returns the GPU's generation.
pub fn greedy_matches_cpu<B: Backend>(path: &Path, gpu: &Model<B>, tokens: usize) -> Generation {
    let cpu = load_cpu(path);
    let prompt = cpu
        .tokenizer()
        .unwrap()
        .encode("The capital of France is")
        .unwrap();
    let params = GenerateParams {
        max_new_tokens: tokens,
        stop_at_eos: false,
        ..Default::default()
    };
    let want = cpu.generate(&prompt, &params, &mut |_, _| true).unwrap();
    let got = gpu.generate(&prompt, &params, &mut |_, _| true).unwrap();
    assert_eq!(want.tokens.len(), tokens);
    assert_eq!(got.tokens, want.tokens);
    got
}

/// `len` pseudo-random token ids below `vocab` from `seed`.
pub fn random_prompt(vocab: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
pub fn max_rel_error(actual: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(actual.len(), reference.len(), "length mismatch");
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = actual
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A fresh copy of a tiny fixture model that a test may damage.
pub fn scratch_copy(name: &str, test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Rewrites a safetensors file with `edit` applied to its tensors (name -> (shape, f32 data)).
pub fn rewrite_tensors(file: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F16,
                "the gpt2 fixture is stored in f16"
            );
            let data = view
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            (name, view.shape().to_vec(), data)
        })
        .collect();
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, file).unwrap();
}

/// Whether `error` says a backend lacks an op an architecture needs: the test then prints
/// SKIP with the reason (the backends' `check_model` lists what they lack).
pub fn lacks_feature(what: &str, error: &dyn std::fmt::Display) -> bool {
    let message = error.to_string();
    let lacks = message.contains("is not implemented on this backend yet")
        || message.contains("through a sliding window of");
    if lacks {
        println!("SKIP {what}: {message}");
    }
    lacks
}

/// Every architecture's tiny fixture (tests/fixtures/tiny-*).
pub const ARCHS: [&str; 11] = [
    "gpt2", "gptj", "mpt", "llama", "llama3", "qwen2", "mistral", "phi3", "qwen3", "gemma2",
    "gemma3",
];

/// A tiny fixture whose context is raised to `context` tokens, for long generations. GPT-2's
/// learned position table is extended with random rows; LongRoPE's original context is raised
/// with it (its short factors hold only up to there).
pub fn long_context_fixture(arch: &str, context: usize, test: &str) -> PathBuf {
    let dir = scratch_copy(&format!("tiny-{arch}"), &format!("{test}-{arch}"));
    let key = match arch {
        "gpt2" | "gptj" => "n_positions",
        "mpt" => "max_seq_len",
        _ => "max_position_embeddings",
    };
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let old = json[key].as_u64().unwrap() as usize;
    json[key] = context.into();
    if json["rope_parameters"]["rope_type"] == "longrope" {
        json["rope_parameters"]["original_max_position_embeddings"] = context.into();
    }
    std::fs::write(&path, json.to_string()).unwrap();
    if arch == "gpt2" {
        rewrite_tensors(&dir.join("model.safetensors"), |t| {
            let wpe = t
                .iter_mut()
                .find(|(n, ..)| n == "transformer.wpe.weight")
                .unwrap();
            let dim = wpe.1[1];
            let mut state = 1u64;
            for i in 0..(context - old) * dim {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                wpe.2.push(
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.3
                        + (i % 3) as f32 * 0.01,
                );
            }
            wpe.1[0] = context;
        });
    }
    dir
}

/// For each of `archs`: its tiny fixture (context raised to 96, in scratch folders named by
/// `scratch`) loaded on the CPU and on a backend from `backend`, handed to `run`; an
/// architecture the backend refuses is skipped with a SKIP line naming `test`.
pub fn each_architecture<B: Backend>(
    archs: &[&str],
    test: &str,
    scratch: &str,
    backend: impl Fn() -> B,
    mut run: impl FnMut(&str, &Model<CpuBackend>, &Model<B>),
) {
    for &arch in archs {
        let dir = long_context_fixture(arch, 96, scratch);
        let cpu = load_cpu(&dir);
        let gpu = match Model::load(&dir, backend(), &mut |_, _| {}) {
            Err(e) if lacks_feature(&format!("{test} {arch}"), &e) => continue,
            loaded => loaded.unwrap(),
        };
        run(arch, &cpu, &gpu);
    }
}

/// Runs every policy on `gpu` and on the CPU over the same 40-token prompt and the CPU's greedy
/// tokens for `steps` steps; asserts logits within 1e-4 and identical kept sets, and returns
/// each policy's final statistics (CPU, GPU).
pub fn every_policy_matches_cpu<B: keyformer::Backend>(
    arch: &str,
    cpu: &Model<CpuBackend>,
    gpu: &Model<B>,
    steps: usize,
) -> Vec<(keyformer::CacheStats, keyformer::CacheStats)> {
    policies_match_cpu(arch, cpu, gpu, steps, None)
}

/// `every_policy_matches_cpu` with the prompt prefilled `chunk` tokens at a time (evicting
/// between chunks), or in one pass.
pub fn policies_match_cpu<B: keyformer::Backend>(
    arch: &str,
    cpu: &Model<CpuBackend>,
    gpu: &Model<B>,
    steps: usize,
    chunk: Option<usize>,
) -> Vec<(keyformer::CacheStats, keyformer::CacheStats)> {
    use keyformer::engine::sampling::argmax;
    use keyformer::{Budget, CacheConfig, Policy};
    let prompt: Vec<u32> = (0..40)
        .map(|i| (i * 13 % cpu.config.vocab_size) as u32)
        .collect();
    let mut stats = Vec::new();
    for policy in Policy::ALL {
        let config = CacheConfig {
            policy,
            budget: Budget::Tokens(16),
            seed: 3,
            prefill_chunk: chunk,
            ..Default::default()
        };
        let plan = config.plan(40).unwrap();
        let mut sc = cpu.new_session_for(plan, 40, steps).unwrap();
        let mut sg = gpu.new_session_for(plan, 40, steps).unwrap();
        let vocab = cpu.config.vocab_size;
        let lc = cpu.prefill(&mut sc, &prompt).unwrap();
        let mut lc = cpu.backend.download(&lc, vocab).unwrap();
        let lg = gpu.prefill(&mut sg, &prompt).unwrap();
        let mut lg = gpu.backend.download(&lg, vocab).unwrap();
        let mut worst = 0f32;
        for _ in 0..steps {
            worst = worst.max(max_rel_error(&lg, &lc));
            let next = argmax(&lc);
            lc = cpu.forward(&mut sc, &[next], false).unwrap();
            lg = gpu.forward(&mut sg, &[next], false).unwrap();
        }
        let (kc, kg) = (
            cpu.cache_stats(&sc, true).unwrap(),
            gpu.cache_stats(&sg, true).unwrap(),
        );
        let name = policy.name();
        let chunked = chunk.map_or(String::new(), |c| format!(" (prefill chunks of {c})"));
        println!(
            "{arch} {name:>9}{chunked}: max relative logit error {worst:.2e}, kept sets equal: {}",
            kc.positions == kg.positions
        );
        assert!(worst <= 1e-4, "{arch} {name}: {worst}");
        assert_eq!(kc.positions, kg.positions, "{arch} {name}");
        stats.push((kc, kg));
    }
    stats
}
