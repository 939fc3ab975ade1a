//! `envoy.config.route.v3.RouteAction.HashPolicy`: what a request hashes to for the RING_HASH
//! and MAGLEV load balancers — a header, a cookie (generated with `ttl` when absent), the source
//! IP, or a query parameter; several combine as in Envoy, `terminal` stops at the first that
//! produced a hash.

use super::core::{deny, opt_duration};
use super::pb;
use crate::config::{FieldPath, Result};
use http::HeaderName;
use regex::Regex;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum HashKey {
    Header {
        name: HeaderName,
        rewrite: Option<(Regex, String)>,
    },
    Cookie {
        name: String,
        /// With a `ttl`, a request without the cookie gets one generated (and `Set-Cookie`).
        ttl: Option<Duration>,
        path: String,
        attributes: Vec<(String, String)>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub key: HashKey,
    pub terminal: bool,
}

impl HashPolicy {
    pub fn from_proto(path: &FieldPath, p: &pb::route::route_action::HashPolicy) -> Result<Self> {
        use pb::route::route_action::hash_policy as hp;
        let pb::route::route_action::HashPolicy {
            terminal,
            policy_specifier,
        } = p;
        let key =
            match policy_specifier {
                Some(hp::PolicySpecifier::Header(h)) => {
                    let p = path.field("header");
                    let hp::Header {
                        header_name,
                        regex_rewrite,
                    } = h;
                    HashKey::Header {
                        name: HeaderName::from_bytes(header_name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| p.field("header_name").error("invalid header name"))?,
                        rewrite: regex_rewrite
                            .as_ref()
                            .map(|r| super::route::regex_substitution(&p.field("regex_rewrite"), r))
                            .transpose()?,
                    }
                }
                Some(hp::PolicySpecifier::Cookie(c)) => {
                    let p = path.field("cookie");
                    let hp::Cookie {
                        name,
                        ttl,
                        path: cookie_path,
                        attributes,
                    } = c;
                    if name.is_empty() {
                        return Err(p.field("name").error("must not be empty"));
                    }
                    HashKey::Cookie {
                        name: name.clone(),
                        ttl: opt_duration(&p, "ttl", ttl)?,
                        path: cookie_path.clone(),
                        attributes: attributes
                            .iter()
                            .map(|a| (a.name.clone(), a.value.clone()))
                            .collect(),
                    }
                }
                Some(hp::PolicySpecifier::ConnectionProperties(c)) => {
                    let hp::ConnectionProperties { source_ip } = c;
                    if !source_ip {
                        return Err(path
                            .field("connection_properties")
                            .field("source_ip")
                            .error("must be true"));
                    }
                    HashKey::SourceIp
                }
                Some(hp::PolicySpecifier::QueryParameter(q)) => {
                    let hp::QueryParameter { name } = q;
                    if name.is_empty() {
                        return Err(path
                            .field("query_parameter")
                            .field("name")
                            .error("must not be empty"));
                    }
                    HashKey::QueryParameter(name.clone())
                }
                Some(hp::PolicySpecifier::FilterState(f)) => {
                    deny(path, "filter_state", &Some(f.clone()))?;
                    unreachable!("refused above")
                }
                None => return Err(path.error(
                    "a hash policy needs header, cookie, connection_properties or query_parameter",
                )),
            };
        Ok(Self {
            key,
            terminal: *terminal,
        })
    }
}
