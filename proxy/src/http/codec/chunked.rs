//! HTTP/1.1 body framing shared by the downstream request bodies and the upstream response
//! bodies: the chunked transfer coding (RFC 9112 §7.1) decoded step by step from a buffer, and
//! [`BodyState::decode`], which turns buffered bytes into the next body frame for any framing.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::io;

#[derive(Debug, Clone, Copy)]
pub enum ChunkState {
    Size,
    Data(u64),
    DataCrLf,
    Trailers,
}

pub enum Step {
    NeedMore,
    State(ChunkState),
    Data(Bytes, ChunkState),
    End(Option<HeaderMap>),
}

/// Where a body is in its framing.
#[derive(Debug, Clone, Copy)]
pub enum BodyState {
    Length(u64),
    Chunked(ChunkState),
    /// Until the peer closes (upstream responses without length or chunking).
    Eof,
    Done,
}

/// What the buffered bytes yield next.
pub enum Decoded {
    Data(Bytes),
    /// The end of the body, with chunked trailers if any.
    End(Option<HeaderMap>),
    NeedMore,
}

// === impl BodyState ===

impl BodyState {
    pub fn size_hint(&self) -> http_body::SizeHint {
        match *self {
            BodyState::Length(n) => http_body::SizeHint::with_exact(n),
            BodyState::Done => http_body::SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Eof => http_body::SizeHint::default(),
        }
    }

    /// Take the next frame out of `buf`. After `Data`, the state may already be `Done` (the last
    /// bytes of a length-delimited body): the caller can release the connection at once.
    pub fn decode(&mut self, buf: &mut BytesMut, max_trailer_bytes: usize) -> io::Result<Decoded> {
        loop {
            return Ok(match *self {
                BodyState::Done => Decoded::End(None),
                _ if buf.is_empty() => Decoded::NeedMore,
                BodyState::Length(rem) => {
                    let n = clamp(rem, buf.len());
                    let rem = rem - n as u64;
                    *self = if rem == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(rem)
                    };
                    Decoded::Data(buf.split_to(n).freeze())
                }
                BodyState::Eof => Decoded::Data(buf.split().freeze()),
                BodyState::Chunked(cs) => match step_chunked(buf, cs, max_trailer_bytes)? {
                    Step::NeedMore => Decoded::NeedMore,
                    Step::State(next) => {
                        *self = BodyState::Chunked(next);
                        continue;
                    }
                    Step::Data(data, next) => {
                        *self = BodyState::Chunked(next);
                        Decoded::Data(data)
                    }
                    Step::End(trailers) => {
                        *self = BodyState::Done;
                        Decoded::End(trailers)
                    }
                },
            });
        }
    }
}

/// `min(rem, len)` without truncating `rem` on 32-bit targets.
fn clamp(rem: u64, len: usize) -> usize {
    usize::try_from(rem).map_or(len, |r| r.min(len))
}

pub fn bad_chunk(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid chunked encoding: {msg}"),
    )
}

pub fn step_chunked(
    buf: &mut BytesMut,
    cs: ChunkState,
    max_trailer_bytes: usize,
) -> io::Result<Step> {
    match cs {
        ChunkState::Size => {
            let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(bad_chunk("chunk size line too long"));
                }
                return Ok(Step::NeedMore);
            };
            let line = buf.split_to(eol + 1);
            let size = parse_chunk_size(&line)?;
            Ok(Step::State(if size == 0 {
                ChunkState::Trailers
            } else {
                ChunkState::Data(size)
            }))
        }
        ChunkState::Data(rem) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = clamp(rem, buf.len());
            let data = buf.split_to(n).freeze();
            let rem = rem - n as u64;
            Ok(Step::Data(
                data,
                if rem == 0 {
                    ChunkState::DataCrLf
                } else {
                    ChunkState::Data(rem)
                },
            ))
        }
        ChunkState::DataCrLf => {
            // Envoy's parser (balsa) takes the rest of the line after the chunk data, whatever
            // it holds, as the data's line end.
            let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(bad_chunk("missing CRLF after chunk data"));
                }
                return Ok(Step::NeedMore);
            };
            buf.advance(eol + 1);
            Ok(Step::State(ChunkState::Size))
        }
        ChunkState::Trailers => {
            // Trailers end with an empty line; with no trailers that is the next line.
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::End(None));
            }
            if buf.starts_with(b"\n") {
                buf.advance(1);
                return Ok(Step::End(None));
            }
            let Some(end) = trailers_end(buf) else {
                if buf.len() > max_trailer_bytes {
                    return Err(bad_chunk("trailers too large"));
                }
                return Ok(Step::NeedMore);
            };
            let block = buf.split_to(end).freeze();
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let parsed = match httparse::parse_headers(&block, &mut storage) {
                Ok(httparse::Status::Complete((_, hs))) => hs,
                _ => return Err(bad_chunk("invalid trailers")),
            };
            let mut trailers = HeaderMap::new();
            for h in parsed {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| bad_chunk("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| bad_chunk("invalid trailer value"))?;
                trailers.append(name, value);
            }
            Ok(Step::End(Some(trailers)))
        }
    }
}

