//! What several filters share, as Envoy's `extensions/filters/common`.

pub mod rbac;
