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
mod output;
pub mod queue;
mod rotate;
pub mod snapshot;
pub mod spec;
pub mod timefmt;
mod tls_line;
pub mod writer;

use std::{io, path::PathBuf, time::Duration};

use thiserror::Error;

use crate::{detect::Alert, track::record::Output as Record};

pub use output::Output;
pub use spec::{SinkSpec, Target};
use writer::Out;

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
    /// Lines queued but not written (at the end: when the flush timed out, or in flight then).
    pub unwritten: u64,
}

/// What the pipeline writes its records to: each NDJSON output ([`Output`]) and `top`'s read
/// model; a new kind is a type implementing it. The pipeline encodes a record's line once, for
/// every sink that wants lines.
pub trait Sink {
    /// Whether it takes NDJSON lines; when no sink does, records are not encoded.
    fn wants_lines(&self) -> bool {
        true
    }
    /// A record (connection, state, TLS, loss) and its line (empty unless [`Self::wants_lines`]).
    ///
    /// # Errors
    /// [`SinkError::Closed`] when the reader went away.
    fn record(&mut self, record: &Record, line: &[u8]) -> Result<(), SinkError>;
    /// An anomaly alert and its line.
    fn alert(&mut self, alert: &Alert, line: &[u8]);
    /// An `observer.agent` line (started, paused, stopped…).
    fn agent(&mut self, _line: &[u8]) {}
    /// The end of a batch: hand over what is held.
    ///
    /// # Errors
    /// [`SinkError::Closed`] when the reader went away.
    fn write(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Its reader went away for good: it takes nothing more (a run ends when every sink is).
    fn closed(&self) -> bool {
        false
    }
    /// An NDJSON output, for what only outputs do: count drops, reopen, write out at exit.
    fn output(&mut self) -> Option<&mut Output> {
        None
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
