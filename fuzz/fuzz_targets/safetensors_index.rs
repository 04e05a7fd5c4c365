//! A model.safetensors.index.json: its shard names are parsed, and opening the folder either
//! finds them inside it or refuses them.
#![no_main]

use std::path::Path;

use keyformer::model::source::{SafetensorsSource, parse_index};
use libfuzzer_sys::fuzz_target;

mod scratch;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_index(Path::new("model.safetensors.index.json"), text);
    // A folder with the index and no model.safetensors: the index decides what is opened.
    let dir = scratch::dir().join("index");
    std::fs::create_dir_all(&dir).expect("create the index folder");
    std::fs::write(dir.join("model.safetensors.index.json"), data).expect("write the index");
    let _ = SafetensorsSource::open_dir(&dir);
});
