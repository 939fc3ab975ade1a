//! Application logging with Envoy's logger names and runtime level changes (`POST /logging`).

pub mod pattern;

use crate::model::log_format::LineFormat;
use arc_swap::ArcSwap;
use pattern::Record;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
    format: Arc<ArcSwap<LineFormat>>,
    /// `--log-format` was given (then the bootstrap may not set one too).
    format_from_cli: bool,
    config_version: ConfigVersion,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogControl {
    /// Install the global subscriber. `component_levels`: Envoy's `--component-log-level`.
    /// `format`: `--log-format` (Envoy's default pattern otherwise); `escaped`:
    /// `--log-format-escaped`.
    pub fn init(
        default: &str,
        component_levels: Option<&str>,
        log_path: Option<&std::path::Path>,
        format: Option<&str>,
        escaped: bool,
    ) -> Result<Self, String> {
        let line_format = match format {
            Some(f) => LineFormat::text(f).map_err(|e| format!("--log-format: {e}"))?,
            None => LineFormat::default(),
        };
        let line_format = Arc::new(ArcSwap::from_pointee(line_format));
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
        let fmt = tracing_subscriber::fmt::layer().event_format(EnvoyLines {
            format: line_format.clone(),
            escaped,
        });
        let registry = tracing_subscriber::registry().with(layer).with(LogTags);
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
            format: line_format,
            format_from_cli: format.is_some(),
            config_version: ConfigVersion::default(),
        })
    }

    /// Apply the bootstrap's `application_log_config.log_format`. As Envoy, it may not be
    /// combined with `--log-format`.
    pub fn set_format(&self, format: LineFormat) -> Result<(), String> {
        if self.format_from_cli {
            return Err(
                "Only one of ApplicationLogConfig.log_format or CLI option --log-format \
                        can be specified."
                    .into(),
            );
        }
        self.format.store(Arc::new(format));
        Ok(())
    }

    /// For tests and embedding: no subscriber.
    pub fn disabled() -> Self {
        Self {
            handle: None,
            levels: Mutex::new(LOGGERS.iter().map(|(n, _)| (*n, "info")).collect()),
            format: Arc::new(ArcSwap::from_pointee(LineFormat::default())),
            format_from_cli: false,
            config_version: ConfigVersion::default(),
        }
    }

    /// The configuration version the panic report names; whoever applies a configuration
    /// (bootstrap, xDS) sets it.
    pub fn config_version(&self) -> ConfigVersion {
        self.config_version.clone()
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

/// The Envoy logger an event's module belongs to (the longest matching module prefix).
fn logger_of(target: &str) -> &'static str {
    LOGGERS
        .iter()
        .filter(|(_, module)| {
            target == *module
                || target
                    .strip_prefix(module)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .max_by_key(|(_, module)| module.len())
        .map(|(name, _)| *name)
        .unwrap_or("misc")
}

fn level_name(l: &tracing::Level) -> &'static str {
    match *l {
        tracing::Level::TRACE => "trace",
        tracing::Level::DEBUG => "debug",
        tracing::Level::INFO => "info",
        tracing::Level::WARN => "warning",
        tracing::Level::ERROR => "error",
    }
}

thread_local! {
    /// The kernel's id of this thread (what Envoy's `%t` prints), read once per thread.
    static THREAD_ID: u64 = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
}

// === impl EnvoyLines ===

/// Formats each event with the configured Envoy line format.
struct EnvoyLines {
    format: Arc<ArcSwap<LineFormat>>,
    escaped: bool,
}

/// The message, then any other fields as ` key=value`.
#[derive(Default)]
struct Message(String, String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            use std::fmt::Write;
            let _ = write!(self.1, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }
}

impl<S, N> FormatEvent<S, N> for EnvoyLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut msg = Message::default();
        event.record(&mut msg);
        msg.0.push_str(&msg.1);
        if let Some(scope) = ctx.event_scope() {
            let mut tags = Tags::default();
            for span in scope.from_root() {
                if let Some(t) = span.extensions().get::<Tag>() {
                    tags.add(*t);
                }
            }
            msg.0.insert_str(0, &tags.prefix());
        }
        let message = if self.escaped {
            let mut s = String::with_capacity(msg.0.len());
            pattern::c_escape(&msg.0, &mut s);
            s
        } else {
            msg.0
        };
        let record = Record {
            time: std::time::SystemTime::now(),
            level: level_name(meta.level()),
            logger: logger_of(meta.target()),
            file: meta.file().unwrap_or(""),
            line: meta.line().unwrap_or(0),
            function: meta.module_path().unwrap_or(""),
            thread: THREAD_ID.with(|t| *t),
            message: &message,
        };
        let mut line = String::with_capacity(128 + message.len());
        self.format.load().render(&record, &mut line);
        line.push('\n');
        writer.write_str(&line)
    }
}

// === connection and stream tags ===

