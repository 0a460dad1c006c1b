//! The tracker's outputs: plain data, oriented the way users read it (source = originator),
//! formatted by the sinks.

use std::{net::IpAddr, sync::Arc};

use observer_common::{AF_INET6, COMM_LEN, Endpoints};

use super::{lifecycle::Lifecycle, procs::Cgroup, zeek::History};
use crate::decode::Counters;

/// Which end of the connection this socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Called `connect()`: the originator.
    Client,
    /// Accepted from a listener: the responder.
    Server,
    /// First seen mid-life; the role is unknown.
    Unknown,
}

impl Role {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub ip: IpAddr,
    pub port: u16,
    /// Payload bytes this end sent.
    pub bytes: u64,
    /// Segments this end sent.
    pub packets: u32,
}

/// The process that owns the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
}

impl Process {
    #[must_use]
    pub fn name(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// A Zeek-style connection uid: "C" and 17 base62 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uid(pub [u8; 18]);

impl Uid {
    #[must_use]
    pub fn as_str(&self) -> &str {
        // SAFETY: built only from "C" and the base62 alphabet (`Tracker::uid`).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::fmt::Debug for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The other end of a connection, when it is on this host too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: Uid,
    pub process: Option<Process>,
}

/// Why a connection record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The socket closed: its whole life.
    Closed,
    /// Still open at an update interval: its life so far.
    Update,
    /// Still open when the observer stopped.
    Shutdown,
}

impl RecordKind {
    #[must_use]
    pub fn action(self) -> &'static str {
        match self {
            RecordKind::Closed => "closed",
            RecordKind::Update => "update",
            RecordKind::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retransmits {
    pub syn: u32,
    pub synack: u32,
    pub data: u32,
}

impl Retransmits {
    #[must_use]
    pub fn total(&self) -> u32 {
        self.syn + self.synack + self.data
    }
}

/// One socket's whole life, emitted once it closed (or its life so far, for an open one).
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub kind: RecordKind,
    pub uid: Uid,
    pub role: Role,
    pub pre_existing: bool,
    pub cookie: u64,
    pub netns: u32,
    pub ipv6: bool,
    /// The originator (for `Role::Unknown`, the local end).
    pub source: End,
    pub destination: End,
    pub start_ns: u64,
    pub end_ns: u64,
    pub lifecycle: Lifecycle,
    pub retransmits: Retransmits,
    pub srtt_us: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// The kernel's `enum sk_rst_reason` of the last RST sent, when the kernel gives it.
    pub rst_reason: Option<u32>,
    pub sk_err: i32,
    pub process: Option<Process>,
    /// The owner's executable, and its cgroup (with the container in it).
    pub executable: Option<Arc<str>>,
    pub cgroup: Option<Cgroup>,
    /// The other end, when it is on this host.
    pub peer: Option<Peer>,
    /// How the owner was learnt: `connect`, `listen` (a server socket's listening process),
    /// `accept`, `close` (the process that closed it, i.e. used it last) or `procfs` (the
    /// process holding it, for a socket that existed before the observer).
    pub owner_source: Option<&'static str>,
    /// Zeek's `conn_state` and `history`, and how and why it closed (`zeek`).
    pub conn_state: &'static str,
    pub history: History,
    pub close_initiator: &'static str,
    pub close_reason: &'static str,
    /// Client: `SYN_SENT` → `ESTABLISHED`. Server: its SYN-ACK → the handshake's last ACK.
    pub handshake_rtt_us: Option<u64>,
    /// Server, with `--accept-hook`: `ESTABLISHED` → `accept()` returned.
    pub accept_wait_us: Option<u64>,
    /// The TLS handshake the socket carried (`tls.*`).
    pub tls: Option<Box<crate::tls::TlsFacts>>,
}

impl ConnRecord {
    /// The handshake completed: seen, or (for a socket first met mid-life) implied by the
    /// state it was first met in.
    #[must_use]
    pub fn established(&self) -> bool {
        use observer_common::tcp_state::{
            CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK,
        };
        self.lifecycle.reached(ESTABLISHED)
            || (self.pre_existing
                && matches!(
                    self.lifecycle.first_state,
                    ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
                ))
    }
}

/// One state change (`--transitions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    pub uid: Uid,
    pub ts_ns: u64,
    pub old_state: u8,
    pub new_state: u8,
    pub role: Role,
    pub netns: u32,
    pub ipv6: bool,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
}

/// Events the observer lost, in the kernel or on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossRecord {
    pub ts_ns: u64,
    /// Since the previous loss record.
    pub delta: Losses,
    /// Since the start.
    pub total: Losses,
    /// Events delivered since the start.
    pub events: u64,
    /// The summary at exit.
    pub summary: bool,
    /// Outputs that dropped lines since the start (their queue was full).
    pub sinks: Vec<SinkLoss>,
}

/// Lines one output dropped because its queue was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkLoss {
    pub name: &'static str,
    /// Since the previous loss record.
    pub dropped: u64,
    /// Since the start.
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Losses {
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Sockets not tracked because the kernel map was full.
    pub map_full: u64,
    /// Transitions dropped from a socket's history (its last state is always kept).
    pub transitions_truncated: u64,
    /// Kernel memory reads that failed.
    pub read_failed: u64,
    /// Events userspace could not decode.
    pub decode_errors: u64,
    /// Open connections userspace did not keep because its table was full.
    pub table_full: u64,
    /// Hook runs the kernel skipped because one was already running on that CPU.
    pub recursion_misses: u64,
}

impl Losses {
    #[must_use]
    pub fn from_counters(c: &Counters, decode_errors: u64, table_full: u64) -> Self {
        use observer_common::counter;
        let at = |i: u32| c.values[i as usize];
        Self {
            ring_full: at(counter::RING_FULL),
            map_full: at(counter::MAP_FULL),
            transitions_truncated: at(counter::TRANSITIONS_TRUNCATED),
            read_failed: at(counter::READ_FAILED),
            decode_errors,
            table_full,
            recursion_misses: at(counter::RECURSION_MISSES),
        }
    }

