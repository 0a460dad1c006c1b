//! The listener rules against the real kernel (docs/anomalies.md): `syn_flood` provoked by
//! hping3 with a spoofed source under `tcp_syncookies` 1 and 2, `accept_queue_overflow` by a
//! server that stops calling `accept()`; each fires with the right listener, process and evidence
//! and resolves after. Real clients at full loopback rate against a listener raise nothing, and
//! every recording replays to the same alerts.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use observer_tests::{
    NetNs, Observer, Peer, field, now_us,
    observer::{bin, of_dataset, parse_lines, scratch},
    parse_ts, privileged, sh, time_scale, wait_for,
};
use serde_json::{Value, json};

const ANOMALY: &str = "observer.anomaly";

/// The full-rate test runs alone: every observer decodes every host event (its `--netns`
/// filter applies in userspace), so its churn would overflow the others' rings and rightly
/// fire their `event_loss`. The other tests share.
static CHURN: RwLock<()> = RwLock::new(());

fn wait_alerts(obs: &Observer, n: usize, timeout: Duration) -> Vec<Value> {
    wait_for(timeout, &format!("{n} alerts"), || {
        let found = of_dataset(&obs.lines(), ANOMALY);
        (found.len() >= n).then_some(found)
    })
}

/// The alerts `observer replay` finds in `recording` with these detector flags.
fn replayed(recording: &Path, flags: &[&str]) -> Vec<Value> {
    let out = scratch("ndjson");
    let status = Command::new(bin())
        .arg("replay")
        .args(flags)
        .arg("--output")
        .arg(&out)
        .arg(recording)
        .status()
        .expect("replay");
    assert!(status.success());
    let alerts = of_dataset(
        &parse_lines(&std::fs::read_to_string(&out).expect("replay output")),
        ANOMALY,
    );
    let _ = std::fs::remove_file(&out);
    alerts
}

/// The fields every alert carries (the schema is checked on every line read).
fn check_common(a: &Value, rule: &str, status: &str) {
    assert_eq!(field(a, "event.kind"), "alert", "{a}");
    assert_eq!(field(a, "event.dataset"), ANOMALY, "{a}");
    assert_eq!(field(a, "rule.id"), rule, "{a}");
    assert_eq!(field(a, "anomaly.status"), status, "{a}");
    assert_eq!(field(a, "event.action"), status, "{a}");
    assert_eq!(field(a, "event.severity"), 4, "{a}");
    assert!(
        field(a, "event.reason")
            .as_str()
            .is_some_and(|r| r.len() > 20),
        "{a}"
    );
}