/// The span that carries a downstream connection's id (`id` field).
pub const CONNECTION_SPAN: &str = "conn";
/// The span that carries a stream's id (`id` field), inside its connection's span.
pub const STREAM_SPAN: &str = "stream";

/// A connection or stream id, kept on its span for the line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Connection(u64),
    Stream(u64),
}

/// The ids in scope, rendered as Envoy's log tags.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tags {
    pub connection: Option<u64>,
    pub stream: Option<u64>,
}

impl Tags {
    fn add(&mut self, t: Tag) {
        match t {
            Tag::Connection(id) => self.connection = Some(id),
            Tag::Stream(id) => self.stream = Some(id),
        }
    }

    /// Envoy's `[Tags: "ConnectionId":"12","StreamId":"345"] ` message prefix (empty without
    /// ids; a stream without a connection is connection 0, as in Envoy).
    pub fn prefix(&self) -> String {
        match (self.connection, self.stream) {
            (None, None) => String::new(),
            (Some(c), None) => format!("[Tags: \"ConnectionId\":\"{c}\"] "),
            (c, Some(s)) => format!(
                "[Tags: \"ConnectionId\":\"{}\",\"StreamId\":\"{s}\"] ",
                c.unwrap_or(0)
            ),
        }
    }
}

/// The ids of the spans the current thread is in (for the panic report).
pub fn current_tags() -> Tags {
    let mut tags = Tags::default();
    tracing::dispatcher::get_default(|d| {
        let Some(registry) = d.downcast_ref::<tracing_subscriber::Registry>() else {
            return;
        };
        // Not `Span::current()`: a nested `get_default` sees no subscriber.
        let Some(id) = d.current_span().id().cloned() else {
            return;
        };
        if let Some(span) = registry.span(&id) {
            for s in span.scope().from_root() {
                if let Some(t) = s.extensions().get::<Tag>() {
                    tags.add(*t);
                }
            }
        }
    });
    tags
}

/// Records the `id` of connection and stream spans as a [`Tag`].
struct LogTags;

#[derive(Default)]
struct IdField(Option<u64>);

impl Visit for IdField {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "id" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S> tracing_subscriber::Layer<S> for LogTags
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = attrs.metadata();
        if !meta.target().starts_with("remora") {
            return;
        }
        let mut v = IdField::default();
        attrs.record(&mut v);
        let tag = match (meta.name(), v.0) {
            (CONNECTION_SPAN, Some(n)) => Tag::Connection(n),
            (STREAM_SPAN, Some(n)) => Tag::Stream(n),
            _ => return,
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(tag);
        }
    }
}

/// The last configuration version applied, shared by whoever applies configuration and the
/// panic report.
#[derive(Debug, Clone, Default)]
pub struct ConfigVersion(Arc<Mutex<String>>);

impl ConfigVersion {
    pub fn set(&self, version: &str) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.clear();
        v.push_str(version);
    }

    /// `try_lock`: a panic while the version is being set must not deadlock the report.
    pub fn get(&self) -> Option<String> {
        let v = match self.0.try_lock() {
            Ok(v) => v,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        (!v.is_empty()).then(|| v.clone())
    }
}

/// Log a panic with the connection and stream it happened on (the current spans) and the
/// configuration version, before the default hook runs (and the process ends).
pub fn install_panic_hook(version: ConfigVersion) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let tags = current_tags();
        let version = version.get().unwrap_or_else(|| "unknown".into());
        let connection = tags
            .connection
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        tracing::error!(
            "panic on connection {connection} with configuration version {version}: {info}"
        );
        eprintln!(
            "remora: panic on connection {connection} with configuration version {version}: {info}"
        );
        default_hook(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggers_by_longest_module_prefix() {
        assert_eq!(logger_of("remora::upstream::pool"), "pool");
        assert_eq!(logger_of("remora::upstream::cluster"), "dns");
        assert_eq!(logger_of("remora::upstream::lb"), "upstream");
        assert_eq!(logger_of("remora::http::router"), "router");
        assert_eq!(logger_of("remora::httpx"), "misc");
        assert_eq!(logger_of("h2::codec"), "misc");
    }

    #[test]
    fn connection_and_stream_tags() {
        let subscriber = tracing_subscriber::registry().with(LogTags);
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_tags(), Tags::default());
            let conn = tracing::info_span!(CONNECTION_SPAN, id = 12u64);
            let _c = conn.enter();
            assert_eq!(current_tags().prefix(), "[Tags: \"ConnectionId\":\"12\"] ");
            let stream = tracing::info_span!(STREAM_SPAN, id = 345u64);
            let _s = stream.enter();
            assert_eq!(
                current_tags().prefix(),
                "[Tags: \"ConnectionId\":\"12\",\"StreamId\":\"345\"] "
            );
        });
    }

    #[test]
    fn config_version_handle() {
        let v = ConfigVersion::default();
        assert_eq!(v.get(), None);
        v.clone().set("lds:7");
        assert_eq!(v.get().as_deref(), Some("lds:7"));
    }
}
