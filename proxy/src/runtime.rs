//! The server's runtime snapshot (Envoy's `Runtime::Loader`): the layered runtime translated
//! with the bootstrap, read per request by what honours runtime keys at request time (the
//! fault filter). A disk layer is read again when its `symlink_root` is swapped (Envoy watches
//! for the link being moved over; here the server's file `Watcher` checks the link's inode
//! every poll), and the new snapshot replaces the old one at once: a request reads one
//! snapshot.
//!
//! `runtime.*` stats as Envoy's: `load_success`/`load_error` per load, `num_keys`,
//! `num_layers`, `override_dir_exists`/`override_dir_not_exists`, `admin_overrides_active`.

use crate::model::runtime::Runtime;
use crate::telemetry::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The current runtime and what re-reads its disk layers.
pub struct RuntimeLoader {
    snapshot: ArcSwap<Runtime>,
    /// Each disk layer's symlink root and its inode when last seen.
    roots: Mutex<Vec<(PathBuf, Option<Stamp>)>>,
    stats: RuntimeStats,
}

impl std::fmt::Debug for RuntimeLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeLoader")
            .field("keys", &self.snapshot.load().values.len())
            .finish_non_exhaustive()
    }
}

/// What identifies the link at a symlink root: a swap (`mv -T new current`) puts another
/// inode there.
type Stamp = (u64, u64, i64, i64);

struct RuntimeStats {
    load_success: Arc<Counter>,
    load_error: Arc<Counter>,
    override_dir_exists: Arc<Counter>,
    override_dir_not_exists: Arc<Counter>,
    num_keys: Arc<Gauge>,
    num_layers: Arc<Gauge>,
}

impl RuntimeLoader {
    /// The loader of the translated runtime (its first load counted in the stats).
    pub fn new(initial: Arc<Runtime>, store: &Store) -> Arc<Self> {
        let stats = RuntimeStats {
            load_success: store.counter("runtime.load_success"),
            load_error: store.counter("runtime.load_error"),
            override_dir_exists: store.counter("runtime.override_dir_exists"),
            override_dir_not_exists: store.counter("runtime.override_dir_not_exists"),
            num_keys: store.gauge("runtime.num_keys"),
            num_layers: store.gauge("runtime.num_layers"),
        };
        store.counter("runtime.deprecated_feature_use");
        store.gauge("runtime.admin_overrides_active").set(0);
        store
            .gauge("runtime.deprecated_feature_seen_since_process_start")
            .set(0);
        let roots = initial
            .disk_roots()
            .into_iter()
            .map(|r| (PathBuf::from(r), stamp(r)))
            .collect();
        let loader = Self {
            snapshot: ArcSwap::new(initial.clone()),
            roots: Mutex::new(roots),
            stats,
        };
        loader.count(&initial);
        Arc::new(loader)
    }

    /// A loader with no stats for unit tests.
    #[cfg(test)]
    pub fn for_tests(rt: Runtime) -> Arc<Self> {
        Self::new(Arc::new(rt), &Store::default())
    }

