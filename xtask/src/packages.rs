//! The Debian packages the privileged tests use, and the Python packages their peers import.

use std::{
    collections::BTreeSet,
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{bootstrap::say, cmd, workspace};

const PACKAGES: &[&str] = &[
    "nftables",
    "iptables",
    "iproute2",
    "python3",
    // pip installs the peers' Python packages (PYTHON_PACKAGES).
    "python3-pip",
    "curl",
    "socat",
    "tmux",
    "libbpf-tools",
    "bpftool",
    "bpftrace",
    "hping3",
    "nginx-light",
    "gnutls-bin",
    "openssl",
    // The TLS tests compile a client statically against OpenSSL (libssl.a, libcrypto.a).
    "gcc",
    "libc6-dev",
    "libssl-dev",
    "kmod",
    "busybox-static",
    "procps",
    "syslog-ng-core", // consumes tcp://; Conflicts: system-log-daemon, so it replaces rsyslog
    // The kernel matrix (xtask/src/vm): QEMU, Debian's kernels unpacked with their modules, and
    // the guest userland packed as compressed cpio archives.
    "qemu-system-x86",
    "debootstrap",
    "cpio",
    "zstd",
    "xz-utils",
];

/// What `tests/peers/otlp_receiver.py` imports, pinned: the official OpenTelemetry protobuf
/// definitions. protobuf's wheel is abi3, so the host's copy also runs on the guests' Python.
const PYTHON_PACKAGES: &[&str] = &["opentelemetry-proto==1.45.2", "protobuf==7.36.2"];

/// Where pip installs them, in the workspace: the tests put it on PYTHONPATH, and the QEMU
/// guests get a copy at the same path (vm/payload.rs).
pub const PYTHON_DIR: &str = "target/peers-python";

/// Installs [`PYTHON_PACKAGES`] into [`PYTHON_DIR`] unless the pins there are these.
pub fn ensure_python() -> Result<()> {
    let dir = workspace::root()?.join(PYTHON_DIR);
    let pins_file = dir.join(".pins");
    let pins = PYTHON_PACKAGES.join("\n");
    if fs::read_to_string(&pins_file).is_ok_and(|have| have == pins) {
        say(
            "python packages",
            &format!("{} already in {PYTHON_DIR}", PYTHON_PACKAGES.join(" ")),
        );
        return Ok(());
    }
    say(
        "python packages",
        &format!("installing {} into {PYTHON_DIR}", PYTHON_PACKAGES.join(" ")),
    );
    crate::vm::remove_dir(&dir)?;
    cmd::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--root-user-action=ignore", "--target"])
            .arg(&dir)
            .args(PYTHON_PACKAGES),
    )
    .context("`pip install` of the test peers' Python packages failed: read pip's errors above")?;
    fs::write(&pins_file, pins).with_context(|| format!("cannot write {}", pins_file.display()))?;
    Ok(())
}

pub fn ensure() -> Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        say(
            "test packages",
            &format!("all {} already installed", PACKAGES.len()),
        );
        return Ok(());
    }
    say(
        "test packages",
        &format!("installing {}", missing.join(" ")),
    );
    let nginx_before = nginx_pids();
    cmd::run(Command::new("apt-get").arg("update"))
        .context("`apt-get update` failed: check network access to the Debian mirror")?;
    let result = cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .context("`apt-get install` failed: read apt's errors above");
    // The nginx package's postinst may start a daemon; the tests start their own nginx.
    stop_new_nginx(&nginx_before);
    result?;
    say("test packages", &format!("installed {}", missing.len()));
    Ok(())
}

/// The packages that are not in state "install ok installed", with one dpkg-query call.
fn missing() -> Result<Vec<&'static str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(PACKAGES)
        .stderr(std::process::Stdio::null())
        .output()
        .context("could not run dpkg-query: the test setup expects Debian")?;
    // dpkg-query exits 1 when a package is unknown; the known ones are still listed.
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(missing_from(&listing))
}

fn missing_from(listing: &str) -> Vec<&'static str> {
    let installed: BTreeSet<&str> = listing
        .lines()
        .filter_map(|line| line.strip_suffix(" install ok installed"))
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !installed.contains(pkg))
        .collect()
}

/// Pids of processes whose command name is `nginx` (pgrep may not be installed yet).
fn nginx_pids() -> BTreeSet<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_nginx(*pid))
        .collect()
}

fn is_nginx(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == "nginx")
}

fn stop_new_nginx(before: &BTreeSet<i32>) {
    let new: Vec<i32> = nginx_pids().difference(before).copied().collect();
    if new.is_empty() {
        return;
    }
    for &pid in &new {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while new.iter().any(|&pid| is_nginx(pid)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    for &pid in new.iter().filter(|&&pid| is_nginx(pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    say(
        "test packages",
        &format!("stopped the nginx the package started (pids {new:?})"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_reads_dpkg_status() {
        let listing = "nftables install ok installed\ncurl deinstall ok config-files\n\
                       python3:amd64 install ok installed\n";
        let missing = missing_from(listing);
        assert!(!missing.contains(&"nftables"));
        assert!(!missing.contains(&"python3"));
        assert!(missing.contains(&"curl"));
        assert!(missing.contains(&"procps"));
        assert_eq!(missing.len(), PACKAGES.len() - 2);
    }
}
