//! Where NDJSON lines go. Each output has its own writer thread behind a byte-bounded queue
//! ([`queue`]), so a slow disk or reader never slows capture: what does not fit is dropped,
//! counted per output and reported in the stream itself (`observer.loss`'s `sink`).
//!
//! A closed reader (`observer run | head`) ends the run cleanly. At exit every queue is
//! written out within [`FLUSH_TIMEOUT`]; what could not be is said on stderr.

mod alert_line;
pub mod community_id;
mod conn_line;
pub mod file;
pub mod ndjson;
pub mod net;
pub mod otlp;
pub mod queue;
mod rotate;
pub mod snapshot;
pub mod spec;
pub mod timefmt;
mod tls_line;
pub mod writer;

use std::{
    io,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::filter::Filter;

use queue::{Full, Queue};
pub use spec::{SinkSpec, Target};
use writer::{Out, Shared};

/// How long the end of a run waits for its outputs to write what they hold.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("the output was closed by its reader")]
    Closed,
    #[error("cannot open {path} for appending: {err}; check the directory exists and is writable")]
    Open { path: PathBuf, err: io::Error },
    #[error("cannot start the output {url}: {err}")]
    Start { url: String, err: io::Error },
    #[error("cannot start the writer thread of {name}: {err}")]
    Thread { name: String, err: io::Error },
}

/// What an output did, at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Lines handed to the output.
    pub lines: u64,
    /// Lines dropped because its queue was full.
    pub dropped: u64,
    /// Lines written.
    pub written: u64,
    /// Bytes still queued when the flush timed out.
    pub unwritten_bytes: usize,
}

/// The pipeline's handle on one output.
pub struct Sink {
    name: &'static str,
    limit: usize,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    full: Full,
    warned_full: bool,
    /// The records it takes (docs/filters.md); empty: all.
    filter: Filter,
}

impl Sink {
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
        })
    }

    /// Takes only what `filter` admits.
    #[must_use]
    pub fn filtered(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// The records it takes.
    #[must_use]
    pub fn filter(&self) -> &Filter {
        &self.filter
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
    ///
    /// # Errors
    /// [`SinkError::Closed`] when the reader went away.
    pub fn write(&mut self, buf: &mut Vec<u8>, lines: u64, keep: bool) -> Result<(), SinkError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            buf.clear();
            return Err(SinkError::Closed);
        }
        let full = if keep && self.full == Full::Drop {
            Full::Keep
        } else {
            self.full
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
        Ok(())
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
            unwritten_bytes: counts.bytes,
        }
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

impl Drop for Sink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish(Some(Instant::now() + FLUSH_TIMEOUT));
        }
    }
}

/// The destination of each kind of output: a new kind is a file of this folder and a line here.
fn open_out(target: &Target) -> io::Result<Box<dyn Out>> {
    Ok(match target {
        Target::Stdout => Box::new(writer::Stdout(io::stdout())),
        Target::File { path, rotate } => Box::new(file::FileOut::open(path, *rotate)?),
        Target::Tcp { addr } => Box::new(net::NetOut::tcp(addr)),
        Target::Unix { path } => Box::new(net::NetOut::unix(path)),
        Target::Otlp { addr, path } => {
            Box::new(otlp::OtlpOut::new(addr, path, crate::kernel::hostname()))
        }
    })
}

/// The outputs' names in the stream: each its own (`?name=`) or its scheme's, made unique by
/// a number (`file`, `file_2`). Leaked once at start: a handful of short strings.
#[must_use]
pub fn names(specs: &[SinkSpec]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::with_capacity(specs.len());
    for spec in specs {
        let base = spec
            .name
            .clone()
            .unwrap_or_else(|| spec.target.scheme().to_owned());
        let mut name = base.clone();
        let mut n = 1;
        while names.contains(&name.as_str()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        names.push(Box::leak(name.into_boxed_str()));
    }
    names
}
