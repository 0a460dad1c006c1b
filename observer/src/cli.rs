//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{detect, filter::Filter, sink::SinkSpec};

/// An output's queue, in MiB, unless `--queue-mib` says otherwise.
pub const DEFAULT_QUEUE_MIB: u32 = 64;

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
    /// Check this host: privileges, tracefs, BTF, cgroup2, and every hook this build uses;
    /// with `--config`, also that file, without starting capture.
    Check(CheckArgs),
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
    /// Ring buffer size in MiB (a power of two), as for `run`.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = ring_size)]
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
pub struct CheckArgs {
    /// Validate this configuration file (docs/config.md) as `run` would read it: exits 2 and
    /// names the file, line, column and key of the first error.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Only the sockets this expression admits (docs/filters.md; `sport` is the local end,
    /// `dport` the remote one): e.g. `state:close_wait comm:nginx`.
    #[arg(long, value_name = "EXPR", value_parser = parse_filter)]
    pub filter: Option<Filter>,
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
    /// Read options from this TOML file (docs/config.md); without it,
    /// /etc/observer/observer.toml when that exists ("none": no file). A flag given overrides
    /// the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Append NDJSON to FILE instead of writing to stdout (as `--sink file:///FILE`).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write NDJSON to this output; repeatable, each output has its own queue and filter
    /// (docs/config.md, "Outputs"): `stdout`, `file:///PATH`, `tcp://HOST:PORT`,
    /// `unix:///PATH`, `otlp+http://HOST:PORT`, each with `?name=…&filter=…` (files also
    /// `max_size`, `max_backups`, `gzip`). Without `--sink` or `--output`, stdout.
    #[arg(long, value_name = "URL", value_parser = parse_sink)]
    pub sink: Vec<SinkSpec>,
    /// Write only the records this expression admits (docs/filters.md), to every output, on
    /// top of each output's own `filter`: e.g. `dport:443,8443 !comm:curl`.
    #[arg(long, value_name = "EXPR", value_parser = parse_filter)]
    pub filter: Option<Filter>,
    /// Each output's queue, in MiB: lines wait there while the output is slow (a full disk, a
    /// reader that falls behind); past it they are dropped and counted in `observer.loss`
    /// (`loss.sink.NAME.dropped`), so that no output can slow capture.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_QUEUE_MIB, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub queue_mib: u32,
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
    /// Ring buffer size in MiB (a power of two). 8 MiB holds some 28,000 closed sockets: a
    /// quarter of a second at 60,000 connections/s (BENCHMARKS.md). Raise it if loss records
    /// show `ring_full`.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = ring_size)]
    pub ring_mib: u32,
    #[arg(
        long,
        help = "Also hook accept(): the owner from the moment accept() returns, and \
                tcp.accept_wait_us. Costs about 4 µs per connection, and slows every syscall on \
                the host while attached"
    )]
    pub accept_hook: bool,
    /// Where `observer snapshot` reaches this agent; "none" for nowhere. Removed when the agent
    /// stops.
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
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Last: the heading of its flags goes on to whatever follows.
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// A file written by `observer run --record FILE`. Without `--netns` or `--port`, the
    /// live run's filters apply.
    pub file: PathBuf,
    /// Append NDJSON to FILE instead of writing to stdout (as `--sink file:///FILE`).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write NDJSON to this output; repeatable, as for `run` (`replay` waits for a slow
    /// output instead of dropping).
    #[arg(long, value_name = "URL", value_parser = parse_sink)]
    pub sink: Vec<SinkSpec>,
    /// Write only the records this expression admits (docs/filters.md), to every output.
    #[arg(long, value_name = "EXPR", value_parser = parse_filter)]
    pub filter: Option<Filter>,
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub anomalies: AnomalyArgs,
}

