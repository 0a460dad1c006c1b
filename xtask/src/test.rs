//! `cargo xtask test`: bootstrap, unit tests, release build, then the privileged integration
//! tests against the real kernel, then the same suite on each kernel of the matrix under QEMU,
//! with a summary of how long each phase took and how each kernel did.

use std::{
    env,
    ffi::OsString,
    io::{self, Read, Write},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd, vm, workspace};

/// What the integration harness prints for a test it could not run.
const SKIP_MARKER: &str = "OBSERVER-SKIPPED";

/// Where the privileged suite runs.
pub struct Targets {
    /// This machine's kernel.
    pub host: bool,
    /// Kernel series booted under QEMU, e.g. `6.1`.
    pub kernels: Vec<String>,
}

pub fn run(targets: &Targets, extra_args: &[OsString]) -> Result<()> {
    let mut phases = Phases::default();
    let result = run_phases(&mut phases, targets, extra_args);
    phases.print_summary();
    result
}

fn run_phases(phases: &mut Phases, targets: &Targets, extra_args: &[OsString]) -> Result<()> {
    let tools = phases.time("bootstrap", || bootstrap::run(true))?;
    let root = workspace::root()?;
    phases.time("unit tests", || {
        cmd::run(tools.cargo(root).args(["test", "--release"]).args([
            "--package",
            "observer",
            "--package",
            "observer-common",
            "--package",
            "xtask",
        ]))
        .context("unit tests failed: see the failures above")
    })?;
    let bin = phases.time("build", || workspace::build_observer(&tools))?;
    let mut failures = Vec::new();
    if targets.host {
        let host = phases.time("privileged tests", || {
            let mut cargo = tools.cargo(root);
            cargo
                .args(["test", "--release", "--package", "observer-tests", "--"])
                .arg("--test-threads=2")
                .args(extra_args)
                .env("OBSERVER_BIN", &bin)
                .env("OBSERVER_REQUIRE_PRIVILEGED", "1");
            privileged(&mut cargo, on_ci(), true)
        });
        if let Err(err) = host {
            // The kernels still run: a developer sees every kernel's verdict at once.
            eprintln!("error: {err:#}");
            failures.push(format!("host kernel: {err}"));
        }
    }
    if targets.kernels.is_empty() {
        return finish(&failures);
    }
    let prepared = phases.time("guest userland", || vm::prepare(&tools, &bin, extra_args))?;
    for series in &targets.kernels {
        let name = format!("kernel {series}");
        let run = phases.time_named(name, || vm::run_kernel(&prepared, series, on_ci()));
        match run {
            Ok(run) => {
                phases.note(format!(
                    "{} passed, {} failed, {} ignored ({})",
                    run.passed, run.failed, run.ignored, run.package
                ));
                if !run.ok() {
                    phases.mark_failed();
                    failures.push(format!("kernel {series}: {}", run.problems.join("; ")));
                }
            }
            Err(err) => {
                eprintln!("error: kernel {series}: {err:#}");
                failures.push(format!("kernel {series}: {err}"));
            }
        }
    }
    finish(&failures)
}

fn finish(failures: &[String]) -> Result<()> {
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(failures.join("\n  "))
    }
}

/// Whether this runs on CI, where every privileged test must run.
fn on_ci() -> bool {
    env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Runs the privileged suite, echoing its output live (unless `!live`) while scanning it.
fn privileged(cargo: &mut Command, ci: bool, live: bool) -> Result<()> {
    cmd::echo(cargo);
    let mut child = cargo
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start cargo")?;
    let (status, scan) = tee(&mut child, live)?;

    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!(
            "the privileged integration tests failed ({status})"
        ));
    }
    for (count, what) in [
        (
            scan.skipped,
            format!("privileged tests were skipped ({SKIP_MARKER})"),
        ),
        (
            scan.ignored,
            "privileged tests were ignored (libtest `ignored`)".to_owned(),
        ),
    ] {
        if count == 0 {
            continue;
        }
        if ci {
            problems.push(format!("{count} {what}; CI requires every one to run"));
        } else {
            let bar = "!".repeat(72);
            eprintln!("{bar}\nWARNING: {count} {what}.\nCI (CI=true) fails on this.\n{bar}");
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(problems.join("; "))
    }
}

#[derive(Default)]
struct Scan {
    skipped: u64,
    ignored: u64,
}

impl Scan {
    fn line(&mut self, line: &str) {
        if line.contains(SKIP_MARKER) {
            self.skipped += 1;
        }
        if line.trim_start().starts_with("test result:") {
            self.ignored += ignored_count(line);
        }
    }

