//! What changes from run to run in the guest: the observer binary, the integration test
//! executables, the python peers and their packages (target/peers-python), and the guest's
//! `/init`, packed as one small cpio archive that goes after the cached rootfs and modules in
//! the initramfs.

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use super::{Cache, MARK, pack_dir};
use crate::{bootstrap::Tools, cmd, workspace};

/// Where the test executables go in the guest.
const TESTS_DIR: &str = "opt/observer-tests";
/// Where the observer binary goes in the guest (`OBSERVER_BIN`).
const OBSERVER: &str = "usr/local/bin/observer";
/// How much longer every wait of the harness may take under TCG (`OBSERVER_TEST_TIME_SCALE`).
/// The suite's waits are sized for bare metal; TCG runs it roughly five times slower here.
/// `OBSERVER_TEST_TIME_SCALE` in xtask's environment overrides it.
pub const TIME_SCALE: u32 = 10;

/// The guest's time scale: [`TIME_SCALE`], or xtask's own `OBSERVER_TEST_TIME_SCALE` when it is
/// a number of at least 1.
fn time_scale() -> String {
    std::env::var("OBSERVER_TEST_TIME_SCALE")
        .ok()
        .filter(|v| v.parse::<f64>().is_ok_and(|s| s.is_finite() && s >= 1.0))
        .unwrap_or_else(|| TIME_SCALE.to_string())
}

/// One integration test executable.
#[derive(Debug, PartialEq, Eq)]
pub struct TestBinary {
    /// The cargo target name: `cli`, `lifecycle`, … (`observer_tests` for the library).
    pub name: String,
    pub path: PathBuf,
}

/// Builds the integration tests (release) and lists their executables.
pub fn test_binaries(tools: &Tools) -> Result<Vec<TestBinary>> {
    let root = workspace::root()?;
    let json = cmd::probe(tools.cargo(root).args([
        "test",
        "--release",
        "--package",
        "observer-tests",
        "--no-run",
        "--message-format=json",
    ]))
    .context("building the integration tests failed: run `cargo test --release --package observer-tests --no-run`")?;
    let binaries = executables(&json);
    if binaries.is_empty() {
        bail!("cargo built no integration test executable");
    }
    Ok(binaries)
}

/// The test executables in `cargo … --message-format=json` output.
pub fn executables(json: &str) -> Vec<TestBinary> {
    json.lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter_map(|line| {
            let path = string_after(line, r#""executable":"#)?;
            let target = &line[line.find(r#""target":"#)?..];
            let name = string_after(target, r#""name":"#)?;
            Some(TestBinary {
                name,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// The JSON string that follows `key` (cargo's paths and names need no unescaping but `\\` and
/// `\"`).
fn string_after(text: &str, key: &str) -> Option<String> {
    let rest = text[text.find(key)? + key.len()..].strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
}

/// Stages and packs the payload; returns the archive.
pub fn build(
    cache: &Cache,
    observer: &Path,
    tests: &[TestBinary],
    extra_args: &[OsString],
) -> Result<PathBuf> {
    let stage = cache.dir.join("payload");
    super::remove_dir(&stage)?;
    let copy = |from: &Path, to: &str| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().context("no parent")?)?;
        fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} into the guest", from.display()))?;
        Ok(())
    };
    // Without their debug info (the symbol table stays, for backtraces): the release test
    // executables are about 57 MB each with it, and the initramfs unpacks into a tmpfs of half
    // the guest's memory.
    let copy_stripped = |from: &Path, to: &str| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().context("no parent")?)?;
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&dest)
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            other => bail!(
                "cannot copy {} into the guest: `objcopy --strip-debug` (binutils) failed: {other:?}",
                from.display()
            ),
        }
    };
    copy_stripped(observer, OBSERVER)?;
    for test in tests {
        copy_stripped(&test.path, &format!("{TESTS_DIR}/{}", test.name))?;
    }
    // The harness finds the peers (and the schemas some tests read) through its compile-time
    // manifest directory.
    for dir in ["tests/peers", "docs/schema"] {
        let host = workspace::root()?.join(dir);
        let guest = host
            .strip_prefix("/")
            .context("the workspace path is not absolute")?;
        for entry in fs::read_dir(&host)?.filter_map(Result::ok) {
            let file = guest.join(entry.file_name());
            copy(&entry.path(), &file.to_string_lossy())?;
        }
    }
    // The peers' Python packages, at the path the tests put on PYTHONPATH.
    let python = workspace::root()?.join(crate::packages::PYTHON_DIR);
    if !python.join(".pins").is_file() {
        bail!(
            "{} is missing: run `cargo xtask bootstrap --tests`",
            python.display()
        );
    }
    copy_tree(
        &python,
        &stage.join(
            python
                .strip_prefix("/")
                .context("the workspace path is not absolute")?,
        ),
    )?;
    let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
    let init = stage.join("init");
    fs::write(&init, init_script(&names, extra_args))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let out = cache.dir.join("payload.cpio.zst");
    pack_dir(&stage, &out)?;
    Ok(out)
}

/// Copies the directory `from` to `to`, files and folders.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)?.filter_map(Result::ok) {
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest).with_context(|| {
                format!("cannot copy {} into the guest", entry.path().display())
            })?;
        }
    }
    Ok(())
}

