//! Weight plans (src/model/mix.rs): llama.cpp's Q4_K_M / Q5_K_M / Q8_0 layouts at Llama-3-8B's
//! shape and in a real Q4_K_M file, random weights in block formats, and Hugging Face folders
//! quantized while they load.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use keyformer::model::arch::Layout;
use keyformer::model::config::ModelConfig;
use keyformer::model::gguf::GgufFile;
use keyformer::model::mix::{WeightKind, WeightPlan};
use keyformer::{Backend, CpuBackend, Model};

fn llama_8b() -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/configs/llama-3.1-8b.json");
    ModelConfig::from_hf_json(&path).unwrap()
}

/// Format name -> number of matrices, over every matrix of `cfg` (HF names and shapes).
fn census(plan: &WeightPlan, cfg: &ModelConfig) -> BTreeMap<&'static str, usize> {
    let h = cfg.hidden;
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), h),
        ("lm_head.weight".to_string(), h),
    ];
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        for (n, cols) in [
            ("self_attn.q_proj", h),
            ("self_attn.k_proj", h),
            ("self_attn.v_proj", h),
            ("self_attn.o_proj", h),
            ("mlp.gate_proj", h),
            ("mlp.up_proj", h),
            ("mlp.down_proj", cfg.ffn_hidden),
        ] {
            shapes.push((format!("{p}.{n}.weight"), cols));
        }
    }
    let mut counts = BTreeMap::new();
    for (name, cols) in shapes {
        let f = plan
            .format_for(&name, cols)
            .unwrap_or_else(|| panic!("{name} has no format"));
        *counts.entry(f.name).or_insert(0) += 1;
    }
    counts
}

