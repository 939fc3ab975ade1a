//! HTTP filters accepted as no-ops (purely observational, or with nothing configured to do):
//! Istio's stats, gRPC stats, the discovery half of Istio's peer metadata. They create no
//! per-stream filter; each is listed in `/config_dump`'s remora.NoopExtensions and counted
//! once per built connection manager in `server.noop_extension.<short name>`.

use crate::model::hcm::NoopFilter;
use crate::telemetry::stats::Store;

/// Count a built no-op filter.
pub fn register(store: &Store, n: &NoopFilter) {
    store
        .counter(&format!("server.noop_extension.{}", n.short))
        .inc();
}
