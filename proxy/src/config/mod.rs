//! The configuration pipeline, first half: bytes (YAML/JSON/proto) → Envoy protos.
//! The second half, protos → validated model, is `crate::model`.

pub mod descriptors;
pub mod error;
pub mod inputs;
pub mod json;
pub mod load;
pub mod typed_struct;

pub use error::{ConfigError, FieldPath, Result};

/// Tests: a YAML document decoded as the Envoy message `T` (named `type_name`), as a file would be.
#[cfg(test)]
pub fn decode_yaml<T: prost::Message + Default>(
    type_name: &str,
    yaml: &str,
    path: &FieldPath,
) -> T {
    let pool = descriptors::envoy_pool();
    let mut d = json::JsonDecoder::new(&pool, false);
    let doc = load::parse_document(yaml, load::Format::Yaml, "test").unwrap();
    json::decode_into(&mut d, type_name, &doc, path).unwrap()
}
