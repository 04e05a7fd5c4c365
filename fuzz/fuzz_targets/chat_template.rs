//! A chat template from tokenizer_config.json, rendered for a conversation: text or an error.
#![no_main]

use keyformer::model::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;

mod scratch;

/// A word-level tokenizer of a few tokens: the template is what is under test.
const TOKENIZER: &str = include_str!("../tokenizer.json");

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch::dir().join("chat");
    std::fs::create_dir_all(&dir).expect("create the chat folder");
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).expect("write tokenizer.json");
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": template,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
        .expect("write tokenizer_config.json");
    let Ok(tokenizer) = TextTokenizer::from_hf_dir(&dir) else {
        return;
    };
    let _ = tokenizer.render_chat(&[
        ("system".into(), "Be brief.".into()),
        ("user".into(), "Hi".into()),
        ("assistant".into(), "Hello.".into()),
        ("user".into(), "The capital of France?".into()),
    ]);
});
