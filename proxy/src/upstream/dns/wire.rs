//! The DNS wire format (RFC 1035), pure: building an A/AAAA query and parsing an answer.
//! Every length and pointer is checked: a malformed packet is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
/// A name is at most 255 bytes on the wire; following more pointers than that is a loop.
const MAX_NAME: usize = 255;
const MAX_POINTERS: usize = 64;
/// A CNAME chain longer than this is refused (as resolvers do, against loops).
const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated DNS message")]
    Short,
    #[error("bad name in DNS message")]
    BadName,
    #[error("'{0}' is not a valid DNS name")]
    InvalidQueryName(String),
}

/// A parsed response: the header fields a resolver needs, the question and the answer records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub is_response: bool,
    pub truncated: bool,
    pub rcode: u8,
    pub question: Option<(String, u16)>,
    pub answers: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    Ip(IpAddr),
    Cname(String),
    Other,
}

/// A recursive query (RD set) for `name`'s records of `qtype`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(&mut out, name)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

fn encode_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let invalid = || WireError::InvalidQueryName(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME - 2 {
        return Err(invalid());
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Parse a whole message (header, question, answer section; the rest is not needed).
pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
    let header = buf.get(..12).ok_or(WireError::Short)?;
    let u16_at = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (id, flags, qdcount, ancount) = (u16_at(0), u16_at(2), u16_at(4), u16_at(6));
    let mut pos = 12;
    let mut question = None;
    for _ in 0..qdcount {
        let (name, next) = read_name(buf, pos)?;
        let qtype = be16(buf, next)?;
        be16(buf, next + 2)?;
        pos = next + 4;
        question.get_or_insert((name, qtype));
    }
    let mut answers = Vec::new();
    for _ in 0..ancount {
        let (record, next) = read_record(buf, pos)?;
        answers.extend(record);
        pos = next;
    }
    Ok(Message {
        id,
        is_response: flags & 0x8000 != 0,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000f) as u8,
        question,
        answers,
    })
}

/// One resource record; records of other classes are skipped (`None`).
fn read_record(buf: &[u8], pos: usize) -> Result<(Option<Record>, usize), WireError> {
    let (name, p) = read_name(buf, pos)?;
    let rtype = be16(buf, p)?;
    let class = be16(buf, p + 2)?;
    let ttl = u32::from(be16(buf, p + 4)?) << 16 | u32::from(be16(buf, p + 6)?);
    let len = usize::from(be16(buf, p + 8)?);
    let start = p + 10;
    let rdata = buf.get(start..start + len).ok_or(WireError::Short)?;
    let data = match (rtype, rdata.len()) {
        (TYPE_A, 4) => RData::Ip(IpAddr::V4(Ipv4Addr::new(
            rdata[0], rdata[1], rdata[2], rdata[3],
        ))),
        (TYPE_AAAA, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(rdata);
            RData::Ip(IpAddr::V6(Ipv6Addr::from(b)))
        }
        (TYPE_A | TYPE_AAAA, _) => return Err(WireError::Short),
        (TYPE_CNAME, _) => {
            let (target, end) = read_name(buf, start)?;
            if end > start + len {
                return Err(WireError::BadName);
            }
            RData::Cname(target)
        }
        _ => RData::Other,
    };
    // RFC 2181 §8: a TTL with the top bit set is treated as zero.
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    let record = (class == CLASS_IN).then_some(Record { name, ttl, data });
    Ok((record, start + len))
}

fn be16(buf: &[u8], i: usize) -> Result<u16, WireError> {
    match buf.get(i..i + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(WireError::Short),
    }
}

/// A (possibly compressed) name at `pos`, lowercased and without the final dot; returns it and
/// the position after it in the record (after the first pointer, if any).
fn read_name(buf: &[u8], mut pos: usize) -> Result<(String, usize), WireError> {
    let mut name = String::new();
    let mut after = None;
    let mut pointers = 0;
    loop {
        let len = *buf.get(pos).ok_or(WireError::Short)?;
        match len & 0xc0 {
            0x00 if len == 0 => break,
            0x00 => {
                let label = buf
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(WireError::Short)?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                if name.len() > MAX_NAME {
                    return Err(WireError::BadName);
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let low = *buf.get(pos + 1).ok_or(WireError::Short)?;
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(WireError::BadName);
                }
                after.get_or_insert(pos + 2);
                pos = usize::from(len & 0x3f) << 8 | usize::from(low);
                continue;
            }
            _ => return Err(WireError::BadName),
        }
    }
    Ok((name, after.unwrap_or(pos + 1)))
}

/// The addresses of `qtype` the answer gives for `qname`, following its CNAME chain, each with
/// its record's TTL.
pub fn addresses(msg: &Message, qname: &str, qtype: u16) -> Vec<(IpAddr, u32)> {
    let mut name = qname.trim_end_matches('.').to_ascii_lowercase();
    for _ in 0..MAX_CHAIN {
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::Cname(target) if r.name == name => Some(target.clone()),
            _ => None,
        });
        match next {
            Some(target) => name = target,
            None => break,
        }
    }
    let want_v4 = qtype == TYPE_A;
    msg.answers
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| match r.data {
            RData::Ip(ip) if ip.is_ipv4() == want_v4 => Some((ip, r.ttl)),
            _ => None,
        })
        .collect()
}

/// Test helpers: build answers as a server would.
#[cfg(test)]
pub mod build {
    use super::*;

