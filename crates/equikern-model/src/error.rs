//! Errors of the model crate; every variant names the key, field or entry at fault.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("io error reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("zip archive: {0}")]
    Zip(String),
    #[error("pickle ({entry}) at byte {pos}: {why}")]
    Pickle {
        entry: String,
        pos: usize,
        why: String,
    },
    #[error("checkpoint key {key:?}: {why}")]
    Checkpoint { key: String, why: String },
    #[error("config field {field:?}: {why}")]
    Config { field: String, why: String },
    #[error("input {field}: {why}")]
    Input { field: String, why: String },
    #[error("tensor product: {0}")]
    Tp(String),
    /// A backend/dtype combination or feature this build or device does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// A compute backend failed to open (no adapter, no CUDA) or to run.
    #[error("{backend}: {why}")]
    Backend { backend: String, why: String },
}

impl ModelError {
    pub fn key(key: impl Into<String>, why: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            key: key.into(),
            why: why.into(),
        }
    }
    pub fn config(field: impl Into<String>, why: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.into(),
            why: why.into(),
        }
    }
    pub fn backend(backend: impl Into<String>, why: impl std::fmt::Display) -> Self {
        ModelError::Backend {
            backend: backend.into(),
            why: why.to_string(),
        }
    }
    pub fn input(field: impl Into<String>, why: impl Into<String>) -> Self {
        ModelError::Input {
            field: field.into(),
            why: why.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
