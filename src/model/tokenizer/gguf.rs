//! The tokenizer a GGUF file stores as metadata (llama.cpp's `tokenizer.ggml.*` keys): which
//! model it is, the byte-level BPE of GPT-2 style vocabularies with the pre-tokenizer that
//! `tokenizer.ggml.pre` names, and what every vocabulary shares (special tokens, BOS/EOS, chat
//! template). SentencePiece vocabularies are built in `spm.rs`.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::{TextTokenizer, spm, tok_err};
use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub const TOKEN_CONTROL: u64 = 3;
pub const TOKEN_USER_DEFINED: u64 = 4;
pub const TOKEN_BYTE: u64 = 6;

/// The metadata every GGUF vocabulary has, read once.
pub struct GgufVocab<'a> {
    pub file: &'a GgufFile,
    pub tokens: Vec<&'a str>,
    /// One type per token (1 when the file gives none).
    pub types: Vec<u64>,
}

impl<'a> GgufVocab<'a> {
    fn read(g: &'a GgufFile) -> Result<GgufVocab<'a>> {
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let types = match g
            .get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_array)
        {
            Some(types) if types.len() == tokens.len() => {
                types.iter().map(|t| t.as_u64().unwrap_or(1)).collect()
            }
            Some(types) => {
                return Err(malformed(
                    g,
                    &format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens",
                        types.len(),
                        tokens.len()
                    ),
                ));
            }
            None => vec![1; tokens.len()],
        };
        Ok(GgufVocab {
            file: g,
            tokens,
            types,
        })
    }

    /// The id under `tokenizer.ggml.{key}`, checked against the vocabulary.
    pub fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.file.get(&format!("tokenizer.ggml.{key}")) else {
            return Ok(None);
        };
        match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
            Some(id) if (id as usize) < self.tokens.len() => Ok(Some(id)),
            _ => Err(malformed(
                self.file,
                &format!("tokenizer.ggml.{key} {v:?} is not a token id"),
            )),
        }
    }

    pub fn flag(&self, key: &str) -> Option<bool> {
        self.file
            .get(&format!("tokenizer.ggml.{key}"))
            .and_then(GgufValue::as_bool)
    }

    pub fn malformed(&self, reason: &str) -> Error {
        malformed(self.file, reason)
    }
}

fn malformed(g: &GgufFile, reason: &str) -> Error {
    Error::malformed(g.path(), "GGUF", reason)
}

/// The string array under `key`.
pub fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let items = g.get(key).and_then(GgufValue::as_array);
    let items = items.ok_or_else(|| malformed(g, &format!("missing array '{key}'")))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| malformed(g, &format!("'{key}' holds a non-string")))
        })
        .collect()
}

pub fn load(g: &GgufFile) -> Result<TextTokenizer> {
    let vocab = GgufVocab::read(g)?;
    let model = g.get("tokenizer.ggml.model").and_then(GgufValue::as_str);
    let (mut inner, add_bos_default) = match model {
        Some("gpt2") => (byte_level_bpe(&vocab)?, false),
        // llama.cpp puts BOS in front of SentencePiece text unless the file says otherwise.
        Some("llama") => (spm::sentencepiece(&vocab)?, true),
        _ => {
            return Err(Error::Unsupported {
                path: g.path().to_path_buf(),
                what: format!(
                    "GGUF tokenizer model {model:?} (supported: \"gpt2\", byte-level BPE, and \
                     \"llama\", SentencePiece)"
                ),
            });
        }
    };
    let bos = vocab.token_id("bos_token_id")?;
    let eos_id = vocab.token_id("eos_token_id")?;
    add_special_tokens(&mut inner, &vocab, model == Some("gpt2"))?;

    // EOT (e.g. Llama 3's <|eot_id|>) also ends a turn.
    let mut eos: Vec<u32> = [eos_id, vocab.token_id("eot_token_id")?]
        .into_iter()
        .flatten()
        .collect();
    eos.dedup();
    Ok(TextTokenizer {
        inner,
        bos,
        eos,
        add_bos: vocab.flag("add_bos_token").unwrap_or(add_bos_default),
        chat_template: g
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string),
    })
}

