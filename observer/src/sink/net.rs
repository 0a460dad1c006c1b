//! Network outputs: the NDJSON stream, as it is, to a TCP peer (`tcp://HOST:PORT`) or to a
//! unix stream socket (`unix:///PATH`), reconnected when the connection breaks.
//!
//! Everything here runs on the output's writer thread ([`super::writer`]): a consumer that is
//! down, slow or restarting fills this output's queue, which counts what it drops, and never
//! touches capture. A consumer that is down at start does not stop the agent: the first write
//! fails with the reason, the writer warns once, and connecting goes on with a backoff. The
//! host name is resolved again at each connect.
//!
//! Across a reconnect no line is split or doubled, and none the consumer's kernel did not
//! take is lost: `write` reports bytes only up to a line's end, so the writer hands a cut
//! line again whole; and a copy of what the kernel accepted is kept until the peer's TCP
//! acknowledges it (`SIOCOUTQ`: bytes sent and not yet acknowledged, still right after a
//! reset). When the connection breaks, the lines not wholly acknowledged go first on the next.
//!
//! What no sender can know over plain TCP: lines the peer's kernel acknowledged but the
//! consumer had not read when it stopped are thrown away by that kernel. syslog-ng stopped by
//! SIGTERM while lines arrive keeps reading for some 100 ms, then shuts the socket with what
//! came meanwhile unread (0 to a few thousand lines, measured); those are neither resent nor
//! counted as dropped, and the break's warning says so. Over a lossy network, lines whose
//! acknowledgement was lost before a timeout are resent although they arrived. A unix socket
//! has no acknowledgement: what the peer's socket took counts as delivered, and what it had
//! not read when it closed is lost the same way.

use std::{
    io::{self, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::writer::Out;

/// The first reconnect waits this long after a failed attempt; each further failure doubles
/// the wait, up to [`MAX_BACKOFF`]. A consumer that restarts is usually back within a second,
/// and one that is down for long is tried every few seconds, not hammered.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A TCP connect that gets no answer (a host that is down, a dropping firewall) gives up after
/// this, so that the writer thread is not held for the kernel's two minutes of SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The acknowledged front of the copy is cut off once it is at least this large and half the
/// copy: each cut moves no more than it removes, so keeping the copy costs O(1) a byte (cut at
/// 64 KiB alone, a copy of a loopback socket's megabytes was moved at every batch: a third of
/// a file output's throughput, measured by `cargo xtask bench sinks`).
const TRIM_AT: usize = 64 << 10;
/// How long the end of a run waits for the peer to acknowledge the last lines (within the
/// writers' flush bound, `super::FLUSH_TIMEOUT`).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Where the stream goes.
#[derive(Debug, Clone)]
enum Dest {
    /// `HOST:PORT`, resolved again at each connect.
    Tcp(String),
    Unix(PathBuf),
}

impl Dest {
    fn connect(&self) -> Result<Stream, String> {
        match self {
            Dest::Tcp(addr) => {
                let addrs = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {addr}: {e}; check the host name"))?;
                let mut last = None;
                for sa in addrs {
                    match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            // Batches are whole lines already: send each at once.
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some((sa, e)),
                    }
                }
                Err(match last {
                    Some((sa, e)) if sa.to_string() == *addr => format!(
                        "cannot connect to {addr}: {e}; start its receiver or correct the address"
                    ),
                    Some((sa, e)) => format!(
                        "cannot connect to {addr} ({sa}): {e}; start its receiver or correct the address"
                    ),
                    None => format!("{addr} resolves to no address; check the host name"),
                })
            }
            Dest::Unix(path) => UnixStream::connect(path).map(Stream::Unix).map_err(|e| {
                format!(
                    "cannot connect to {}: {e}; start its receiver or correct the path",
                    path.display()
                )
            }),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    /// Bytes this end's kernel accepted that the peer has not acknowledged. A unix peer has
    /// all of them already.
    fn unacked(&self) -> usize {
        let Stream::Tcp(s) = self else {
            return 0;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) on a TCP socket writes one int, n outlives the call. It
        // is `write_seq - snd_una`, still right after a reset (the counters survive it).
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &raw mut n) };
        if rc == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            // Cannot be told: keep everything, resending rather than losing.
            usize::MAX
        }
    }
}

struct Conn {
    stream: Stream,
    /// What the kernel accepted on this connection that its peer may not have acknowledged,
    /// from the start of a line.
    copy: Vec<u8>,
}

impl Conn {
    /// Cuts the wholly acknowledged lines off the front of the copy.
    fn trim(&mut self) {
        let acked = self.copy.len().saturating_sub(self.stream.unacked());
        if acked < TRIM_AT.max(self.copy.len() / 2) {
            return;
        }
        if let Some(end) = self.copy[..acked].iter().rposition(|&b| b == b'\n') {
            self.copy.drain(..=end);
        }
    }
}

