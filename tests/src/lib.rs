//! Harness for observer's privileged integration tests: a private network namespace per test,
//! the real observer binary capturing inside it, and real peer processes making traffic.
//!
//! Run through `cargo xtask test`, which builds the release binary and passes its path in
//! `OBSERVER_BIN`. Without root the tests skip, announcing it on the uncaptured stderr with the
//! marker `OBSERVER-SKIPPED` (xtask fails CI on it); with `OBSERVER_REQUIRE_PRIVILEGED=1` they
//! fail instead.

#![expect(
    clippy::missing_panics_doc,
    reason = "in a test harness a panic is a test failure"
)]

pub mod anomaly;
pub mod observer;
pub mod peer;
pub mod schema;
pub mod tls;
pub mod traffic;

use std::{
    io::Write as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use observer::Observer;
pub use peer::Peer;
use serde_json::Value;

/// Whether this test can run. Skips loudly without root, unless CI demands privileges.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("OBSERVER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root (OBSERVER_REQUIRE_PRIVILEGED=1)"
    );
    let _ =
        std::io::stderr().write_all(format!("OBSERVER-SKIPPED: {test} needs root\n").as_bytes());
    false
}

/// Runs a command and panics with its output if it fails; returns its stdout.
#[expect(
    clippy::must_use_candidate,
    reason = "most callers only need the command to succeed"
)]
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private network namespace with `lo` up, removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "obs-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs an nft script inside the namespace.
    pub fn nft(&self, script: &str) {
        sh("ip", &["netns", "exec", &self.name, "nft", script]);
    }

    /// Waits until a TCP socket with local port `port` is in `state` (an `ss` state name such
    /// as `fin-wait-2`; time-wait mini-sockets report their substate).
    pub fn wait_tcp_state(&self, port: u16, state: &str) {
        let filter = format!("( sport = :{port} )");
        wait_for(
            Duration::from_secs(10),
            &format!("port {port} in {state}"),
            || {
                let out = sh(
                    "ip",
                    &[
                        "netns", "exec", &self.name, "ss", "-Htan", "state", state, &filter,
                    ],
                );
                (!out.trim().is_empty()).then_some(())
            },
        );
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-q",
                "-w",
                &format!("{key}={value}"),
            ],
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Wall-clock microseconds since the epoch, to check record timestamps against.
#[must_use]
pub fn now_us() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Parses `2026-11-24T03:25:10.123456Z` into microseconds since the epoch.
#[must_use]
pub fn parse_ts(ts: &str) -> i64 {
    let num = |range: std::ops::Range<usize>| -> i64 {
        ts.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad timestamp {ts}"))
    };
    assert!(ts.len() == 27 && ts.ends_with('Z'), "bad timestamp {ts}");
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)) * 1_000_000)
        + num(20..26)
}

/// A JSON field by dotted path, e.g. `conn.uid`.
#[must_use]
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| &v[key])
}

/// The states of `conn.transitions`.
#[must_use]
pub fn states(record: &Value) -> Vec<String> {
    record["conn"]["transitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no transitions in {record}"))
        .iter()
        .map(|t| t["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// How much longer than on bare metal every wait may take: `OBSERVER_TEST_TIME_SCALE` (a
/// number of at least 1, default 1). `cargo xtask test` sets it in its QEMU guests, whose software
/// CPU emulation (TCG) runs the observer and the peers many times slower.
#[must_use]
pub fn time_scale() -> f64 {
    std::env::var("OBSERVER_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0)
        .unwrap_or(1.0)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` (times [`time_scale`]) with
/// `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = timeout.mul_f64(time_scale());
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
