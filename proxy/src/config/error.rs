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

    /// `a.b` → `a.b["key"]` (map entries; a `"` or `\` in the key is escaped).
    pub fn key(&self, k: &str) -> Self {
        let k = k.replace('\\', "\\\\").replace('"', "\\\"");
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
    /// Further errors of the same translation (other elements of a list, which are translated
    /// even after one fails), shown one per line after this one.
    pub others: Vec<ConfigError>,
}

// === impl ConfigError ===

impl ConfigError {
    pub fn at(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path: Some(path),
            message: message.into(),
            others: Vec::new(),
        }
    }

    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            path: None,
            message: message.into(),
            others: Vec::new(),
        }
    }

    /// Several errors as one (`None` when there are none): the first, then the others.
    pub fn join(errors: impl IntoIterator<Item = ConfigError>) -> Option<ConfigError> {
        let mut all = errors.into_iter().flat_map(|mut e| {
            let others = std::mem::take(&mut e.others);
            std::iter::once(e).chain(others)
        });
        let mut first = all.next()?;
        first.others = all.collect();
        Some(first)
    }

    /// This error alone, without the others: `path: message`.
    pub fn alone(&self) -> String {
        match &self.path {
            Some(p) if !p.0.is_empty() => format!("{p}: {}", self.message),
            _ => self.message.clone(),
        }
    }

    /// Every error's field path, in order (`<root>` for one without a path).
    pub fn paths(&self) -> Vec<String> {
        self.iter()
            .map(|e| {
                e.path
                    .as_ref()
                    .map_or_else(|| "<root>".to_string(), ToString::to_string)
            })
            .collect()
    }

    /// Every error, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(self.others.iter())
    }

    /// Prefix the path with a context (used when a nested document, e.g. an `Any`, was decoded
    /// separately, or when an xDS resource is translated on its own).
    pub fn within(mut self, outer: &FieldPath) -> Self {
        self.others = std::mem::take(&mut self.others)
            .into_iter()
            .map(|e| e.within(outer))
            .collect();
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
        f.write_str(&self.alone())?;
        for e in &self.others {
            write!(f, "\n{}", e.alone())?;
        }
        Ok(())
    }
}

/// Every element's result: all the values, or every element's errors as one (a list's
/// elements are translated even after one fails, so one report names every problem).
pub fn all<T>(results: impl IntoIterator<Item = Result<T>>) -> Result<Vec<T>> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => values.push(v),
            Err(e) => errors.push(e),
        }
    }
    match ConfigError::join(errors) {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

/// The errors of the independent parts of one translation, collected so that one report names
/// every problem. A part whose value a later part needs is still checked with `?` (the later
/// part cannot be translated without it).
#[derive(Debug, Default)]
#[must_use = "the collected errors are reported by `finish`"]
pub struct Errors(Vec<ConfigError>);

// === impl Errors ===

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// The part's value, or `None` with its error kept.
    pub fn take<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// Keep the error of each of these checks.
    pub fn check(&mut self, results: impl IntoIterator<Item = Result<()>>) {
        self.0.extend(results.into_iter().filter_map(Result::err));
    }

    /// The part's value, or a stand-in with its error kept: `finish` then fails, so the
    /// stand-in is never used.
    pub fn or_default<T: Default>(&mut self, r: Result<T>) -> T {
        self.take(r).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every error kept, as one.
    pub fn finish(self) -> Result<()> {
        match ConfigError::join(self.0) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `value` when no part failed.
    pub fn finish_with<T>(self, value: T) -> Result<T> {
        self.finish().map(|()| value)
    }

    /// The value of parts taken with [`Errors::take`] (`Some` when none of them failed).
    pub fn finish_some<T>(self, value: Option<T>) -> Result<T> {
        self.finish()?;
        value.ok_or_else(|| ConfigError::msg("a part of the translation failed without an error"))
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
        assert_eq!(FieldPath::new("m").key("a\"b").to_string(), "m[\"a\\\"b\"]");
    }

    #[test]
    fn several_errors_one_per_line() {
        let list = FieldPath::root().field("l");
        let r: Result<Vec<u32>> = all([
            Ok(1),
            Err(list.index(1).error("bad")),
            Err(ConfigError::join([list.index(2).error("x"), list.index(2).error("y")]).unwrap()),
        ]);
        let e = r.unwrap_err().within(&FieldPath::new("Listener 'a'"));
        assert_eq!(
            e.to_string(),
            "Listener 'a'.l[1]: bad\nListener 'a'.l[2]: x\nListener 'a'.l[2]: y"
        );
        assert_eq!(e.iter().count(), 3);
        assert_eq!(all([Ok::<_, ConfigError>(1), Ok(2)]).unwrap(), [1, 2]);
    }

    #[test]
    fn errors_collects_independent_parts() {
        let p = FieldPath::root();
        let mut errs = Errors::new();
        assert_eq!(errs.take(Ok::<_, ConfigError>(1)), Some(1));
        assert_eq!(errs.take::<u32>(Err(p.field("a").error("bad"))), None);
        assert_eq!(errs.or_default::<u32>(Err(p.field("b").error("bad"))), 0);
        errs.push(p.field("c").error("bad"));
        errs.check([Ok(()), Err(p.field("d").error("bad"))]);
        assert!(!errs.is_empty());
        assert_eq!(
            errs.finish_with(1).unwrap_err().to_string(),
            "a: bad\nb: bad\nc: bad\nd: bad"
        );
        assert_eq!(Errors::new().finish_some(Some(2)).unwrap(), 2);
        assert!(Errors::new().finish_some::<u32>(None).is_err());
    }
}
