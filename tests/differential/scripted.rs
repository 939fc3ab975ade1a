//! Scripted upstreams: HTTP/1.1 servers that fail in chosen ways (a status, a reset, a late
//! answer) on a per-case script shared by all the servers of a run. A request names its case by
//! its `x-case` header (`<case>#<n>`); the case's acts are played in the order requests arrive,
//! whichever server gets them, and what every server saw is recorded per case. Each case runs on
//! one proxy, then the other: the script is loaded again in between.

use crate::support::serve_tcp;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a scripted upstream does with one request.
#[derive(Clone, Debug)]
pub enum Act {
    /// `200 OK` with body `ok`.
    Ok,
    /// Answer with this status, these extra header lines (each ending in CRLF), body `fail`.
    Status(u16, &'static str),
    /// Close the connection without answering.
    Reset,
    /// Answer with this status after this many milliseconds.
    Late(u64, u16),
}

#[derive(Default)]
struct CaseState {
    acts: VecDeque<Act>,
    then: Option<Act>,
    seen: Vec<String>,
}

/// The scripts and records every scripted server of a run shares.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<HashMap<String, CaseState>>>);

impl Board {
    /// (Re)loads a case's script and forgets what was seen.
    pub fn load(&self, case: &str, acts: &[Act], then: Act) {
        self.0.lock().unwrap().insert(
            case.to_string(),
            CaseState {
                acts: acts.iter().cloned().collect(),
                then: Some(then),
                seen: Vec::new(),
            },
        );
    }

    /// What the servers saw for this case, in arrival order.
    pub fn seen(&self, case: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .get(case)
            .map(|c| c.seen.clone())
            .unwrap_or_default()
    }

    /// Waits (up to 5 s) until the servers saw `n` requests of this case.
    pub async fn wait_seen(&self, case: &str, n: usize) {
        for _ in 0..500 {
            if self.seen(case).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Records the request and takes the case's next act.
    fn next(&self, case: &str, record: String) -> Act {
        let mut all = self.0.lock().unwrap();
        let Some(c) = all.get_mut(case) else {
            return Act::Status(599, "");
        };
        c.seen.push(record);
        c.acts
            .pop_front()
            .or_else(|| c.then.clone())
            .unwrap_or(Act::Ok)
    }
}

/// One scripted server named `name`.
pub async fn server(name: &'static str, board: Board) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    serve_tcp(move |s| serve(s, name, board.clone())).await
}

/// Request headers recorded: every one but these (generated, or the same by construction).
const UNRECORDED: &[&str] = &["host", "x-case", "content-length", "x-request-id"];

async fn serve(mut s: tokio::net::TcpStream, name: &'static str, board: Board) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or("").to_string();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let case = headers
            .get("x-case")
            .map(|c| c.split('#').next().unwrap_or("").to_string())
            .unwrap_or_default();
        let mut record = format!("{name}: {request_line} body={len}");
        for (k, v) in &headers {
            if !UNRECORDED.contains(&k.as_str()) {
                record.push_str(&format!(" {k}={v}"));
            }
        }
        let reply = match board.next(&case, record) {
            Act::Reset => return,
            Act::Ok => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
            Act::Status(code, extra) => {
                format!("HTTP/1.1 {code} X\r\ncontent-length: 4\r\n{extra}\r\nfail")
            }
            Act::Late(ms, code) => {
                // The proxy may give up meanwhile: a closed connection ends the wait.
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = s.read(&mut probe) => return,
                }
                format!("HTTP/1.1 {code} X\r\ncontent-length: 4\r\n\r\nlate")
            }
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
