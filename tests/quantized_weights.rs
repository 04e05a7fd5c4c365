//! Weights kept in their files' block formats (the CPU backend dequantizes a row at a time
//! inside its products) against the same files dequantized to f32 when loading: SmolLM2 (Q4_1,
//! Q8_0 output-tied embedding) and Gemma-3-270M (Q4_K_M: Q4_K, Q6_K, Q8_0, Q5_0, ...) give
//! the same greedy tokens and next-token logits within f32 rounding, and the kept model is
//! several times smaller.

mod common;

use std::path::Path;

use keyformer::model::arch::Layout;
use keyformer::model::config::ModelConfig;
use keyformer::model::gguf::GgufFile;
use keyformer::model::source::TensorSource;
use keyformer::model::tensor::BlockRows;
use keyformer::model::weights::load_weights;
use keyformer::{Backend, CpuBackend, GenerateParams, Model, Result};

/// A GGUF read as plain f32: the blocks are hidden, so every tensor is dequantized at load.
struct Dequantized<'a>(&'a GgufFile);

impl TensorSource for Dequantized<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.0.load(name, shape)
    }
    fn load_blocks(&self, _: &str, _: [usize; 2]) -> Result<Option<BlockRows>> {
        Ok(None)
    }
}

fn both(path: &Path) -> (Model<CpuBackend>, Model<CpuBackend>) {
    let kept = Model::load(path, CpuBackend, &mut |_, _| {}).unwrap();
    let file = GgufFile::open(path).unwrap();
    let config = ModelConfig::from_gguf(&file).unwrap();
    let weights = load_weights(
        &config,
        &Dequantized(&file),
        Layout::Gguf,
        &CpuBackend,
        &mut |_, _| {},
    )
    .unwrap();
    let tokenizer = Some(keyformer::model::tokenizer::TextTokenizer::from_gguf(&file).unwrap());
    let plain = Model {
        config,
        weights,
        backend: CpuBackend,
        tokenizer,
        path: path.to_path_buf(),
    };
    (kept, plain)
}

fn compare(file: &str, test: &str) {
    let Some(path) = common::model_path(test, file) else {
        return;
    };
    let (kept, plain) = both(&path);
    let bytes = |m: &Model<CpuBackend>| m.weights.bytes(|w| m.backend.weight_bytes(w)).0;
    let (kb, pb) = (bytes(&kept), bytes(&plain));
    println!(
        "{file}: weights {:.1} MB kept in blocks, {:.1} MB as f32",
        kb as f64 / 1e6,
        pb as f64 / 1e6
    );
    assert!(kb * 3 < pb, "kept {kb} bytes, plain {pb}");

    let prompt = kept
        .tokenizer()
        .unwrap()
        .encode("The capital of France is")
        .unwrap();
    let logits = |m: &Model<CpuBackend>| {
        let mut s = m.new_session(prompt.len()).unwrap();
        m.forward(&mut s, &prompt, false).unwrap()
    };
    let (a, b) = (logits(&kept), logits(&plain));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    println!("{file}: next-token logits within {worst:.2e}");
    assert!(worst <= 1e-3, "{worst}");

    let params = GenerateParams {
        max_new_tokens: 24,
        stop_at_eos: false,
        ..Default::default()
    };
    let run = |m: &Model<CpuBackend>| m.generate(&prompt, &params, &mut |_, _| true).unwrap();
    let (ga, gb) = (run(&kept), run(&plain));
    println!("{file}: greedy {:?}", ga.text);
    assert_eq!(ga.tokens, gb.tokens);
}

#[test]
fn smollm2_blocks_match_dequantized_weights() {
    compare(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2_blocks_match_dequantized_weights",
    );
}

#[test]
fn gemma3_blocks_match_dequantized_weights() {
    compare(
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3_blocks_match_dequantized_weights",
    );
}
