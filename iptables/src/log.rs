//! istio-iptables' logging, on stderr (stdout carries the dry-run record): the level comes from
//! `--log_output_level` (`default:info`, or `scope:level,...`; remora has the one scope, `default`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    None,
}

/// Where log lines go: stderr, or (in tests) nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    level: Level,
    quiet: bool,
}

impl Log {
    pub fn stderr(level: Level) -> Log {
        Log {
            level,
            quiet: false,
        }
    }

    pub fn silent() -> Log {
        Log {
            level: Level::None,
            quiet: true,
        }
    }

    pub fn info(&self, msg: &str) {
        self.write(Level::Info, "info", msg);
    }

    pub fn warn(&self, msg: &str) {
        self.write(Level::Warn, "warn", msg);
    }

    pub fn error(&self, msg: &str) {
        self.write(Level::Error, "error", msg);
    }

    fn write(&self, level: Level, name: &str, msg: &str) {
        if !self.quiet && level >= self.level {
            eprintln!("{name}\t{msg}");
        }
    }
}

/// Parses `--log_output_level`: a comma-separated list of `scope:level` (or a bare level, for
/// every scope). The `default` scope's level is the one used; unknown levels are errors.
pub fn parse_output_level(spec: &str) -> Result<Level, String> {
    let mut level = Level::Info;
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (scope, name) = item.rsplit_once(':').unwrap_or(("default", item));
        let parsed = match name {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            "fatal" => Level::Fatal,
            "none" => Level::None,
            other => {
                return Err(format!(
                    "--log_output_level: invalid output level {other:?}"
                ));
            }
        };
        if scope == "default" || scope == "all" {
            level = parsed;
        }
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_levels() {
        assert_eq!(parse_output_level("default:info"), Ok(Level::Info));
        assert_eq!(parse_output_level("warn"), Ok(Level::Warn));
        assert_eq!(
            parse_output_level("other:debug,default:error"),
            Ok(Level::Error)
        );
        assert_eq!(parse_output_level("other:debug"), Ok(Level::Info));
        assert!(parse_output_level("default:loud").is_err());
    }
}
