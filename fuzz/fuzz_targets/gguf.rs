//! The GGUF reader, and the config and tokenizer read from a GGUF's metadata.
#![no_main]

use keyformer::model::config::ModelConfig;
use keyformer::model::gguf::GgufFile;
use keyformer::model::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;

mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    if let Ok(config) = ModelConfig::from_gguf(&file) {
        let _ = config.q_dim();
    }
    let _ = TextTokenizer::from_gguf(&file);
    // Tensors a Llama GGUF has, of several storage types in the seeds.
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "output_norm.weight",
    ] {
        if file.tensor_shape(name).is_ok() {
            assert!(file.has_tensor(name));
            let _ = file.tensor_f32(name);
        }
    }
});
