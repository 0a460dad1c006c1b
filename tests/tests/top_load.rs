//! `observer top` under load, on a real pseudo-terminal: a terminal that takes no output
//! must not stop capture, and 10,000 connections are shown and counted exactly.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use observer_tests::{NetNs, observer::bin, privileged, time_scale, wait_for};

/// `hold_and_churn.py` in the namespace: `hold` connections kept open on both ends.
struct Traffic {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Traffic {
    fn start(ns: &NetNs, hold: u32) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/hold_and_churn.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3"])
            .arg(script)
            .arg(hold.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut t = Self {
            child,
            stdin,
            stdout,
        };
        assert!(t.line().starts_with("held "), "hold_and_churn.py started");
        t
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("hold_and_churn.py");
        line.trim().to_owned()
    }

    /// `n` short connections, one after another, at most `rate` a second; returns when all
    /// are closed on both ends.
    fn churn(&mut self, n: u32, rate: u32) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "churn {n} {rate}").expect("hold_and_churn.py");
        assert_eq!(self.line(), format!("churned {n}"));
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// One observer at a time: each sees (and must drain) every event of the host.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `observer top` with a pseudo-terminal for its terminal; the test holds the other end.
struct Top {
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    child: Child,
    master: OwnedFd,
    /// What the terminal received, once [`Top::read_all`] started reading.
    output: Arc<Mutex<Vec<u8>>>,
}

impl Top {
    fn start(ns: &NetNs, cols: u16, rows: u16, refresh_ms: u32) -> Self {
        let one_at_a_time = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds; the size is read only.
        let rc = unsafe {
            libc::openpty(
                &raw mut master,
                &raw mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &raw const size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened, and are owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut command = Command::new(bin());
        command
            .args(["top", "--ring-mib", "1", "--netns"])
            .arg(ns.path())
            .arg("--refresh-ms")
            .arg(refresh_ms.to_string())
            .env("TERM", "xterm-256color")
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec: the terminal becomes
        // the child's controlling terminal, as a shell would arrange.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("observer top");
        Self {
            _one_at_a_time: one_at_a_time,
            child,
            master,
            output: Arc::default(),
        }
    }

    fn send(&self, keys: &[u8]) {
        // SAFETY: writes `keys` to the fd owned by `self`.
        let n = unsafe { libc::write(self.master.as_raw_fd(), keys.as_ptr().cast(), keys.len()) };
        assert_eq!(n, isize::try_from(keys.len()).unwrap_or(-1), "keys to top");
    }

    /// Reads the terminal until its text (as [`plain`] gives it) shows `marker`, then stops
    /// reading.
    fn read_until(&self, marker: &str) {
        let mut file = std::fs::File::from(self.master.try_clone().expect("dup"));
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_mins(1).mul_f64(time_scale());
        while !plain(&seen).contains(marker) {
            assert!(
                Instant::now() < deadline,
                "top never drew {marker:?}: {}",
                plain(&seen)
            );
            let mut poll = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            if unsafe { libc::poll(&raw mut poll, 1, 200) } == 1 {
                let n = file.read(&mut buf).expect("the terminal");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Reads (and keeps) everything the terminal receives from now on, on a thread.
    fn read_all(&self) {
        let mut file = std::fs::File::from(self.master.try_clone().expect("dup"));
        let output = Arc::clone(&self.output);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().expect("output").extend_from_slice(&buf[..n]);
            }
        });
    }

    /// The thread drawing the screen is blocked writing to the terminal: `write(1, …)`.
    fn screen_blocked_in_write(&self) -> bool {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return false;
        };
        dir.flatten().any(|task| {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let syscall = read("syscall");
            let mut fields = syscall.split_whitespace();
            read("comm").trim() == "top-screen"
                && fields.next() == Some(&libc::SYS_write.to_string())
                && fields.next() == Some("0x1")
        })
    }

    /// Quits with `q` and returns the summary line printed after the terminal was restored:
    /// (connections closed, events, lost).
    fn quit(mut self) -> (u64, u64, u64, String) {
        self.send(b"q");
        let status = wait_for(Duration::from_secs(30), "top to exit", || {
            self.child.try_wait().expect("wait")
        });
        assert!(status.success(), "top exited with {status}");
        let line = wait_for(Duration::from_secs(5), "top's summary", || {
            let out = String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned();
            let start = out.find("observer top: stopped: ")?;
            let line = out[start..].lines().next()?.to_owned();
            line.contains("frames").then_some(line)
        });
        let number_before = |what: &str| -> u64 {
            let head = &line[..line.find(what).unwrap_or_else(|| panic!("{what}: {line}"))];
            let digits = head.trim_end().rsplit(' ').next().unwrap_or_default();
            digits.parse().unwrap_or_else(|_| panic!("{what}: {line}"))
        };
        (
            number_before("connections closed"),
            number_before("events"),
            number_before("lost in the kernel"),
            line,
        )
    }
}

/// The text a terminal stream writes, words in the order written: a cursor move is a space
/// (ratatui moves over blank cells), other escape sequences are dropped, and runs of spaces
/// are one.
fn plain(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next_if_eq(&'[').is_some() {
                // A CSI sequence ends with a byte in @..~.
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        if f == 'H' {
                            out.push(' ');
                        }
                        break;
                    }
                }
            }
            continue;
        }
        if c == ' ' && out.ends_with(' ') {
            continue;
        }
        out.push(c);
    }
    out
}

