//! Downstream HTTP codecs: HTTP/1.1 is remora's own (`h1`), HTTP/2 is hyper's.

pub mod chunked;
pub mod h1;
pub mod h1_client;
pub mod spans;
