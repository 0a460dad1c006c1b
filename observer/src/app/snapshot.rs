//! `observer snapshot`: the running agent's table, or a standalone listing without one.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::filter;
use crate::{
    cli::{DEFAULT_MAX_CONNECTIONS, Filters, SnapshotArgs},
    control,
    decode::Event,
    facts::{Fact, Purpose},
    filter::{End, Fields, States},
    gather::{self, Resolver},
    kernel,
    sink::snapshot::{json, table},
    track::{Filter, Tracker},
};

pub fn run(args: &SnapshotArgs) -> Result<()> {
    let filter = filter(
        &Filters {
            port: args.port,
            netns: args.netns.clone(),
            transitions: false,
        },
        false,
    )?;
    let mut rows: Vec<Value> = if let Some(text) = control::request(&args.control_socket)? {
        text.lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .context("the agent's answer is not NDJSON")?
            .into_iter()
            .filter(|v| admits(&filter, v))
            .collect()
    } else {
        eprintln!(
            "observer: no agent at {} (start `observer run`): listing the kernel's sockets \
             directly, without ages, times in state or kernel-known owners",
            args.control_socket.display()
        );
        standalone(filter)?
    };
    if let Some(expr) = &args.filter {
        rows.retain(|row| expr.admits(&fields(row)));
    }
    let out = if args.json {
        rows.iter().fold(String::new(), |mut out, row| {
            out.push_str(&row.to_string());
            out.push('\n');
            out
        })
    } else {
        table(&rows)
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn admits(filter: &Filter, row: &Value) -> bool {
    let port = |side: &str| row[side]["port"].as_u64();
    filter
        .netns
        .is_none_or(|ns| row["conn"]["netns"].as_u64() == Some(u64::from(ns)))
        && filter.port.is_none_or(|p| {
            port("local") == Some(u64::from(p)) || port("remote") == Some(u64::from(p))
        })
}

/// A snapshot row as `--filter` sees it: `sport` is the local end, `dport` the remote one,
/// as in `top`; `state` is the state now.
fn fields(row: &Value) -> Fields<'_> {
    let end = |side: &str| {
        let ip = row[side]["ip"].as_str()?.parse().ok()?;
        let port = row[side]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok());
        Some(End { ip, port })
    };
    Fields {
        source: end("local"),
        destination: end("remote"),
        pid: row["process"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok()),
        comm: row["process"]["name"].as_str(),
        states: row["conn"]["state"]
            .as_str()
            .map_or(States::None, States::One),
        netns: row["conn"]["netns"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()),
        ..Fields::default()
    }
}

fn standalone(filter: Filter) -> Result<Vec<Value>> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "listing every namespace's sockets and their owners needs root: run it with sudo"
        );
    }
    let now = kernel::boottime_ns();
    let (scan, warnings) = gather::scan(now, Purpose::Snapshot, true);
    for w in warnings {
        eprintln!("observer: warning: {w}");
    }
    let mut tracker = Tracker::new(kernel::boot_id(), filter, DEFAULT_MAX_CONNECTIONS as usize);
    let mut facts = Vec::new();
    Resolver::new().scan(&scan, &mut facts);
    let mut ignored = Vec::new();
    for fact in facts {
        tracker.ingest(&Event::Fact(Box::new(fact)), &mut ignored);
    }
    tracker.ingest(
        &Event::Fact(Box::new(Fact::Sockets(scan.clone()))),
        &mut ignored,
    );
    let host = kernel::hostname();
    let offset = kernel::boot_to_unix_offset_ns();
    Ok(tracker
        .snapshot(&scan, now)
        .iter()
        .map(|row| json(row, &host, now, offset))
        .collect())
}
