//! Transport sockets (`envoy.transport_sockets.*`): raw_buffer is the plain TCP stream; TLS
//! terminates and originates TLS with rustls.

pub mod tls;
