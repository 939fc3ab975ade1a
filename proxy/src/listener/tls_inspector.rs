//! `envoy.filters.listener.tls_inspector`: recognise a TLS ClientHello in the first bytes of a
//! connection and extract the SNI and ALPN list for filter-chain matching. The TLS transport
//! socket reads the same facts (and what the handshake will negotiate) before its handshake.

/// What the inspector learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
    /// `supported_versions` offers TLS 1.3.
    pub tls13: bool,
    /// The client asks for an OCSP staple (`status_request`).
    pub status_request: bool,
    /// `supported_groups`, in the client's order.
    pub groups: Vec<u16>,
}

/// Inspection result for the bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspect {
    /// Not TLS: the connection is `raw_buffer`.
    NotTls,
    /// Looks like TLS but the ClientHello is not complete yet.
    NeedMore,
    Tls(ClientHello),
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize)
}

/// Parse the first TLS record's ClientHello.
pub fn inspect(b: &[u8]) -> Inspect {
    // Record header: handshake (22), TLS 1.0..1.3 record versions (3.x).
    if b.is_empty() {
        return Inspect::NeedMore;
    }
    if b[0] != 0x16 {
        return Inspect::NotTls;
    }
    if b.len() < 5 {
        return if b.len() >= 2 && b[1] != 0x03 {
            Inspect::NotTls
        } else {
            Inspect::NeedMore
        };
    }
    if b[1] != 0x03 {
        return Inspect::NotTls;
    }
    let record_len = u16_at(b, 3).unwrap_or(0);
    if b.len() < 5 + record_len.min(4) {
        return Inspect::NeedMore;
    }
    if b.get(5) != Some(&0x01) {
        return Inspect::NotTls; // not a ClientHello
    }
    let Some(hs_len) = b
        .get(6..9)
        .map(|l| ((l[0] as usize) << 16) | ((l[1] as usize) << 8) | l[2] as usize)
    else {
        return Inspect::NeedMore;
    };
    let body_start = 9;
    let available = b.len().min(5 + record_len);
    if available < body_start + hs_len {
        // A ClientHello larger than one record is parsed from what fits in the first record.
        if b.len() < 5 + record_len {
            return Inspect::NeedMore;
        }
    }
    let body = &b[body_start..available.min(body_start + hs_len).max(body_start)];
    match parse_client_hello(body) {
        Some(ch) => Inspect::Tls(ch),
        None => Inspect::Tls(ClientHello::default()),
    }
}

