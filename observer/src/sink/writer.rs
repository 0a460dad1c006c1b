//! One output's writer thread: it takes batches off its queue and writes them, so that a slow
//! disk or a slow reader waits here and never in the capture loop.
//!
//! A closed reader (EPIPE) ends the output and tells the pipeline. Any other error (a full
//! disk, EIO) keeps the batch and retries it every [`RETRY_EVERY`]; the queue behind it fills
//! and counts what it drops. One warning names the problem, one line says when it is over.

use std::{
    io::{self, Write},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::queue::{Item, Queue, Wait};

const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Where one output's batches go: a file, stdout, a socket. Each kind is a file of this
/// folder, opened by `super::open_out`.
pub trait Out: Send {
    /// Writes from `buf` (whole NDJSON lines), as `io::Write::write` does. `BrokenPipe`
    /// ends the output for good; any other error is retried every [`RETRY_EVERY`]. An output
    /// that reconnects returns what it wrote up to a line's end, so that a line cut by a
    /// broken connection is sent whole on the next.
    ///
    /// # Errors
    /// As the destination's.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// The batch is written: push out what a buffer holds.
    fn flush(&mut self) {}
    /// Lines written that the destination refused for good since last asked (an OTLP
    /// collector's 4xx): counted as dropped.
    fn rejected(&mut self) -> u64 {
        0
    }
    /// SIGHUP: open the destination again by its name.
    ///
    /// # Errors
    /// When it cannot be; the old one stays in use.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Standard output.
pub struct Stdout(pub io::Stdout);

impl Out for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().write(buf)
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }
}

/// What the writer and the pipeline share.
pub struct Shared {
    pub queue: Queue,
    /// The reader closed its end: nothing more can be written.
    pub closed: AtomicBool,
    /// Lines written.
    pub written: AtomicU64,
    /// A write error is being retried: the end of a run does not wait for this output.
    pub failing: AtomicBool,
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
            failing: AtomicBool::new(false),
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

/// Starts the writer thread of `out` (opened by the caller, so that a bad path fails before
/// capture starts); `label` names it in warnings.
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn(
    name: &str,
    label: String,
    out: Box<dyn Out>,
    shared: Arc<Shared>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut writer = Writer {
        label,
        out,
        shared,
        failing: None,
    };
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || writer.run())
}

struct Writer {
    /// What the warnings call the output: its URL.
    label: String,
    out: Box<dyn Out>,
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
                        let rejected = self.out.rejected().min(lines);
                        self.shared.queue.reject(rejected);
                        self.shared
                            .written
                            .fetch_add(lines - rejected, Ordering::Relaxed);
                    } else {
                        // The reader is gone: what it did not take is dropped, and counted.
                        self.shared.queue.reject(lines);
                    }
                    self.shared.queue.recycle(buf);
                }
            }
        }
        self.out.flush();
        // Lines written earlier that the output gave up on at the end (a network output's
        // undelivered resend).
        let late = self.out.rejected();
        if late > 0 {
            self.shared.queue.reject(late);
            self.shared.written.fetch_sub(late, Ordering::Relaxed);
        }
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
            self.shared.failing.store(false, Ordering::Relaxed);
            match self.shared.queue.counts().dropped - dropped_before {
                0 => eprintln!(
                    "observer: writing to {} works again; its queue dropped nothing meanwhile",
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
            self.shared.failing.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(RETRY_EVERY);
    }

    /// Opens the destination by its name again: after `mv`, a new file; the old one is closed.
    fn reopen(&mut self) {
        if let Err(e) = self.out.reopen() {
            eprintln!(
                "observer: warning: cannot reopen {}: {e}; still writing to the one it had open",
                self.label
            );
        }
    }
}
