//! A sample of every listener, read about once a second while a listener rule or view needs it
//! (`gather::Listeners`): queue depths and half-open requests from `sock_diag`, the TCP counters
//! of each network namespace, and the SYN and ACK counts of the `listener_counts` program.
//! Recorded like every fact, so `observer replay` feeds the detectors the same samples.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Holder;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSample {
    pub ts_ns: u64,
    /// SYN and ACK counts come from the `listener_counts` program (`ListenPort::syns`).
    pub counted: bool,
    pub namespaces: Vec<NetnsStats>,
    pub ports: Vec<ListenPort>,
}

/// One network namespace's SYN-cookie mode and TCP counters (cumulative, as the kernel keeps
/// them: `TcpExt` in /proc/net/netstat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetnsStats {
    pub netns: u32,
    /// `net.ipv4.tcp_syncookies`: 0 off, 1 when the SYN queue overflows, 2 always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncookies: Option<u8>,
    #[serde(default)]
    pub syncookies_sent: u64,
    #[serde(default)]
    pub syncookies_recv: u64,
    #[serde(default)]
    pub syncookies_failed: u64,
    #[serde(default)]
    pub listen_overflows: u64,
    #[serde(default)]
    pub listen_drops: u64,
    #[serde(default)]
    pub reqq_full_do_cookies: u64,
    #[serde(default)]
    pub reqq_full_drop: u64,
}

/// Every listening socket on one port of one namespace (several with `SO_REUSEPORT`, or one
/// per address family), and what arrives on that port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenPort {
    pub netns: u32,
    pub port: u16,
    pub sockets: Vec<ListenSock>,
    /// Half-open requests (`SYN_RECV` request sockets) now.
    pub half_open: u32,
    /// SYN-ACK retransmits of those requests so far.
    pub synack_retrans: u32,
    /// SYNs that reached its sockets since the observer attached, from the same read as
    /// `sources` (gather's `SynTotal`); `None` without the `listener_counts` program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syns: Option<u64>,
    /// ACKs that completed (or tried to complete) a handshake since the observer attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<u64>,
    /// Where SYNs come from (up to [`SOURCES`], most first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
}

/// At most this many source prefixes per port.
pub const SOURCES: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSock {
    pub local: SocketAddr,
    /// Socket cookie.
    #[serde(default)]
    pub cookie: u64,
    /// Connections waiting for `accept()`.
    pub queue: u32,
    /// The backlog of `listen()` (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// The processes holding it: the ones that should call `accept()`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    /// While its queue is full: the cookies of up to `detect::SAMPLES` connections waiting in
    /// it (established, no process has accepted them), lowest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<u64>,
}

/// A source prefix: /24 for IPv4, /64 for IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `10.1.2.0/24`, `2001:db8::/64`.
    pub prefix: String,
    /// SYNs from it since the previous sample (`listener_counts`).
    #[serde(default)]
    pub syns: u64,
    /// Its half-open requests now.
    #[serde(default)]
    pub half_open: u32,
}

/// An accept queue counted as full: at its backlog or over it. The kernel drops a completed
/// handshake only once the queue is over the backlog (`sk_acceptq_is_full`), so this is one
/// connection early: a queue at its backlog has no room for a burst.
#[must_use]
pub fn queue_full(queue: u32, backlog: u32) -> bool {
    queue > 0 && queue >= backlog
}

impl ListenSock {
    /// Its accept queue is full ([`queue_full`]).
    #[must_use]
    pub fn full(&self) -> bool {
        queue_full(self.queue, self.backlog)
    }
}

impl ListenerSample {
    /// Only what `admits(netns, port)` keeps.
    #[must_use]
    pub fn filtered(&self, admits: impl Fn(u32, u16) -> bool) -> Self {
        let ports: Vec<ListenPort> = self
            .ports
            .iter()
            .filter(|p| admits(p.netns, p.port))
            .cloned()
            .collect();
        Self {
            ts_ns: self.ts_ns,
            counted: self.counted,
            namespaces: self
                .namespaces
                .iter()
                .filter(|n| ports.iter().any(|p| p.netns == n.netns))
                .copied()
                .collect(),
            ports,
        }
    }

    #[must_use]
    pub fn netns(&self, netns: u32) -> Option<&NetnsStats> {
        self.namespaces.iter().find(|n| n.netns == netns)
    }
}
