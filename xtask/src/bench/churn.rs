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
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::cpustat::{self, Busy};

/// The CPU both generator threads are pinned to.
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
/// [`in_netns`]. Both the client and the server thread are pinned to [`CPU`].
pub fn run(duration: Duration) -> Result<Counted> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).context("cannot listen on 127.0.0.1 (is lo up?)")?;
    let addr = listener.local_addr()?;
    let accepting = listener.try_clone()?;
    let before = cpustat::sample()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stopping);
    let server_thread = thread::Builder::new()
        .name("churn-server".into())
        .spawn(move || serve(&accepting, &stop))
        .context("cannot spawn the churn server")?;
    let client_thread = thread::Builder::new()
        .name("churn-client".into())
        .spawn(move || connect_loop(addr, duration))
        .context("cannot spawn the churn client")?;
    let counted = client_thread
        .join()
        .map_err(|_| anyhow!("the churn client panicked"));
    // Wake the server's accept(): on Linux, shutdown of a listening socket makes it fail.
    stopping.store(true, Ordering::SeqCst);
    // SAFETY: the fd belongs to `listener`, which is alive; shutdown does not touch memory.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    let served = server_thread
        .join()
        .map_err(|_| anyhow!("the churn server panicked"))?;
    let mut counted = counted??;
    served.context("the churn server failed")?;
    counted.busy = cpustat::busy(&before, &cpustat::sample()?, CPU);
    Ok(counted)
}

/// Pins the calling thread to [`CPU`].
fn pin() -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: CPU is below CPU_SETSIZE; sched_setaffinity reads `set` for the call only.
    let rc = unsafe {
        libc::CPU_SET(CPU, &mut set);
        libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!("cannot pin the churn threads to CPU {CPU}: {err}");
    }
    Ok(())
}

fn serve(listener: &TcpListener, stopping: &AtomicBool) -> Result<()> {
    pin()?;
    let mut byte = [0u8; 1];
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // A client that vanished is the client's error to report, not the server's.
                if let Ok(1) = stream.read(&mut byte) {
                    let _ = stream.write_all(&byte);
                }
                // Dropping the stream closes it: the server sends the first FIN.
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Err(e).context("accept failed"),
        }
    }
}

fn connect_loop(addr: SocketAddr, duration: Duration) -> Result<Counted> {
    pin()?;
    let start = Instant::now();
    let mut conns = 0u64;
    while start.elapsed() < duration {
        exchange(addr).with_context(|| format!("connection {} to {addr} failed", conns + 1))?;
        conns += 1;
    }
    Ok(Counted {
        conns,
        secs: start.elapsed().as_secs_f64(),
        busy: Busy::default(),
    })
}

fn exchange(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.write_all(b"x").context("write")?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).context("read the answer")?;
    if stream.read(&mut byte).context("read EOF")? != 0 {
        bail!("the server sent more than one byte");
    }
    Ok(())
}
