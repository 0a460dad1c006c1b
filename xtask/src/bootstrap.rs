//! `cargo xtask bootstrap`: everything a fresh machine needs before observer builds and its
//! tests run. Every step checks first and is skipped quickly when already done.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, packages, toolchain};

/// Environment variable naming the rustup toolchain that builds the eBPF crate (read by
/// `observer/build.rs`).
pub const TOOLCHAIN_ENV: &str = "OBSERVER_BPF_TOOLCHAIN";

/// What later steps need from the bootstrap: a PATH with cargo's bin, and the eBPF toolchain
/// when it is not the one `observer/build.rs` would pick by itself.
pub struct Tools {
    /// Set only when build.rs would otherwise pick another toolchain. Always exporting it would
    /// change the build script's `rerun-if-env-changed` fingerprint and rebuild the eBPF crate
    /// whenever someone alternates between `cargo xtask build` and a plain `cargo build`.
    toolchain_override: Option<String>,
    path: OsString,
}

impl Tools {
    /// A command whose environment carries the eBPF toolchain choice and the PATH.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &self.path);
        if let Some(toolchain) = &self.toolchain_override {
            cmd.env(TOOLCHAIN_ENV, toolchain);
        }
        cmd
    }

    /// `cargo` in the workspace root, without the variables cargo set for xtask itself.
    pub fn cargo(&self, root: &Path) -> Command {
        let mut cmd = self.command("cargo");
        cmd.current_dir(root);
        cmd::scrub_crate_env(&mut cmd);
        cmd
    }
}

/// Runs every bootstrap step; `test_packages` adds the Debian packages the tests use.
pub fn run(test_packages: bool) -> Result<Tools> {
    require_root()?;
    let path = cmd::path_with(&cmd::cargo_bin_dir()?)?;
    mount_tracefs()?;
    let toolchain = toolchain::ensure(&path)?;
    // What observer/build.rs picks when the variable is passed on unchanged.
    let build_rs_choice = std::env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "nightly".to_owned());
    toolchain::ensure_rust_src(&toolchain, &path)?;
    toolchain::ensure_bpf_linker(&toolchain, &path)?;
    if test_packages {
        packages::ensure()?;
        packages::ensure_python()?;
    }
    Ok(Tools {
        toolchain_override: (toolchain.name != build_rs_choice).then_some(toolchain.name),
        path,
    })
}

/// Prints one status line of the bootstrap.
pub fn say(step: &str, what: &str) {
    eprintln!("[bootstrap] {step}: {what}");
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    bail!(
        "observer needs root to load eBPF programs and to install its build tools: \
         run `sudo -E cargo xtask {}`",
        args.join(" ")
    );
}

fn mount_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if Path::new(TRACEFS).join("events").is_dir() {
        say("tracefs", "already mounted at /sys/kernel/tracing");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS])).context(
        "mounting tracefs failed: classic tracepoints need it; is /sys mounted read-write?",
    )?;
    say("tracefs", "mounted at /sys/kernel/tracing");
    Ok(())
}
