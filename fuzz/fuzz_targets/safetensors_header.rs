//! A model.safetensors: its header is checked when the folder is opened, and every tensor it
//! lists then loads or is an error.
#![no_main]

use keyformer::model::source::{SafetensorsSource, TensorSource};
use libfuzzer_sys::fuzz_target;

mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("model.safetensors", data);
    let dir = path.parent().expect("a scratch folder");
    let Ok(source) = SafetensorsSource::open_dir(dir) else {
        return;
    };
    // The names and shapes, read the way any other reader would.
    let Ok((_, metadata)) = safetensors::SafeTensors::read_metadata(data) else {
        return;
    };
    for (name, info) in metadata.tensors() {
        assert!(source.has(&name));
        let _ = source.load(&name, &info.shape);
    }
});
