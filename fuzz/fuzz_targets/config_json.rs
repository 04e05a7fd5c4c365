//! config.json of every architecture: any JSON value either parses into a config or is an error.
#![no_main]

use keyformer::model::config::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = ModelConfig::from_hf_value(&json);
    }
});