    /// The sum of two counts, field by field.
    #[must_use]
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            ring_full: self.ring_full + other.ring_full,
            map_full: self.map_full + other.map_full,
            transitions_truncated: self.transitions_truncated + other.transitions_truncated,
            read_failed: self.read_failed + other.read_failed,
            decode_errors: self.decode_errors + other.decode_errors,
            table_full: self.table_full + other.table_full,
            recursion_misses: self.recursion_misses + other.recursion_misses,
        }
    }

    #[must_use]
    pub fn minus(&self, earlier: &Self) -> Self {
        Self {
            ring_full: self.ring_full.saturating_sub(earlier.ring_full),
            map_full: self.map_full.saturating_sub(earlier.map_full),
            transitions_truncated: self
                .transitions_truncated
                .saturating_sub(earlier.transitions_truncated),
            read_failed: self.read_failed.saturating_sub(earlier.read_failed),
            decode_errors: self.decode_errors.saturating_sub(earlier.decode_errors),
            table_full: self.table_full.saturating_sub(earlier.table_full),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
        }
    }

    #[must_use]
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// What the tracker emits.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "outputs live in a reused Vec; boxing would allocate once per record"
)]
pub enum Output {
    Connection(ConnRecord),
    State(StateRecord),
    Loss(LossRecord),
    Tls(Box<crate::tls::TlsRecord>),
}

/// An address from the kernel's 16-byte form. IPv4-mapped IPv6 addresses (an IPv6 socket
/// talking IPv4) come out as IPv4, as they are on the wire.
#[must_use]
pub fn ip_of(family: u16, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        let v6 = std::net::Ipv6Addr::from(*addr);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// Local and remote (ip, port) of a socket.
#[must_use]
pub fn ends_of(t: &Endpoints) -> ((IpAddr, u16), (IpAddr, u16)) {
    (
        (ip_of(t.family, &t.local_addr), t.local_port),
        (ip_of(t.family, &t.remote_addr), t.remote_port),
    )
}
