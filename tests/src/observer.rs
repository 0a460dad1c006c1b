//! The real observer binary, run as a child process.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;

use crate::{NetNs, field, wait_for};

/// Path of the binary under test (`cargo xtask test` sets it).
#[must_use]
pub fn bin() -> PathBuf {
    std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .expect("OBSERVER_BIN is not set: run the integration tests with `cargo xtask test`")
}

/// A scratch file path, removed by the caller.
#[must_use]
pub fn scratch(suffix: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "observer-test-{}-{}.{suffix}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Parses observer's NDJSON, panicking on a malformed line or one its schema in `docs/schema/`
/// rejects ([`crate::schema::check`]).
#[must_use]
pub fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"));
            crate::schema::check(&v);
            v
        })
        .collect()
}

/// Records of one `event.dataset`.
#[must_use]
pub fn of_dataset(lines: &[Value], dataset: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| field(v, "event.dataset") == dataset)
        .cloned()
        .collect()
}

pub struct Observer {
    child: Option<Child>,
    pub output: PathBuf,
    stderr: PathBuf,
    /// The control socket the tests gave it, removed by the agent when it stops.
    control: Option<PathBuf>,
    /// When it was spawned.
    pub started: std::time::Instant,
}

/// What a stopped observer left behind.
pub struct Stopped {
    pub status: ExitStatus,
    pub lines: Vec<Value>,
    pub stderr: String,
    /// Its control socket file was still there after it exited.
    pub control_left: bool,
}

impl Stopped {
    #[must_use]
    pub fn dataset(&self, dataset: &str) -> Vec<Value> {
        of_dataset(&self.lines, dataset)
    }

    /// Asserts a clean exit and a loss summary with every count at zero.
    pub fn assert_clean(&self) {
        assert!(
            self.status.success(),
            "observer exited with {}: {}",
            self.status,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "observer panicked: {}",
            self.stderr
        );
        assert!(
            !self.control_left,
            "a stopped agent removes its control socket"
        );
        let summary = self.dataset("observer.loss");
        let summary = summary
            .iter()
            .find(|l| field(l, "event.action") == "summary")
            .unwrap_or_else(|| panic!("no loss summary in the output; stderr: {}", self.stderr));
        for key in [
            "ring_full",
            "map_full",
            "transitions_truncated",
            "read_failed",
            "decode_errors",
            "table_full",
        ] {
            assert_eq!(summary["loss"]["total"][key], 0, "loss {key} in {summary}");
        }
        let losses = self.dataset("observer.loss");
        assert_eq!(
            losses.len(),
            1,
            "only the summary: no loss happened: {losses:#?}"
        );
    }
}

impl Observer {
    /// Starts `observer run --netns <ns> --output <file> ARGS` and waits until it captures.
    #[must_use]
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        let netns = ns.path();
        let mut all = vec!["run", "--netns", netns.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        Self::start_with(&all)
    }

    /// Starts the binary with exactly these arguments, plus `--output <scratch file>` unless
    /// they name an output.
    #[must_use]
    pub fn start_with(args: &[&str]) -> Self {
        let given = args
            .iter()
            .position(|&a| a == "--output")
            .and_then(|i| args.get(i + 1));
        let output = given.map_or_else(|| scratch("ndjson"), PathBuf::from);
        let stderr = scratch("stderr");
        let mut command = Command::new(bin());
        command.args(args);
        if given.is_none() {
            command.arg("--output").arg(&output);
        }
        // Tests run side by side: each agent gets its own control socket.
        let named = args
            .iter()
            .position(|&a| a == "--control-socket")
            .and_then(|i| args.get(i + 1))
            .filter(|&&p| p != "none")
            .map(PathBuf::from);
        let control = if named.is_none() && args.first() == Some(&"run") {
            let path = scratch("sock");
            command.arg("--control-socket").arg(&path);
            Some(path)
        } else {
            named
        };
        let started = std::time::Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn observer");
        let mut obs = Self {
            child: Some(child),
            output,
            stderr,
            control,
            started,
        };
        wait_for(
            Duration::from_secs(30),
            "observer to start capturing",
            || {
                if let Some(status) = obs.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!(
                        "observer exited early with {status}: {}",
                        fs::read_to_string(&obs.stderr).unwrap_or_default()
                    );
                }
                obs.lines()
                    .iter()
                    .any(|l| field(l, "event.action") == "started")
                    .then_some(())
            },
        );
        obs
    }

    #[must_use]
    pub fn stderr_path(&self) -> &std::path::Path {
        &self.stderr
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Every line written so far.
    #[must_use]
    pub fn lines(&self) -> Vec<Value> {
        // A line may be half-written: parse complete lines only.
        let text = fs::read_to_string(&self.output).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        parse_lines(complete)
    }

    /// Waits until `n` records of `dataset` were written; returns them.
    #[must_use]
    pub fn wait_records(&self, dataset: &str, n: usize) -> Vec<Value> {
        self.wait_dataset(dataset, n, Duration::from_secs(20), |lines, found| {
            let mut roles = std::collections::BTreeMap::<String, usize>::new();
            for record in found {
                *roles
                    .entry(field(record, "conn.role").to_string())
                    .or_default() += 1;
            }
            format!(
                "by role {roles:?}; loss records: {:?}",
                of_dataset(lines, "observer.loss")
            )
        })
    }

    /// Waits until `n` lines of `dataset` were written (`timeout` times [`crate::time_scale`]);
    /// returns them. On timeout, fails with what `explain` makes of all lines and those found.
    #[must_use]
    pub fn wait_dataset(
        &self,
        dataset: &str,
        n: usize,
        timeout: Duration,
        explain: impl Fn(&[Value], &[Value]) -> String,
    ) -> Vec<Value> {
        let timeout = timeout.mul_f64(crate::time_scale());
        let start = std::time::Instant::now();
        loop {
            let lines = self.lines();
            let found = of_dataset(&lines, dataset);
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {n} {dataset} lines ({} so far): {}",
                found.len(),
                explain(&lines, &found)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit.
    #[must_use]
    pub fn stop_with(mut self, signal: libc::c_int) -> Stopped {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(libc::pid_t::try_from(child.id()).expect("pid"), signal) };
        let status = wait_for(Duration::from_secs(20), "observer to exit", || {
            child.try_wait().ok().flatten()
        });
        Stopped {
            status,
            lines: self.lines(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            control_left: self.control.as_ref().is_some_and(|p| p.exists()),
        }
    }

    /// SIGINT and wait.
    #[must_use]
    pub fn stop(self) -> Stopped {
        self.stop_with(libc::SIGINT)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("OBSERVER_KEEP").is_none() {
            let _ = fs::remove_file(&self.output);
            let _ = fs::remove_file(&self.stderr);
        }
        // Left by an agent killed outright.
        if let Some(path) = &self.control {
            let _ = fs::remove_file(path);
        }
    }
}
