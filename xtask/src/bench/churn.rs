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
    thread,
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
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).context("cannot listen on 127.0.0.1 (is lo up?)")?;
    let before = cpustat::sample()?;
    let mut counted = thread::Builder::new()
        .name("churn".into())
        .spawn(move || {
            pin()?;
            churn(&listener, duration)
        })
        .context("cannot spawn the churn thread")?
        .join()
        .map_err(|_| anyhow!("the churn thread panicked"))??;
    counted.busy = cpustat::busy(&before, &cpustat::sample()?, CPU);
    Ok(counted)
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

fn churn(listener: &TcpListener, duration: Duration) -> Result<Counted> {
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let mut conns = 0u64;
    while start.elapsed() < duration {
        exchange(listener, addr)
            .with_context(|| format!("connection {} to {addr} failed", conns + 1))?;
        conns += 1;
    }
    Ok(Counted {
        conns,
        secs: start.elapsed().as_secs_f64(),
        busy: Busy::default(),
    })
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
