//! Upstream: clusters and the cluster manager, hosts, DNS resolution, load balancing,
//! connection pools.

pub mod circuit_breakers;
pub mod cluster;
pub mod dns;
pub mod dns_refresh;
pub mod hash;
pub mod health_check;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