fn parse_client_hello(h: &[u8]) -> Option<ClientHello> {
    let mut i = 2 + 32; // legacy version + random
    let sid_len = *h.get(i)? as usize;
    i += 1 + sid_len;
    let cs_len = u16_at(h, i)?;
    i += 2 + cs_len;
    let comp_len = *h.get(i)? as usize;
    i += 1 + comp_len;
    let ext_total = u16_at(h, i)?;
    i += 2;
    let end = (i + ext_total).min(h.len());
    let mut out = ClientHello::default();
    while i + 4 <= end {
        let ty = u16_at(h, i)?;
        let len = u16_at(h, i + 2)?;
        let data = h.get(i + 4..i + 4 + len)?;
        match ty {
            0 => {
                // server_name: list of (type, len, name); host_name is type 0.
                let mut j = 2;
                while j + 3 <= data.len() {
                    let nt = data[j];
                    let nl = u16_at(data, j + 1)?;
                    let name = data.get(j + 3..j + 3 + nl)?;
                    if nt == 0 {
                        out.server_name = std::str::from_utf8(name)
                            .ok()
                            .map(|s| s.to_ascii_lowercase());
                        break;
                    }
                    j += 3 + nl;
                }
            }
            16 => {
                let mut j = 2;
                while j < data.len() {
                    let pl = data[j] as usize;
                    let p = data.get(j + 1..j + 1 + pl)?;
                    if let Ok(s) = std::str::from_utf8(p) {
                        out.alpn.push(s.to_string());
                    }
                    j += 1 + pl;
                }
            }
            5 => out.status_request = true,
            10 => {
                let list = data.get(2..2 + u16_at(data, 0)?)?;
                out.groups = list
                    .chunks_exact(2)
                    .map(|g| u16::from_be_bytes([g[0], g[1]]))
                    .collect();
            }
            43 => {
                // supported_versions: a length byte, then two bytes a version.
                let versions = data.get(1..1 + *data.first()? as usize)?;
                out.tls13 = versions.chunks(2).any(|v| v == [0x03, 0x04]);
            }
            _ => {}
        }
        i += 4 + len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a minimal ClientHello with SNI and ALPN.
    pub fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sn = vec![0u8];
        sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        sn.extend_from_slice(sni.as_bytes());
        let mut sni_ext = (sn.len() as u16).to_be_bytes().to_vec();
        sni_ext.extend_from_slice(&sn);
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni_ext);
        let mut protos = Vec::new();
        for p in alpn {
            protos.push(p.len() as u8);
            protos.extend_from_slice(p.as_bytes());
        }
        let mut alpn_ext = (protos.len() as u16).to_be_bytes().to_vec();
        alpn_ext.extend_from_slice(&protos);
        ext.extend_from_slice(&16u16.to_be_bytes());
        ext.extend_from_slice(&(alpn_ext.len() as u16).to_be_bytes());
        ext.extend_from_slice(&alpn_ext);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&[0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1u8, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// `client_hello` with extra extensions (type, data) appended.
    fn with_extensions(sni: &str, extra: &[(u16, &[u8])]) -> Vec<u8> {
        let base = client_hello(sni, &[]);
        let mut ext = Vec::new();
        for (ty, data) in extra {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        // Lengths to grow: the record's (at 3), the handshake's (at 6) and the extensions' (after
        // the record and handshake headers, version, random, session id, one suite and the
        // compression methods: 5 + 4 + 2 + 32 + 1 + 2 + 2 + 2).
        let ext_len_at = 50;
        let mut out = base.clone();
        out.extend_from_slice(&ext);
        let grow = |b: &mut [u8], at: usize, width: usize| {
            let mut v = 0usize;
            for k in 0..width {
                v = (v << 8) | b[at + k] as usize;
            }
            v += ext.len();
            for k in 0..width {
                b[at + k] = (v >> (8 * (width - 1 - k))) as u8;
            }
        };
        grow(&mut out, 3, 2);
        grow(&mut out, 6, 3);
        grow(&mut out, ext_len_at, 2);
        out
    }

    #[test]
    fn reads_tls13_and_status_request() {
        let ch = with_extensions(
            "a.example",
            &[
                (43, &[4, 0x03, 0x04, 0x03, 0x03]),
                (5, &[1, 0, 0, 0, 0]),
                (10, &[0, 4, 0x11, 0xec, 0x00, 0x1d]),
            ],
        );
        let Inspect::Tls(h) = inspect(&ch) else {
            panic!("{:?}", inspect(&ch))
        };
        assert!(h.tls13 && h.status_request, "{h:?}");
        assert_eq!(h.groups, [0x11ec, 0x001d]);
        assert_eq!(h.server_name.as_deref(), Some("a.example"));
        let ch = with_extensions("a.example", &[(43, &[2, 0x03, 0x03])]);
        let Inspect::Tls(h) = inspect(&ch) else {
            panic!()
        };
        assert!(!h.tls13 && !h.status_request, "{h:?}");
    }

    #[test]
    fn parses_sni_and_alpn() {
        let ch = client_hello("Example.COM", &["h2", "http/1.1"]);
        assert_eq!(
            inspect(&ch),
            Inspect::Tls(ClientHello {
                server_name: Some("example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
                ..Default::default()
            })
        );
        assert_eq!(inspect(&ch[..20]), Inspect::NeedMore);
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Inspect::NotTls);
        assert_eq!(inspect(&[0x16, 0x01]), Inspect::NotTls);
    }
}
