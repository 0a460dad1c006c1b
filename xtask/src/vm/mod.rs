//! The kernel matrix: the privileged integration suite on Debian's kernels under QEMU.
//!
//! Each kernel boots with an initramfs made of three concatenated archives: a cached Debian 12
//! userland ([`rootfs`]), the kernel's own modules ([`kernel`]) and a small per-run payload with
//! the observer, the test executables and `/init` ([`payload`]). The guest prints markers on
//! its serial console; [`console`] reads them back into per-test results.

mod console;
mod kernel;
mod payload;
mod qemu;
mod rootfs;

use std::{
    env,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{bootstrap::Tools, cmd};
use console::{Outcome, Report};

/// The prefix of every marker line the guest's `/init` prints.
pub const MARK: &str = "@@OBSERVER-VM";

/// The kernel series `cargo xtask test` runs besides the host's: Debian 12's default kernel and
/// the newer Debian series (docs/kernels.md). `--host-only` skips them.
pub const DEFAULT_SERIES: &str = "6.1,6.12";

/// How long one guest may run before QEMU is killed.
const GUEST_LIMIT: Duration = Duration::from_mins(30);

/// How many console lines a failed kernel shows (the whole console is in its log file).
const CONSOLE_TAIL: usize = 120;

/// Where kernels, the rootfs and logs are kept between runs.
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    /// `$OBSERVER_VM_CACHE`, else `$XDG_CACHE_HOME/observer/vm`, else `~/.cache/observer/vm`.
    /// Outside the target directory on purpose: a fresh clone (CI) reuses the downloads.
    pub fn open() -> Result<Self> {
        let dir = match env::var_os("OBSERVER_VM_CACHE").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .map_or_else(|| cmd::home_dir().map(|h| h.join(".cache")), Ok)?
                .join("observer")
                .join("vm"),
        };
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the VM cache {}", dir.display()))?;
        Ok(Self { dir })
    }
}

/// One kernel's run in the matrix.
pub struct KernelRun {
    pub series: String,
    /// `package version`, e.g. `linux-image-6.1.0-56-cloud-amd64 6.1.192-2`.
    pub package: String,
    pub took: Duration,
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
    /// Empty when the kernel passed.
    pub problems: Vec<String>,
}

impl KernelRun {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Parses `--kernels 6.1,6.12`: series like `6.1`, without duplicates.
pub fn parse_series(list: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let valid = word.split('.').count() == 2
            && word
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        anyhow::ensure!(
            valid,
            "--kernels takes series such as 6.1,6.12 (Debian's cloud kernels), not {word:?}"
        );
        if !out.iter().any(|s| s == word) {
            out.push(word.to_owned());
        }
    }
    Ok(out)
}

/// What every guest shares: the rootfs, the payload and the cache.
pub struct Prepared {
    cache: Cache,
    rootfs: PathBuf,
    payload: PathBuf,
}

/// Builds (or finds cached) the guest userland and this run's payload.
pub fn prepare(tools: &Tools, observer: &Path, extra_args: &[OsString]) -> Result<Prepared> {
    let cache = Cache::open()?;
    let rootfs = rootfs::ensure(&cache)?;
    let tests = payload::test_binaries(tools)?;
    let payload = payload::build(&cache, observer, &tests, extra_args)?;
    Ok(Prepared {
        cache,
        rootfs,
        payload,
    })
}

/// Fetches the newest kernel of `series`, boots it with the suite, and reports.
pub fn run_kernel(prepared: &Prepared, series: &str, strict: bool) -> Result<KernelRun> {
    let cache = &prepared.cache;
    let package = kernel::newest_package(series)?;
    let fetched = kernel::fetch(cache, &package)?;
    say(&format!(
        "{series}: {} {} (uname -r {})",
        fetched.package, fetched.version, fetched.release
    ));
    let initrd = cache.dir.join(format!("initrd-{series}.img"));
    concat(
        &[&prepared.rootfs, &fetched.modules_cpio, &prepared.payload],
        &initrd,
    )?;
    let log = cache.dir.join(format!("console-{series}.log"));
    let boot = qemu::boot(
        qemu::command(&fetched.vmlinuz, &initrd),
        series,
        GUEST_LIMIT,
        &log,
    )?;
    let _ = fs::remove_file(&initrd);
    let report = Report::parse(&boot.console);
    let mut problems = Vec::new();
    if boot.timed_out {
        problems.push(format!(
            "the guest was killed after {} s",
            GUEST_LIMIT.as_secs()
        ));
    }
    problems.extend(boot.qemu_error);
    problems.extend(report.problems(strict));
    let run = KernelRun {
        series: series.to_owned(),
        package: format!("{} {}", fetched.package, fetched.version),
        took: boot.took,
        passed: report.count(Outcome::Ok),
        failed: report.count(Outcome::Failed) + report.count(Outcome::Unfinished),
        ignored: report.count(Outcome::Ignored),
        problems,
    };
    // The next run overwrites the log: a failed one is kept under a name of its own.
    let log = if run.ok() {
        log
    } else {
        keep_failed(&log, series)
    };
    print_report(&run, &report, &boot.console, &log);
    Ok(run)
}

