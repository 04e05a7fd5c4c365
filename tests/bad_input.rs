//! Bad input gets a specific, clear error and never a panic.

mod common;

use std::path::Path;

use common::{fixture, load_cpu, rewrite_tensors, scratch_copy, smollm2_path};
use keyformer::{CpuBackend, Error, GenerateParams, Model};

fn load(path: &Path) -> Result<Model<CpuBackend>, Error> {
    Model::load(path, CpuBackend, &mut |_, _| {})
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn missing_model_path() {
    let err = load(Path::new("/nonexistent/model")).err().unwrap();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}

#[test]
fn truncated_safetensors() {
    let dir = scratch_copy("tiny-gpt2", "truncated_safetensors");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = load(&dir).err().unwrap();
        assert!(
            matches!(
                err,
                Error::Malformed {
                    format: "safetensors",
                    ..
                }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn safetensors_header_longer_than_file() {
    let dir = scratch_copy("tiny-gpt2", "safetensors_header_longer_than_file");
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let too_long = bytes.len() as u64 * 2;
    bytes[..8].copy_from_slice(&too_long.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[test]
fn tensor_offsets_out_of_bounds() {
    let dir = scratch_copy("tiny-gpt2", "tensor_offsets_out_of_bounds");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(header).unwrap();
    json["transformer.wte.weight"]["data_offsets"][1] = serde_json::json!(bytes.len() * 4);
    let mut header = json.to_string().into_bytes();
    header.resize(n.max(header.len()), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[test]
fn wrong_tensor_shape() {
    let dir = scratch_copy("tiny-gpt2", "wrong_tensor_shape");
    rewrite_tensors(&dir.join("model.safetensors"), |t| {
        let ln = t
            .iter_mut()
            .find(|(n, ..)| n == "transformer.h.1.ln_2.weight")
            .unwrap();
        ln.1 = vec![ln.1[0] - 1];
        ln.2.pop();
    });
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(&err, Error::Shape { name, expected, actual } if name == "transformer.h.1.ln_2.weight" && expected == &[48] && actual == &[47]),
        "{err}"
    );
}

#[test]
fn missing_tensor() {
    let dir = scratch_copy("tiny-gpt2", "missing_tensor");
    rewrite_tensors(&dir.join("model.safetensors"), |t| {
        t.retain(|(n, ..)| n != "transformer.h.0.attn.c_proj.bias")
    });
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "transformer.h.0.attn.c_proj.bias"),
        "{err}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = scratch_copy("tiny-gpt2", "unknown_architecture");
    edit_config(&dir, |c| c["model_type"] = "falcon".into());
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(&err, Error::UnknownArchitecture { name, .. } if name == "falcon"),
        "{err}"
    );
}

#[test]
fn config_with_inconsistent_sizes() {
    let dir = scratch_copy("tiny-gpt2", "config_with_inconsistent_sizes");
    edit_config(&dir, |c| c["n_head"] = 5.into());
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        err.to_string().contains("not divisible by 5 heads"),
        "{err}"
    );
}

#[test]
fn truncated_gguf_model() {
    let Some(path) = smollm2_path("truncated_gguf_model") else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("truncated_gguf_model");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 4096, 1 << 20, bytes.len() - 100] {
        let file = dir.join("cut.gguf");
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = load(&file).err().unwrap();
        assert!(
            matches!(err, Error::Malformed { format: "GGUF", .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn empty_prompt() {
    let model = load_cpu(&fixture("tiny-llama"));
    let err = model
        .generate(&[], &GenerateParams::default(), &mut |_, _| true)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("empty")),
        "{err}"
    );
}

#[test]
fn prompt_longer_than_context() {
    let model = load_cpu(&fixture("tiny-llama"));
    let prompt = vec![3u32; model.config.max_context + 1];
    let err = model
        .generate(&prompt, &GenerateParams::default(), &mut |_, _| true)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("context")),
        "{err}"
    );
}

#[test]
fn token_id_outside_vocabulary() {
    let model = load_cpu(&fixture("tiny-mpt"));
    let err = model
        .generate(&[1, 5000], &GenerateParams::default(), &mut |_, _| true)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("5000")),
        "{err}"
    );
}

#[test]
fn cli_error_is_one_line_and_nonzero_exit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyformer"))
        .args([
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: model path does not exist"),
        "{stderr}"
    );
}
