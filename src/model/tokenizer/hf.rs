//! A Hugging Face folder: tokenizer.json, with tokenizer_config.json (special tokens, chat
//! template) and generation_config.json (extra end-of-turn ids) when present.

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::files::{read_json, read_small_file};
use super::{TextTokenizer, tok_err};
use crate::error::{Error, Result};

pub fn load(dir: &Path) -> Result<TextTokenizer> {
    let tokenizer_path = dir.join("tokenizer.json");
    let text = read_small_file(&tokenizer_path)?
        .ok_or_else(|| Error::Tokenizer(format!("{} does not exist", tokenizer_path.display())))?;
    // The tokenizers crate panics on some malformed files (found by fuzz/): contain it.
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_str(&text)).map_err(|_| {
        Error::Tokenizer(format!(
            "{}: the tokenizers library could not parse it (it panicked)",
            tokenizer_path.display()
        ))
    })?;
    let inner = parsed.map_err(|e| tok_err(&tokenizer_path.display().to_string(), e))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);

    // A token is given either as its text or as an AddedToken object {"content": ...}.
    let token_id = |key: &str| {
        let v = &config[key];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        inner.token_to_id(text)
    };
    let bos = token_id("bos_token");
    let mut eos: Vec<u32> = token_id("eos_token").into_iter().collect();
    if let Some(generation) = read_json(&dir.join("generation_config.json"))? {
        let ids = match &generation["eos_token_id"] {
            Value::Array(ids) => ids.iter().filter_map(Value::as_u64).collect(),
            v => v.as_u64().into_iter().collect::<Vec<_>>(),
        };
        for id in ids.into_iter().filter_map(|id| u32::try_from(id).ok()) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    // Without an explicit flag, BOS is added iff the tokenizer's post-processor adds it
    // (e.g. Llama 3's TemplateProcessing); `encode` itself never runs the post-processor.
    let add_bos = match config["add_bos_token"].as_bool() {
        Some(flag) => flag,
        None => {
            let probe = inner.encode("", true).map_err(|e| tok_err("encode", e))?;
            bos.is_some() && probe.get_ids().first() == bos.as_ref()
        }
    };
    let chat_template = match &config["chat_template"] {
        Value::String(t) => Some(t.clone()),
        // A list of named templates: take "default", else the first.
        Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .or(named.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        // Newer repositories keep the template in its own file.
        _ => read_small_file(&dir.join("chat_template.jinja"))?,
    };
    Ok(TextTokenizer {
        inner,
        bos,
        eos,
        add_bos,
        chat_template,
    })
}