fn netns_inode(ns: &NetNs) -> u64 {
    std::fs::metadata(ns.path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("netns inode")
}

/// The uids of the server sockets on `port` established before `alert` fired (those waiting
/// in the accept queue then), sorted.
fn established_before(records: &[Value], port: u16, alert: &Value) -> Vec<String> {
    let fired = parse_ts(field(alert, "@timestamp").as_str().expect("ts"));
    let mut uids: Vec<String> = records
        .iter()
        .filter(|r| field(r, "conn.role") == "server" && field(r, "destination.port") == port)
        .filter(|r| {
            field(r, "conn.transitions")
                .as_array()
                .expect("transitions")
                .iter()
                .any(|t| {
                    t["state"] == "ESTABLISHED" && parse_ts(t["ts"].as_str().expect("ts")) < fired
                })
        })
        .map(|r| field(r, "conn.uid").as_str().expect("uid").to_owned())
        .collect();
    uids.sort();
    uids
}

/// An alert's `conn.uids`, sorted.
fn sample_uids(alert: &Value) -> Vec<String> {
    let mut uids: Vec<String> = field(alert, "conn.uids")
        .as_array()
        .expect("uids")
        .iter()
        .map(|u| u.as_str().expect("uid").to_owned())
        .collect();
    uids.sort();
    uids
}

fn micros_after(a: &Value, since_us: i64) -> i64 {
    parse_ts(field(a, "@timestamp").as_str().expect("ts")) - since_us
}

/// A server that listens with `backlog` and accepts only when told (a line on stdin); it
/// exits on EOF.
const LAZY_SERVER: &str = r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(int(sys.argv[2]))
print(l.getsockname()[1], flush=True)
if sys.stdin.readline().strip() == "accept":
    held = []
    while True:
        c, _ = l.accept(); held.append(c)
"#;

/// Opens `n` connections without waiting for them; holds them until stdin closes.
const CLIENTS: &str = r#"
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", int(sys.argv[1])))
    except BlockingIOError: pass
    held.append(s)
print("connecting", flush=True)
sys.stdin.read()
"#;

struct Py {
    child: Child,
    pid: u32,
    first_line: String,
}

impl Py {
    fn spawn(ns: &NetNs, script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut first_line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut first_line)
            .expect("first line");
        let pid = child.id();
        Self {
            child,
            pid,
            first_line: first_line.trim().to_owned(),
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    /// Closes its stdin and waits for it to end.
    fn exit(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the lazy server and 8 clients against it; returns them once the alert fired, with
/// the time the clients started.
fn overflowing(ns: &NetNs, obs: &Observer, comm: &str) -> (Py, Py, u16, Value) {
    // `ip netns exec` execs python3: the pid is the server's.
    let server = Py::spawn(ns, LAZY_SERVER, &[comm, "2"]);
    let port: u16 = server.first_line.parse().expect("port");
    let started = now_us();
    let clients = Py::spawn(ns, CLIENTS, &[&port.to_string(), "8"]);
    let fired = wait_alerts(obs, 1, Duration::from_secs(10));
    let a = fired[0].clone();
    check_common(&a, "accept_queue_overflow", "firing");
    assert_eq!(field(&a, "process.pid"), server.pid, "{a}");
    assert_eq!(field(&a, "process.name"), comm, "{a}");
    assert_eq!(field(&a, "destination.ip"), "127.0.0.1", "{a}");
    assert_eq!(field(&a, "destination.port"), port, "{a}");
    assert_eq!(field(&a, "anomaly.netns"), netns_inode(ns), "{a}");
    // listen(2): the kernel queues backlog + 1 before it drops.
    assert_eq!(field(&a, "anomaly.queue"), 3, "{a}");
    assert_eq!(field(&a, "anomaly.backlog"), 2, "{a}");
    assert_eq!(field(&a, "anomaly.observed"), 3, "{a}");
    assert_eq!(field(&a, "anomaly.threshold"), 2, "{a}");
    assert_eq!(field(&a, "anomaly.window_s"), 3, "{a}");
    // The 5 SYNs that did not fit are dropped, once per (re)transmission.
    let overflows = field(&a, "anomaly.listen_overflows").as_u64().expect("n");
    assert!(overflows >= 5 && overflows.is_multiple_of(5), "{a}");
    // The connections waiting in the queue: checked against their records at the end.
    assert_eq!(
        field(&a, "conn.uids").as_array().map(Vec::len),
        Some(3),
        "{a}"
    );
    let after = micros_after(&a, started);
    assert!(
        (0..2_500_000).contains(&after),
        "fired {after} µs after: {a}"
    );
    (server, clients, port, a)
}

#[test]
fn accept_queue_overflow_names_the_process_and_resolves_once_it_accepts() {
    if !privileged("accept_queue_overflow_names_the_process_and_resolves_once_it_accepts") {
        return;
    }
    let _shared = CHURN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ns = NetNs::new("aq");
    let recording = scratch("rec");
    let rec = recording.to_str().expect("utf-8");
    let flags = ["--anomalies", "--accept-queue-window", "3"];
    let mut args = vec!["--record", rec];
    args.extend_from_slice(&flags);
    let obs = Observer::start(&ns, &args);
    let (mut server, mut clients, port, fired) = overflowing(&ns, &obs, "obs-aq-lazy");

    // It starts accepting: the queue drains, the retried SYNs get in, nothing overflows.
    server.say("accept");
    let accepting = now_us();
    ns.wait_tcp_state(port, "listening");
    let both = wait_alerts(&obs, 2, Duration::from_secs(15));
    let r = &both[1];
    check_common(r, "accept_queue_overflow", "resolved");
    assert_eq!(field(r, "process.pid"), server.pid, "{r}");
    assert_eq!(field(r, "process.name"), "obs-aq-lazy", "{r}");
    assert_eq!(field(r, "destination.port"), port, "{r}");
    assert_eq!(field(r, "anomaly.queue"), 0, "{r}");
    assert_eq!(field(r, "anomaly.peak"), 3, "{r}");
    // A whole window (3 s) without an overflow, after the clients' last SYN retry got in.
    let after = micros_after(r, accepting);
    assert!(
        (2_000_000..9_000_000).contains(&after),
        "resolved {after} µs after: {r}"
    );

    std::thread::sleep(Duration::from_millis(1500));
    clients.exit();
    // It accepts forever.
    server.kill();
    let stopped = obs.stop();
    stopped.assert_clean();
    let alerts = stopped.dataset(ANOMALY);
    assert_eq!(alerts.len(), 2, "no flapping: {alerts:#?}");
    // The firing alert named the 3 connections that were waiting in the queue.
    let records = stopped.dataset("observer.connection");
    assert_eq!(
        sample_uids(&fired),
        established_before(&records, port, &fired),
        "{fired}"
    );
    assert_eq!(
        replayed(&recording, &flags),
        alerts,
        "replay gives the same alerts"
    );
    let _ = std::fs::remove_file(&recording);
}

#[test]
fn accept_queue_overflow_resolves_when_the_server_exits() {
    if !privileged("accept_queue_overflow_resolves_when_the_server_exits") {
        return;
    }
    let _shared = CHURN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ns = NetNs::new("aqx");
    // The clients whose SYNs were dropped are refused once the listener is gone: that is
    // `connect_failures`' business, off here.
    let obs = Observer::start(
        &ns,
        &[
            "--anomalies",
            "--accept-queue-window",
            "3",
            "--connect-failures",
            "0",
        ],
    );
    let (mut server, mut clients, port, fired) = overflowing(&ns, &obs, "obs-aq-exit");
    let pid = server.pid;
    server.exit();
    let exited = now_us();
    let both = wait_alerts(&obs, 2, Duration::from_secs(5));
    let r = &both[1];
    check_common(r, "accept_queue_overflow", "resolved");
    assert_eq!(field(r, "process.pid"), pid, "{r}");
    assert_eq!(field(r, "destination.port"), port, "{r}");
    assert!(
        field(r, "event.reason")
            .as_str()
            .is_some_and(|t| t.contains("closed")),
        "{r}"
    );
    let after = micros_after(r, exited);
    assert!(
        (0..2_000_000).contains(&after),
        "resolved {after} µs after: {r}"
    );
    clients.exit();
    let stopped = obs.stop();
    stopped.assert_clean();
    let alerts = stopped.dataset(ANOMALY);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    // The 3 waiting connections, reset when their listener closed, are the ones it named.
    let records = stopped.dataset("observer.connection");
    let queued = established_before(&records, port, &fired);
    assert_eq!(queued.len(), 3, "{records:#?}");
    assert_eq!(sample_uids(&fired), queued, "{fired}");
}

/// A route for the spoofed 10.99.0.0/16 through a veth whose next hop never answers: the
/// listener's SYN-ACKs leave and nobody completes the handshakes.
fn blackhole_route(ns: &NetNs) {
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", ns.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all);
    };
    ip(&[
        "link", "add", "obs-v0", "type", "veth", "peer", "name", "obs-v1",
    ]);
    ip(&["addr", "add", "10.98.0.1/24", "dev", "obs-v0"]);
    ip(&["link", "set", "obs-v0", "up"]);
    ip(&["link", "set", "obs-v1", "up"]);
    ip(&["route", "add", "10.99.0.0/16", "via", "10.98.0.2"]);
    ip(&[
        "neigh",
        "add",
        "10.98.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "obs-v0",
        "nud",
        "permanent",
    ]);
}

/// The resolved line of a SYN flood that ended at `flood_end`.
fn check_flood_over(r: &Value, pid: u32, port: u16, flood_end: i64, syncookies: &str) {
    check_common(r, "syn_flood", "resolved");
    assert_eq!(field(r, "process.pid"), pid, "{r}");
    assert_eq!(field(r, "destination.port"), port, "{r}");
    // Resolved once the unanswered rate fell below half the threshold (the flood's tail may
    // still be in the window), with nothing answered.
    let left = field(r, "anomaly.observed").as_u64().expect("n");
    assert!(left < 50, "{r}");
    assert_eq!(field(r, "anomaly.syn_rate"), left, "{r}");
    assert_eq!(field(r, "anomaly.handshakes"), 0, "{r}");
    assert!(
        field(r, "anomaly.peak_rate").as_u64().expect("peak") >= 100,
        "{r}"
    );
    // Resolved once the window (3 s) no longer holds the flood.
    let after = micros_after(r, flood_end);
    assert!(
        (1_000_000..6_000_000).contains(&after),
        "resolved {after} µs after the end: {r}"
    );
    assert_eq!(
        field(r, "anomaly.syncookies"),
        syncookies.parse::<u64>().expect("n"),
        "{r}"
    );
}

fn syn_flood(syncookies: &str) {
    let ns = NetNs::new(&format!("sf{syncookies}"));
    ns.sysctl("net.ipv4.tcp_syncookies", syncookies);
    blackhole_route(&ns);
    let recording = scratch("rec");
    let rec = recording.to_str().expect("utf-8");
    let flags = ["--anomalies", "--syn-flood-window", "3"];
    let mut args = vec!["--record", rec];
    args.extend_from_slice(&flags);
    let obs = Observer::start(&ns, &args);
    let comm = format!("obs-sf{syncookies}-srv");
    let mut server = Peer::spawn(&ns, &comm);
    // listen(16): the SYN queue holds 16 requests before cookies (mode 1).
    let port = server.port("listen 4 0.0.0.0", "port");
    let flood_start = now_us();
    // 3000 SYNs at 1 ms intervals from 10.99.1.7: about 3 s of ~1000 SYNs/s.
    let hping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "hping3",
            "-q",
            "-S",
            "-p",
            &port.to_string(),
        ])
        .args(["-a", "10.99.1.7", "-i", "u1000", "-c", "3000", "10.98.0.1"])
        .output()
        .expect("hping3");
    let flood_end = now_us();
    // (Its own statistics miscount sent packets under load: the observer's count is the
    // measure.)
    assert!(
        hping.status.success(),
        "hping3: {}",
        String::from_utf8_lossy(&hping.stderr)
    );

    let fired = wait_alerts(&obs, 1, Duration::from_secs(5));
    let a = &fired[0];
    check_common(a, "syn_flood", "firing");
    assert_eq!(field(a, "process.pid"), server.pid, "{a}");
    assert_eq!(field(a, "process.name"), comm.as_str(), "{a}");
    assert_eq!(field(a, "destination.ip"), "0.0.0.0", "{a}");
    assert_eq!(field(a, "destination.port"), port, "{a}");
    assert_eq!(field(a, "anomaly.netns"), netns_inode(&ns), "{a}");
    assert_eq!(field(a, "anomaly.threshold"), 100, "{a}");
    assert_eq!(field(a, "anomaly.window_s"), 3, "{a}");
    assert_eq!(
        field(a, "anomaly.syncookies"),
        syncookies.parse::<u64>().expect("n"),
        "{a}"
    );
    // Nothing answered: every SYN of the window is unanswered, all from the spoofed /24.
    assert_eq!(field(a, "anomaly.handshakes"), 0, "{a}");
    assert_eq!(field(a, "anomaly.handshake_rate"), 0, "{a}");
    let syns = field(a, "anomaly.syns").as_u64().expect("syns");
    assert!(syns >= 100, "{a}");
    assert_eq!(
        field(a, "anomaly.observed"),
        field(a, "anomaly.syn_rate"),
        "{a}"
    );
    assert_eq!(
        field(a, "anomaly.sources"),
        &json!([{"prefix": "10.99.1.0/24", "syns": syns, "half_open": field(a, "anomaly.half_open")}]),
        "{a}"
    );
    let cookies = field(a, "anomaly.syncookies_sent").as_u64().expect("n");
    if syncookies == "2" {
        // Always cookies: no request is kept, so nothing is half-open or retransmitted.
        assert_eq!(field(a, "anomaly.half_open"), 0, "{a}");
        assert_eq!(field(a, "anomaly.synack_retransmits"), 0, "{a}");
        assert!(cookies > 0, "{a}");
    } else {
        // The queue fills (listen(16) holds 16 + 1 requests), then cookies.
        assert_eq!(field(a, "anomaly.half_open"), 17, "{a}");
        assert!(cookies > 0, "{a}");
    }
    let after = micros_after(a, flood_start);
    assert!(
        (0..10_000_000).contains(&after),
        "fired {after} µs after the start: {a}"
    );

    let both = wait_alerts(&obs, 2, Duration::from_secs(10));
    check_flood_over(&both[1], server.pid, port, flood_end, syncookies);

    std::thread::sleep(Duration::from_millis(1500));
    let stopped = obs.stop();
    stopped.assert_clean();
    let alerts = stopped.dataset(ANOMALY);
    assert_eq!(alerts.len(), 2, "no flapping, no other rule: {alerts:#?}");
    assert_eq!(
        replayed(&recording, &flags),
        alerts,
        "replay gives the same alerts"
    );
    let _ = std::fs::remove_file(&recording);
}

#[test]
fn syn_flood_with_syncookies_on_overflow() {
    if !privileged("syn_flood_with_syncookies_on_overflow") {
        return;
    }
    let _shared = CHURN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    syn_flood("1");
}

#[test]
fn syn_flood_with_syncookies_always() {
    if !privileged("syn_flood_with_syncookies_always") {
        return;
    }
    let _shared = CHURN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    syn_flood("2");
}

/// Runs `f` on a new thread inside the namespace; threads it starts stay there too.
fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns.path()).expect("netns");
    std::thread::spawn(move || {
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn real_clients_at_full_loopback_rate_raise_nothing() {
    if !privileged("real_clients_at_full_loopback_rate_raise_nothing") {
        return;
    }
    let _alone = CHURN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ns = NetNs::new("sfc");
    // A ring that holds a second of this churn: the default 1 MiB loses events (and rightly
    // fires event_loss) when other tests load the CPUs too.
    let obs = Observer::start(&ns, &["--anomalies", "--ring-mib", "16"]);
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (d, s) = (done.clone(), served.clone());
    // A listener and two clients (one per CPU), connect / 1 byte / 1 byte / close, for 3 s.
    let (made, elapsed) = in_netns(&ns, move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = std::thread::spawn(move || {
            for accepted in listener.incoming() {
                let Ok(mut conn) = accepted else { continue };
                let mut byte = [0u8; 1];
                if conn.read_exact(&mut byte).is_ok() {
                    let _ = conn.write_all(&byte);
                    s.fetch_add(1, Ordering::Relaxed);
                }
                if d.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        let start = Instant::now();
        let clients: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < Duration::from_secs(3) {
                        let mut c = TcpStream::connect(addr).expect("connect");
                        c.write_all(b"x").expect("send");
                        let mut byte = [0u8; 1];
                        c.read_exact(&mut byte).expect("reply");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let made: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(addr);
        let _ = acceptor.join();
        (made, elapsed)
    });
    #[expect(clippy::cast_precision_loss, reason = "a rate for the log")]
    let rate = made as f64 / elapsed.as_secs_f64();
    eprintln!("{made} connections in {elapsed:?}: {rate:.0}/s");
    // 1,000/s at least (QEMU guests: divided by their time scale).
    #[expect(clippy::cast_precision_loss, reason = "a count far below 2^52")]
    let enough = made as f64 >= 3000.0 / time_scale();
    assert!(enough, "the load ran: {made} connections");
    assert!(served.load(Ordering::Relaxed) >= made);
    // Past a whole syn_flood window and several samples.
    std::thread::sleep(Duration::from_secs(3));
    let stopped = obs.stop();
    stopped.assert_clean();
    assert_eq!(stopped.dataset(ANOMALY), Vec::<Value>::new());
    // Every connection was seen: both ends' records.
    assert!(stopped.dataset("observer.connection").len() as u64 >= 2 * made);
}

#[test]
fn bad_listener_rule_flags_get_a_clear_error() {
    for (args, message) in [
        (
            ["--syn-flood-ratio", "101"],
            "invalid value '101' for '--syn-flood-ratio <PERCENT>': 101 is not in 1..=100",
        ),
        (
            ["--syn-flood-window", "0"],
            "invalid value '0' for '--syn-flood-window <SECONDS>': 0 is not in 1..",
        ),
        (
            ["--accept-queue-window", "soon"],
            "invalid value 'soon' for '--accept-queue-window <SECONDS>'",
        ),
    ] {
        let out = Command::new(bin())
            .args(["run", "--anomalies"])
            .args(args)
            .output()
            .expect("observer");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with(&format!("error: {message}")), "{stderr}");
    }
}
