//! A Hugging Face tokenizer.json (with no tokenizer_config.json): it loads and encodes, or is
//! an error.
#![no_main]

use keyformer::model::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;

mod scratch;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts before unwinding, which would defeat the library's
    // containment of the tokenizers crate's own panics. A quiet hook lets them unwind to it; a
    // panic that escapes the library still aborts in libfuzzer-sys's wrapper.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let dir = scratch::dir().join("tokenizer");
    std::fs::create_dir_all(&dir).expect("create the tokenizer folder");
    std::fs::write(dir.join("tokenizer.json"), data).expect("write tokenizer.json");
    if let Ok(tokenizer) = TextTokenizer::from_hf_dir(&dir)
        && let Ok(ids) = tokenizer.encode("The capital of France is")
    {
        let _ = tokenizer.decode(&ids);
    }
});
