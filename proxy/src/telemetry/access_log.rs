//! Access-log writers. Lines are formatted on the worker into a thread-local buffer and
//! appended to the sink's buffer; a background thread flushes every second (Envoy's default
//! file flush interval), and a full buffer is flushed at once. Sinks with the same path share
//! one buffer and one file.

use crate::model::access_log::{AccessLogConfig, FilterInput, JsonField, LogFormat, Sink};
use crate::model::matcher::RequestHeaders;
use crate::telemetry::format::{FormatContext, ValueKind};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FLUSH_AT: usize = 64 * 1024;

/// A buffered output shared by every logger writing to the same place.
pub struct SinkWriter {
    target: Sink,
    state: Mutex<SinkState>,
}

struct SinkState {
    buf: Vec<u8>,
    file: Option<std::fs::File>,
}

impl SinkWriter {
    fn open(target: &Sink) -> std::io::Result<Option<std::fs::File>> {
        match target {
            Sink::File(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Some),
            _ => Ok(None),
        }
    }

    fn write_out(&self, st: &mut SinkState) {
        if st.buf.is_empty() {
            return;
        }
        let r = match &self.target {
            Sink::Stdout => std::io::stdout().lock().write_all(&st.buf),
            Sink::Stderr => std::io::stderr().lock().write_all(&st.buf),
            Sink::File(_) => match st.file.as_mut() {
                Some(f) => f.write_all(&st.buf),
                None => Ok(()),
            },
        };
        if let Err(e) = r {
            tracing::warn!("access log write failed: {e}");
        }
        st.buf.clear();
    }

    pub fn append(&self, line: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.buf.extend_from_slice(line);
        if st.buf.len() >= FLUSH_AT {
            self.write_out(&mut st);
        }
    }

    pub fn flush(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.write_out(&mut st);
    }

    /// `POST /reopen_logs`: reopen the file (after rotation).
    pub fn reopen(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.write_out(&mut st);
        match Self::open(&self.target) {
            Ok(f) => st.file = f,
            Err(e) => tracing::warn!("reopening access log failed: {e}"),
        }
    }
}

/// All sinks of the process, for the flusher and `/reopen_logs`.
#[derive(Default)]
pub struct Sinks {
    sinks: Mutex<HashMap<String, Arc<SinkWriter>>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

impl Sinks {
    /// The start phase: flush every `every` (`--file-flush-interval-msec`) on a thread of its
    /// own, for as long as the sinks live.
    pub fn start_flusher(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(sinks) = weak.upgrade() else { return };
                    sinks.flush_all();
                }
            })
            .map(|_| ())
    }

    pub fn get(&self, target: &Sink) -> std::io::Result<Arc<SinkWriter>> {
        let key = match target {
            Sink::File(p) => p.display().to_string(),
            Sink::Stdout => "/dev/stdout".into(),
            Sink::Stderr => "/dev/stderr".into(),
        };
        let mut m = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(&key) {
            return Ok(s.clone());
        }
        let file = SinkWriter::open(target)?;
        let w = Arc::new(SinkWriter {
            target: target.clone(),
            state: Mutex::new(SinkState {
                buf: Vec::new(),
                file,
            }),
        });
        m.insert(key, w.clone());
        Ok(w)
    }

    pub fn flush_all(&self) {
        let all: Vec<_> = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in all {
            s.flush();
        }
    }

    pub fn reopen_all(&self) {
        let all: Vec<_> = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in all {
            s.reopen();
        }
    }
}

/// One configured access log.
pub struct AccessLogger {
    pub config: AccessLogConfig,
    sink: Arc<SinkWriter>,
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

impl AccessLogger {
    pub fn new(config: AccessLogConfig, sinks: &Sinks) -> std::io::Result<Self> {
        let sink = sinks.get(&config.sink)?;
        Ok(Self { config, sink })
    }

    /// Write one line if the filter passes.
    pub fn log(&self, ctx: &FormatContext<'_>, input: &FilterInput<'_>) {
        if let Some(f) = &self.config.filter
            && !f.evaluate(input)
        {
            return;
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            match &self.config.format {
                LogFormat::Text(f) => f.format(ctx, &mut line),
                LogFormat::Json {
                    fields,
                    omit_empty_values,
                    typed,
                } => {
                    write_json_object(fields, ctx, *omit_empty_values, *typed, &mut line);
                    line.push('\n');
                }
            }
            self.sink.append(line.as_bytes());
        });
    }
}

/// Render a log format (used by local-reply JSON bodies too).
pub fn render(format: &LogFormat, ctx: &FormatContext<'_>, out: &mut String) {
    match format {
        LogFormat::Text(f) => f.format(ctx, out),
        LogFormat::Json {
            fields,
            omit_empty_values,
            typed,
        } => write_json_object(fields, ctx, *omit_empty_values, *typed, out),
    }
}

