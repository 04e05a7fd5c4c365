//! The one error type of the crate: every variant names what went wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model path does not exist: {0}")]
    NotFound(PathBuf),
    /// A weights or config file whose bytes do not make sense (truncated, bad header, bad offsets).
    #[error("{path}: malformed {format} file: {reason}")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// A model file that is not one to read: not a regular file, too big for its kind, or
    /// outside the model's folder. `kind` names the file ("config.json", "model").
    #[error("{kind}: {reason}")]
    File { kind: String, reason: String },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("unknown architecture '{name}' (supported: {supported})")]
    UnknownArchitecture { name: String, supported: String },
    #[error("config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Sampling met a NaN logit: the forward pass overflowed or the weights hold NaN.
    #[error("the logits hold NaN: the model's activations overflowed or its weights are broken")]
    NanLogits,
    #[error("backend {backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn malformed(
        path: &std::path::Path,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            path: path.to_path_buf(),
            format,
            reason: reason.into(),
        }
    }

    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
