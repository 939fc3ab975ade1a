//! Application logging with Envoy's logger names and runtime level changes (`POST /logging`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Envoy logger names and the remora modules they cover.
pub const LOGGERS: &[(&str, &str)] = &[
    ("admin", "remora::admin"),
    ("config", "remora::config"),
    ("connection", "remora::listener"),
    ("dns", "remora::upstream::cluster"),
    ("filter", "remora::model"),
    ("http", "remora::http"),
    ("http2", "remora::http::server"),
    ("main", "remora::server"),
    ("misc", "remora"),
    ("pool", "remora::upstream::pool"),
    ("router", "remora::http::router"),
    ("runtime", "remora::model::runtime"),
    ("tcp", "remora::tcp"),
    ("upstream", "remora::upstream"),
];

/// Parse an Envoy level name into a tracing directive level.
pub fn level(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// Display name of a level as Envoy prints it.
fn display(level: &str) -> &str {
    match level {
        "warn" => "warning",
        other => other,
    }
}

type Handle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Current levels and the handle to change them.
pub struct LogControl {
    handle: Option<Handle>,
    levels: Mutex<BTreeMap<&'static str, &'static str>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogControl {
    /// Install the global subscriber. `component_levels`: Envoy's `--component-log-level`.
    pub fn init(
        default: &str,
        component_levels: Option<&str>,
        log_path: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let default = level(default).ok_or_else(|| format!("invalid log level '{default}'"))?;
        let mut levels: BTreeMap<&'static str, &'static str> =
            LOGGERS.iter().map(|(n, _)| (*n, default)).collect();
        if let Some(spec) = component_levels {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let (name, lvl) = item.split_once(':').ok_or_else(|| {
                    format!("invalid component log level '{item}' (expected name:level)")
                })?;
                let l = level(lvl)
                    .ok_or_else(|| format!("invalid log level '{lvl}' for component '{name}'"))?;
                let key = LOGGERS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(n, _)| *n)
                    .ok_or_else(|| format!("unknown logger '{name}'"))?;
                levels.insert(key, l);
            }
        }
        let filter = build_filter(&levels);
        let (layer, handle) = reload::Layer::new(filter);
        let fmt = tracing_subscriber::fmt::layer().with_target(true);
        let registry = tracing_subscriber::registry().with(layer);
        let installed = match log_path {
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open --log-path {}: {e}", p.display()))?;
                registry
                    .with(fmt.with_writer(Mutex::new(file)).with_ansi(false))
                    .try_init()
            }
            None => registry.with(fmt.with_writer(std::io::stderr)).try_init(),
        };
        Ok(Self {
            handle: installed.ok().map(|_| handle),
            levels: Mutex::new(levels),
        })
    }

    /// For tests and embedding: no subscriber.
    pub fn disabled() -> Self {
        Self {
            handle: None,
            levels: Mutex::new(LOGGERS.iter().map(|(n, _)| (*n, "info")).collect()),
        }
    }

    /// Set all loggers.
    pub fn set_all(&self, lvl: &'static str) {
        let mut l = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        for v in l.values_mut() {
            *v = lvl;
        }
        self.apply(&l);
    }

    /// Set one logger; returns false if the name is unknown.
    pub fn set(&self, name: &str, lvl: &'static str) -> bool {
        let mut l = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = LOGGERS.iter().find(|(n, _)| *n == name).map(|(n, _)| *n) else {
            return false;
        };
        l.insert(key, lvl);
        self.apply(&l);
        true
    }

    fn apply(&self, levels: &BTreeMap<&'static str, &'static str>) {
        if let Some(h) = &self.handle {
            let _ = h.reload(build_filter(levels));
        }
    }

    /// `active loggers:\n  admin: info\n...`
    pub fn listing(&self) -> String {
        let l = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::from("active loggers:\n");
        for (name, lvl) in l.iter() {
            s.push_str(&format!("  {name}: {}\n", display(lvl)));
        }
        s
    }
}

fn build_filter(levels: &BTreeMap<&'static str, &'static str>) -> EnvFilter {
    // "misc" covers the crate root; more specific module directives override it.
    let root = levels.get("misc").copied().unwrap_or("info");
    let mut directives = vec![format!("warn,remora={root}")];
    for (name, module) in LOGGERS {
        if *name == "misc" {
            continue;
        }
        if let Some(l) = levels.get(name) {
            directives.push(format!("{module}={l}"));
        }
    }
    EnvFilter::try_new(directives.join(",")).unwrap_or_else(|_| EnvFilter::new("info"))
}