/// Anomaly detection (docs/anomalies.md): off unless `--anomalies`; a threshold of 0 turns one
/// rule off.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = crate::config::ANOMALY_HEADING)]
pub struct AnomalyArgs {
    #[arg(
        long,
        help = "Detect anomalies and write alerts (event.dataset = observer.anomaly, \
                docs/anomalies.md). Reads the kernel's socket table every second while \
                close_wait_stuck or fin_wait_2_stuck is on"
    )]
    pub anomalies: bool,
    /// `close_wait_stuck`: a socket is stuck after this long in `CLOSE_WAIT`.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::close_wait::DEFAULT_AFTER_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub close_wait_after: u64,
    /// `close_wait_stuck`: fires when one process holds this many stuck sockets (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::close_wait::DEFAULT_MIN)]
    pub close_wait_min: u64,
    /// `fin_wait_2_stuck`: a socket is stuck after this long in `FIN_WAIT2` (its process shut
    /// down writing; the peer never closed).
    #[arg(long, value_name = "SECONDS", default_value_t = detect::fin_wait_2::DEFAULT_AFTER_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub fin_wait_2_after: u64,
    /// `fin_wait_2_stuck`: fires when one process holds this many stuck sockets (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::fin_wait_2::DEFAULT_MIN)]
    pub fin_wait_2_min: u64,
    /// `connect_failures`: fires at this many refused or timed-out connects to one destination
    /// within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::connect_failures::DEFAULT_COUNT)]
    pub connect_failures: u64,
    /// `connect_failures`: the window; resolved after a whole window without a failure.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::connect_failures::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_failures_window: u64,
    /// `rst_storm`: the floor: fires at no fewer than this many connections ended by a RST, per
    /// listener or per remote host, within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::rst_storm::DEFAULT_COUNT)]
    pub rst_storm: u64,
    /// `rst_storm`: the window; resolved after a whole window without a reset connection.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::rst_storm::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub rst_storm_window: u64,
    /// `rst_storm`: fires at this many times the subject's learnt count per window, when that
    /// is above the floor.
    #[arg(long, value_name = "N", default_value_t = detect::rst_storm::DEFAULT_FACTOR, value_parser = clap::value_parser!(u64).range(1..))]
    pub rst_storm_factor: u64,
    /// `retransmit_storm`: the floor: fires at no fewer than this many data segments
    /// retransmitted, per listener or per remote host, within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::retransmit_storm::DEFAULT_COUNT)]
    pub retransmit_storm: u64,
    /// `retransmit_storm`: the window.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::retransmit_storm::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub retransmit_storm_window: u64,
    /// `retransmit_storm`: fires at this many times the subject's learnt count per window, when
    /// that is above the floor.
    #[arg(long, value_name = "N", default_value_t = detect::retransmit_storm::DEFAULT_FACTOR, value_parser = clap::value_parser!(u64).range(1..))]
    pub retransmit_storm_factor: u64,
    /// `time_wait_pressure`: fires when the `TIME_WAIT` sockets from one local ip to one
    /// destination reach this percentage of the namespace's ephemeral port range (0: off).
    #[arg(long, value_name = "PERCENT", default_value_t = detect::time_wait::DEFAULT_PERCENT, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub time_wait_pressure: u64,
    /// `tls_handshake_failures` (with `--tls`): fires at this many failed handshakes with one
    /// server within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::tls_failures::DEFAULT_COUNT)]
    pub tls_handshake_failures: u64,
    /// `tls_handshake_failures`: the window; resolved after a whole window without a failure.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::tls_failures::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_failures_window: u64,
    /// `event_loss`: fires at this many events lost by the observer within the window (0: off).
    #[arg(long, value_name = "N", default_value_t = detect::event_loss::DEFAULT_COUNT)]
    pub event_loss: u64,
    /// `event_loss`: the window; resolved after a whole window without loss.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::event_loss::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_loss_window: u64,
    #[command(flatten)]
    pub listeners: ListenerRuleArgs,
}

/// The listener rules (`syn_flood`, `accept_queue_overflow`): fed by a listener sample every
/// second (queue depths, half-open requests, namespace counters, SYN counts).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = crate::config::ANOMALY_HEADING)]
pub struct ListenerRuleArgs {
    /// `syn_flood`: fires at this many unanswered SYNs per second (SYNs minus completed
    /// handshakes) to one listening port over the window (0: off).
    #[arg(long, value_name = "PER_S", default_value_t = detect::syn_flood::DEFAULT_RATE)]
    pub syn_flood_rate: u64,
    /// `syn_flood`: ... and only when they are at least this percentage of its SYNs (real
    /// clients complete their handshakes).
    #[arg(long, value_name = "PERCENT", default_value_t = detect::syn_flood::DEFAULT_RATIO_PCT, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub syn_flood_ratio: u64,
    /// `syn_flood`: also fires at this many half-open requests on one port (0: this trigger
    /// off).
    #[arg(long, value_name = "N", default_value_t = detect::syn_flood::DEFAULT_HALF_OPEN)]
    pub syn_flood_half_open: u64,
    /// `syn_flood`: the window of the rates; resolved once they fall below half their
    /// thresholds.
    #[arg(long, value_name = "SECONDS", default_value_t = detect::syn_flood::DEFAULT_WINDOW_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub syn_flood_window: u64,
    /// `accept_queue_overflow`: fires when a listener's accept queue is full and its namespace
    /// dropped connections within this window; resolved after a whole window below the backlog
    /// without a drop (0: off).
    #[arg(long, value_name = "SECONDS", default_value_t = detect::accept_queue::DEFAULT_WINDOW_S)]
    pub accept_queue_window: u64,
}

impl ListenerRuleArgs {
    fn syn_flood(&self) -> Option<detect::syn_flood::Config> {
        (self.syn_flood_rate > 0).then_some(detect::syn_flood::Config {
            rate: self.syn_flood_rate,
            ratio_pct: self.syn_flood_ratio,
            half_open: self.syn_flood_half_open,
            window_s: self.syn_flood_window,
        })
    }

    fn accept_queue(&self) -> Option<detect::accept_queue::Config> {
        (self.accept_queue_window > 0).then_some(detect::accept_queue::Config {
            window_s: self.accept_queue_window,
        })
    }
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
            fin_wait_2: (self.fin_wait_2_min > 0).then_some(detect::fin_wait_2::Config {
                after_s: self.fin_wait_2_after,
                min: self.fin_wait_2_min,
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
                factor: self.rst_storm_factor,
            }),
            retransmit_storm: (self.retransmit_storm > 0).then_some(
                detect::retransmit_storm::Config {
                    count: self.retransmit_storm,
                    window_s: self.retransmit_storm_window,
                    factor: self.retransmit_storm_factor,
                },
            ),
            time_wait: (self.time_wait_pressure > 0).then_some(detect::time_wait::Config {
                percent: self.time_wait_pressure,
            }),
            tls_failures: (self.tls_handshake_failures > 0).then_some(
                detect::tls_failures::Config {
                    count: self.tls_handshake_failures,
                    window_s: self.tls_handshake_failures_window,
                },
            ),
            event_loss: (self.event_loss > 0).then_some(detect::event_loss::Config {
                count: self.event_loss,
                window_s: self.event_loss_window,
            }),
            syn_flood: self.listeners.syn_flood(),
            accept_queue: self.listeners.accept_queue(),
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

fn parse_sink(url: &str) -> Result<SinkSpec, String> {
    SinkSpec::parse(url)
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    Filter::parse(text).map_err(|e| e.to_string())
}