/// llama.cpp's Llama-3-8B Q4_K_M file loads with "type q4_K: 193 tensors, type q6_K: 33
/// tensors" (its loader's census, as printed for the published file): the output matrix, and
/// attn_v and ffn_down in 16 of the 32 layers each.
#[test]
fn q4_k_m_at_llama_3_8b_shape_matches_llama_cpps_census() {
    let cfg = llama_8b();
    let plan = WeightPlan::new(WeightKind::parse("q4_k_m").unwrap(), &cfg, Layout::Hf);
    let counts = census(&plan, &cfg);
    assert_eq!(counts, BTreeMap::from([("Q4_K", 193), ("Q6_K", 33)]));
    println!("Q4_K_M: {}", plan.summary());
    // The layers with more bits: the first and last eighth, and every third between.
    let more: Vec<usize> = (0..32)
        .filter(|i| {
            let name = format!("model.layers.{i}.self_attn.v_proj.weight");
            plan.format_for(&name, 4096).unwrap().name == "Q6_K"
        })
        .collect();
    assert_eq!(
        more,
        [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    );
    let down = |i: usize| format!("model.layers.{i}.mlp.down_proj.weight");
    assert_eq!(plan.format_for(&down(6), 14336).unwrap().name, "Q6_K");
    assert_eq!(plan.format_for(&down(7), 14336).unwrap().name, "Q4_K");
    assert_eq!(
        plan.format_for("model.embed_tokens.weight", 4096)
            .unwrap()
            .name,
        "Q4_K"
    );
    assert!(plan.format_for("model.norm.weight", 4096).is_none());

    let q5 = WeightPlan::new(WeightKind::parse("Q5_K_M").unwrap(), &cfg, Layout::Hf);
    assert_eq!(
        census(&q5, &cfg),
        BTreeMap::from([("Q5_K", 193), ("Q6_K", 33)])
    );
    let q8 = WeightPlan::new(WeightKind::parse("q8_0").unwrap(), &cfg, Layout::Hf);
    assert_eq!(census(&q8, &cfg), BTreeMap::from([("Q8_0", 226)]));
    let f16 = WeightPlan::new(WeightKind::parse("f16").unwrap(), &cfg, Layout::Hf);
    assert!(f16.is_empty());
}

#[test]
fn rows_that_are_not_whole_blocks_fall_back_as_llama_cpp_does() {
    let cfg = llama_8b();
    let plan = WeightPlan::new(WeightKind::parse("q4_k_m").unwrap(), &cfg, Layout::Hf);
    let q = "model.layers.7.self_attn.q_proj.weight";
    let v = "model.layers.0.self_attn.v_proj.weight";
    assert_eq!(plan.format_for(q, 640).unwrap().name, "Q5_0");
    assert_eq!(plan.format_for(v, 640).unwrap().name, "Q8_0");
    assert!(
        plan.format_for(q, 48).is_none(),
        "not whole 32-value blocks: floats"
    );
    assert!(WeightKind::parse("iq4_nl").is_err(), "no quantizer");
    let err = WeightKind::parse("q9").unwrap_err().to_string();
    assert!(
        err.contains("unknown weight type 'q9'") && err.contains("q4_k_m"),
        "{err}"
    );
}

/// Gemma-3-270M's published Q4_K_M file (fetched by scripts/fetch.sh): the plan gives every
/// matrix the type the file has.
#[test]
fn plan_matches_gemma_3_270m_q4_k_m_file() {
    let Some(path) = common::gemma3_path("plan_matches_gemma_3_270m_q4_k_m_file") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let cfg = ModelConfig::from_gguf(&file).unwrap();
    let plan = WeightPlan::new(WeightKind::parse("q4_k_m").unwrap(), &cfg, Layout::Gguf);
    let mut checked = 0;
    let mut differ = Vec::new();
    for name in file.tensor_names() {
        let shape = file.tensor_shape(name).unwrap();
        let Some((format, _)) = file.tensor_blocks(name).unwrap() else {
            continue;
        };
        if shape.len() != 2 || format.block_values == 1 {
            continue;
        }
        let ours = plan.format_for(name, shape[1]).map_or("floats", |f| f.name);
        if ours != format.name {
            differ.push(format!("{name}: file {}, plan {ours}", format.name));
        }
        checked += 1;
    }
    println!("{checked} matrices checked; plan {}", plan.summary());
    assert!(checked > 100, "{checked}");
    assert!(differ.is_empty(), "{differ:?}");
}

fn logits<B: Backend>(m: &Model<B>, tokens: &[u32]) -> Vec<f32> {
    let mut s = m.new_session(tokens.len()).unwrap();
    m.forward(&mut s, tokens, false).unwrap()
}

#[test]
fn random_weights_in_block_formats_run_and_count_their_bytes() {
    let cfg = llama_8b();
    // Llama-3-8B's widths at 2 layers and a small vocabulary: every matrix whole 256-blocks.
    let small = ModelConfig {
        layers: 2,
        vocab_size: 512,
        hidden: 1024,
        heads: 8,
        kv_heads: 2,
        head_dim: 128,
        ffn_hidden: 2048,
        ..cfg
    };
    let tokens = [1u32, 7, 300, 42];
    let mut sizes = Vec::new();
    for kind in ["f16", "q8_0", "q6_k", "q4_k_m"] {
        let w = WeightKind::parse(kind).unwrap();
        let m = Model::random_with(small.clone(), 5, w, CpuBackend).unwrap();
        let (all, _) = m.weights.bytes(|w| m.backend.weight_bytes(w));
        let out = logits(&m, &tokens);
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{kind}: logits not finite"
        );
        println!("{kind}: {all} bytes of weights");
        sizes.push(all);
    }
    // f32 on the CPU, then Q8_0 (34/32 bytes a value), Q6_K (210/256), Q4_K_M (mostly 144/256).
    let matrices: usize = 2 * 512 * 1024 + 2 * (1024 * 1024 * 2 + 256 * 1024 * 2 + 3 * 1024 * 2048);
    let q8 = matrices * 34 / 32;
    assert!(sizes[1] >= q8 && sizes[1] < q8 + 64 * 1024, "{sizes:?}");
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2] && sizes[2] > sizes[3]);
}

