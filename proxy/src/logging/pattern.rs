//! Envoy's application-log line format at runtime: a log event rendered with the parsed
//! `model::log_format` (spdlog pattern flags, or the JSON form whose string values are patterns).
//!
//! Times are UTC (a container's local time); `%z` prints `+00:00`.

use crate::model::log_format::{Flag, JsonValue, LineFormat, Pattern, Piece};
use crate::telemetry::format::{MONTHS, WEEKDAYS, civil, weekday};
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// One log event, as the pattern sees it.
#[derive(Debug)]
pub struct Record<'a> {
    pub time: SystemTime,
    /// Envoy's level name: trace, debug, info, warning, error, critical.
    pub level: &'a str,
    /// Envoy's logger name (`upstream`, `config`, …).
    pub logger: &'a str,
    pub file: &'a str,
    pub line: u32,
    /// The Rust module the event came from (stands in for spdlog's function name).
    pub function: &'a str,
    pub thread: u64,
    pub message: &'a str,
}
// === impl Pattern (rendering) ===

impl Pattern {
    /// Append the formatted record (no trailing newline).
    pub fn render(&self, r: &Record<'_>, out: &mut String) {
        let clock = Clock::new(r.time);
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => out.push_str(l),
                Piece::Flag(f) => render_flag(*f, r, &clock, out),
            }
        }
    }

    /// Render inside a JSON string: literal text and flag values are JSON-escaped once
    /// (`%j` is the message escaped once).
    fn render_json(&self, r: &Record<'_>, out: &mut String) {
        let clock = Clock::new(r.time);
        let mut tmp = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => json_escape(l, out),
                Piece::Flag(Flag::MessageJsonEscaped) => json_escape(r.message, out),
                Piece::Flag(f) => {
                    tmp.clear();
                    render_flag(*f, r, &clock, &mut tmp);
                    json_escape(&tmp, out);
                }
            }
        }
    }
}

/// The civil time of a record, computed once per line.
struct Clock {
    nanos: u32,
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    weekday: usize,
}

impl Clock {
    fn new(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs() as i64;
        let (y, mo, d, h, mi, s) = civil(secs);
        Self {
            nanos: since.subsec_nanos(),
            y,
            mo,
            d,
            h,
            mi,
            s,
            weekday: weekday(secs),
        }
    }

    fn h12(&self) -> u32 {
        match self.h % 12 {
            0 => 12,
            x => x,
        }
    }

    fn ampm(&self) -> &'static str {
        if self.h < 12 { "AM" } else { "PM" }
    }
}

fn render_flag(flag: Flag, r: &Record<'_>, c: &Clock, out: &mut String) {
    let (y, mo, d, h, mi, s, nanos) = (c.y, c.mo, c.d, c.h, c.mi, c.s, c.nanos);
    let weekday = WEEKDAYS[c.weekday];
    let month = MONTHS[mo as usize - 1];
    let _ = match flag {
        Flag::Message => {
            out.push_str(r.message);
            Ok(())
        }
        Flag::MessageCEscaped => {
            c_escape(r.message, out);
            Ok(())
        }
        Flag::MessageJsonEscaped => {
            json_escape(r.message, out);
            Ok(())
        }
        Flag::Thread => write!(out, "{}", r.thread),
        Flag::Pid => write!(out, "{}", std::process::id()),
        Flag::Logger => {
            out.push_str(r.logger);
            Ok(())
        }
        Flag::Level => {
            out.push_str(r.level);
            Ok(())
        }
        Flag::ShortLevel => {
            out.push(short_level(r.level));
            Ok(())
        }
        Flag::WeekdayShort => {
            out.push_str(&weekday[..3]);
            Ok(())
        }
        Flag::WeekdayLong => {
            out.push_str(weekday);
            Ok(())
        }
        Flag::MonthShort => {
            out.push_str(&month[..3]);
            Ok(())
        }
        Flag::MonthLong => {
            out.push_str(month);
            Ok(())
        }
        Flag::DateTime => write!(
            out,
            "{} {} {d:2} {h:02}:{mi:02}:{s:02} {y}",
            &weekday[..3],
            &month[..3]
        ),
        Flag::Year2 => write!(out, "{:02}", y.rem_euclid(100)),
        Flag::Year4 => write!(out, "{y:04}"),
        Flag::ShortDate => write!(out, "{mo:02}/{d:02}/{:02}", y.rem_euclid(100)),
        Flag::Month => write!(out, "{mo:02}"),
        Flag::Day => write!(out, "{d:02}"),
        Flag::Hour24 => write!(out, "{h:02}"),
        Flag::Hour12 => write!(out, "{:02}", c.h12()),
        Flag::Minute => write!(out, "{mi:02}"),
        Flag::Second => write!(out, "{s:02}"),
        Flag::Millis => write!(out, "{:03}", nanos / 1_000_000),
        Flag::Micros => write!(out, "{:06}", nanos / 1_000),
        Flag::Nanos => write!(out, "{nanos:09}"),
        Flag::AmPm => {
            out.push_str(c.ampm());
            Ok(())
        }
        Flag::Clock12 => write!(out, "{:02}:{mi:02}:{s:02} {}", c.h12(), c.ampm()),
        Flag::HourMinute => write!(out, "{h:02}:{mi:02}"),
        Flag::Time => write!(out, "{h:02}:{mi:02}:{s:02}"),
        Flag::TzOffset => {
            out.push_str("+00:00");
            Ok(())
        }
        Flag::SourceLocation => write!(out, "{}:{}", r.file, r.line),
        Flag::SourceBase => {
            out.push_str(r.file.rsplit('/').next().unwrap_or(r.file));
            Ok(())
        }
        Flag::SourcePath => {
            out.push_str(r.file);
            Ok(())
        }
        Flag::Line => write!(out, "{}", r.line),
        Flag::Function => {
            out.push_str(r.function);
            Ok(())
        }
    };
}

