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
                    let n = (rem as usize).min(buf.len());
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
                if buf.len() > 4096 {
                    return Err(bad_chunk("chunk size line too long"));
                }
                return Ok(Step::NeedMore);
            };
            let line = buf.split_to(eol + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let size_part = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if size_part.is_empty()
                || size_part.len() > 16
                || !size_part.iter().all(u8::is_ascii_hexdigit)
            {
                return Err(bad_chunk("bad chunk size"));
            }
            let size = u64::from_str_radix(std::str::from_utf8(size_part).expect("hex digits"), 16)
                .map_err(|_| bad_chunk("chunk size overflow"))?;
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
            let n = (rem as usize).min(buf.len());
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
            if buf.len() < 2 {
                if buf.first() == Some(&b'\n') {
                    buf.advance(1);
                    return Ok(Step::State(ChunkState::Size));
                }
                return Ok(Step::NeedMore);
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
            } else if buf.starts_with(b"\n") {
                buf.advance(1);
            } else {
                return Err(bad_chunk("missing CRLF after chunk data"));
            }
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
            let end = find_subslice(&*buf, b"\r\n\r\n")
                .map(|i| i + 4)
                .or_else(|| find_subslice(&*buf, b"\n\n").map(|i| i + 2));
            let Some(end) = end else {
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

pub fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
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
}