/// tiny-llama3: hidden 96 (whole 32-value blocks, not 256), MLP 80 (neither).
#[test]
fn hugging_face_folders_quantize_while_loading() {
    let dir = common::fixture("tiny-llama3");
    let float = common::load_cpu(&dir);
    let tokens = [1u32, 5, 9, 33, 70];
    let reference = logits(&float, &tokens);
    let (float_bytes, _) = float.weights.bytes(|w| float.backend.weight_bytes(w));
    for (kind, tolerance) in [("q8_0", 0.03), ("q4_k", 0.2)] {
        let w = WeightKind::parse(kind).unwrap();
        let m = Model::load_with(&dir, w, CpuBackend, &mut |_, _| {}).unwrap();
        let (bytes, _) = m.weights.bytes(|w| m.backend.weight_bytes(w));
        let got = logits(&m, &tokens);
        let err = common::max_rel_error(&got, &reference);
        println!("{kind}: {bytes} bytes against {float_bytes}, logits max rel error {err:.4}");
        assert!(bytes < float_bytes / 2, "{kind}: {bytes} bytes");
        assert!(err < tolerance, "{kind}: {err}");
    }
}

/// A GGUF file's block-format tensors keep their formats under --quantize (only float matrices
/// would be quantized): SmolLM2's Q4_1 file loads to the same bytes and logits.
#[test]
fn gguf_block_tensors_keep_their_formats_when_quantizing() {
    let Some(gguf) = common::smollm2_path("gguf_block_tensors_keep_their_formats") else {
        return;
    };
    let plain = common::load_cpu(&gguf);
    let q8 = WeightKind::parse("q8_0").unwrap();
    let m = Model::load_with(&gguf, q8, CpuBackend, &mut |_, _| {}).unwrap();
    let bytes = |m: &Model<CpuBackend>| m.weights.bytes(|w| m.backend.weight_bytes(w)).0;
    assert_eq!(bytes(&m), bytes(&plain));
    let tokens = [1u32, 504, 3575, 282];
    assert_eq!(logits(&m, &tokens), logits(&plain, &tokens));
}

/// The CLI's weight options: a one-line error for each misuse.
#[test]
fn bench_weight_options_are_checked() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/configs/smollm2-135m.json");
    let tiny = common::fixture("tiny-llama3");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--config", config.to_str().unwrap(), "--weights", "q9"],
            "unknown weight type 'q9'",
        ),
        (
            &["--config", config.to_str().unwrap(), "--quantize", "q8_0"],
            "--quantize applies to --model",
        ),
        (
            &["--model", tiny.to_str().unwrap(), "--weights", "q8_0"],
            "--weights sets random weights' storage",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyformer"))
            .arg("bench")
            .args(args)
            .args(["--backend", "cpu"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// tests/fixtures/quant/mix_reference.json (made by make_mix_reference.py): what llama.cpp's
/// llama-quantize gives every matrix of random 16-layer Llama files, one with rows that are not
/// whole 256-value blocks. The plans name the same type for each.
#[test]
fn plans_match_llama_quantize_on_random_files() {
    let text = std::fs::read_to_string(common::fixture("quant/mix_reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let mix = case["mix"].as_str().unwrap();
        let dir = std::env::temp_dir().join(format!("keyformer-mix-{mix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        std::fs::write(&config, case["config"].to_string()).unwrap();
        let cfg = ModelConfig::from_hf_json(&config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let plan = WeightPlan::new(WeightKind::parse(mix).unwrap(), &cfg, Layout::Gguf);
        let tensors = case["tensors"].as_object().unwrap();
        let mut differ = Vec::new();
        for (name, v) in tensors {
            let (expected, cols) = (v[0].as_str().unwrap(), v[1].as_u64().unwrap() as usize);
            let ours = plan.format_for(name, cols).map_or("F16", |f| f.name);
            if ours != expected {
                differ.push(format!("{name}: llama-quantize {expected}, plan {ours}"));
            }
        }
        println!("{mix}: {} matrices agree", tensors.len() - differ.len());
        assert!(tensors.len() > 100, "{mix}");
        assert!(differ.is_empty(), "{mix}: {differ:?}");
    }
}
