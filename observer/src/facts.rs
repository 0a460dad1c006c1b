//! What userspace learns outside the ring buffer: the kernel's table of tracked sockets, the
//! host's sockets as `sock_diag` lists them, and what /proc and cgroupfs say about owners.
//!
//! These are inputs to the tracker like kernel events, so they are recorded with them and a
//! replay reproduces every record (`recording.rs`). They are gathered by `app.rs` (the impure
//! side); the tracker only consumes them.

pub mod listeners;

use std::net::SocketAddr;

use observer_common::ConnState;
use serde::{Deserialize, Serialize};

/// The kernel's per-socket table (`SLOTS` and `CONNS`), read at `ts_ns`: every socket the
/// probes track, with its transitions and owner so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracked {
    pub ts_ns: u64,
    pub states: Vec<ConnState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    /// What /proc said about a process (its executable).
    Process(ProcessFact),
    /// The path of a cgroup v2 id.
    Cgroup { id: u64, path: String },
    /// The TCP sockets of every network namespace.
    Sockets(SocketScan),
    /// The time-wait sockets of every network namespace, counted (`time_wait_pressure`).
    TimeWait(TimeWaitCensus),
    /// The names (`openssl/3.0.19`) of the TLS library files with uprobes, by the `lib_file`
    /// index their handshake events carry: a replay names libraries as the live run did.
    TlsLibraries(Vec<String>),
    /// Every listener's queues and SYN counts (`listeners.rs`).
    Listeners(listeners::ListenerSample),
}

/// Time-wait sockets per (netns, local ip, remote ip:port), and each namespace's ephemeral
/// port range, read at `ts_ns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitCensus {
    pub ts_ns: u64,
    pub namespaces: Vec<NetnsTimeWait>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsTimeWait {
    pub netns: u32,
    /// `net.ipv4.ip_local_port_range` (inclusive); `None` if unreadable.
    pub port_range: Option<(u16, u16)>,
    /// (local ip, remote address, time-wait sockets), sorted.
    pub pairs: Vec<(std::net::IpAddr, SocketAddr, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFact {
    pub ts_ns: u64,
    pub pid: u32,
    pub executable: Option<String>,
}

/// Why the sockets were listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// At start: the sockets that existed before the observer.
    Seed,
    /// `--update-interval`: counters for an update record per open connection.
    Update,
    /// At shutdown: a last record per open connection.
    Final,
    /// `observer snapshot` asked for the table.
    Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketScan {
    pub ts_ns: u64,
    pub purpose: Purpose,
    pub sockets: Vec<SeenSocket>,
}

/// One socket as `sock_diag` reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenSocket {
    pub netns: u32,
    pub cookie: u64,
    /// Kernel TCP state number; `TIME_WAIT` for every time-wait mini socket.
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<SeenCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The processes holding it open, lowest pid first (only when the scan looked them up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
}

/// A process holding a socket's file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// `tcp_info` counters, with the same meaning as the kernel fields read at close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeenCounters {
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub rtt_us: u32,
    pub total_retrans: u32,
}