    /// The snapshot to read now (keep it for the whole decision it serves).
    #[inline]
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.snapshot.load_full()
    }

    /// Whether some layer is on disk (then it is worth watching).
    pub fn watches_disk(&self) -> bool {
        !self.lock_roots().is_empty()
    }

    /// Read every disk layer again and publish the new snapshot.
    pub fn reload(&self) {
        let next = self
            .snapshot
            .load()
            .reload_disk(crate::config::inputs::read_dir_tree);
        self.count(&next);
        tracing::info!(
            keys = next.values.len(),
            "runtime: disk layers re-read after their symlink root changed"
        );
        self.snapshot.store(Arc::new(next));
    }

    /// Replace the snapshot (tests setting runtime values).
    #[cfg(test)]
    pub fn set(&self, rt: Runtime) {
        self.snapshot.store(Arc::new(rt));
    }

    fn count(&self, rt: &Runtime) {
        let r = rt.report();
        if r.errors == 0 {
            self.stats.load_success.inc();
        } else {
            self.stats.load_error.inc();
        }
        // Envoy's condition, kept as it is (more than one disk layer read).
        if r.disk_layers > 1 {
            self.stats.override_dir_exists.inc();
        } else {
            self.stats.override_dir_not_exists.inc();
        }
        self.stats.num_keys.set(rt.values.len() as i64);
        self.stats.num_layers.set(r.layers as i64);
    }

    fn lock_roots(&self) -> std::sync::MutexGuard<'_, Vec<(PathBuf, Option<Stamp>)>> {
        self.roots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl remora_certs::source::Refresh for RuntimeLoader {
    /// A swapped symlink root (its inode changed, it appeared or went away) reloads.
    fn refresh(&self) {
        let mut changed = false;
        for (root, seen) in self.lock_roots().iter_mut() {
            let now = stamp_path(root);
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        if changed {
            self.reload();
        }
    }
}

fn stamp(root: &str) -> Option<Stamp> {
    stamp_path(std::path::Path::new(root))
}

fn stamp_path(root: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(root).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inputs::Inputs;
    use remora_certs::source::Refresh;

    fn layered(root: &str) -> Runtime {
        let yaml = format!(
            "layers:\n- {{name: static, static_layer: {{fault: {{http: {{abort: {{abort_percent: 5}}}}}}}}}}\n- {{name: disk, disk_layer: {{symlink_root: {root}, subdirectory: envoy}}}}\n"
        );
        let path = crate::config::FieldPath::new("layered_runtime");
        let lr: crate::model::pb::bootstrap::LayeredRuntime =
            crate::config::decode_yaml("envoy.config.bootstrap.v3.LayeredRuntime", &yaml, &path);
        crate::config::inputs::translate(|inputs: Arc<Inputs>| {
            Runtime::from_proto(&path, &Some(lr.clone()), &inputs)
        })
        .expect("translates")
    }

    /// The Envoy example's way of changing the runtime: write a new tree, point a new link at
    /// it and move the link over the root.
    fn publish(dir: &std::path::Path, version: &str, files: &[(&str, &str)]) {
        let tree = dir.join(version).join("envoy");
        std::fs::create_dir_all(&tree).unwrap();
        for (k, v) in files {
            let p = tree.join(k.replace('.', "/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        let new = dir.join("new");
        let _ = std::fs::remove_file(&new);
        std::os::unix::fs::symlink(dir.join(version), &new).unwrap();
        std::fs::rename(&new, dir.join("current")).unwrap();
    }

    #[test]
    fn a_swapped_root_is_read_again_and_published() {
        let dir = std::env::temp_dir().join(format!("remora-runtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("current");
        publish(
            &dir,
            "v1",
            &[("fault.http.abort.abort_percent", "# a comment\n50\n")],
        );
        let store = Store::default();
        let loader = RuntimeLoader::new(Arc::new(layered(root.to_str().unwrap())), &store);
        assert!(loader.watches_disk());
        let rt = loader.snapshot();
        assert_eq!(rt.u64("fault.http.abort.abort_percent"), Some(50), "{rt:?}");
        assert_eq!(store.counter("runtime.load_success").value(), 1);
        assert_eq!(store.gauge("runtime.num_layers").value(), 2);

        // Nothing changed: nothing read.
        loader.refresh();
        assert_eq!(store.counter("runtime.load_success").value(), 1);

        publish(
            &dir,
            "v2",
            &[("fault.http.delay.fixed_delay_percent", "100")],
        );
        loader.refresh();
        let rt = loader.snapshot();
        assert_eq!(rt.u64("fault.http.delay.fixed_delay_percent"), Some(100));
        // The static layer's value shows again under the new tree.
        assert_eq!(rt.u64("fault.http.abort.abort_percent"), Some(5));
        assert_eq!(store.counter("runtime.load_success").value(), 2);
        assert_eq!(store.gauge("runtime.num_keys").value(), 2);

        // The root removed: the layer is skipped, the static values stay.
        std::fs::remove_file(&root).unwrap();
        loader.refresh();
        let rt = loader.snapshot();
        assert_eq!(rt.values.len(), 1);
        assert_eq!(store.gauge("runtime.num_layers").value(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
