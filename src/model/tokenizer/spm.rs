//! SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model` = "llama": Llama 1/2,
//! Mistral, Phi-3, Gemma), built as a `tokenizers` BPE.
//!
//! A SentencePiece BPE model joins the pair of neighbouring pieces whose joined piece has the best
//! score, again and again, and falls back to one `<0xNN>` token per byte for characters it does
//! not know. The same result comes from an ordinary BPE whose merge list holds every way of
//! cutting each token into two tokens, ranked by the joined token's score. Spaces are written as
//! '▁', and one is put in front of the text when `tokenizer.ggml.add_space_prefix` says so (the
//! default, as in llama.cpp).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper, Tokenizer};

use super::gguf::{GgufVocab, TOKEN_BYTE};
use super::tok_err;
use crate::error::Result;
use crate::model::gguf::GgufValue;

const SPACE: &str = "\u{2581}";

pub fn sentencepiece(vocab: &GgufVocab) -> Result<Tokenizer> {
    let g = vocab.file;
    let scores: Vec<f64> = match g.get("tokenizer.ggml.scores").and_then(GgufValue::as_array) {
        Some(scores) if scores.len() == vocab.tokens.len() => {
            scores.iter().map(|s| s.as_f64().unwrap_or(0.0)).collect()
        }
        Some(scores) => {
            return Err(vocab.malformed(&format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                vocab.tokens.len()
            )));
        }
        None => return Err(vocab.malformed("missing array 'tokenizer.ggml.scores'")),
    };
    // Gemma files store the tokens made only of spaces with real spaces; the text they match
    // has its spaces written as '▁' by then.
    let tokens: Vec<String> = vocab
        .tokens
        .iter()
        .map(|t| {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                SPACE.repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut ids = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        ids.entry(token.clone()).or_insert(id as u32);
    }

    // Gemma's scores do not follow the order its merges were learned in; the order of its
    // tokens in the file does (as transformers' GGUF reader also finds).
    let by_position = g
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .is_some_and(|a| a.starts_with("gemma"));
    let mut merges: Vec<(f64, u32, &str, &str)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.types[id] == TOKEN_BYTE || ids.get(token) != Some(&(id as u32)) {
            continue;
        }
        let rank = if by_position { id as f64 } else { -scores[id] };
        for (cut, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(cut);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push((rank, id as u32, left, right));
            }
        }
    }
    merges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let merges = merges
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab.token_id("unknown_token_id")? {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| tok_err("building SentencePiece vocabulary from GGUF", e))?;

    let add_space_prefix = vocab.flag("add_space_prefix").unwrap_or(true);
    let replace_spaces =
        Replace::new(" ", SPACE).map_err(|e| tok_err("SentencePiece normalizer", e))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(SPACE.to_string()).into());
    }
    normalizers.push(replace_spaces.into());
    let restore_spaces =
        Replace::new(SPACE, " ").map_err(|e| tok_err("SentencePiece decoder", e))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        restore_spaces.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut inner = Tokenizer::new(bpe);
    inner
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| tok_err("SentencePiece normalizer", e))?;
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}