/// A Content-Length value: decimal digits (no sign, no list), surrounding whitespace allowed,
/// within u64. Shared by requests and responses.
pub fn parse_content_length(raw: &[u8]) -> Option<u64> {
    let digits = raw.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The longest chunk-size line (with extensions) or data line end accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A chunk-size line, `line` ending with its LF: hex digits (no sign, prefix or leading
/// whitespace, a value that fits in u64), then optionally whitespace and/or `;` extensions
/// (not interpreted), then CRLF. This is what Envoy's parser accepts: after whitespace
/// following the size, the rest of the line is not examined either.
pub fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(bad_chunk("chunk size line without CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad_chunk("bad chunk size"));
    }
    match line.get(digits) {
        None | Some(b';' | b' ' | b'\t') => {}
        Some(_) => return Err(bad_chunk("bad chunk size")),
    }
    if line[digits..].contains(&b'\r') {
        return Err(bad_chunk("bare CR in chunk size line"));
    }
    let mut size: u64 = 0;
    for b in &line[..digits] {
        // A hex digit: to_digit cannot fail; 0 keeps the arithmetic total anyway.
        let d = u64::from((*b as char).to_digit(16).unwrap_or(0));
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or_else(|| bad_chunk("chunk size overflow"))?;
    }
    Ok(size)
}

/// Where the trailer section ends (after its empty line), lines ending in CRLF or LF.
fn trailers_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            let line = &buf[start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(d: Decoded) -> Bytes {
        match d {
            Decoded::Data(b) => b,
            _ => panic!("expected data"),
        }
    }

    #[test]
    fn length_bodies_end_with_their_last_bytes() {
        let mut st = BodyState::Length(5);
        let mut buf = BytesMut::from("abc");
        assert_eq!(data(st.decode(&mut buf, 1024).unwrap()), "abc");
        assert!(matches!(
            st.decode(&mut buf, 1024).unwrap(),
            Decoded::NeedMore
        ));
        buf.extend_from_slice(b"deNEXT");
        assert_eq!(data(st.decode(&mut buf, 1024).unwrap()), "de");
        assert!(matches!(st, BodyState::Done));
        assert_eq!(
            buf, "NEXT",
            "bytes after the body stay for the next message"
        );
        assert!(matches!(
            st.decode(&mut buf, 1024).unwrap(),
            Decoded::End(None)
        ));
    }

    #[test]
    fn chunked_bodies_with_trailers_and_eof_bodies() {
        let mut st = BodyState::Chunked(ChunkState::Size);
        let mut buf = BytesMut::from("3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT");
        assert_eq!(data(st.decode(&mut buf, 1024).unwrap()), "abc");
        match st.decode(&mut buf, 1024).unwrap() {
            Decoded::End(Some(t)) => assert_eq!(t["x-t"], "1"),
            _ => panic!("expected trailers"),
        }
        assert_eq!(buf, "NEXT");
        let mut bad = BodyState::Chunked(ChunkState::Size);
        assert!(bad.decode(&mut BytesMut::from("zz\r\n"), 1024).is_err());

        let mut eof = BodyState::Eof;
        let mut buf = BytesMut::from("all of it");
        assert_eq!(data(eof.decode(&mut buf, 1024).unwrap()), "all of it");
        assert!(matches!(
            eof.decode(&mut buf, 1024).unwrap(),
            Decoded::NeedMore
        ));
    }

    fn size(line: &str) -> Option<u64> {
        parse_chunk_size(line.as_bytes()).ok()
    }

    /// Each case checked against Envoy 1.40 (400 and close, or proxied).
    #[test]
    fn chunk_sizes_as_envoy_reads_them() {
        assert_eq!(size("5\r\n"), Some(5));
        assert_eq!(size("A\r\n"), Some(10));
        assert_eq!(size("5;ext=1\r\n"), Some(5));
        assert_eq!(size("5 ;ext=1\r\n"), Some(5));
        assert_eq!(size("5\t;a\r\n"), Some(5));
        assert_eq!(size("5;\r\n"), Some(5));
        assert_eq!(size("5 \r\n"), Some(5));
        assert_eq!(
            size("5 x\r\n"),
            Some(5),
            "after whitespace the line is not read"
        );
        assert_eq!(size("5;a\x01\r\n"), Some(5));
        assert_eq!(size("00000000000000000005\r\n"), Some(5));
        assert_eq!(size("ffffffffffffffff\r\n"), Some(u64::MAX));
        for bad in [
            "5g\r\n",
            "+5\r\n",
            "-5\r\n",
            "0x5\r\n",
            " 5\r\n",
            "\r\n",
            ";ext\r\n",
            "10000000000000005\r\n",
            "5\n",
            "5\rhello\r\n",
            "5\x00\r\n",
            "5;a\rb\r\n",
        ] {
            assert_eq!(size(bad), None, "{bad:?}");
        }
    }

    fn chunked(wire: &str) -> io::Result<(Vec<u8>, Option<HeaderMap>, BytesMut)> {
        let mut st = BodyState::Chunked(ChunkState::Size);
        let mut buf = BytesMut::from(wire);
        let mut body = Vec::new();
        loop {
            match st.decode(&mut buf, 1024)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End(t) => return Ok((body, t, buf)),
                Decoded::NeedMore => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    #[test]
    fn chunk_line_ends_and_trailers_as_envoy_reads_them() {
        // After the chunk data the rest of the line is skipped, bare LF included.
        let (b, _, rest) = chunked("5\r\nhello\n0\r\n\r\nNEXT").unwrap();
        assert_eq!((&b[..], &rest[..]), (&b"hello"[..], &b"NEXT"[..]));
        let (b, _, _) = chunked("5\r\nhelloXY\r\n0\r\n\r\n").unwrap();
        assert_eq!(b, b"hello");
        // With no line end after the data, the next size line is taken as it: `\r\n` is empty.
        assert!(chunked("5\r\nhello0\r\n\r\n").is_err());
        // The last chunk's line needs CRLF; the trailer section may end its lines with LF.
        assert!(chunked("5\r\nhello\r\n0\n\r\n").is_err());
        let (_, t, rest) = chunked("0\r\nx-t: 1\n\r\nNEXT").unwrap();
        assert_eq!(t.unwrap()["x-t"], "1");
        assert_eq!(rest, "NEXT");
        let (_, t, _) = chunked("0\r\n\n").unwrap();
        assert!(t.is_none());
        // A size line that never ends.
        let long = format!("5;{}", "a".repeat(5000));
        assert_eq!(
            chunked(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn huge_sizes_never_overflow() {
        let mut st = BodyState::Chunked(ChunkState::Size);
        let mut buf = BytesMut::from("ffffffffffffffff\r\nabc");
        assert_eq!(data(st.decode(&mut buf, 1024).unwrap()), "abc");
        assert!(matches!(st, BodyState::Chunked(ChunkState::Data(n)) if n == u64::MAX - 3));
        let mut st = BodyState::Length(u64::MAX);
        let mut buf = BytesMut::from("abc");
        assert_eq!(data(st.decode(&mut buf, 1024).unwrap()), "abc");
        assert!(matches!(st, BodyState::Length(n) if n == u64::MAX - 3));
    }
}