fn short_level(level: &str) -> char {
    match level {
        "trace" => 'T',
        "debug" => 'D',
        "info" => 'I',
        "warning" => 'W',
        "error" => 'E',
        "critical" => 'C',
        _ => '?',
    }
}

/// C-style escapes (`--log-format-escaped`, `%_`): control characters and backslashes.
pub(super) fn c_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn json_escape(s: &str, out: &mut String) {
    let quoted = serde_json::Value::String(s.to_owned()).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

// === impl LineFormat (rendering) ===

impl LineFormat {
    pub fn render(&self, r: &Record<'_>, out: &mut String) {
        match self {
            Self::Text(p) => p.render(r, out),
            Self::Json(fields) => render_object(fields, r, out),
        }
    }
}

fn render_object(fields: &[(String, JsonValue)], r: &Record<'_>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        json_escape(k, out);
        out.push_str("\":");
        render_value(v, r, out);
    }
    out.push('}');
}

fn render_value(v: &JsonValue, r: &Record<'_>, out: &mut String) {
    match v {
        JsonValue::Pattern(p) => {
            out.push('"');
            p.render_json(r, out);
            out.push('"');
        }
        JsonValue::Literal(l) => out.push_str(&l.to_string()),
        JsonValue::Object(o) => render_object(o, r, out),
        JsonValue::List(l) => {
            out.push('[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_value(v, r, out);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::log_format::DEFAULT;
    use std::time::Duration;

    fn record(message: &str) -> Record<'_> {
        Record {
            // 2018-03-27T15:25:06.008789123Z, a Tuesday.
            time: UNIX_EPOCH + Duration::new(1_522_164_306, 8_789_123),
            level: "warning",
            logger: "upstream",
            file: "proxy/src/upstream/cluster.rs",
            line: 123,
            function: "remora::upstream::cluster",
            thread: 1232,
            message,
        }
    }

    fn render(p: &str, msg: &str) -> String {
        let mut s = String::new();
        Pattern::parse(p).unwrap().render(&record(msg), &mut s);
        s
    }

    #[test]
    fn envoy_default_and_istio_pattern() {
        assert_eq!(
            render(DEFAULT, "hello"),
            "[2018-03-27 15:25:06.008][1232][warning][upstream] \
             [proxy/src/upstream/cluster.rs:123] hello"
        );
        // The pattern pilot-agent writes into the bootstrap.
        assert_eq!(
            render("%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t", "x"),
            "2018-03-27T15:25:06.008789Z\twarning\tenvoy upstream \
             proxy/src/upstream/cluster.rs:123\tx\tthread=1232"
        );
    }

    #[test]
    fn every_documented_flag() {
        assert_eq!(
            render(
                "%a %A %b %B %C %D %x %I %p %r %R %X %z %F %L %s %@ %! %%",
                "m"
            ),
            "Tue Tuesday Mar March 18 03/27/18 03/27/18 03 PM 03:25:06 PM 15:25 15:25:06 \
             +00:00 008789123 W cluster.rs proxy/src/upstream/cluster.rs:123 \
             remora::upstream::cluster %"
        );
        assert_eq!(render("%c", "m"), "Tue Mar 27 15:25:06 2018");
        assert_eq!(render("%P", "m"), std::process::id().to_string());
    }

    #[test]
    fn escaped_messages() {
        assert_eq!(render("%_", "a\nb\t\"c\"\\"), "a\\nb\\t\"c\"\\\\");
        assert_eq!(render("%j", "a\nb\"c\""), "a\\nb\\\"c\\\"");
    }

    #[test]
    fn json_lines_are_valid_json() {
        let spec = serde_json::json!({
            "time": "%Y-%m-%dT%T.%eZ",
            "level": "%l",
            "msg": "%j",
            "nested": {"where": "%s:%#", "n": 3},
            "flag": true
        });
        let f = LineFormat::json(spec.as_object().unwrap()).unwrap();
        let mut s = String::new();
        f.render(&record("say \"hi\"\nthere"), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["time"], "2018-03-27T15:25:06.008Z");
        assert_eq!(v["nested"]["where"], "cluster.rs:123");
        assert_eq!(v["nested"]["n"], 3);
        assert_eq!(v["flag"], true);
        assert_eq!(v["msg"], "say \"hi\"\nthere");
    }
}
