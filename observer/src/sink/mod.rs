//! Where NDJSON lines go: stdout or a file opened for append.
//!
//! A closed reader (`observer run | head`) ends the run cleanly. Any other write error (a full
//! disk, EIO) loses nothing at first: unwritten bytes wait in memory, up to [`BACKLOG_LIMIT`],
//! and every later write retries them; one warning names the problem. Only past the limit are
//! whole batches dropped, and they are counted.

mod alert_line;
pub mod community_id;
mod conn_line;
pub mod ndjson;
pub mod snapshot;
pub mod timefmt;
mod tls_line;

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Bytes held in memory while the output cannot be written.
pub const BACKLOG_LIMIT: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("the output was closed by its reader")]
    Closed,
    #[error("cannot open {path} for appending: {err}; check the directory exists and is writable")]
    Open { path: PathBuf, err: io::Error },
}

enum Target {
    Stdout(io::Stdout),
    File(File),
}

impl Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::Stdout(out) => out.lock().write(buf),
            Target::File(file) => file.write(buf),
        }
    }
}

pub struct Sink {
    target: Target,
    name: String,
    backlog: Vec<u8>,
    warned: Option<io::ErrorKind>,
    /// Bytes dropped because the backlog was full.
    pub dropped_bytes: u64,
    /// Lines dropped because the backlog was full.
    pub dropped_lines: u64,
}

impl Sink {
    #[must_use]
    pub fn stdout() -> Self {
        Self::new(Target::Stdout(io::stdout()), "stdout".to_owned())
    }

    /// Opens `path` for appending, creating it if needed.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn append(path: &Path) -> Result<Self, SinkError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| SinkError::Open {
                path: path.to_owned(),
                err,
            })?;
        Ok(Self::new(Target::File(file), path.display().to_string()))
    }

    fn new(target: Target, name: String) -> Self {
        Self {
            target,
            name,
            backlog: Vec::new(),
            warned: None,
            dropped_bytes: 0,
            dropped_lines: 0,
        }
    }

    /// Writes complete lines. Never blocks on a failing disk: unwritten bytes are kept.
    ///
    /// # Errors
    /// [`SinkError::Closed`] when the reader went away.
    pub fn write(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        if !self.backlog.is_empty() {
            if self.backlog.len() + lines.len() > BACKLOG_LIMIT {
                self.dropped_bytes += lines.len() as u64;
                self.dropped_lines += lines.split(|&b| b == b'\n').count() as u64 - 1;
            } else {
                self.backlog.extend_from_slice(lines);
            }
            return self.retry();
        }
        let written = self.write_some(lines)?;
        if written < lines.len() {
            self.backlog.extend_from_slice(&lines[written..]);
        }
        Ok(())
    }

    /// Retries bytes held back by an earlier error.
    ///
    /// # Errors
    /// [`SinkError::Closed`] when the reader went away.
    pub fn retry(&mut self) -> Result<(), SinkError> {
        if self.backlog.is_empty() {
            return Ok(());
        }
        let backlog = std::mem::take(&mut self.backlog);
        let written = self.write_some(&backlog)?;
        self.backlog = backlog;
        self.backlog.drain(..written);
        if self.backlog.is_empty() && self.warned.take().is_some() {
            eprintln!(
                "observer: writing to {} works again; nothing was lost",
                self.name
            );
        }
        Ok(())
    }

    /// Bytes waiting to be written.
    #[must_use]
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Writes as much as possible; returns how much was written.
    fn write_some(&mut self, mut buf: &[u8]) -> Result<usize, SinkError> {
        let total = buf.len();
        while !buf.is_empty() {
            match self.target.write(buf) {
                Ok(0) => break,
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(SinkError::Closed),
                Err(e) => {
                    if self.warned.is_none() {
                        eprintln!(
                            "observer: warning: cannot write to {}: {e}; holding records in memory (up to {} MiB) and retrying — free space or fix the output",
                            self.name,
                            BACKLOG_LIMIT >> 20
                        );
                        self.warned = Some(e.kind());
                    }
                    break;
                }
            }
        }
        Ok(total - buf.len())
    }
}
