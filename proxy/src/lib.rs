//! remora: an Envoy-compatible sidecar data-plane proxy.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod context;
pub mod filters;
pub mod http;
pub mod listener;
pub mod logging;
#[allow(deprecated)] // the model destructures every field, deprecated ones included
pub mod model;
pub mod runtime;
pub mod server;
pub mod stream_info;
pub mod tcp;
pub mod telemetry;
pub mod tracing;
pub mod transport_sockets;
pub mod upstream;
pub mod xds;

/// remora's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod demo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
