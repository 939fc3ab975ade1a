//! The finished spans a tracer driver exports (shared by the zipkin and OpenTelemetry
//! drivers): a bounded queue drained by the tracer manager's task on its flush timer, or sooner
//! once `<prefix>.min_flush_spans` (runtime, default 5) wait. A full queue drops the span and
//! counts `<prefix>.spans_dropped` (a slow or dead collector never holds a request);
//! `<prefix>.spans_sent` and `<prefix>.timer_flushed` as Envoy's.

use super::Record;
use crate::runtime::RuntimeLoader;
use crate::telemetry::stats::{Counter, Store};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct SpanQueue {
    spans: Mutex<Vec<Record>>,
    capacity: usize,
    /// `<prefix>.min_flush_spans`.
    min_flush_key: String,
    runtime: Arc<RuntimeLoader>,
    wake: Arc<tokio::sync::Notify>,
    spans_sent: Arc<Counter>,
    timer_flushed: Arc<Counter>,
    pub spans_dropped: Arc<Counter>,
}

impl SpanQueue {
    /// `prefix`: the driver's stats and runtime prefix (`tracing.zipkin`).
    pub fn new(
        prefix: &str,
        capacity: usize,
        store: &Store,
        runtime: Arc<RuntimeLoader>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let c = |n: &str| store.counter(&format!("{prefix}.{n}"));
        Self {
            spans: Mutex::new(Vec::new()),
            capacity,
            min_flush_key: format!("{prefix}.min_flush_spans"),
            runtime,
            wake,
            spans_sent: c("spans_sent"),
            timer_flushed: c("timer_flushed"),
            spans_dropped: c("spans_dropped"),
        }
    }

    /// A finished span in (dropped and counted when the queue is full); wakes the flush task
    /// once `min_flush_spans` wait.
    pub fn report(&self, record: Record) {
        let pending = {
            let mut q = self.spans.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.capacity {
                drop(q);
                self.spans_dropped.inc();
                return;
            }
            q.push(record);
            q.len()
        };
        if pending as u64 >= self.min_flush_spans() {
            self.wake.notify_one();
        }
    }

    fn min_flush_spans(&self) -> u64 {
        self.runtime
            .snapshot()
            .integer(&self.min_flush_key, 5)
            .max(1)
    }

    /// What to export now: everything on the timer, else all once `min_flush_spans` wait.
    pub fn take(&self, timer: bool) -> Option<Vec<Record>> {
        if timer {
            self.timer_flushed.inc();
        }
        let min = self.min_flush_spans();
        let spans = {
            let mut q = self.spans.lock().unwrap_or_else(|e| e.into_inner());
            if q.is_empty() || (!timer && (q.len() as u64) < min) {
                return None;
            }
            std::mem::take(&mut *q)
        };
        self.spans_sent.add(spans.len() as u64);
        Some(spans)
    }
}
