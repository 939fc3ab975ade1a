//! Zipkin's B3 propagation: the multi-header form (`x-b3-traceid`, `x-b3-spanid`,
//! `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`) and the single `b3` header, read as
//! Envoy's `SpanContextExtractor` reads them; injected as multi headers (Envoy's zipkin span).

use super::SpanContext;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const B3: HeaderName = HeaderName::from_static("b3");

/// A context header that is present but malformed: Envoy answers with a null span (no tracing
/// for the request).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The sampling decision the request carries, if any (`b3` first, then `x-b3-sampled`,
/// `x-b3-flags: 1` meaning debug).
pub fn extract_sampled(h: &HeaderMap) -> Option<bool> {
    if let Some(b3) = h.get(B3).and_then(|v| v.to_str().ok()) {
        let state = match b3.len() {
            1 => b3,
            _ => b3.split('-').nth(2).unwrap_or(""),
        };
        return match state {
            "0" => Some(false),
            "1" | "d" => Some(true),
            _ => None,
        };
    }
    if h.get(X_B3_FLAGS).is_some_and(|v| v == "1") {
        return Some(true);
    }
    match h.get(X_B3_SAMPLED)?.as_bytes() {
        b"1" | b"true" | b"d" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// The parent context the request carries (`Ok(None)`: none).
pub fn extract(h: &HeaderMap, sampled: bool) -> Result<Option<SpanContext>, Malformed> {
    if let Some(b3) = h.get(B3) {
        return single(b3.to_str().map_err(|_| Malformed)?, sampled);
    }
    let (Some(trace), Some(span)) = (h.get(X_B3_TRACE_ID), h.get(X_B3_SPAN_ID)) else {
        return Ok(None);
    };
    let (trace_high, trace_id) = trace_id(trace.as_bytes())?;
    let id = hex64(span.as_bytes())?;
    let parent_id = match h.get(X_B3_PARENT_SPAN_ID) {
        Some(p) => hex64(p.as_bytes())?,
        None => 0,
    };
    Ok(Some(SpanContext {
        trace_high,
        trace_id,
        id,
        parent_id,
        sampled,
    }))
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]` (or a lone sampling state).
fn single(v: &str, sampled: bool) -> Result<Option<SpanContext>, Malformed> {
    if v.len() == 1 {
        return Ok(None);
    }
    let mut parts = v.split('-');
    let (trace_high, trace_id) = trace_id(parts.next().ok_or(Malformed)?.as_bytes())?;
    let id = hex64(parts.next().ok_or(Malformed)?.as_bytes())?;
    let _state = parts.next();
    let parent_id = match parts.next() {
        Some(p) => hex64(p.as_bytes())?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err(Malformed);
    }
    Ok(Some(SpanContext {
        trace_high,
        trace_id,
        id,
        parent_id,
        sampled,
    }))
}

/// A 64- or 128-bit trace id in hex.
fn trace_id(b: &[u8]) -> Result<(u64, u64), Malformed> {
    match b.len() {
        16 => Ok((0, hex64(b)?)),
        32 => Ok((hex64(&b[..16])?, hex64(&b[16..])?)),
        _ => Err(Malformed),
    }
}

/// Exactly 16 hex digits.
pub fn hex64(b: &[u8]) -> Result<u64, Malformed> {
    if b.len() != 16 {
        return Err(Malformed);
    }
    let s = std::str::from_utf8(b).map_err(|_| Malformed)?;
    u64::from_str_radix(s, 16).map_err(|_| Malformed)
}

/// The span's context: in the single `b3` header when the request came with one (as Envoy
/// answers in the format it was given), else as multi headers (replacing what the request had).
pub fn inject(cx: &SpanContext, h: &mut HeaderMap) {
    if h.contains_key(B3) {
        let mut s = String::with_capacity(68);
        let mut buf = [0u8; 32];
        s.push_str(cx.trace_id_hex(&mut buf));
        let mut buf = [0u8; 16];
        s.push('-');
        s.push_str(hex16(cx.id, &mut buf));
        s.push_str(if cx.sampled { "-1" } else { "-0" });
        if cx.parent_id != 0 {
            s.push('-');
            s.push_str(hex16(cx.parent_id, &mut buf));
        }
        h.insert(B3, value(&s));
        return;
    }
    let mut buf = [0u8; 32];
    h.insert(X_B3_TRACE_ID, value(cx.trace_id_hex(&mut buf)));
    let mut buf = [0u8; 16];
    h.insert(X_B3_SPAN_ID, value(hex16(cx.id, &mut buf)));
    if cx.parent_id != 0 {
        let mut buf = [0u8; 16];
        h.insert(X_B3_PARENT_SPAN_ID, value(hex16(cx.parent_id, &mut buf)));
    }
    h.insert(
        X_B3_SAMPLED,
        HeaderValue::from_static(if cx.sampled { "1" } else { "0" }),
    );
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// 16 lowercase hex digits, on the stack.
pub fn hex16(v: u64, buf: &mut [u8; 16]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or("0000000000000000")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn multi_headers_round_trip() {
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(extract_sampled(&h), Some(true));
        let cx = extract(&h, true).unwrap().unwrap();
        assert_eq!(cx.trace_high, 0x463ac35c9f6413ad);
        assert_eq!(cx.id, 0xa2fb4a1d1a96d312);
        assert_eq!(cx.parent_id, 0x0020000000000001);
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        for name in [
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
        ] {
            assert_eq!(out.get(name), h.get(name), "{name}");
        }
    }

    #[test]
    fn single_header_and_malformed() {
        let h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
        )]);
        assert_eq!(extract_sampled(&h), Some(false));
        let cx = extract(&h, false).unwrap().unwrap();
        assert_eq!(cx.id, 0xe457b5a2e4d86bd1);
        assert_eq!(cx.parent_id, 0x05e3ac9a4f6e3b90);
        assert_eq!(extract_sampled(&headers(&[("b3", "d")])), Some(true));
        let bad = headers(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", "a2fb4a1d1a96d312")]);
        assert_eq!(extract(&bad, true), Err(Malformed));
        assert_eq!(extract(&HeaderMap::new(), true), Ok(None));
        // Answered in the format it came in.
        let mut out = h.clone();
        inject(
            &SpanContext {
                id: 7,
                parent_id: cx.id,
                ..cx
            },
            &mut out,
        );
        assert_eq!(
            out[B3],
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000007-0-e457b5a2e4d86bd1"
        );
        assert!(!out.contains_key(X_B3_SPAN_ID));
    }
}
