//! Booting one kernel under QEMU's software emulation (TCG), its serial console saved to a
//! file and echoed in short, within a wall-clock limit.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{MARK, console};
use crate::cmd;

/// How a boot ended.
pub struct Boot {
    pub console: String,
    pub took: Duration,
    /// The wall-clock limit was reached and QEMU was killed.
    pub timed_out: bool,
    /// QEMU's own failure (it could not start the machine), if any.
    pub qemu_error: Option<String>,
}

/// The command line. TCG only: this machine's /dev/kvm cannot run stock kernels, and QEMU would
/// pick KVM if it were offered. No NIC, no display; the console is the first serial port.
pub fn command(vmlinuz: &Path, initrd: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a panic reboots at once, and -no-reboot turns that into QEMU's exit.
        // loglevel=5: kernel warnings and worse reach the console, boot chatter does not.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=5"]);
    qemu
}

/// Boots and waits for the guest to power off, killing QEMU after `limit`. Prints each test's
/// result line as it arrives, prefixed with `label`; saves the whole console to `log`.
pub fn boot(mut qemu: Command, label: &str, limit: Duration, log: &Path) -> Result<Boot> {
    cmd::echo(&qemu);
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start qemu-system-x86_64: install qemu-system-x86")?;
    let stdout = child.stdout.take().context("qemu stdout was not piped")?;
    let stderr = child.stderr.take().context("qemu stderr was not piped")?;
    let mut file =
        fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).into_owned();
            buf.clear();
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut console = String::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(line) = lines_rx.try_recv() {
            let _ = file.write_all(line.as_bytes());
            progress(label, &line);
            console.push_str(&line);
        }
        if let Some(status) = child.try_wait().context("waiting for qemu failed")? {
            break Some(status);
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        match lines_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = file.write_all(line.as_bytes());
                progress(label, &line);
                console.push_str(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
    };
    let _ = reader.join();
    for line in lines_rx.try_iter() {
        let _ = file.write_all(line.as_bytes());
        console.push_str(&line);
    }
    let stderr = errors.join().unwrap_or_default();
    let qemu_error = match status {
        Some(status) if !status.success() => Some(format!("qemu exited with {status}: {stderr}")),
        _ => None,
    };
    Ok(Boot {
        console,
        took: start.elapsed(),
        timed_out,
        qemu_error,
    })
}

/// Echoes the lines that show progress: each test's result and each executable's start.
fn progress(label: &str, line: &str) {
    let line = line.trim_end();
    let show = console::test_line(line).is_some()
        || line.contains(&format!("{MARK} binary-begin"))
        || line.contains(&format!("{MARK} kernel"));
    if show {
        eprintln!("[{label}] {}", line.replace(MARK, "").trim());
    }
}
