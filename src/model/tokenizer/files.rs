//! Reading a tokenizer's side files (tokenizer.json, tokenizer_config.json, ...): only regular
//! files, and only up to a size no real one comes near, so a link to a device or a huge file
//! fails at once with a clear error instead of hanging or filling memory.

use std::path::Path;

use serde_json::Value;

use super::tok_err;
use crate::error::Result;
use crate::model::files;

/// Large enough for any real tokenizer.json (the biggest, with 250k-token vocabularies, are ~35 MB).
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 256 << 20;

/// The text of `path`, or `None` when it does not exist. Anything but a regular file (after
/// following links), or a file over `MAX_TOKENIZER_FILE_BYTES`, is an error.
pub fn read_small_file(path: &Path) -> Result<Option<String>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let kind = path.file_name().map_or("tokenizer file".into(), |n| {
        n.to_string_lossy().into_owned()
    });
    files::read_text(path, &kind, MAX_TOKENIZER_FILE_BYTES).map(Some)
}

/// The JSON in `path`, or `None` when the file does not exist.
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    let Some(text) = read_small_file(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(&path.display().to_string(), e))
}
