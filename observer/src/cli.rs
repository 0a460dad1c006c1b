//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::detect;

#[derive(Debug, Parser)]
#[command(
    name = "observer",
    version,
    about = "eBPF TCP connection observer: every connection's lifecycle, owner and counters, as NDJSON",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, the default subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture TCP connections and write NDJSON records (the default).
    Run(RunArgs),
    /// Check this host: privileges, tracefs, BTF, cgroup2, and every hook this build uses.
    Check,
    /// Run a recording (`run --record FILE`) through the same tracker and output offline.
    Replay(ReplayArgs),
    /// Print every TCP socket now, with owner, state, age, time in state, bytes, RTT and
    /// retransmits: from the running agent, or (without one) from the kernel's socket lists.
    Snapshot(SnapshotArgs),
    /// A live top-style terminal view of the open connections: the capture of `run`, drawn
    /// on screen instead of written as NDJSON (`q` quits, `?` shows the keys).
    Top(TopArgs),
}

/// `observer top` always runs the detectors (its Anomalies view shows them); the thresholds are
/// `run --anomalies`'s.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("anomalies", |a| a.hide(true)))]
pub struct TopArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Connections tracked at once (as for `run`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_connections: u32,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 1, value_parser = ring_size)]
    pub ring_mib: u32,
    /// How often the table is refreshed, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub refresh_ms: u64,
    #[arg(
        long,
        help = "Also observe TLS handshakes, as `run --tls` does (docs/tls.md): the TLS and SNI \
                columns and the detail pane's handshake"
    )]
    pub tls: bool,
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// NDJSON (`event.dataset` = observer.snapshot), one line per socket.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Only sockets with this port on either end.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only sockets in this network namespace (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Only connections with this port on either end.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only sockets in this network namespace: a path such as /run/netns/NAME or
    /// /proc/PID/ns/net (with `replay`, also a namespace inode number).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<String>,
    /// Also write one record per state change (event.dataset = observer.state).
    #[arg(long)]
    pub transitions: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Append NDJSON to FILE instead of writing to stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the raw event stream to FILE, for `observer replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    #[command(flatten)]
    pub filters: Filters,
    /// Connections tracked at once, in the kernel and in observer's table of open
    /// connections; beyond that, new ones are counted as lost (`table_full`, `map_full`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_connections: u32,
    /// Write an update record (`event.type` `["connection","info"]`) for every open connection
    /// this often; 0 turns updates off. At shutdown every open connection gets a last record.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub update_interval: u64,
    /// Ring buffer size in MiB (a power of two). Small keeps it cache-warm; raise it if loss
    /// records show `ring_full` on bursts.
    #[arg(long, value_name = "MIB", default_value_t = 1, value_parser = ring_size)]
    pub ring_mib: u32,
    #[arg(
        long,
        help = "Also hook accept(): the owner from the moment accept() returns, and \
                tcp.accept_wait_us. Costs about 4 µs per connection, and slows every syscall on \
                the host while attached"
    )]
    pub accept_hook: bool,
    /// Where `observer snapshot` reaches this agent; "none" for nowhere.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    #[arg(
        long,
        help = "Also observe TLS handshakes (docs/tls.md): uprobes on the TLS libraries and the \
                cleartext hellos on the wire. Costs about 3 µs per TCP connection on loopback \
                churn, ~15 µs per uprobe hit (about 8 per handshake) on this VM, and ~1 s to \
                detach at pause or exit"
    )]
    pub tls: bool,
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// A file written by `observer run --record FILE`. Without `--netns` or `--port`, the
    /// live run's filters apply.
    pub file: PathBuf,
    /// Append NDJSON to FILE instead of writing to stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
}

/// Anomaly detection (docs/anomalies.md): off unless `--anomalies`; a threshold of 0 turns one
/// rule off.
#[derive(Debug, Clone, Args)]
pub struct AnomalyArgs {
    #[arg(
        long,
        help = "Detect anomalies and write alerts (event.dataset = observer.anomaly, \
                docs/anomalies.md). Reads the kernel's socket table every second while \
                close_wait_stuck is on"
    )]
    pub anomalies: bool,
    /// `close_wait_stuck`: a socket is stuck after this long in `CLOSE_WAIT`.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::close_wait::DEFAULT_AFTER_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub close_wait_after: u64,
    /// `close_wait_stuck`: fires when one process holds this many stuck sockets (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::close_wait::DEFAULT_MIN)]
    pub close_wait_min: u64,
    /// `connect_failures`: fires at this many refused or timed-out connects to one destination
    /// within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::connect_failures::DEFAULT_COUNT)]
    pub connect_failures: u64,
    /// `connect_failures`: the window; resolved after a whole window without a failure.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::connect_failures::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_failures_window: u64,
    /// `rst_storm`: fires at this many connections ended by a RST, per listener or per remote
    /// host, within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::rst_storm::DEFAULT_COUNT)]
    pub rst_storm: u64,
    /// `rst_storm`: the window; resolved after a whole window without a reset connection.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::rst_storm::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub rst_storm_window: u64,
    /// `event_loss`: fires at this many events lost by the observer within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::event_loss::DEFAULT_COUNT)]
    pub event_loss: u64,
    /// `event_loss`: the window; resolved after a whole window without loss.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::event_loss::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_loss_window: u64,
}

impl AnomalyArgs {
    /// The detector's configuration; `None` without `--anomalies`.
    #[must_use]
    pub fn config(&self) -> Option<detect::Config> {
        self.anomalies.then(|| detect::Config {
            close_wait: (self.close_wait_min > 0).then_some(detect::close_wait::Config {
                after_s: self.close_wait_after,
                min: self.close_wait_min,
            }),
            connect_failures: (self.connect_failures > 0).then_some(
                detect::connect_failures::Config {
                    count: self.connect_failures,
                    window_s: self.connect_failures_window,
                },
            ),
            rst_storm: (self.rst_storm > 0).then_some(detect::rst_storm::Config {
                count: self.rst_storm,
                window_s: self.rst_storm_window,
            }),
            event_loss: (self.event_loss > 0).then_some(detect::event_loss::Config {
                count: self.event_loss,
                window_s: self.event_loss_window,
            }),
        })
    }
}

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 262_144;

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err("must be a power of two between 1 and 1024".into());
    }
    Ok(n)
}
