//! One output's writer thread: it takes batches off its queue and writes them, so that a slow
//! disk or a slow reader waits here and never in the capture loop.
//!
//! A closed reader (EPIPE) ends the output and tells the pipeline. Any other error (a full
//! disk, EIO) keeps the batch and retries it every [`RETRY_EVERY`]; the queue behind it fills
//! and counts what it drops. One warning names the problem, one line says when it is over.

use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::queue::{Item, Queue, Wait};

const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Where an output's lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// Appended to, created 0640: the records name every process and peer of the host.
    File(PathBuf),
}

/// Opens `path` for appending, creating it 0640.
///
/// # Errors
/// As `open(2)`.
pub fn append(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Stdout(out) => out.lock().write(buf),
            Out::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) {
        if let Out::Stdout(out) = self {
            let _ = out.flush();
        }
    }
}

/// What the writer and the pipeline share.
pub struct Shared {
    pub queue: Queue,
    /// The reader closed its end: nothing more can be written.
    pub closed: AtomicBool,
    /// Lines written.
    pub written: AtomicU64,
    done: Mutex<bool>,
    finished: Condvar,
}

impl Shared {
    #[must_use]
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            closed: AtomicBool::new(false),
            written: AtomicU64::new(0),
            done: Mutex::new(false),
            finished: Condvar::new(),
        }
    }

    /// Waits until the writer has ended, or `deadline` (`None`: for as long as it takes);
    /// whether it ended.
    pub fn wait_done(&self, deadline: Option<Instant>) -> bool {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*done {
            done = match deadline {
                None => self
                    .finished
                    .wait(done)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.finished
                        .wait_timeout(done, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }
}

/// Starts the writer of `target` (opened by the caller as `file`, so that a bad path fails
/// before capture starts).
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn(
    name: &str,
    target: Target,
    file: Option<File>,
    shared: Arc<Shared>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let out = match file {
        Some(file) => Out::File(file),
        None => Out::Stdout(io::stdout()),
    };
    let label = match &target {
        Target::Stdout => "stdout".to_owned(),
        Target::File(path) => path.display().to_string(),
    };
    let mut writer = Writer {
        label,
        target,
        out,
        shared,
        failing: None,
    };
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || writer.run())
}

struct Writer {
    /// What the warnings call the output: the file's path.
    label: String,
    target: Target,
    out: Out,
    shared: Arc<Shared>,
    /// The error being retried, and the lines dropped when it began.
    failing: Option<(io::ErrorKind, u64)>,
}

impl Writer {
    fn run(&mut self) {
        while let Some(item) = self.shared.queue.pop(Wait::Forever) {
            match item {
                Item::Reopen => self.reopen(),
                Item::Lines(buf, lines) => {
                    if !self.shared.closed.load(Ordering::Relaxed) && self.write_all(&buf) {
                        self.shared.written.fetch_add(lines, Ordering::Relaxed);
                    }
                    self.shared.queue.recycle(buf);
                }
            }
        }
        self.out.flush();
        *self
            .shared
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.shared.finished.notify_all();
    }

    /// Writes the whole batch, retrying until it can; false when the reader is gone.
    fn write_all(&mut self, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            match self.out.write(buf) {
                Ok(0) => self.failed(&io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.shared.closed.store(true, Ordering::Relaxed);
                    return false;
                }
                Err(e) => self.failed(&e),
            }
        }
        if let Some((_, dropped_before)) = self.failing.take() {
            match self.shared.queue.counts().dropped - dropped_before {
                0 => eprintln!(
                    "observer: writing to {} works again; nothing was lost",
                    self.label
                ),
                n => eprintln!(
                    "observer: writing to {} works again; {n} lines were dropped meanwhile (counted in observer.loss)",
                    self.label
                ),
            }
        }
        true
    }

    fn failed(&mut self, e: &io::Error) {
        if self.failing.is_none() {
            eprintln!(
                "observer: warning: cannot write to {}: {e}; retrying every {} ms and holding records in its queue, whose overflow is counted in observer.loss — free space or fix the output",
                self.label,
                RETRY_EVERY.as_millis()
            );
            self.failing = Some((e.kind(), self.shared.queue.counts().dropped));
        }
        std::thread::sleep(RETRY_EVERY);
    }

    /// Opens the file by its name again: after `mv`, a new file; the old one is closed.
    fn reopen(&mut self) {
        let Target::File(path) = &self.target else {
            return;
        };
        match append(path) {
            Ok(file) => self.out = Out::File(file),
            Err(e) => eprintln!(
                "observer: warning: cannot reopen {}: {e}; still writing to the file it had open",
                path.display()
            ),
        }
    }
}