/// When to try connecting again: [`FIRST_BACKOFF`] after a failure, doubling at each further
/// one up to [`MAX_BACKOFF`], from the start again once connected.
struct Backoff(Duration);

impl Backoff {
    /// An attempt failed at `now`: when the next may be made.
    fn failed(&mut self, now: Instant) -> Instant {
        let next = now + self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        next
    }
}

/// A TCP or unix stream output.
pub struct NetOut {
    dest: Dest,
    conn: Option<Conn>,
    /// Whole lines sent before anything new: the ones the last connection did not deliver.
    resend: Vec<u8>,
    /// Bytes of the first line of the writer's batch this connection already took.
    carry: usize,
    /// No connection before this.
    next_attempt: Instant,
    backoff: Backoff,
    /// Why there is no connection, as the writer's warning says it.
    down: String,
    /// Lines given up at exit (still to be resent): counted as dropped.
    given_up: u64,
}

impl NetOut {
    /// A TCP output to `addr` (`HOST:PORT`), connected now if it can be.
    #[must_use]
    pub fn tcp(addr: &str) -> Self {
        Self::start(Dest::Tcp(addr.to_owned()))
    }

    /// A unix stream socket output to `path`, connected now if it can be.
    #[must_use]
    pub fn unix(path: &Path) -> Self {
        Self::start(Dest::Unix(path.to_owned()))
    }

    fn start(dest: Dest) -> Self {
        let mut out = Self {
            dest,
            conn: None,
            resend: Vec::new(),
            carry: 0,
            next_attempt: Instant::now(),
            backoff: Backoff(FIRST_BACKOFF),
            down: String::new(),
            given_up: 0,
        };
        let _ = out.connect();
        out
    }

    fn down(&self) -> io::Error {
        // Not BrokenPipe: the writer ends an output for good on that.
        io::Error::new(io::ErrorKind::NotConnected, self.down.clone())
    }

