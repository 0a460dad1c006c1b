//! A consumer for observer's `tcp://` output in the benchmarks: it accepts connections on
//! loopback and counts the lines it reads, as fast as it can.

use std::{
    io::Read as _,
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};

pub struct Reader {
    pub url: String,
    lines: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
        let url = format!("tcp://{}", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let lines = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (lines.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            // One connection at a time (observer reconnects only after a break).
            while !done.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            count.fetch_add(newlines(&buf[..n]), Ordering::Relaxed);
                        }
                        Err(_) if !done.load(Ordering::Relaxed) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(Self {
            url,
            lines,
            stop,
            thread: Some(thread),
        })
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Stops once the writer has closed its end (or after `grace`), and returns the lines.
    pub fn finish(mut self, grace: Duration) -> u64 {
        let mut last = self.lines();
        // Lines may still be in flight from a writer that just exited.
        loop {
            thread::sleep(grace / 10);
            let now = self.lines();
            if now == last {
                break;
            }
            last = now;
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.lines()
    }
}

/// The lines in `bytes`.
#[expect(clippy::naive_bytecount, reason = "a few MB per run: no crate for it")]
pub fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}
