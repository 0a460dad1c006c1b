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

/// The lines in `bytes`. Eight bytes at a time: xtask is built without optimisation, and a
/// byte-by-byte count made the reader, not observer, the bottleneck of `bench sinks`.
pub fn newlines(bytes: &[u8]) -> u64 {
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LOWS: u64 = !HIGHS;
    const NL: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ NL;
        // A zero byte of `word` is a newline. Adding 0x7f to each byte's low bits (no carry
        // between bytes) sets its high bit unless all were 0; or-ing in the byte keeps it for
        // bytes with the high bit set. What is left clear is exactly the zero bytes.
        let nonzero = ((word & LOWS).wrapping_add(LOWS)) | word;
        n += u64::from((!nonzero & HIGHS).count_ones());
    }
    n + chunks
        .remainder()
        .iter()
        .map(|&b| u64::from(b == b'\n'))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_newlines_exactly() {
        let cases: &[(&[u8], u64)] = &[
            (b"", 0),
            (b"\n", 1),
            (b"a\nb\n", 2),
            (b"\n\n\n\n\n\n\n\n\n", 9),
            (b"0123456\n89abcde\n\x0b\x09\x8a\x0a\xff\x00\n", 4),
            // A byte one above a newline's (0x0b) right after it, within one word.
            (b"\n\x0b\n\x0b\x8a\x0a\x0b\x01", 3),
        ];
        for (bytes, want) in cases {
            assert_eq!(super::newlines(bytes), *want, "{bytes:?}");
        }
    }
}