    /// Connects unless connected or waiting for the next attempt.
    fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.next_attempt {
            return Err(self.down());
        }
        match self.dest.connect() {
            Ok(stream) => {
                self.conn = Some(Conn {
                    stream,
                    copy: Vec::new(),
                });
                self.backoff = Backoff(FIRST_BACKOFF);
                Ok(())
            }
            Err(why) => {
                if self.down.is_empty() {
                    self.down = format!(
                        "{why} (reconnecting after {} ms, doubling to {} s)",
                        FIRST_BACKOFF.as_millis(),
                        MAX_BACKOFF.as_secs()
                    );
                }
                self.next_attempt = self.backoff.failed(now);
                Err(self.down())
            }
        }
    }

    /// The connection broke with `err`: what it did not deliver goes first on the next one.
    fn broke(&mut self, err: &io::Error) -> io::Error {
        let Some(conn) = self.conn.take() else {
            return self.down();
        };
        let unacked = conn.stream.unacked().min(conn.copy.len());
        // The line being written goes again whole, from the writer's batch.
        let cut = conn.copy.len() - self.carry;
        self.carry = 0;
        let acked = conn.copy.len() - unacked;
        let from = conn.copy[..acked.min(cut)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let mut resend = conn.copy[from..cut].to_vec();
        resend.append(&mut self.resend);
        self.resend = resend;
        #[expect(clippy::naive_bytecount, reason = "once per broken connection")]
        let lines = match self.resend.iter().filter(|&&b| b == b'\n').count() {
            1 => "the 1 line it had not acknowledged is".to_owned(),
            n => format!("the {n} lines it had not acknowledged are"),
        };
        self.down = format!(
            "the connection to {} broke ({err}); {lines} resent on reconnecting (after {} ms, doubling to {} s); any its kernel acknowledged but its reader had not read are lost with it, uncounted",
            self.name(),
            FIRST_BACKOFF.as_millis(),
            MAX_BACKOFF.as_secs()
        );
        self.next_attempt = Instant::now();
        self.down()
    }

    fn name(&self) -> String {
        match &self.dest {
            Dest::Tcp(addr) => addr.clone(),
            Dest::Unix(path) => path.display().to_string(),
        }
    }

    /// Sends what the last connection did not deliver.
    fn send_resend(&mut self) -> io::Result<()> {
        while !self.resend.is_empty() {
            let Some(conn) = self.conn.as_mut() else {
                return Err(self.down());
            };
            match conn.stream.write(&self.resend) {
                Ok(0) => return Err(self.broke(&io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    conn.copy.extend(self.resend.drain(..n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(&e)),
            }
        }
        Ok(())
    }
}

impl Out for NetOut {
    /// The end of a run: waits a little for the peer's TCP to acknowledge what it was sent,
    /// and says what it did not.
    fn flush(&mut self) {
        // Lines the last connection did not deliver, with none to send them on now.
        let _ = self.send_resend();
        if !self.resend.is_empty() {
            #[expect(clippy::naive_bytecount, reason = "once, at exit")]
            let lines = self.resend.iter().filter(|&&b| b == b'\n').count() as u64;
            eprintln!(
                "observer: warning: {}: {lines} lines the consumer had not acknowledged could not be sent again before exit; counted as dropped",
                self.name()
            );
            self.given_up += lines;
            self.resend.clear();
        }
        let until = Instant::now() + ACK_WAIT;
        let Some(conn) = &self.conn else { return };
        let mut unacked = conn.stream.unacked();
        while unacked > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
            unacked = conn.stream.unacked();
        }
        if unacked > 0 {
            eprintln!(
                "observer: warning: {}: {unacked} bytes sent at exit were not acknowledged within {} s; they may not have arrived",
                self.name(),
                ACK_WAIT.as_secs()
            );
        }
    }

    fn rejected(&mut self) -> u64 {
        std::mem::take(&mut self.given_up)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.connect()?;
        self.send_resend()?;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(self.down());
            };
            match conn.stream.write(&buf[self.carry..]) {
                Ok(0) => return Err(self.broke(&io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    conn.copy
                        .extend_from_slice(&buf[self.carry..self.carry + n]);
                    self.carry += n;
                    if let Some(end) = buf[..self.carry].iter().rposition(|&b| b == b'\n') {
                        self.carry -= end + 1;
                        conn.trim();
                        self.down.clear();
                        return Ok(end + 1);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fmt::Write as _,
        io::{BufRead as _, BufReader, Read as _},
        net::{Shutdown, TcpListener},
        os::unix::net::UnixListener,
    };

    use super::*;

    fn lines(range: std::ops::Range<u32>) -> Vec<u8> {
        let mut text = String::new();
        for i in range {
            let _ = writeln!(text, "{{\"n\":{i}}}");
        }
        text.into_bytes()
    }

    /// What the writer does with an output: retry each batch until it is written.
    fn write_all(out: &mut NetOut, mut buf: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !buf.is_empty() {
            match out.write(buf) {
                Ok(n) => {
                    assert_eq!(buf[n - 1], b'\n', "only whole lines are reported");
                    buf = &buf[n..];
                }
                Err(e) => {
                    assert_ne!(e.kind(), io::ErrorKind::BrokenPipe);
                    assert!(Instant::now() < deadline, "still failing: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    #[test]
    fn a_consumer_that_closes_gets_the_rest_on_the_next_connection_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut out = NetOut::tcp(&addr);
        let (first, _) = listener.accept().expect("accept");
        write_all(&mut out, &lines(0..100));
        // It reads those lines, then closes without leaving anything unread.
        let mut reader = BufReader::new(first);
        let mut got = Vec::new();
        for _ in 0..100 {
            let mut line = String::new();
            reader.read_line(&mut line).expect("line");
            got.push(line);
        }
        let first = reader.into_inner();
        first.shutdown(Shutdown::Both).expect("shutdown");
        drop(first);
        // Lines written meanwhile reach no reader: the next connection has them, and the
        // ones after, each once. A break shows at the write after the peer's reset, so the
        // batches come a little apart, as records do.
        let writer = std::thread::spawn(move || {
            for batch in 1..20 {
                write_all(&mut out, &lines(batch * 100..(batch + 1) * 100));
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        });
        let (second, _) = listener.accept().expect("second accept");
        let out = writer.join().expect("writer");
        drop(out);
        let mut rest = String::new();
        BufReader::new(second)
            .read_to_string(&mut rest)
            .expect("rest");
        let all: String = got.concat() + &rest;
        assert_eq!(all.as_bytes(), lines(0..2000));
    }

    #[test]
    fn a_destination_down_at_start_says_why_and_is_connected_later() {
        let dir = std::env::temp_dir().join(format!("observer-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        let mut out = NetOut::unix(&path);
        let err = out.write(&lines(0..3)).expect_err("nothing listens");
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to {}: No such file or directory (os error 2); start its receiver or correct the path (reconnecting after 200 ms, doubling to 5 s)",
                path.display()
            )
        );
        let listener = UnixListener::bind(&path).expect("bind");
        write_all(&mut out, &lines(0..3));
        drop(out);
        let (peer, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        BufReader::new(peer).read_to_end(&mut got).expect("read");
        assert_eq!(got, lines(0..3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn attempts_back_off_from_200_ms_to_5_s() {
        let now = Instant::now();
        let mut backoff = Backoff(FIRST_BACKOFF);
        let waits: Vec<u128> = (0..7)
            .map(|_| (backoff.failed(now) - now).as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn no_attempt_is_made_before_its_time() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let mut out = NetOut::tcp(&addr);
        let first = Instant::now() + Duration::from_hours(1);
        out.next_attempt = first;
        let err = out.write(b"x\n").expect_err("refused");
        assert_eq!(out.next_attempt, first, "{err}");
        out.next_attempt = Instant::now();
        let _ = out.write(b"x\n").expect_err("refused");
        assert_eq!(
            out.backoff.0,
            Duration::from_millis(800),
            "two attempts failed"
        );
    }
}
