//! The CPU backend against Hugging Face transformers: tiny random-weight models of every
//! architecture, logits from one prefill and from token-by-token decoding through the cache.
//! Fixtures come from tests/fixtures/make_fixtures.py.

mod common;

use common::{fixture, load_cpu, max_rel_error};

struct Golden {
    ids: Vec<u32>,
    prefill: Vec<f32>,
    stepwise: Vec<f32>,
}

fn golden(arch: &str) -> Golden {
    let bytes = std::fs::read(fixture(&format!("tiny-{arch}/golden.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let ids = st
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    Golden {
        ids,
        prefill: f32s("prefill"),
        stepwise: f32s("stepwise"),
    }
}

fn check(arch: &str) {
    let model = load_cpu(&fixture(&format!("tiny-{arch}")));
    let g = golden(arch);
    assert!(g.ids.len() >= 20);

    let mut s = model.new_session(g.ids.len()).unwrap();
    let prefill = model.forward(&mut s, &g.ids, true).unwrap();
    let err = max_rel_error(&prefill, &g.prefill);
    println!("{arch}: prefill max relative error {err:.2e}");
    assert!(err <= 1e-4, "{arch} prefill error {err}");

    let mut s = model.new_session(g.ids.len()).unwrap();
    let mut stepwise = Vec::new();
    for &id in &g.ids {
        stepwise.extend(model.forward(&mut s, &[id], false).unwrap());
    }
    let err = max_rel_error(&stepwise, &g.stepwise);
    println!("{arch}: token-by-token max relative error {err:.2e}");
    assert!(err <= 1e-4, "{arch} stepwise error {err}");
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn gptj_matches_transformers() {
    check("gptj");
}

#[test]
fn mpt_matches_transformers() {
    check("mpt");
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    // Split tiny-llama's tensors over two shards with an index, as large checkpoints are stored.
    let dir = common::scratch_copy("tiny-llama", "sharded_checkpoint");
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(&single).unwrap();

    let sharded = load_cpu(&dir);
    let original = load_cpu(&fixture("tiny-llama"));
    let ids = golden("llama").ids;
    let mut a = sharded.new_session(ids.len()).unwrap();
    let mut b = original.new_session(ids.len()).unwrap();
    assert_eq!(
        sharded.forward(&mut a, &ids, true).unwrap(),
        original.forward(&mut b, &ids, true).unwrap()
    );
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    check("llama3");
}

#[test]
fn qwen2_biases_and_yarn_match_transformers() {
    check("qwen2");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check("mistral");
}

#[test]
fn phi3_fused_projections_and_longrope_match_transformers() {
    check("phi3");
}

#[test]
fn qwen3_head_norms_match_transformers() {
    check("qwen3");
}

#[test]
fn gemma2_softcapping_and_local_layers_match_transformers() {
    check("gemma2");
}

#[test]
fn gemma3_local_rotary_and_head_norms_match_transformers() {
    check("gemma3");
}
