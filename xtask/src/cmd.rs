//! Spawning commands: echo them, run them, probe quietly, and clean the environment that
//! `cargo run` hands to xtask before it reaches nested cargo invocations.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Variables cargo sets for the crate it is running (xtask itself). They describe xtask, not
/// whatever a child cargo builds, so children never see them.
const CRATE_VARS: &[&str] = &[
    "CARGO",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
    "CARGO_TARGET_TMPDIR",
];
const CRATE_VAR_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_"];

/// Variables that pin a toolchain, a compiler, flags or an output directory. `cargo install` of a
/// host tool must not inherit the workspace's choices.
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTDOC",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTDOCFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "LD_LIBRARY_PATH",
];

/// Removes from `cmd` the variables cargo set for running xtask.
pub fn scrub_crate_env(cmd: &mut Command) {
    for name in CRATE_VARS {
        cmd.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        let Some(text) = name.to_str() else { continue };
        if CRATE_VAR_PREFIXES.iter().any(|p| text.starts_with(p)) {
            cmd.env_remove(&name);
        }
    }
}

/// Removes everything [`scrub_crate_env`] removes plus any toolchain, flag or target-dir pin.
pub fn scrub_toolchain_env(cmd: &mut Command) {
    scrub_crate_env(cmd);
    for name in TOOLCHAIN_VARS {
        cmd.env_remove(name);
    }
}

/// Runs `cmd` with inherited stdio after echoing it; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let status = cmd.status().with_context(|| {
        format!(
            "could not start `{}`: is it installed and on PATH?",
            program(cmd)
        )
    })?;
    if !status.success() {
        bail!("`{}` failed ({status})", render(cmd));
    }
    Ok(())
}

/// Runs a read-only query without echoing it. Returns its stdout when it started and succeeded.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints `+ VAR=value program args…` on stderr (PATH is left out: it is always the same).
pub fn echo(cmd: &Command) {
    eprintln!("+ {}", render(cmd));
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn render(cmd: &Command) -> String {
    let mut line = String::new();
    for (name, value) in cmd.get_envs() {
        if let (Some(value), false) = (value, name == "PATH") {
            let _ = write!(line, "{}={} ", name.display(), quote(value));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// Quotes a word for display the way a POSIX shell would need it.
fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// `$CARGO_HOME/bin`, or `$HOME/.cargo/bin`.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join("bin"));
    }
    Ok(home_dir()?.join(".cargo").join("bin"))
}

pub fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: set it (sudo -E keeps it) so the build tools have a home")
}

/// The current PATH with `dir` put first when it is not on it yet.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    env::join_paths(dirs).context("a PATH entry contains ':'; fix PATH and retry")
}

/// The first `name` found on `path`, like `command -v`.
pub fn which(name: &str, path: &OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_quotes_and_shows_env() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/a b")
            .env("PATH", "/x")
            .args(["install", "it's"]);
        assert_eq!(render(&cmd), r"LLVM_PREFIX='/a b' cargo install 'it'\''s'");
    }

    #[test]
    fn path_with_adds_once() -> Result<()> {
        let dir = Path::new("/definitely/not/on/path");
        let path = path_with(dir)?;
        assert!(env::split_paths(&path).next().is_some_and(|d| d == dir));
        Ok(())
    }
}
