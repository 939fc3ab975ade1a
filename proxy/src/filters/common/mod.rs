//! Code several filters share, named after Envoy's `source/extensions/filters/common/`.

pub mod local_ratelimit;
pub mod rbac;
