//! Upstream: clusters and the cluster manager, hosts, load balancing, connection pools.

pub mod cluster;
pub mod host;
pub mod lb;
pub mod pool;
