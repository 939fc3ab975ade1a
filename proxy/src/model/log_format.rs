//! Envoy's application-log line format, parsed: spdlog pattern flags (`--log-format`,
//! `application_log_config.log_format.text_format`) and the JSON form
//! (`application_log_config.log_format.json_format`, whose string values are patterns).
//! `logging::pattern` renders a log event with them.

/// Envoy's default: `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`.
pub const DEFAULT: &str = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    Message,
    MessageCEscaped,
    MessageJsonEscaped,
    Thread,
    Pid,
    Logger,
    Level,
    ShortLevel,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    DateTime,
    Year2,
    Year4,
    ShortDate,
    Month,
    Day,
    Hour24,
    Hour12,
    Minute,
    Second,
    Millis,
    Micros,
    Nanos,
    AmPm,
    Clock12,
    HourMinute,
    Time,
    TzOffset,
    SourceLocation,
    SourceBase,
    SourcePath,
    Line,
    Function,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(String),
    Flag(Flag),
}

/// A parsed spdlog pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub(crate) pieces: Vec<Piece>,
}

impl Pattern {
    /// Parse a pattern; an unknown flag is an error naming it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(f) = chars.next() else {
                return Err("the pattern ends in a lone '%'".into());
            };
            let flag = match f {
                '%' => {
                    lit.push('%');
                    continue;
                }
                'v' => Flag::Message,
                '_' => Flag::MessageCEscaped,
                'j' => Flag::MessageJsonEscaped,
                't' => Flag::Thread,
                'P' => Flag::Pid,
                'n' => Flag::Logger,
                'l' => Flag::Level,
                'L' => Flag::ShortLevel,
                'a' => Flag::WeekdayShort,
                'A' => Flag::WeekdayLong,
                'b' | 'h' => Flag::MonthShort,
                'B' => Flag::MonthLong,
                'c' => Flag::DateTime,
                'C' => Flag::Year2,
                'Y' => Flag::Year4,
                'D' | 'x' => Flag::ShortDate,
                'm' => Flag::Month,
                'd' => Flag::Day,
                'H' => Flag::Hour24,
                'I' => Flag::Hour12,
                'M' => Flag::Minute,
                'S' => Flag::Second,
                'e' => Flag::Millis,
                'f' => Flag::Micros,
                'F' => Flag::Nanos,
                'p' => Flag::AmPm,
                'r' => Flag::Clock12,
                'R' => Flag::HourMinute,
                'T' | 'X' => Flag::Time,
                'z' => Flag::TzOffset,
                '@' => Flag::SourceLocation,
                's' => Flag::SourceBase,
                'g' => Flag::SourcePath,
                '#' => Flag::Line,
                '!' => Flag::Function,
                other => return Err(format!("'%{other}' is not a supported log format flag")),
            };
            if !lit.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Flag(flag));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self { pieces })
    }

    fn has_raw_message(&self) -> bool {
        self.pieces.iter().any(|p| {
            matches!(
                p,
                Piece::Flag(Flag::Message) | Piece::Flag(Flag::MessageCEscaped)
            )
        })
    }
}

/// The application-log line layout: a text pattern, or a JSON object whose string values are
/// patterns (their text JSON-escaped, so every line is valid JSON; the message is `%j`).
#[derive(Debug, Clone, PartialEq)]
pub enum LineFormat {
    Text(Pattern),
    Json(Vec<(String, JsonValue)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    Pattern(Pattern),
    /// Numbers, booleans and null are written as they are.
    Literal(serde_json::Value),
    Object(Vec<(String, JsonValue)>),
    List(Vec<JsonValue>),
}

impl LineFormat {
    pub fn text(s: &str) -> Result<Self, String> {
        Pattern::parse(s).map(Self::Text)
    }

    /// From `json_format`; an error names the key whose pattern is bad.
    pub fn json(v: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        json_object(v).map(Self::Json)
    }
}

impl Default for LineFormat {
    fn default() -> Self {
        Self::Text(Pattern::parse(DEFAULT).expect("the default pattern parses"))
    }
}

fn json_object(
    v: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, JsonValue)>, String> {
    v.iter()
        .map(|(k, v)| Ok((k.clone(), json_value(v).map_err(|e| format!("{k}: {e}"))?)))
        .collect()
}

fn json_value(v: &serde_json::Value) -> Result<JsonValue, String> {
    Ok(match v {
        serde_json::Value::String(s) => {
            let p = Pattern::parse(s)?;
            if p.has_raw_message() {
                return Err("'%v' and '%_' are not supported in json_format (use '%j')".into());
            }
            JsonValue::Pattern(p)
        }
        serde_json::Value::Object(o) => JsonValue::Object(json_object(o)?),
        serde_json::Value::Array(a) => {
            JsonValue::List(a.iter().map(json_value).collect::<Result<_, _>>()?)
        }
        other => JsonValue::Literal(other.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_flag_and_lone_percent_are_errors() {
        assert_eq!(
            Pattern::parse("%Y %q").unwrap_err(),
            "'%q' is not a supported log format flag"
        );
        assert!(Pattern::parse("abc %").is_err());
        assert_eq!(
            Pattern::parse("100%% %v").unwrap().pieces,
            [Piece::Literal("100% ".into()), Piece::Flag(Flag::Message)]
        );
    }

    #[test]
    fn json_format_refusals_name_the_key() {
        let raw = serde_json::json!({"m": "%v"});
        assert!(LineFormat::json(raw.as_object().unwrap()).is_err());
        let bad = serde_json::json!({"a": {"b": "%q"}});
        assert_eq!(
            LineFormat::json(bad.as_object().unwrap()).unwrap_err(),
            "a: b: '%q' is not a supported log format flag"
        );
    }
}