    fn add(&mut self, other: &Scan) {
        self.skipped += other.skipped;
        self.ignored += other.ignored;
    }
}

/// The `N ignored` count of a libtest `test result:` line.
pub fn ignored_count(line: &str) -> u64 {
    line.split(';')
        .filter_map(|part| part.trim().strip_suffix(" ignored")?.parse::<u64>().ok())
        .sum()
}

/// Copies the child's stdout and stderr to ours as they arrive and scans them line by line.
fn tee(child: &mut Child, live: bool) -> Result<(ExitStatus, Scan)> {
    let stdout = child.stdout.take().context("child stdout was not piped")?;
    let stderr = child.stderr.take().context("child stderr was not piped")?;
    let (out_sink, err_sink): (Box<dyn Write + Send>, Box<dyn Write + Send>) = if live {
        (Box::new(io::stdout()), Box::new(io::stderr()))
    } else {
        (Box::new(io::sink()), Box::new(io::sink()))
    };
    let out = thread::spawn(move || copy_scan(stdout, out_sink));
    let err = thread::spawn(move || copy_scan(stderr, err_sink));
    let status = child.wait().context("waiting for cargo failed")?;
    let mut scan = Scan::default();
    for handle in [out, err] {
        let part = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the output copier panicked"))?
            .context("copying the tests' output failed")?;
        scan.add(&part);
    }
    Ok((status, scan))
}

fn copy_scan(mut from: impl Read, mut to: impl Write) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                scan.line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(byte);
            }
        }
    }
    if !line.is_empty() {
        scan.line(&String::from_utf8_lossy(&line));
    }
    Ok(scan)
}

#[derive(Default)]
struct Phases {
    done: Vec<Phase>,
    start: Option<Instant>,
}

struct Phase {
    name: String,
    took: Duration,
    ok: bool,
    note: String,
}

impl Phases {
    fn time<T>(&mut self, name: &'static str, phase: impl FnOnce() -> Result<T>) -> Result<T> {
        self.time_named(name.to_owned(), phase)
    }

    fn time_named<T>(&mut self, name: String, phase: impl FnOnce() -> Result<T>) -> Result<T> {
        let now = Instant::now();
        self.start.get_or_insert(now);
        let result = phase();
        self.done.push(Phase {
            name,
            took: now.elapsed(),
            ok: result.is_ok(),
            note: String::new(),
        });
        result
    }

    /// Adds a remark to the last phase's summary line.
    fn note(&mut self, note: String) {
        if let Some(last) = self.done.last_mut() {
            last.note = note;
        }
    }

    /// Marks the last phase failed although it returned normally (a kernel whose tests failed).
    fn mark_failed(&mut self) {
        if let Some(last) = self.done.last_mut() {
            last.ok = false;
        }
    }

    fn print_summary(&self) {
        eprintln!("\nsummary:");
        for phase in &self.done {
            let verdict = if phase.ok { "ok" } else { "FAILED" };
            eprintln!(
                "  {:<18} {:>8.1}s  {verdict:<6}  {}",
                phase.name,
                phase.took.as_secs_f64(),
                phase.note
            );
        }
        if let Some(start) = self.start {
            eprintln!("  {:<18} {:>8.1}s", "total", start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ignored_and_skipped() -> io::Result<()> {
        let output = "running 3 tests\n\
            OBSERVER-SKIPPED syn_flood: needs root\n\
            test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n\
            test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out";
        let mut echoed = Vec::new();
        let scan = copy_scan(output.as_bytes(), &mut echoed)?;
        assert_eq!(echoed, output.as_bytes());
        assert_eq!(scan.skipped, 1);
        assert_eq!(scan.ignored, 3);
        Ok(())
    }

    fn fake_suite(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn ci_fails_on_skips_and_ignores_but_a_developer_is_only_warned() {
        let script = "echo 'OBSERVER-SKIPPED a: no nft' >&2; \
                      echo 'test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured'";
        let err = privileged(&mut fake_suite(script), true, false)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "1 privileged tests were skipped (OBSERVER-SKIPPED); CI requires every one to run; \
                 2 privileged tests were ignored (libtest `ignored`); CI requires every one to run"
            )
        );
        assert!(privileged(&mut fake_suite(script), false, false).is_ok());
    }

    #[test]
    fn a_failing_suite_fails() {
        assert!(privileged(&mut fake_suite("exit 3"), false, false).is_err());
        assert!(privileged(&mut fake_suite("true"), true, false).is_ok());
    }

    #[test]
    fn no_ignored_in_a_clean_run() {
        assert_eq!(
            ignored_count("test result: ok. 9 passed; 0 failed; 0 ignored"),
            0
        );
    }
}
