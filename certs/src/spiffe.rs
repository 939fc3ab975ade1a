//! SPIFFE IDs (`spiffe://trust-domain/path`), validated as the SPIFFE ID specification says,
//! with accessors for Istio's `spiffe://<td>/ns/<namespace>/sa/<service-account>` form.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://td/path`.
    uri: Box<str>,
    /// Where the path starts in `uri` (== uri.len() when there is no path).
    path_at: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with 'spiffe://'")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may only contain a-z, 0-9, '.', '-' and '_' (found {0:?})")]
    TrustDomainChar(char),
    #[error("the trust domain is longer than 255 characters")]
    TrustDomainTooLong,
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
    #[error("path segments may not be empty (no '//' and no trailing '/')")]
    EmptySegment,
    #[error("path segments may not be '.' or '..'")]
    DotSegment,
    #[error("path segments may only contain A-Z, a-z, 0-9, '.', '-' and '_' (found {0:?})")]
    PathChar(char),
}

// === impl SpiffeId ===

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if td.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(c) = td
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::TrustDomainChar(c));
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            uri: s.into(),
            path_at: SCHEME.len() + td.len(),
        })
    }

    /// Istio's workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_at]
    }

    /// The path including its leading '/', or "" when there is none.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The namespace of an Istio identity (`/ns/<ns>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio identity (`/ns/<ns>/sa/<sa>`).
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_identity_parts() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/autolytiq/sa/api-gateway").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/autolytiq/sa/api-gateway");
        assert_eq!(id.namespace(), Some("autolytiq"));
        assert_eq!(id.service_account(), Some("api-gateway"));
        assert_eq!(
            SpiffeId::istio("cluster.local", "autolytiq", "api-gateway").unwrap(),
            id
        );
        let other = SpiffeId::parse("spiffe://example.org/workload/x").unwrap();
        assert_eq!(other.namespace(), None);
        let bare = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!((bare.trust_domain(), bare.path()), ("example.org", ""));
    }

    #[test]
    fn invalid_ids_say_why() {
        use SpiffeIdError::*;
        let cases = [
            ("http://cluster.local/ns/a/sa/b", Scheme),
            ("spiffe:///ns/a", EmptyTrustDomain),
            ("spiffe://Cluster.local/ns/a", TrustDomainChar('C')),
            ("spiffe://cluster.local:8080/x", TrustDomainChar(':')),
            ("spiffe://user@td/x", TrustDomainChar('@')),
            ("spiffe://td/ns//sa", EmptySegment),
            ("spiffe://td/ns/", EmptySegment),
            ("spiffe://td/ns/../x", DotSegment),
            ("spiffe://td/ns/a?b", PathChar('?')),
            ("spiffe://td/ns/a#b", PathChar('#')),
            ("spiffe://td/ns/a%20b", PathChar('%')),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s), Err(want), "{s}");
        }
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://td/{}", "a".repeat(2100))),
            Err(TooLong)
        );
    }
}
