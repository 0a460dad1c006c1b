//! One NDJSON output as the pipeline's [`Sink`]: filtered, batched, and handed to the queue
//! of its writer thread ([`super::writer`]).

use std::{
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Instant,
};

use super::{
    FLUSH_TIMEOUT, Sink, SinkError, SinkSpec, Target, Totals, open_out,
    queue::{Full, Queue},
    writer::{self, Shared},
};
use crate::{
    detect::Alert,
    filter::{Dataset, Filter},
    track::record::Output as Record,
};

/// The most NDJSON handed to the queue at once: a quarter of the smallest queue.
const BATCH_BYTES: usize = 256 << 10;

/// One NDJSON output as the pipeline sees it: the lines its filter admits, batched, handed to
/// its writer thread's queue.
pub struct Output {
    name: &'static str,
    limit: usize,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    full: Full,
    warned_full: bool,
    /// The records it takes (docs/filters.md); empty: all.
    filter: Filter,
    /// Lines waiting to be handed over: records and alerts, then the observer's own lines
    /// (loss and agent), which a full queue takes a little past its bound.
    buf: Vec<u8>,
    lines: u64,
    own: Vec<u8>,
    own_lines: u64,
}

impl Output {
    /// Opens the output `spec` names (a file is created 0640 or appended to) and starts its
    /// writer, with a queue of `queue_bytes`; `name` is its name in the stream.
    ///
    /// # Errors
    /// When the destination cannot be opened or the thread started.
    pub fn open(
        spec: &SinkSpec,
        name: &'static str,
        queue_bytes: usize,
    ) -> Result<Self, SinkError> {
        let out = open_out(&spec.target).map_err(|err| match &spec.target {
            Target::File { path, .. } => SinkError::Open {
                path: path.clone(),
                err,
            },
            _ => SinkError::Start {
                url: spec.url.clone(),
                err,
            },
        })?;
        let shared = Arc::new(Shared::new(Queue::new(queue_bytes)));
        let label = match &spec.target {
            Target::File { path, .. } => path.display().to_string(),
            _ => spec.url.clone(),
        };
        let thread =
            writer::spawn(name, label, out, shared.clone()).map_err(|err| SinkError::Thread {
                name: name.to_owned(),
                err,
            })?;
        Ok(Self {
            name,
            limit: queue_bytes,
            shared,
            thread: Some(thread),
            full: Full::Drop,
            warned_full: false,
            filter: Filter::default(),
            buf: Vec::with_capacity(1 << 20),
            lines: 0,
            own: Vec::new(),
            own_lines: 0,
        })
    }

    /// Takes only what `filter` admits.
    #[must_use]
    pub fn filtered(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Waits for room instead of dropping (a replay: there is no capture to protect).
    #[must_use]
    pub fn lossless(mut self) -> Self {
        self.full = Full::Wait(None);
        self
    }

    /// From now on waits for room until `deadline` (the end of a run: capture is over, and
    /// the last records should reach a reader that keeps up, within a bound).
    pub fn closing(&mut self, deadline: Instant) {
        if self.full == Full::Drop {
            self.full = Full::Wait(Some(deadline));
        }
    }

    /// The output's name in `observer.loss` and `observer.agent` lines.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Hands the `lines` lines in `buf` to the writer, leaving `buf` empty. `keep`: the
    /// observer's own lines, taken a little past a full queue so the reader learns of a loss.
    fn hand(&mut self, own: bool) {
        let (mut buf, lines) = if own {
            (
                std::mem::take(&mut self.own),
                std::mem::take(&mut self.own_lines),
            )
        } else {
            (
                std::mem::take(&mut self.buf),
                std::mem::take(&mut self.lines),
            )
        };
        self.push(&mut buf, lines, own);
        // The emptied buffer, its capacity kept.
        if own {
            self.own = buf;
        } else {
            self.buf = buf;
        }
    }

    fn push(&mut self, buf: &mut Vec<u8>, lines: u64, keep: bool) {
        if self.shared.closed.load(Ordering::Relaxed) {
            // Its reader went away; the other outputs go on.
            self.shared.queue.drop_lines(lines);
            buf.clear();
            return;
        }
        let full = match self.full {
            // The end of a run waits for outputs that write, not for one retrying an error.
            Full::Wait(Some(_)) if self.shared.failing.load(Ordering::Relaxed) => Full::Drop,
            full => full,
        };
        let full = if keep && full == Full::Drop {
            Full::Keep
        } else {
            full
        };
        if !self.shared.queue.push(buf, lines, full) && !self.warned_full {
            self.warned_full = true;
            eprintln!(
                "observer: warning: {} cannot keep up: its {} MiB queue is full, so lines are dropped and counted in observer.loss (loss.sink.{}.dropped) — speed up the reader or raise --queue-mib",
                self.name,
                self.limit >> 20,
                self.name
            );
        }
    }

    /// Reopens a file output by its name, after what is queued (SIGHUP, after logrotate).
    pub fn reopen(&self) {
        self.shared.queue.reopen();
    }

    /// Lines dropped so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.shared.queue.counts().dropped
    }

    /// What the output was handed and dropped so far.
    #[must_use]
    pub fn totals(&self) -> Totals {
        let counts = self.shared.queue.counts();
        Totals {
            lines: counts.queued + counts.dropped,
            dropped: counts.dropped,
            written: self.shared.written.load(Ordering::Relaxed),
            unwritten: counts
                .queued
                .saturating_sub(self.shared.written.load(Ordering::Relaxed)),
        }
    }

    /// Takes nothing more: the writer ends once it has written what is queued. Close every
    /// output before waiting for any ([`Self::finish`]), so that they write out side by side.
    pub fn close(&self) {
        self.shared.queue.close();
    }

    /// Writes out what is queued, waiting until `deadline` at most (`None`: as long as it
    /// takes), and says what was done. Takes nothing more.
    pub fn finish(&mut self, deadline: Option<Instant>) -> Totals {
        self.shared.queue.close();
        if self.shared.wait_done(deadline)
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
        self.thread = None;
        self.totals()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish(Some(Instant::now() + FLUSH_TIMEOUT));
        }
    }
}

impl Sink for Output {
    fn record(&mut self, record: &Record, line: &[u8]) -> Result<(), SinkError> {
        if !self.filter.admits_output(record) {
            return Ok(());
        }
        if matches!(record, Record::Loss(_)) {
            self.own.extend_from_slice(line);
            self.own_lines += 1;
            return Ok(());
        }
        self.buf.extend_from_slice(line);
        self.lines += 1;
        // A big batch (a table read's updates, the records held at exit) goes in pieces that
        // a small queue can take.
        if self.buf.len() >= BATCH_BYTES {
            self.hand(false);
        }
        Ok(())
    }

    fn alert(&mut self, alert: &Alert, line: &[u8]) {
        if self.filter.admits_alert(alert) {
            self.buf.extend_from_slice(line);
            self.lines += 1;
        }
    }

    fn agent(&mut self, line: &[u8]) {
        if self.filter.admits_own(Dataset::Agent) {
            self.own.extend_from_slice(line);
            self.own_lines += 1;
        }
    }

    fn write(&mut self) -> Result<(), SinkError> {
        self.hand(false);
        self.hand(true);
        Ok(())
    }

    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    fn output(&mut self) -> Option<&mut Output> {
        Some(self)
    }
}
