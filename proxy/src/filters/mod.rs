//! Filters other than the router and tcp_proxy, named after their Envoy extensions:
//! `http/` (the HTTP filter chain's contract, its runner and its extensions), `network/` (the
//! network filter chain's), `common/` (what several filters share: the token buckets, the RBAC
//! engine).

pub mod common;
pub mod http;
pub mod network;