/// Copies a failed run's console log to `console-SERIES.failed-UNIXTIME.log`; the copy's path,
/// or the log's own when it cannot be copied.
fn keep_failed(log: &Path, series: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = log.with_file_name(format!("console-{series}.failed-{now}.log"));
    match fs::copy(log, &kept) {
        Ok(_) => kept,
        Err(e) => {
            eprintln!("cannot keep {} as {}: {e}", log.display(), kept.display());
            log.to_path_buf()
        }
    }
}

/// The kernel's `observer check`, its tests' results, and on failure the console's end.
fn print_report(run: &KernelRun, report: &Report, console: &str, log: &Path) {
    let bar = "=".repeat(72);
    eprintln!("\n{bar}\nkernel {} ({})", run.series, run.package);
    if let Some(release) = &report.kernel {
        eprintln!("guest uname -r: {release}");
    }
    eprintln!("observer check in the guest:");
    for line in &report.check {
        eprintln!("  | {line}");
    }
    eprintln!(
        "{} passed, {} failed, {} ignored in {:.1}s",
        run.passed,
        run.failed,
        run.ignored,
        run.took.as_secs_f64()
    );
    if run.ok() {
        eprintln!("{bar}");
        return;
    }
    let lines: Vec<&str> = console.lines().collect();
    let from = lines.len().saturating_sub(CONSOLE_TAIL);
    eprintln!(
        "--- guest console, last {} of {} lines (all of it: {}) ---",
        lines.len() - from,
        lines.len(),
        log.display()
    );
    for line in &lines[from..] {
        eprintln!("{}", line.trim_end_matches('\r'));
    }
    eprintln!("--- end of guest console ---");
    for section in console::failure_sections(console) {
        eprintln!("{}", section.join("\n"));
    }
    eprintln!("kernel {} FAILED:", run.series);
    for problem in &run.problems {
        eprintln!("  - {problem}");
    }
    eprintln!("{bar}");
}

/// Writes the files one after the other into `out` (concatenated cpio archives are one
/// initramfs to the kernel).
fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut file =
        fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    for part in parts {
        let mut from =
            fs::File::open(part).with_context(|| format!("cannot read {}", part.display()))?;
        io::copy(&mut from, &mut file)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// Packs `dir` as a zstd-compressed newc cpio archive owned by root, written atomically.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    cmd::run(
        Command::new("bash")
            .arg("-c")
            .arg(
                "set -o pipefail; cd \"$1\" && find . -print0 | LC_ALL=C sort -z \
                 | cpio --null --quiet -o -H newc -R 0:0 | zstd -q -T0 -f -o \"$2\"",
            )
            .arg("pack")
            .arg(dir)
            .arg(&tmp),
    )
    .context("packing the guest archive failed: it needs cpio and zstd")?;
    fs::rename(&tmp, out).with_context(|| format!("cannot move into {}", out.display()))
}

/// `rm -rf`, quiet when there is nothing to remove.
pub fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// FNV-1a, for cache keys that must not change between Rust releases.
pub fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn say(what: &str) {
    eprintln!("[vm] {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_checked_and_deduplicated() -> Result<()> {
        assert_eq!(parse_series("6.1, 6.12,6.1")?, ["6.1", "6.12"]);
        assert!(parse_series("")?.is_empty());
        assert!(parse_series("6").is_err());
        assert!(parse_series("6.1.0").is_err());
        assert!(parse_series("latest").is_err());
        Ok(())
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
