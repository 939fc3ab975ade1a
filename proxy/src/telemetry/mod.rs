//! Telemetry: stats (Envoy names and tags), access logs and their format strings.

pub mod access_log;
pub mod format;
pub mod sinks;
pub mod stats;
pub mod tags;
