//! Text tokenizer: a Hugging Face `tokenizers::Tokenizer` plus the BOS/EOS conventions and chat
//! template that come with the model, loaded from a Hugging Face directory or a GGUF file.

use std::path::Path;

use minijinja::{Environment, ErrorKind, context, syntax::SyntaxConfig};
use serde_json::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, GgufValue};

pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// Whether `encode` puts `bos` in front of the text.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

impl TextTokenizer {
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer> {
        let tokenizer_path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| tok_err(&tokenizer_path.display().to_string(), e))?;
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
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(TextTokenizer {
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
        })
    }

    pub fn from_gguf(g: &GgufFile) -> Result<TextTokenizer> {
        let model = g.get("tokenizer.ggml.model").and_then(GgufValue::as_str);
        if model != Some("gpt2") {
            return Err(Error::Unsupported {
                path: g.path().to_path_buf(),
                what: format!(
                    "GGUF tokenizer model {model:?} (only \"gpt2\", byte-level BPE, is supported)"
                ),
            });
        }
        let malformed = |reason: &str| Error::malformed(g.path(), "GGUF", reason);
        let strings = |key: &str| -> Result<Vec<&str>> {
            let items = g.get(key).and_then(GgufValue::as_array);
            let items = items.ok_or_else(|| malformed(&format!("missing array '{key}'")))?;
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| malformed(&format!("'{key}' holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let token_id = |key: &str| -> Result<Option<u32>> {
            let Some(v) = g.get(&format!("tokenizer.ggml.{key}")) else {
                return Ok(None);
            };
            match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                _ => Err(malformed(&format!(
                    "tokenizer.ggml.{key} {v:?} is not a token id"
                ))),
            }
        };

        // This mirrors transformers' GGUF conversion (integrations/gguf tokenizer, v5): a GPT-2
        // style BPE with tokens not spelled in the byte-level alphabet respelled into it, the
        // GPT-2 ByteLevel pre-tokenizer (no prefix space, no Digits split) unless
        // `tokenizer.ggml.pre` names a known split regex, a ByteLevel decoder, no post-processor,
        // and only CONTROL (type 3) tokens made special, plus the bos/eos/unk/pad tokens.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (byte_level_spelling(t), id as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| malformed(&format!("merge {m:?} is not two tokens")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err("building BPE from GGUF", e))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = g.get("tokenizer.ggml.pre").and_then(GgufValue::as_str);
        match pre.and_then(split_regex) {
            Some(regex) => {
                let split = Split::new(
                    SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err("pre-tokenizer regex", e))?;
                let byte_level = ByteLevel::new(false, true, false);
                inner
                    .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
            }
            None => {
                inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            }
        }
        inner.with_decoder(Some(ByteLevel::default()));

        let bos = token_id("bos_token_id")?;
        let eos_id = token_id("eos_token_id")?;
        let named = [
            bos,
            eos_id,
            token_id("unknown_token_id")?,
            token_id("padding_token_id")?,
        ];
        let types = g
            .get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_array);
        let control = tokens
            .iter()
            .zip(types.unwrap_or_default())
            .filter(|(_, ty)| ty.as_u64() == Some(3))
            .map(|(t, _)| *t);
        // A token outside the byte-level alphabet was respelled above, so its literal text is not
        // in the vocabulary; adding it would mint a new id past the model's embedding table.
        let special: Vec<AddedToken> = named
            .iter()
            .flatten()
            .map(|&id| tokens[id as usize])
            .chain(control)
            .filter(|t| t.chars().all(in_byte_level_alphabet))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| tok_err("adding special tokens", e))?;

        // EOT (e.g. Llama 3's <|eot_id|>) also ends a turn.
        let eos = [eos_id, token_id("eot_token_id")?];
        let mut eos: Vec<u32> = eos.into_iter().flatten().collect();
        eos.dedup();
        Ok(TextTokenizer {
            inner,
            bos,
            eos,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(GgufValue::as_bool)
                .unwrap_or(false),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(GgufValue::as_str)
                .map(str::to_string),
        })
    }

    /// Token ids of `text`; special tokens written in the text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encode", e))?;
        let bos = self.bos.filter(|_| self.add_bos);
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err("decode", e))
    }

    /// The text of one token (empty for an unknown id). A token may hold part of a UTF-8
    /// character, so streaming callers should decode a running window instead.
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Renders the chat template for one user turn, ready for the assistant's reply.
    pub fn apply_chat_template(&self, user_message: &str) -> Result<String> {
        self.render_chat(&[("user".to_string(), user_message.to_string())])
    }

    /// Renders the chat template for a conversation of (role, content) messages, ready for
    /// the assistant's reply.
    pub fn render_chat(&self, messages: &[(String, String)]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("model has no chat template".into()))?;
        let template_err = |e: minijinja::Error| tok_err("chat template", e);
        // Hugging Face renders chat templates with trim_blocks and lstrip_blocks on.
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_err)?,
        );
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, _> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let token = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_default()
        };
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| context! { role, content })
            .collect();
        env.template_from_str(template)
            .and_then(|t| {
                t.render(context! {
                    messages,
                    add_generation_prompt => true,
                    bos_token => token(self.bos),
                    eos_token => token(self.eos.first().copied()),
                })
            })
            .map_err(template_err)
    }
}

/// The JSON in `path`, or `None` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(&path.display().to_string(), e))
}

/// GPT-2's byte-to-character table maps these bytes to themselves; the other 68 bytes map, in
/// order, to U+0100..U+0143.
fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

fn in_byte_level_alphabet(c: char) -> bool {
    match u8::try_from(c) {
        Ok(b) => printable(b),
        Err(_) => ('\u{100}'..='\u{143}').contains(&c),
    }
}

/// `token` as a byte-level vocabulary spells it: unchanged when it already is, otherwise its
/// UTF-8 bytes mapped through GPT-2's table.
fn byte_level_spelling(token: &str) -> String {
    if token.chars().all(in_byte_level_alphabet) {
        return token.to_string();
    }
    token
        .bytes()
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
                char::from_u32(0x100 + rank).expect("U+0100..U+0143 are chars")
            }
        })
        .collect()
}

// Split regexes transformers applies for these `tokenizer.ggml.pre` values (before a ByteLevel
// without its own regex); any other value keeps the GPT-2 ByteLevel regex.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}
