//! Hostile configs: absurd sizes and values of the wrong type or range are refused at once with
//! an error naming the field, before anything is sized from them (issue: hostile input never
//! takes the host process down).

mod common;

use std::path::Path;
use std::time::Instant;

use common::scratch_copy;
use keyformer::model::config::ModelConfig;
use keyformer::{CpuBackend, Error, Model};

fn load(path: &Path) -> Result<Model<CpuBackend>, Error> {
    Model::load(path, CpuBackend, &mut |_, _| {})
}

/// Loads `fixture` with `edit` applied to its config.json; the load must fail quickly with a
/// config error whose message holds every string of `expect`.
fn refused(fixture: &str, test: &str, edit: serde_json::Value, expect: &[&str]) {
    let dir = scratch_copy(fixture, test);
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in edit.as_object().unwrap() {
        json[k] = v.clone();
    }
    std::fs::write(&path, json.to_string()).unwrap();
    let start = Instant::now();
    let err = load(&dir).err().expect("the config must be refused");
    let message = err.to_string();
    println!("{test}: {message} ({:.0?})", start.elapsed());
    assert!(matches!(err, Error::Config(_)), "{message}");
    for e in expect {
        assert!(message.contains(e), "{message} should name {e}");
    }
}

#[test]
fn absurd_head_dim_is_refused_before_allocation() {
    let edit = serde_json::json!({"head_dim": 1_000_000_000_000u64});
    refused(
        "tiny-llama",
        "absurd_head_dim",
        edit,
        &["head_dim", "1000000000000"],
    );
    let edit = serde_json::json!({"head_dim": 1_000_000_000u64});
    refused("tiny-llama", "large_head_dim", edit, &["head_dim"]);
}

#[test]
fn absurd_mpt_sizes_are_refused() {
    let edit = serde_json::json!({"n_heads": 1u64 << 40, "d_model": 1u64 << 44});
    refused("tiny-mpt", "absurd_mpt", edit, &["d_model"]);
}

#[test]
fn absurd_gptj_rotary_is_refused() {
    let edit = serde_json::json!({"n_head": 1, "n_embd": 1u64 << 42, "rotary_dim": 1u64 << 42});
    refused("tiny-gptj", "absurd_gptj", edit, &["n_embd"]);
}

#[test]
fn wrong_types_name_the_field_and_value() {
    let cases = [
        (serde_json::json!({"rms_norm_eps": "abc"}), "rms_norm_eps"),
        (
            serde_json::json!({"max_position_embeddings": -1}),
            "max_position_embeddings",
        ),
        (
            serde_json::json!({"num_hidden_layers": -2}),
            "num_hidden_layers",
        ),
        (
            serde_json::json!({"num_hidden_layers": "2"}),
            "num_hidden_layers",
        ),
        (serde_json::json!({"rope_scaling": "yes"}), "rope_scaling"),
        (
            serde_json::json!({"rope_parameters": {"rope_type": 7}}),
            "rope_type",
        ),
        (serde_json::json!({"eos_token_id": "end"}), "eos_token_id"),
        (serde_json::json!({"eos_token_id": [2, -1]}), "eos_token_id"),
        (
            serde_json::json!({"tie_word_embeddings": 3}),
            "tie_word_embeddings",
        ),
    ];
    for (i, (edit, field)) in cases.into_iter().enumerate() {
        refused("tiny-llama", &format!("wrong_type_{i}"), edit, &[field]);
    }
    // A negative integer is reported as present and wrong, not as missing.
    let dir = scratch_copy("tiny-llama", "negative_layers_message");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    json["num_hidden_layers"] = serde_json::json!(-1);
    let err = ModelConfig::from_hf_value(&json).unwrap_err().to_string();
    assert!(!err.contains("missing"), "{err}");
    assert!(err.contains("-1"), "{err}");
}

/// A GGUF v3 file with no tensors and these u64 metadata values.
fn gguf_with(kvs: &[(&str, u64)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64 + 1).to_le_bytes());
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    put_str(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    put_str(&mut out, "llama");
    for (k, v) in kvs {
        put_str(&mut out, k);
        out.extend(10u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }
    out
}

#[test]
fn absurd_gguf_sizes_are_refused_before_allocation() {
    let big = 1u64 << 41;
    let bytes = gguf_with(&[
        ("llama.embedding_length", big),
        ("llama.rope.dimension_count", big),
        ("llama.attention.head_count", 1),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", 8),
        ("llama.context_length", 16),
        ("llama.vocab_size", 8),
    ]);
    let dir = std::env::temp_dir().join(format!("kf-absurd-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("absurd.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let start = Instant::now();
    let err = load(&path).err().expect("must be refused").to_string();
    println!(
        "absurd GGUF ({} bytes): {err} ({:.0?})",
        bytes.len(),
        start.elapsed()
    );
    assert!(err.contains("llama.embedding_length"), "{err}");
}
