//! Configuration errors: every error names the field path it is about.

use std::fmt;

/// A dotted field path into a configuration document, e.g.
/// `static_resources.clusters[2].lb_policy`. Built only while loading configuration.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

// === impl FieldPath ===

impl FieldPath {
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// `a.b` → `a.b.field`.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// `a.b` → `a.b[3]`.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// `a.b` → `a.b["key"]` (map entries).
    pub fn key(&self, k: &str) -> Self {
        Self(format!("{}[\"{k}\"]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An error at this path.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.clone(), message)
    }

    /// The "set but not supported" error for a field under this path.
    pub fn unsupported(&self, field: &str) -> ConfigError {
        ConfigError::at(self.field(field), "is not supported")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A configuration error: where (field path, and for YAML syntax errors line and column) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: Option<FieldPath>,
    pub message: String,
}

// === impl ConfigError ===

impl ConfigError {
    pub fn at(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path: Some(path),
            message: message.into(),
        }
    }

    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            path: None,
            message: message.into(),
        }
    }

    /// Prefix the path with a context (used when a nested document, e.g. an `Any`, was decoded
    /// separately, or when an xDS resource is translated on its own).
    pub fn within(mut self, outer: &FieldPath) -> Self {
        self.path = Some(match self.path.take() {
            Some(p) if !p.0.is_empty() => {
                if p.0.starts_with('[') {
                    FieldPath(format!("{}{}", outer.0, p.0))
                } else if outer.0.is_empty() {
                    p
                } else {
                    FieldPath(format!("{}.{}", outer.0, p.0))
                }
            }
            _ => outer.clone(),
        });
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) if !p.0.is_empty() => write!(f, "{p}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compose() {
        let p = FieldPath::root()
            .field("static_resources")
            .field("clusters")
            .index(2)
            .field("lb_policy");
        assert_eq!(p.to_string(), "static_resources.clusters[2].lb_policy");
        let e = FieldPath::root()
            .field("x")
            .error("bad")
            .within(&FieldPath::new("a.b"));
        assert_eq!(e.to_string(), "a.b.x: bad");
        let e = FieldPath::root()
            .index(1)
            .error("bad")
            .within(&FieldPath::new("a.list"));
        assert_eq!(e.to_string(), "a.list[1]: bad");
        assert_eq!(FieldPath::new("m").key("k").to_string(), "m[\"k\"]");
    }
}
