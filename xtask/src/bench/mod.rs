//! `cargo xtask bench churn`: connection churn throughput with no tracer, with observer and with
//! libbpf-tools' tcplife, and what each tracer delivered, lost and cost.
//!
//! Every run of the loop gets a fresh private network namespace (`obs-bench-<xtask pid>-<run>`,
//! deleted after the run, or by the next benchmark if xtask was killed): its sysctls stay
//! private, observer can filter on it, and no run inherits the previous runs' `TIME_WAIT`
//! sockets. The generator's two threads are pinned to CPU 0; the tracers' userspace is left to
//! the scheduler, which puts it mostly on the other CPU.

mod churn;
mod cpustat;
mod paired;
mod reader;
mod report;
mod sinks;
mod stats;
mod tracer;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd, workspace};
use churn::Counted;
pub use paired::run as churn_paired;
pub use sinks::run as sinks;
use tracer::{Stats, Tracer};

/// Pause before every run, so that the previous one's sockets and tracer are gone.
const SETTLE: Duration = Duration::from_secs(1);
const NETNS_PREFIX: &str = "obs-bench-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Observer,
    Tcplife,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::None, Mode::Observer, Mode::Tcplife];

    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Observer => "observer",
            Mode::Tcplife => "tcplife",
        }
    }

    /// Round `round` (0-based) starts one mode later than the round before.
    fn order(round: u32) -> [Mode; 3] {
        let mut order = Self::ALL;
        order.rotate_left(round as usize % Self::ALL.len());
        order
    }
}

/// One run of the loop under one mode.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub mode: Mode,
    pub counted: Counted,
    pub tracer: Option<Stats>,
}

impl Run {
    #[expect(
        clippy::cast_precision_loss,
        reason = "connection counts stay far below 2^52"
    )]
    pub fn rate(&self) -> f64 {
        self.counted.conns as f64 / self.counted.secs
    }
}

pub fn churn(seconds: u64, rounds: u32, tcplife: bool) -> Result<()> {
    if seconds == 0 || rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }
    let tools = bootstrap::run(true)?;
    let observer = workspace::build_observer(&tools)?;
    if !Path::new(tracer::TCPLIFE).is_file() {
        bail!(
            "{} is missing: install Debian's libbpf-tools",
            tracer::TCPLIFE
        );
    }
    let dir = workspace::target_dir(&tools)?.join("bench-churn");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_netns();

    let duration = Duration::from_secs(seconds);
    report::preamble(
        seconds,
        rounds,
        &format!("{NETNS_PREFIX}{}-N", std::process::id()),
        &dir,
    );
    warn_foreign_tracers();
    let mut all = Vec::new();
    let mut count = 0;
    for round in 0..rounds {
        let mut runs = Vec::new();
        for mode in Mode::order(round) {
            if mode == Mode::Tcplife && !tcplife {
                continue;
            }
            thread::sleep(SETTLE);
            eprintln!("[bench] round {}: {} ({seconds} s)", round + 1, mode.name());
            count += 1;
            let netns = Netns::create(count)?;
            churn::in_netns(&netns.path, churn::configure)?;
            runs.push(run(mode, duration, &observer, &netns.path, &dir)?);
        }
        runs.sort_by_key(|r| Mode::ALL.iter().position(|m| *m == r.mode));
        report::round(round + 1, &runs);
        all.push(runs);
    }
    report::summary(&all)
}

fn run(mode: Mode, duration: Duration, observer: &Path, netns: &Path, dir: &Path) -> Result<Run> {
    let generate = || churn::in_netns(netns, move || churn::run(duration));
    let (counted, tracer) = match mode {
        Mode::None => (generate()?, None),
        Mode::Observer => {
            let tracer = Tracer::observer(observer, netns, dir, &[])?;
            let (counted, cpu) = tracer.measure(generate)?;
            (counted, Some(tracer.stop()?.observer(cpu)?))
        }
        Mode::Tcplife => {
            let tracer = Tracer::tcplife(dir)?;
            let (counted, cpu) = tracer.measure(generate)?;
            (counted, Some(tracer.stop()?.tcplife(cpu)))
        }
    };
    Ok(Run {
        mode,
        counted,
        tracer,
    })
}

/// The benchmark's network namespace; dropping it deletes it.
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn create(run: u32) -> Result<Self> {
        let name = format!("{NETNS_PREFIX}{}-{run}", std::process::id());
        cmd::run(Command::new("ip").args(["netns", "add", &name]))
            .context("cannot create the benchmark's network namespace")?;
        let netns = Self {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        cmd::run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

fn delete_netns(name: &str) {
    let mut ip = Command::new("ip");
    ip.args(["netns", "delete", name]);
    cmd::echo(&ip);
    if !ip.status().is_ok_and(|s| s.success()) {
        eprintln!(
            "warning: could not delete network namespace {name}: run `ip netns delete {name}`"
        );
    }
}

/// Other tracers already running (observer or tcplife processes): their programs run on every
/// connection of the benchmark too, in every mode, so they distort the comparison.
fn foreign_tracers() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id().to_string();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // Our own children (none yet when this runs) would have us as their parent.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (matches!(comm.trim(), "observer" | "tcplife") && parent != own).then(|| {
                let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                format!("pid {pid}: {}", args.trim())
            })
        })
        .collect()
}

/// Warns about [`foreign_tracers`] on stdout, in the report.
fn warn_foreign_tracers() {
    for other in foreign_tracers() {
        println!("warning: another tracer runs on this machine and slows every mode ({other})\n");
    }
}

/// Deletes namespaces left by a benchmark whose xtask no longer runs (killed by Ctrl-C).
fn remove_stale_netns() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, _run)) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split_once('-'))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            delete_netns(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_order() {
        use Mode::{None, Observer, Tcplife};
        assert_eq!(Mode::order(0), [None, Observer, Tcplife]);
        assert_eq!(Mode::order(1), [Observer, Tcplife, None]);
        assert_eq!(Mode::order(2), [Tcplife, None, Observer]);
        assert_eq!(Mode::order(3), Mode::order(0));
    }
}
