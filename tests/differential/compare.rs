//! What the suite compares, after normalising what legitimately differs between two runs of
//! any proxy (dates, generated request ids, timings, ephemeral ports).

use std::collections::BTreeMap;

/// A response as compared: status line, headers (sorted; values normalised where they are
/// generated), body (an upstream's JSON echo normalised, anything else byte for byte).
#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    pub text: String,
}

/// Headers whose value is generated or timed: compared by presence only. `x-ratelimit-reset`
/// counts the seconds to a bucket's next token from when the proxy answered, so it moves with
/// each proxy's own timing (its value is checked in the local rate limit's unit tests).
const PRESENCE_ONLY: &[&str] = &[
    "date",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "x-ratelimit-reset",
];

/// The raw bytes a client read until the proxy closed.
pub fn observe(bytes: &[u8]) -> Observed {
    if bytes.is_empty() {
        return Observed {
            text: "<closed without a response>".into(),
        };
    }
    // Interim 1xx responses (100 Continue) are kept as their status lines, then the final one.
    let mut interim = String::new();
    let mut bytes = bytes;
    while let Some(i) = find(bytes, b"\r\n\r\n")
        && is_interim(&bytes[..i])
    {
        interim.push_str(&String::from_utf8_lossy(&bytes[..i]));
        interim.push_str("\n\n");
        bytes = &bytes[i + 4..];
    }
    let (head, body) = match find(bytes, b"\r\n\r\n") {
        Some(i) => (&bytes[..i], &bytes[i + 4..]),
        None => (bytes, &b""[..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let k = k.trim().to_ascii_lowercase();
            let v = if PRESENCE_ONLY.contains(&k.as_str()) {
                "<set>".to_string()
            } else {
                v.trim().to_string()
            };
            (k, v)
        })
        .collect();
    headers.sort();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body).unwrap_or_else(|| body.to_vec())
    } else {
        body.to_vec()
    };
    let mut text = interim + &status_line;
    for (k, v) in &headers {
        text.push_str(&format!("\n{k}: {v}"));
    }
    text.push_str("\n\n");
    text.push_str(&normalise_body(&body));
    Observed { text }
}

/// A 1xx head other than 101 (after which the connection is no longer HTTP).
fn is_interim(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.") && head.get(9) == Some(&b'1') && !head[9..].starts_with(b"101")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(body, b"\r\n")?;
        let size = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Propagated trace context: span and trace ids a proxy generates are random, so they compare
/// by shape; ids the request carried (the differential tracing cases' fixed ids) stay.
const TRACE_CONTEXT: &[&str] = &[
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "traceparent",
    "b3",
];

/// Ids the tracing cases send: kept verbatim where they are propagated.
const KNOWN_IDS: &[&str] = &[
    "463ac35c9f6413ad48485a3953bb6124",
    "a2fb4a1d1a96d312",
    "0020000000000001",
    "0af7651916cd43dd8448eb211c80319c",
    "b7ad6b7169203331",
];

/// Each run of 16 or 32 hex digits that is not a known id becomes `<id16>`/`<id32>`.
fn id_shape(v: &str) -> String {
    v.split('-')
        .map(|part| {
            let hex = part.bytes().all(|b| b.is_ascii_hexdigit());
            match (hex, part.len()) {
                (true, 16 | 32) if !KNOWN_IDS.contains(&part) => format!("<id{}>", part.len()),
                _ => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An upstream's JSON echo of the request it got, with generated values masked; any other
/// body as text.
fn normalise_body(body: &[u8]) -> String {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::from_utf8_lossy(body).into_owned();
    };
    if let Some(h) = v.get_mut("headers").and_then(|h| h.as_object_mut()) {
        for k in ["x-request-id"] {
            if let Some(x) = h.get_mut(k) {
                *x = serde_json::Value::String("<set>".into());
            }
        }
        for k in TRACE_CONTEXT {
            if let Some(serde_json::Value::String(x)) = h.get_mut(*k) {
                *x = id_shape(x);
            }
        }
        // Sorted keys (serde_json's map is ordered by key unless preserve_order is on).
        let sorted: BTreeMap<_, _> = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        *h = sorted.into_iter().collect();
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// `None` when equal, else both sides' texts with the first differing line marked.
pub fn diff(envoy: &str, remora: &str) -> Option<String> {
    if envoy == remora {
        return None;
    }
    let e: Vec<&str> = envoy.lines().collect();
    let r: Vec<&str> = remora.lines().collect();
    // The first differing line that says something: a body's length follows from the body.
    let differs = |i: usize| {
        e.get(i) != r.get(i) && !e.get(i).is_some_and(|l| l.starts_with("content-length:"))
    };
    let first = (0..e.len().max(r.len()))
        .find(|&i| differs(i))
        .or_else(|| (0..e.len().max(r.len())).find(|&i| e.get(i) != r.get(i)))
        .unwrap_or(0);
    Some(format!(
        "first difference at line {}: envoy {:?} / remora {:?}\n--- envoy\n{envoy}\n--- remora\n{remora}",
        first + 1,
        e.get(first).copied().unwrap_or("<end>"),
        r.get(first).copied().unwrap_or("<end>"),
    ))
}

/// An access-log line with what differs between runs masked: addresses' ports, times,
/// durations and ids are not in the format the suite uses, so lines compare as they are.
pub fn log_line(line: &str) -> String {
    line.trim_end().to_string()
}
