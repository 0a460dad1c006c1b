//! `observer check`: what this host offers, what the observer chose, and how to fix what is
//! missing. Exits non-zero when capture cannot start.

use std::{path::Path, process::ExitCode};

use crate::{
    kernel::{self, tracefs},
    probe::{self, HOOKS, HookKind, Probe, ProbeConfig},
};

struct Row {
    item: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn row(item: impl Into<String>, ok: bool, detail: impl Into<String>, fix: Option<&str>) -> Row {
    Row {
        item: item.into(),
        ok,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
    }
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (path, kind) = (f.nth(1)?, f.next()?);
        (kind == "cgroup2").then(|| path.to_owned())
    })
}

/// Whether this process may load and attach eBPF programs.
fn privileges() -> (bool, Row) {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let caps = effective_caps().unwrap_or(0);
    let bpf_caps = caps & CAP_SYS_ADMIN != 0 || (caps & CAP_BPF != 0 && caps & CAP_PERFMON != 0);
    let row = row(
        "privileges",
        root && bpf_caps,
        format!(
            "euid {}, CapEff {caps:#x}",
            if root { "0" } else { "not 0" }
        ),
        (!root || !bpf_caps).then_some("run as root (sudo observer …)"),
    );
    (root, row)
}

fn rows() -> Vec<Row> {
    let (root, privileges) = privileges();
    let mut rows = vec![privileges];
    rows.push(row("kernel", true, kernel::release(), None));
    let tracefs = if root {
        tracefs::ensure_mounted().ok()
    } else {
        tracefs::root()
    };
    rows.push(row(
        "tracefs",
        tracefs.is_some(),
        tracefs
            .as_ref()
            .map_or("not mounted".into(), |p| p.display().to_string()),
        tracefs
            .is_none()
            .then_some("mount -t tracefs nodev /sys/kernel/tracing"),
    ));
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    rows.push(row(
        "BTF",
        btf.exists(),
        if btf.exists() {
            btf.display().to_string()
        } else {
            "missing".into()
        },
        (!btf.exists()).then_some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
    ));
    let cgroup = cgroup2_mount();
    rows.push(row(
        "cgroup2",
        true,
        cgroup.unwrap_or_else(|| "not mounted (not needed by this build)".into()),
        None,
    ));
    if let Some(root) = &tracefs {
        rows.extend(tracepoint_rows(root));
    }
    match probe::resolve_layout() {
        Ok((_, choices)) => rows.push(row(
            "kernel layout (BTF + tracefs)",
            true,
            format!(
                "RST reasons: {}; tcp_send_reset endpoints: {}",
                if choices.rst_reason {
                    "yes"
                } else {
                    "no (kernel < 6.10)"
                },
                if choices.rst_sockaddr {
                    "sockaddr"
                } else {
                    "fields"
                }
            ),
            None,
        )),
        Err(e) => rows.push(row(
            "kernel layout (BTF + tracefs)",
            false,
            e.to_string(),
            None,
        )),
    }
    let config = ProbeConfig {
        max_connections: 1024,
        ring_bytes: 1 << 20,
        transitions: false,
        accept_hook: true,
        // The TLS hooks attach per library file found; `check` lists the fixed hooks.
        tls: false,
        listeners: true,
    };
    match Probe::load(config) {
        Ok((probe, _ring)) => rows.push(row(
            "load and attach",
            true,
            format!(
                "{} hooks: {}",
                probe.attached.len(),
                probe.attached.join(", ")
            ),
            None,
        )),
        Err(e) => rows.push(row("load and attach", false, e.to_string(), None)),
    }
    rows
}

#[must_use]
/// One row per classic tracepoint a hook attaches to.
fn tracepoint_rows(root: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for hook in HOOKS {
        if let HookKind::Tracepoint(points) = hook.kind {
            for (category, name) in points {
                let path = root.join("events").join(category).join(name);
                rows.push(row(
                    format!("tracepoint {category}:{name}"),
                    path.exists(),
                    hook.role,
                    (!path.exists())
                        .then_some("this kernel lacks the tracepoint; please report it"),
                ));
            }
        }
    }
    rows
}

#[must_use]
pub fn run() -> ExitCode {
    let rows = rows();
    let width = rows.iter().map(|r| r.item.len()).max().unwrap_or(0);
    println!("{:width$}  STATUS  DETAIL", "CHECK");
    for r in &rows {
        println!(
            "{:width$}  {:6}  {}",
            r.item,
            if r.ok { "ok" } else { "FAIL" },
            r.detail
        );
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        println!("\nobserver can run on this host.");
        return ExitCode::SUCCESS;
    }
    println!("\nobserver cannot run here yet:");
    for r in failed {
        println!("  - {}: {}", r.item, r.fix.as_deref().unwrap_or(&r.detail));
    }
    ExitCode::FAILURE
}
