//! remora: an Envoy-compatible sidecar data-plane proxy.
#![forbid(unsafe_code)]

pub mod config;
#[allow(deprecated)] // the model destructures every field, deprecated ones included
pub mod model;
pub mod stream_info;
pub mod telemetry;
pub mod http;
pub mod upstream;
pub mod tcp;
pub mod listener;
pub mod admin;
pub mod cli;
pub mod logging;
pub mod server;

/// remora's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod demo;
