//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use keyformer::{CpuBackend, Model};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The SmolLM2 GGUF, fetched by scripts/fetch-smollm2.sh; None (and a printed SKIP) if absent.
pub fn smollm2_path(test: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIP {test}: {} not found (run scripts/fetch-smollm2.sh)",
            path.display()
        );
        None
    }
}

pub fn load_cpu(path: &Path) -> Model<CpuBackend> {
    Model::load(path, CpuBackend, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
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
