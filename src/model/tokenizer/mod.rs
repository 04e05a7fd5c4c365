//! Text tokenizer: a Hugging Face `tokenizers::Tokenizer` plus the BOS/EOS conventions and chat
//! template that come with the model, loaded from a Hugging Face folder or a GGUF file.
//!
//! - `hf.rs`: tokenizer.json, tokenizer_config.json and generation_config.json in a folder.
//! - `gguf.rs`: the vocabulary a GGUF file stores (byte-level BPE and its pre-tokenizers).
//! - `spm.rs`: SentencePiece vocabularies in GGUF files (Llama 1/2, Phi-3, Gemma).
//! - `chat.rs`: chat templates (Jinja).
//! - `files.rs`: reading the small side files safely.

mod chat;
mod files;
mod gguf;
mod hf;
mod spm;

use std::path::Path;

use tokenizers::Tokenizer;

pub use chat::ChatMessage;

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

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
    /// Only the tokenizer of the model at `path`: a GGUF file (vocabulary-only files included,
    /// no tensors or architecture needed), a folder holding one, or a Hugging Face folder with
    /// tokenizer.json.
    pub fn load(path: &Path) -> Result<TextTokenizer> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        if path.is_file() {
            return TextTokenizer::from_gguf(&GgufFile::open(path)?);
        }
        if path.join("tokenizer.json").exists() {
            return TextTokenizer::from_hf_dir(path);
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let ggufs: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        match ggufs.as_slice() {
            [one] => TextTokenizer::from_gguf(&GgufFile::open(one)?),
            [] => Err(Error::NotFound(path.join("tokenizer.json"))),
            _ => Err(Error::InvalidInput(format!(
                "{} holds {} .gguf files and no tokenizer.json: pass one of them",
                path.display(),
                ggufs.len()
            ))),
        }
    }

    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer> {
        hf::load(dir)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<TextTokenizer> {
        gguf::load(g)
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

    /// Token ids of `text` as plain text: no BOS, and special tokens written in the text are
    /// spelled out like any other text (llama.cpp's `parse_special = false`). Added tokens that
    /// are not special (a GGUF's user-defined tokens) still match whole.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut inner = self.inner.clone();
        inner.set_encode_special_tokens(true);
        let encoding = inner
            .encode(text, false)
            .map_err(|e| tok_err("encode", e))?;
        Ok(encoding.get_ids().to_vec())
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

    /// The vocabulary entry of one token as the model spells it (a byte-level BPE writes a
    /// space as 'Ġ', SentencePiece as '▁'), or `None` for an unknown id.
    pub fn piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The text of a special token for chat templates (empty when the model has none).
    fn special_text(&self, id: Option<u32>) -> String {
        id.and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default()
    }
}
