//! The connection churn generator: loopback TCP connections as fast as one core allows.
//!
//! Each connection: the client connects, writes one byte and reads the one-byte answer; the
//! server accepts, reads, answers and closes first; the client then reads EOF and closes. The
//! server closing first puts `TIME_WAIT` on the server's side, whose 4-tuples differ with every
//! client port, so the client can reuse ephemeral ports for as long as the loop runs. The
//! lifecycle stays the ordinary FIN one (no `SO_LINGER`, no reset).

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    mem,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::cpustat::{self, Busy};

/// The CPU the generator thread is pinned to.
pub const CPU: usize = 0;

/// Sysctls of the benchmark's private network namespace.
const SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
    ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535"),
];

/// What one run of the loop did.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    /// Connections that completed the whole exchange (connect, byte, byte, EOF, close).
    pub conns: u64,
    /// How long the client loop ran.
    pub secs: f64,
    /// Where CPU time went while it ran.
    pub busy: Busy,
}

/// Runs `work` on a new thread that has joined the network namespace at `ns` first. Threads that
/// `work` spawns inherit the namespace; the calling thread and the rest of xtask keep theirs.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(ns).with_context(|| format!("cannot open {}", ns.display()))?;
    let shown = ns.display().to_string();
    thread::Builder::new()
        .name("bench-netns".into())
        .spawn(move || {
            // SAFETY: setns only reads the fd, which `file` keeps open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let err = io::Error::last_os_error();
                bail!("setns({shown}, CLONE_NEWNET) failed: {err}");
            }
            work()
        })
        .context("cannot spawn the network namespace thread")?
        .join()
        .map_err(|_| anyhow!("the thread in {} panicked", ns.display()))?
}

/// Sets the namespace's sysctls (network sysctls apply to the writer's namespace): run it
/// through [`in_netns`].
pub fn configure() -> Result<()> {
    for (path, value) in SYSCTLS {
        fs::write(path, value).with_context(|| format!("cannot write {value:?} to {path}"))?;
    }
    Ok(())
}

/// Runs the loop for `duration` in the current thread's network namespace: run it through
/// [`in_netns`]. One thread, pinned to [`CPU`], plays both ends: on loopback every call
/// completes at once (the handshake finishes inside `connect()`), so there are no context
/// switches or wake-ups whose timing would add noise to the rate.
pub fn run(duration: Duration) -> Result<Counted> {
    let before = cpustat::sample()?;
    let generator = Generator::start()?;
    thread::sleep(duration);
    let (conns, elapsed) = generator.finish()?;
    Ok(Counted {
        conns,
        secs: elapsed.as_secs_f64(),
        busy: cpustat::busy(&before, &cpustat::sample()?, CPU),
    })
}

/// The loop running on its own pinned thread until [`Generator::finish`], counting completed
/// connections as it goes.
pub struct Generator {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Duration>>>,
}

impl Generator {
    /// Starts the loop in the current thread's network namespace, which its thread inherits:
    /// call it through [`in_netns`]; the generator keeps running after that thread has exited.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .context("cannot listen on 127.0.0.1 (is lo up?)")?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (stop_in, count_in) = (Arc::clone(&stop), Arc::clone(&count));
        let thread = thread::Builder::new()
            .name("churn".into())
            .spawn(move || {
                pin()?;
                churn(&listener, &stop_in, &count_in)
            })
            .context("cannot spawn the churn thread")?;
        Ok(Self {
            stop,
            count,
            thread: Some(thread),
        })
    }

    /// Connections completed so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the loop still runs (it stops early only on an error, which `finish` returns).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop; returns the connections completed and how long the loop ran.
    pub fn finish(mut self) -> Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self
            .thread
            .take()
            .context("the churn thread was already joined")?
            .join()
            .map_err(|_| anyhow!("the churn thread panicked"))??;
        Ok((self.count(), elapsed))
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pins the calling thread to [`CPU`].
fn pin() -> Result<()> {
    pin_to(CPU).with_context(|| format!("cannot pin the churn threads to CPU {CPU}"))
}

/// Pins the calling thread (or, before exec, the process) to one CPU.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE; sched_setaffinity reads `set` for the call only.
    let rc = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Exchanges connections until `stop` is set, adding each completed one to `count`; returns how
/// long it ran.
fn churn(listener: &TcpListener, stop: &AtomicBool, count: &AtomicU64) -> Result<Duration> {
    let addr = listener.local_addr()?;
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        exchange(listener, addr).with_context(|| {
            let done = count.load(Ordering::Relaxed);
            format!("connection {} to {addr} failed", done + 1)
        })?;
        count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(start.elapsed())
}

/// One connection: connect, accept, a byte each way, the server closes, the client reads EOF
/// and closes.
fn exchange(listener: &TcpListener, addr: SocketAddr) -> Result<()> {
    let mut client = TcpStream::connect(addr).context("connect")?;
    let (mut server, _) = listener.accept().context("accept")?;
    let mut byte = [0u8; 1];
    client.write_all(b"x").context("client write")?;
    server.read_exact(&mut byte).context("server read")?;
    server.write_all(&byte).context("server write")?;
    client.read_exact(&mut byte).context("client read")?;
    drop(server);
    if client.read(&mut byte).context("read EOF")? != 0 {
        bail!("the server sent more than one byte");
    }
    Ok(())
}
