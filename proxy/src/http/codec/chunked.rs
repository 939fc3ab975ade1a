//! Chunked transfer coding (RFC 9112 §7.1), decoding step by step from a buffer; shared by the
//! downstream request bodies and the upstream response bodies.

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