impl Drop for Top {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The screen thread blocks on a terminal that nobody reads; capture keeps draining the ring
/// through 3,000 connections made in 3 s, and counts every one of them. Their 6,000 closes
/// (296 bytes each in the ring) are 1.7 times what the ring (1 MiB) holds: when the frame was
/// drawn on the capture thread, the same run lost 2,479 and 3,332 of them (two runs).
#[test]
fn a_terminal_that_takes_no_output_does_not_stop_capture() {
    const CHURN: u32 = 3000;
    if !privileged("a_terminal_that_takes_no_output_does_not_stop_capture") {
        return;
    }
    let ns = NetNs::new("topstall");
    let mut traffic = Traffic::start(&ns, 200);
    let top = Top::start(&ns, 300, 120, 1000);
    top.read_until("401 sockets: ESTABLISHED 400 LISTEN 1");
    // Nobody reads the terminal any more: switching views makes frames until its buffer is
    // full and the screen thread waits in write(2).
    wait_for(
        Duration::from_secs(30),
        "the screen to block on the terminal",
        || {
            top.send(b"\t");
            std::thread::sleep(Duration::from_millis(100));
            top.screen_blocked_in_write().then_some(())
        },
    );
    traffic.churn(CHURN, 1000);
    // Closed records are made as the ring is drained (every 50 ms) and at each refresh.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        top.screen_blocked_in_write(),
        "the screen stayed blocked while the connections were made"
    );
    top.read_all();
    let (closed, events, lost, line) = top.quit();
    eprintln!("{line}");
    assert_eq!(lost, 0, "{line}");
    // Both ends of each churned connection, and nothing else: the held ones stay open.
    assert_eq!(closed, u64::from(2 * CHURN), "{line}");
    // One event at least per socket: the kernel sends each socket's lifecycle at its close.
    assert!(events >= closed, "{line}");
}

/// 10,000 open connections (5,000 pairs in one process) and their listener: the header
/// counts every one, and the summary at exit gives the refresh and frame times measured on
/// them (BENCHMARKS.md quotes it).
#[test]
fn ten_thousand_connections_are_counted_and_drawn() {
    if !privileged("ten_thousand_connections_are_counted_and_drawn") {
        return;
    }
    let ns = NetNs::new("top10k");
    let _traffic = Traffic::start(&ns, 5000);
    let top = Top::start(&ns, 200, 60, 200);
    top.read_until("10001 sockets: ESTABLISHED 10000 LISTEN 1");
    top.read_all();
    // A few refreshes of the full table, and frames of each view.
    for key in [b"2", b"3", b"4", b"1"] {
        std::thread::sleep(Duration::from_millis(500));
        top.send(key);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (closed, _, lost, line) = top.quit();
    eprintln!("{line}");
    assert_eq!((closed, lost), (0, 0), "{line}");
}
