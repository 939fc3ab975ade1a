//! The configuration pipeline, first half: bytes (YAML/JSON/proto) → Envoy protos.
//! The second half, protos → validated model, is `crate::model`.

pub mod descriptors;
pub mod error;
pub mod json;
pub mod load;
pub mod typed_struct;

pub use error::{ConfigError, FieldPath, Result};
