//! Reading a tokenizer's side files (tokenizer.json, tokenizer_config.json, ...): only regular
//! files, and only up to a size no real one comes near, so a link to a device or a huge file
//! fails at once with a clear error instead of hanging or filling memory.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::tok_err;
use crate::error::{Error, Result};

/// Large enough for any real tokenizer.json (the biggest, with 250k-token vocabularies, are ~35 MB).
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 256 << 20;

/// The text of `path`, or `None` when it does not exist. Anything but a regular file (after
/// following links), or a file over `MAX_TOKENIZER_FILE_BYTES`, is an error.
pub fn read_small_file(path: &Path) -> Result<Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        return Err(Error::Tokenizer(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_TOKENIZER_FILE_BYTES {
        return Err(too_big(path));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The size may change between the check and the read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_TOKENIZER_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_TOKENIZER_FILE_BYTES {
        return Err(too_big(path));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::Tokenizer(format!("{} is not UTF-8 text", path.display())))
}

fn too_big(path: &Path) -> Error {
    Error::Tokenizer(format!(
        "{} is larger than {} MiB, more than any tokenizer file",
        path.display(),
        MAX_TOKENIZER_FILE_BYTES >> 20
    ))
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
