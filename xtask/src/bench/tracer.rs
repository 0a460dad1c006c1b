//! The tracers under comparison: starting one, waiting until it is attached, measuring its CPU
//! time around the loop, stopping it with SIGINT and reading what it delivered.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// libbpf-tools' tcplife (Debian package libbpf-tools, installed by the test bootstrap).
pub const TCPLIFE: &str = "/usr/sbin/tcplife";

/// How long observer may take to load and attach before the benchmark gives up.
const OBSERVER_READY: Duration = Duration::from_mins(1);
/// tcplife's stdout is a file, so its header stays in the stdio buffer: give it this long.
const TCPLIFE_READY: Duration = Duration::from_millis(1500);
/// How long a tracer may take to exit after SIGINT.
const EXIT_WAIT: Duration = Duration::from_mins(1);
const POLL: Duration = Duration::from_millis(10);

/// What a tracer delivered during one run of the loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Records about connection ends: observer's `observer.connection` lines, tcplife's lines.
    pub records: u64,
    /// Events that reached userspace: observer's `loss.events_delivered`, tcplife's lines.
    pub delivered: u64,
    /// Events lost: observer's `loss.total.ring_full + map_full`, tcplife's "lost N events".
    pub lost: u64,
    /// The tracer's user + system CPU time while the loop ran.
    pub cpu_secs: f64,
}

/// Where tracers' userspace runs: not the generator's CPU.
pub const TRACER_CPU: usize = 1;

/// A running tracer; dropping it kills the process if it is still running.
pub struct Tracer {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Tracer {
    /// Starts observer on the benchmark's namespace and waits for its `started` record.
    /// `extra`: more arguments, such as a `--sink`.
    pub fn observer(bin: &Path, netns: &Path, dir: &Path, extra: &[String]) -> Result<Self> {
        let output = dir.join("observer.ndjson");
        remove(&output)?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .arg("--netns")
            .arg(netns)
            .arg("--output")
            .arg(&output)
            .args(extra)
            .stdout(Stdio::null());
        let mut tracer = Self::spawn("observer", command, output, dir)?;
        tracer.wait_ready(OBSERVER_READY, true, |text| {
            text.lines().any(|l| l.contains(r#""action":"started""#))
        })?;
        Ok(tracer)
    }

    /// Starts tcplife with stdout to a file and gives it time to attach.
    pub fn tcplife(dir: &Path) -> Result<Self> {
        let output = dir.join("tcplife.txt");
        remove(&output)?;
        let file =
            File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
        let mut command = Command::new(TCPLIFE);
        command.stdout(file);
        let mut tracer = Self::spawn("tcplife", command, output, dir)?;
        tracer.wait_ready(TCPLIFE_READY, false, |text| text.starts_with("PID"))?;
        Ok(tracer)
    }

    fn spawn(
        name: &'static str,
        mut command: Command,
        stdout: PathBuf,
        dir: &Path,
    ) -> Result<Self> {
        let stderr = dir.join(format!("{name}.stderr"));
        let file =
            File::create(&stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        command.stdin(Stdio::null()).stderr(file);
        // The tracer's userspace runs on the other core, so the connection rate measures what
        // its kernel programs cost the traced work; its own CPU time is reported separately.
        // SAFETY: only an async-signal-safe syscall runs between fork and exec.
        unsafe {
            command.pre_exec(|| super::churn::pin_to(TRACER_CPU));
        }
        cmd::echo(&command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name,
            child,
            stdout,
            stderr,
        })
    }

    /// Polls the output until `ready` holds. Without `required`, running for `max` is enough.
    fn wait_ready(
        &mut self,
        max: Duration,
        required: bool,
        ready: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({status}): {}",
                    self.name,
                    self.stderr_tail()
                );
            }
            if ready(&fs::read_to_string(&self.stdout).unwrap_or_default()) {
                return Ok(());
            }
            if start.elapsed() >= max {
                if required {
                    bail!(
                        "{} was not ready after {max:?}: {}",
                        self.name,
                        self.stderr_tail()
                    );
                }
                return Ok(());
            }
            thread::sleep(POLL);
        }
    }

