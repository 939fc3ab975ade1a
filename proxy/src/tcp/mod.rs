//! TCP: `envoy.filters.network.tcp_proxy`.

pub mod proxy;
