//! `envoy.filters.listener.http_inspector`: detect plaintext HTTP (`http/1.0`, `http/1.1`, or
//! `h2c` by the connection preface) from the first bytes, for filter-chain matching on
//! `application_protocols`.

#[derive(Debug, PartialEq, Eq)]
pub enum Inspect {
    NeedMore,
    NotHttp,
    Http(&'static str),
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn inspect(b: &[u8]) -> Inspect {
    if PREFACE.starts_with(&b[..b.len().min(PREFACE.len())]) {
        return if b.len() >= PREFACE.len() {
            Inspect::Http("h2c")
        } else {
            Inspect::NeedMore
        };
    }
    let Some(eol) = b.iter().position(|c| *c == b'\n') else {
        // Methods are tokens; anything else early means not HTTP.
        let first_space = b.iter().position(|c| *c == b' ');
        let token = &b[..first_space.unwrap_or(b.len())];
        if !token.iter().all(|c| c.is_ascii_alphabetic()) || b.len() > 8192 {
            return Inspect::NotHttp;
        }
        return Inspect::NeedMore;
    };
    let line = &b[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|c| *c == b' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Inspect::NotHttp;
    };
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_alphabetic()) {
        return Inspect::NotHttp;
    }
    match version {
        b"HTTP/1.1" => Inspect::Http("http/1.1"),
        b"HTTP/1.0" => Inspect::Http("http/1.0"),
        _ => Inspect::NotHttp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http_versions() {
        assert_eq!(
            inspect(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Inspect::Http("http/1.1")
        );
        assert_eq!(inspect(b"GET / HTTP/1.0\r\n"), Inspect::Http("http/1.0"));
        assert_eq!(inspect(PREFACE), Inspect::Http("h2c"));
        assert_eq!(inspect(b"PRI * HT"), Inspect::NeedMore);
        assert_eq!(inspect(b"GE"), Inspect::NeedMore);
        assert_eq!(inspect(b"\x16\x03\x01"), Inspect::NotHttp);
        assert_eq!(inspect(b"GET / FTP\r\n"), Inspect::NotHttp);
    }
}