/// Envoy's JSON formatter: keys sorted (at parse time); a single-operator value typed, a
/// missing one `null` (left out with `omit_empty_values`, and so is a nested object left
/// empty); literals as given, whole numbers without a fraction.
fn write_json_object(
    fields: &[(String, JsonField)],
    ctx: &FormatContext<'_>,
    omit_empty: bool,
    typed: bool,
    out: &mut String,
) {
    out.push('{');
    let mut first = true;
    let mut value = String::new();
    for (key, field) in fields {
        value.clear();
        let kind = match field {
            JsonField::Format(f) => {
                let k = f.format_json(ctx, omit_empty, &mut value);
                if k == ValueKind::Number && !typed {
                    ValueKind::Text
                } else {
                    k
                }
            }
            JsonField::Nested(inner) => {
                write_json_object(inner, ctx, omit_empty, typed, &mut value);
                if omit_empty && value == "{}" {
                    ValueKind::Missing
                } else {
                    ValueKind::Number // raw JSON
                }
            }
            JsonField::Literal(v) => {
                json_literal(v, &mut value);
                ValueKind::Number
            }
        };
        if omit_empty && kind == ValueKind::Missing {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_string(key, out);
        out.push(':');
        match kind {
            ValueKind::Number => out.push_str(&value),
            ValueKind::Text => json_string(&value, out),
            ValueKind::Missing => out.push_str("null"),
        }
    }
    out.push('}');
}

/// A literal from the configuration's Struct (whose numbers are all doubles): a whole number
/// is written as an integer, as Envoy writes it.
fn json_literal(v: &serde_json::Value, out: &mut String) {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => out.push_str(&(f as i64).to_string()),
        _ => out.push_str(&v.to_string()),
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Build the filter input for a finished stream.
pub fn filter_input<'a>(
    info: &crate::stream_info::StreamInfo,
    request: Option<&'a RequestHeaders<'a>>,
) -> FilterInput<'a> {
    let end = info
        .last_downstream_tx
        .unwrap_or_else(std::time::Instant::now);
    FilterInput {
        response_code: info.response_code.unwrap_or(0),
        duration_ms: end.duration_since(info.start).as_millis() as u64,
        response_flags: info.response_flags,
        health_check: info.health_check,
        request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format::Formatter;

    #[test]
    fn json_lines_are_sorted_typed_and_escaped() {
        let fields = vec![
            (
                "code".to_string(),
                JsonField::Format(Formatter::parse("%RESPONSE_CODE%").unwrap()),
            ),
            (
                "flags".to_string(),
                JsonField::Format(Formatter::parse("%RESPONSE_FLAGS%").unwrap()),
            ),
            (
                "route".to_string(),
                JsonField::Format(Formatter::parse("%ROUTE_NAME%").unwrap()),
            ),
            (
                "text".to_string(),
                JsonField::Format(Formatter::parse("a\"b %PROTOCOL%").unwrap()),
            ),
        ];
        let mut out = String::new();
        write_json_object(&fields, &FormatContext::default(), false, true, &mut out);
        assert_eq!(
            out, r#"{"code":0,"flags":null,"route":null,"text":"a\"b -"}"#,
            "a missing value is null, as in Envoy"
        );
        out.clear();
        write_json_object(&fields, &FormatContext::default(), true, true, &mut out);
        assert_eq!(out, r#"{"code":0,"text":"a\"b "}"#);
    }

    /// Envoy's JSON: whole-number literals without a fraction; with `omit_empty_values` a
    /// nested object whose values are all missing is left out.
    #[test]
    fn json_literals_and_empty_nested_objects() {
        let fields = vec![
            (
                "lit".to_string(),
                JsonField::Literal(serde_json::json!(5.0)),
            ),
            (
                "half".to_string(),
                JsonField::Literal(serde_json::json!(0.5)),
            ),
            (
                "nested".to_string(),
                JsonField::Nested(vec![(
                    "r".to_string(),
                    JsonField::Format(Formatter::parse("%ROUTE_NAME%").unwrap()),
                )]),
            ),
        ];
        let mut out = String::new();
        write_json_object(&fields, &FormatContext::default(), false, true, &mut out);
        assert_eq!(out, r#"{"lit":5,"half":0.5,"nested":{"r":null}}"#);
        out.clear();
        write_json_object(&fields, &FormatContext::default(), true, true, &mut out);
        assert_eq!(out, r#"{"lit":5,"half":0.5}"#);
    }
}