    /// A response to `query` with `answers` (name, ttl, data); names are written uncompressed
    /// except the owner `@`, a pointer to the question.
    pub fn response(query: &[u8], rcode: u8, answers: &[(&str, u32, RData)]) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x80 | rcode;
        out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (name, ttl, data) in answers {
            if *name == "@" {
                out.extend_from_slice(&[0xc0, 12]);
            } else {
                encode_name(&mut out, name).unwrap();
            }
            let (rtype, rdata) = match data {
                RData::Ip(IpAddr::V4(a)) => (TYPE_A, a.octets().to_vec()),
                RData::Ip(IpAddr::V6(a)) => (TYPE_AAAA, a.octets().to_vec()),
                RData::Cname(t) => {
                    let mut v = Vec::new();
                    encode_name(&mut v, t).unwrap();
                    (TYPE_CNAME, v)
                }
                RData::Other => (16, b"\x03txt".to_vec()),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::response;
    use super::*;

    fn v4(s: &str) -> RData {
        RData::Ip(s.parse().unwrap())
    }

    #[test]
    fn query_encodes_labels() {
        let q = query(0x1234, "a.Example.", TYPE_AAAA).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x01a\x07Example\x00\x00\x1c\x00\x01");
        let m = parse(&q).unwrap();
        assert!(!m.is_response);
        assert_eq!(m.question, Some(("a.example".into(), TYPE_AAAA)));
    }

    #[test]
    fn query_refuses_bad_names() {
        for bad in ["", ".", "a..b", &"x".repeat(64), &"a.".repeat(130)] {
            assert!(query(1, bad, TYPE_A).is_err(), "{bad}");
        }
    }

    #[test]
    fn follows_cname_chain_with_compressed_owner() {
        let q = query(7, "svc.example", TYPE_A).unwrap();
        let r = response(
            &q,
            0,
            &[
                ("@", 300, RData::Cname("mid.example".into())),
                ("mid.example", 200, RData::Cname("real.example".into())),
                ("real.example", 30, v4("10.0.0.1")),
                ("real.example", 20, v4("10.0.0.2")),
                ("other.example", 1, v4("10.9.9.9")),
                ("real.example", 5, RData::Other),
            ],
        );
        let m = parse(&r).unwrap();
        assert!(m.is_response && !m.truncated && m.id == 7 && m.rcode == 0);
        assert_eq!(
            addresses(&m, "SVC.example.", TYPE_A),
            vec![
                ("10.0.0.1".parse().unwrap(), 30),
                ("10.0.0.2".parse().unwrap(), 20)
            ]
        );
        assert!(addresses(&m, "svc.example", TYPE_AAAA).is_empty());
    }

    #[test]
    fn compression_pointer_inside_rdata() {
        let q = query(1, "a.b", TYPE_A).unwrap();
        let mut r = response(&q, 0, &[]);
        r[7] = 2;
        // a.b CNAME x.<pointer to "b" at 14>; x.b A 1.2.3.4 (owner: pointer to the CNAME target).
        r.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'x', 0xc0, 14]);
        let target = r.len() - 4;
        r.extend_from_slice(&[0xc0, target as u8, 0, 1, 0, 1, 0, 0, 0, 3, 0, 4, 1, 2, 3, 4]);
        let m = parse(&r).unwrap();
        assert_eq!(
            addresses(&m, "a.b", TYPE_A),
            vec![("1.2.3.4".parse().unwrap(), 3)]
        );
    }

    #[test]
    fn flags_and_negative_ttl() {
        let q = query(9, "a", TYPE_A).unwrap();
        let mut r = response(&q, RCODE_NXDOMAIN, &[("@", 0x8000_0000, v4("1.1.1.1"))]);
        r[2] |= 0x02;
        let m = parse(&r).unwrap();
        assert!(m.truncated);
        assert_eq!(m.rcode, RCODE_NXDOMAIN);
        assert_eq!(m.answers[0].ttl, 0);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let q = query(1, "a.b", TYPE_A).unwrap();
        let good = response(&q, 0, &[("@", 5, v4("1.2.3.4"))]);
        // Every truncation of a good answer is an error, never a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n}");
        }
        let mut pointer_loop = q.clone();
        pointer_loop.truncate(12);
        pointer_loop[5] = 1;
        pointer_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&pointer_loop), Err(WireError::BadName));
        let mut reserved = good.clone();
        reserved[12] = 0x80;
        assert_eq!(parse(&reserved), Err(WireError::BadName));
        let mut bad_a_len = good.clone();
        let len_at = bad_a_len.len() - 6;
        bad_a_len[len_at + 1] = 3;
        bad_a_len.pop();
        assert!(parse(&bad_a_len).is_err());
        let mut long_name = q[..12].to_vec();
        long_name[5] = 1;
        for _ in 0..5 {
            long_name.push(63);
            long_name.extend_from_slice(&[b'a'; 63]);
        }
        long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&long_name), Err(WireError::BadName));
    }

    #[test]
    fn fuzzed_bytes_never_panic() {
        let q = query(1, "svc.example", TYPE_A).unwrap();
        let good = response(
            &q,
            0,
            &[
                ("@", 5, RData::Cname("x.example".into())),
                ("x.example", 5, v4("1.2.3.4")),
            ],
        );
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            if let Ok(m) = parse(&b) {
                let _ = addresses(&m, "svc.example", TYPE_A);
            }
        }
    }
}