/// Control tokens (and the named bos/eos/unk/pad) become special tokens, matched whole in text
/// unless the caller asks for plain text; user-defined tokens become added tokens that always
/// match whole, as llama.cpp treats them.
fn add_special_tokens(inner: &mut Tokenizer, vocab: &GgufVocab, byte_level: bool) -> Result<()> {
    let named: Vec<u32> = [
        "bos_token_id",
        "eos_token_id",
        "unknown_token_id",
        "padding_token_id",
    ]
    .into_iter()
    .map(|key| vocab.token_id(key))
    .collect::<Result<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect();
    // In a byte-level vocabulary a token outside the byte alphabet was respelled, so its
    // literal text is not in the vocabulary; adding it would mint a new id past the model's
    // embedding table.
    let spelled = |t: &&str| !byte_level || t.chars().all(in_byte_level_alphabet);
    let of_type = |ty: u64| {
        vocab
            .tokens
            .iter()
            .zip(&vocab.types)
            .filter(move |(_, t)| **t == ty)
            .map(|(token, _)| *token)
    };
    let special: Vec<AddedToken> = named
        .iter()
        .map(|&id| vocab.tokens[id as usize])
        .chain(of_type(TOKEN_CONTROL))
        .filter(spelled)
        .map(|t| AddedToken::from(t, true).normalized(false))
        .collect();
    inner
        .add_special_tokens(special)
        .map_err(|e| tok_err("adding special tokens", e))?;
    let user: Vec<AddedToken> = of_type(TOKEN_USER_DEFINED)
        .filter(spelled)
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    inner
        .add_tokens(user)
        .map_err(|e| tok_err("adding user-defined tokens", e))?;
    Ok(())
}

/// GPT-2 style byte-level BPE: tokens not spelled in the byte-level alphabet are respelled into
/// it, merges as the file gives them, a ByteLevel decoder, and the pre-tokenizer of
/// `tokenizer.ggml.pre`.
fn byte_level_bpe(vocab: &GgufVocab) -> Result<Tokenizer> {
    let g = vocab.file;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let ids: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (byte_level_spelling(t), id as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| vocab.malformed(&format!("merge {m:?} is not two tokens")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = g.get("tokenizer.ggml.pre").and_then(GgufValue::as_str);
    let split = pre.map_or(PreSplit::Gpt2, pre_split);
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        // Llama 3 style vocabularies take a pre-token that is itself a token whole.
        .ignore_merges(matches!(
            split,
            PreSplit::Regex {
                ignore_merges: true,
                ..
            }
        ))
        .build()
        .map_err(|e| tok_err("building BPE from GGUF", e))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(split.pre_tokenizer()?));
    inner.with_decoder(Some(ByteLevel::default()));
    Ok(inner)
}

/// How a byte-level vocabulary cuts text into pre-tokens before BPE.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PreSplit {
    /// GPT-2's own regex (the ByteLevel pre-tokenizer's).
    Gpt2,
    /// Every digit alone first, then GPT-2's regex on what is left (StarCoder, SmolLM).
    DigitsThenGpt2,
    /// One regex in place of GPT-2's.
    Regex {
        regex: &'static str,
        ignore_merges: bool,
    },
}

impl PreSplit {
    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        // add_prefix_space off everywhere: none of these vocabularies adds a space in front.
        Ok(match self {
            PreSplit::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreSplit::DigitsThenGpt2 => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            PreSplit::Regex { regex, .. } => {
                let split = Split::new(
                    SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err("pre-tokenizer regex", e))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
        })
    }
}

// The split regexes of the Hugging Face tokenizer.json files these vocabularies come from.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, grouped as llama.cpp groups them
/// (llama-vocab.cpp); a value not listed keeps GPT-2's regex.
fn pre_split(pre: &str) -> PreSplit {
    let regex = |regex, ignore_merges| PreSplit::Regex {
        regex,
        ignore_merges,
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => regex(LLAMA3_SPLIT, true),
        "dbrx" | "smaug-bpe" => regex(LLAMA3_SPLIT, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" => {
            regex(QWEN2_SPLIT, false)
        }
        "tekken" => regex(TEKKEN_SPLIT, false),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => regex(GPT4O_SPLIT, false),
        "starcoder" | "smollm" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            PreSplit::DigitsThenGpt2
        }
        _ => PreSplit::Gpt2,
    }
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
