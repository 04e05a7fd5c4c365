//! Every shape in benches/configs/ parses into the model `keyformer bench` builds, with the
//! sizes its published config.json gives (checked by hand against those configs).

use std::path::Path;

use keyformer::model::config::ModelConfig;

fn config(name: &str) -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("benches/configs/{name}.json"));
    ModelConfig::from_hf_json(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn bench_configs_parse_with_their_shapes() {
    // (name, architecture, layers, heads, kv heads, head_dim, windowed layers)
    let cases = [
        ("llama-3.1-8b", "llama", 32, 32, 8, 128, 0),
        ("qwen2.5-7b", "qwen2", 28, 28, 4, 128, 0),
        ("mistral-7b", "mistral", 32, 32, 8, 128, 0),
        ("gemma-2-9b", "gemma2", 42, 16, 8, 256, 21),
        ("phi-3-mini-4k", "phi3", 32, 32, 32, 96, 32),
        ("smollm2-135m", "llama", 30, 9, 3, 64, 0),
        ("gptj-6b", "gptj", 28, 16, 16, 256, 0),
    ];
    for (name, arch, layers, heads, kv_heads, head_dim, windowed) in cases {
        let c = config(name);
        let got = (c.arch.name, c.layers, c.heads, c.kv_heads, c.head_dim);
        assert_eq!(got, (arch, layers, heads, kv_heads, head_dim), "{name}");
        assert_eq!(
            c.block.layer_window.iter().flatten().count(),
            windowed,
            "{name}"
        );
        println!(
            "{name}: {arch}, {layers} layers, max context {}",
            c.max_context
        );
    }
    // Llama 3.1's llama3 rope scaling leaves the highest frequency alone and divides the
    // lowest by the factor, 8.
    let c = config("llama-3.1-8b");
    let keyformer::model::config::Positions::Rotary { inv_freq, .. } = &c.positions else {
        panic!("llama has a rotary");
    };
    assert_eq!(inv_freq[0], 1.0);
    let plain = 1.0 / 500000f64.powf(126.0 / 128.0);
    assert!(((inv_freq[63] as f64) - plain / 8.0).abs() / (plain / 8.0) < 1e-5);
}