/// The guest's `/init`: mounts, modules, `observer check`, each test executable one test at a
/// time, a summary between markers, and power off. Busybox-free: dash runs it and every tool is
/// called by its full path.
pub fn init_script(tests: &[&str], extra_args: &[OsString]) -> String {
    let extra: Vec<String> = extra_args
        .iter()
        .map(|a| sh_quote(&a.to_string_lossy()))
        .collect();
    let modules = super::kernel::GUEST_MODULES.join(" ");
    let tests = tests.join(" ");
    let extra = extra.join(" ");
    let scale = time_scale();
    format!(
        r#"#!/bin/sh
# observer's QEMU test guest (written by `cargo xtask test`).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
/usr/bin/mount -t proc proc /proc
/usr/bin/mount -t sysfs sysfs /sys
/usr/bin/mount -t devtmpfs devtmpfs /dev
/usr/bin/mkdir -p /dev/pts /dev/shm /run /tmp
/usr/bin/mount -t devpts devpts /dev/pts
/usr/bin/mount -t tmpfs tmpfs /dev/shm
/usr/bin/mount -t tmpfs tmpfs /run
/usr/bin/mount -t tracefs tracefs /sys/kernel/tracing
/usr/bin/mount -t debugfs debugfs /sys/kernel/debug
/usr/bin/mount -t bpf bpf /sys/fs/bpf
/usr/bin/mount -t cgroup2 cgroup2 /sys/fs/cgroup
/usr/bin/ln -sfn /run /var/run
# As on a login shell of the host: the suite opens 3000 sockets in one process.
ulimit -n 65536
# As on any host: loopback is up in the initial namespace (the OTLP collector listens there).
/usr/sbin/ip link set lo up
echo "{MARK} kernel $(/usr/bin/uname -r)"
for m in {modules}; do
    /usr/sbin/modprobe "$m" || echo "{MARK} modprobe-failed $m"
done
echo "{MARK} check-begin"
/usr/local/bin/observer check
echo "{MARK} check-end exit=$?"
export OBSERVER_BIN=/{OBSERVER} OBSERVER_REQUIRE_PRIVILEGED=1 OBSERVER_TEST_TIME_SCALE={scale}
summary=""
for t in {tests}; do
    echo "{MARK} binary-begin $t"
    /{TESTS_DIR}/$t --test-threads=1 --color=never {extra}
    rc=$?
    echo "{MARK} binary-end $t exit=$rc"
    summary="$summary $t=$rc"
done
echo "{MARK} summary-begin"
for s in $summary; do echo "{MARK} summary binary=${{s%=*}} exit=${{s#*=}}"; done
echo "{MARK} summary-end"
echo "{MARK} done"
echo o > /proc/sysrq-trigger
/usr/bin/sleep 60
"#
    )
}

/// Quotes a word for the guest's shell.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_test_executables_from_cargo_json() {
        let json = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#observer-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"cli","src_path":"/w/tests/tests/cli.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{"test":true},"features":[],"filenames":["/w/target/release/deps/cli-c035"],"executable":"/w/target/release/deps/cli-c035","fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"registry+https://x#libc@0.2.0","target":{"kind":["lib"],"name":"libc"},"filenames":["/w/target/release/deps/liblibc.rlib"],"executable":null,"fresh":true}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executables(json),
            [TestBinary {
                name: "cli".into(),
                path: "/w/target/release/deps/cli-c035".into()
            }]
        );
    }

    #[test]
    fn init_runs_each_binary_and_quotes_extra_args() {
        let script = init_script(&["cli", "lifecycle"], &["it's".into()]);
        assert!(script.contains("for t in cli lifecycle; do"));
        assert!(script.contains(r"--color=never 'it'\''s'"));
        if std::env::var_os("OBSERVER_TEST_TIME_SCALE").is_none() {
            assert!(script.contains("OBSERVER_TEST_TIME_SCALE=10"));
        }
        assert!(script.contains("/usr/sbin/modprobe"));
    }
}