    /// Runs `work` and returns its result with the tracer's CPU seconds spent meanwhile.
    pub fn measure<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let before = cpu_seconds(self.child.id())?;
        let result = work()?;
        let after = cpu_seconds(self.child.id())?;
        Ok((result, after - before))
    }

    /// The file the tracer writes its records to.
    pub fn output(&self) -> &Path {
        &self.stdout
    }

    /// Sends `signal` to the tracer, which must still be running.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited unexpectedly ({status}): {}",
                self.name,
                self.stderr_tail()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("cannot signal {} (pid {pid}): {err}", self.name);
        }
        Ok(())
    }

    /// Sends SIGINT and waits for the tracer to exit; it must exit successfully.
    pub fn stop(mut self) -> Result<Stopped> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() >= EXIT_WAIT {
                bail!("{} did not exit within {EXIT_WAIT:?} of SIGINT", self.name);
            }
            thread::sleep(POLL);
        };
        // tcplife exits 0 on SIGINT; so does observer.
        if !status.success() {
            bail!("{} failed ({status}): {}", self.name, self.stderr_tail());
        }
        let read = |path: &Path| {
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(Stopped {
            stdout: read(&self.stdout)?,
            stderr: read(&self.stderr)?,
        })
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        format!("stderr ({}): {tail}", self.stderr.display())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tracer's output after it exited.
pub struct Stopped {
    pub stdout: String,
    pub stderr: String,
}

impl Stopped {
    /// observer: connection records and the exit loss summary.
    pub fn observer(&self, cpu_secs: f64) -> Result<Stats> {
        let records = count_lines(&self.stdout, r#""dataset":"observer.connection""#);
        let summary = self
            .stdout
            .lines()
            .rev()
            .find(|l| {
                l.contains(r#""dataset":"observer.loss""#) && l.contains(r#""action":"summary""#)
            })
            .context("observer wrote no loss summary (observer.loss, action summary) at exit")?;
        let total = summary
            .split_once(r#""total":{"#)
            .context("the loss summary has no loss.total")?
            .1;
        let field = |text: &str, key: &str| {
            number_after(text, key).with_context(|| format!("the loss summary has no {key}"))
        };
        Ok(Stats {
            records,
            delivered: field(summary, "events_delivered")?,
            lost: field(total, "ring_full")? + field(total, "map_full")?,
            cpu_secs,
        })
    }

    /// tcplife: one line per connection end after the header; losses are reported on stderr.
    pub fn tcplife(&self, cpu_secs: f64) -> Stats {
        let lines = self.stdout.lines().filter(|l| !l.trim().is_empty());
        let records = lines.filter(|l| !l.starts_with("PID")).count() as u64;
        Stats {
            records,
            delivered: records,
            lost: lost_samples(&self.stderr),
            cpu_secs,
        }
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn count_lines(text: &str, needle: &str) -> u64 {
    text.lines().filter(|l| l.contains(needle)).count() as u64
}

/// The unsigned integer right after `"key":` in compact JSON.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = &text[text.find(&pattern)? + pattern.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The sum of libbpf-tools' "lost N events on CPU #C" warnings.
fn lost_samples(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("lost ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// User + system CPU seconds of process `pid` (all its threads), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3 (state).
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("bad tick count")
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "tick counts stay far below 2^52"
    )]
    Ok(total as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_observer_summary() -> Result<()> {
        let stdout = concat!(
            r#"{"event":{"kind":"event","dataset":"observer.agent","action":"started"}}"#,
            "\n",
            r#"{"event":{"dataset":"observer.connection","action":"closed"},"conn":{}}"#,
            "\n",
            r#"{"event":{"dataset":"observer.connection","action":"closed"},"conn":{}}"#,
            "\n",
            r#"{"event":{"dataset":"observer.loss","action":"summary"},"loss":{"ring_full":1,"map_full":0,"#,
            r#""total":{"ring_full":7,"map_full":2,"read_failed":0},"events_delivered":41}}"#,
            "\n",
        );
        let stopped = Stopped {
            stdout: stdout.to_owned(),
            stderr: String::new(),
        };
        let stats = stopped.observer(0.5)?;
        assert_eq!((stats.records, stats.delivered, stats.lost), (2, 41, 9));
        Ok(())
    }

    #[test]
    fn a_missing_summary_is_an_error() {
        let stopped = Stopped {
            stdout: "{}\n".to_owned(),
            stderr: String::new(),
        };
        assert!(stopped.observer(0.0).is_err());
    }

    #[test]
    fn reads_tcplife_lines_and_losses() {
        let stopped = Stopped {
            stdout: "PID     COMM   LADDR\n1 a 127.0.0.1\n2 b 127.0.0.1\n\n".to_owned(),
            stderr: "lost 12 events on CPU #0\nlibbpf: noise\nlost 3 events on CPU #1\n".to_owned(),
        };
        let stats = stopped.tcplife(0.0);
        assert_eq!((stats.records, stats.delivered, stats.lost), (2, 2, 15));
    }

    #[test]
    fn reads_own_cpu_time() -> Result<()> {
        assert!(cpu_seconds(std::process::id())? >= 0.0);
        Ok(())
    }
}
