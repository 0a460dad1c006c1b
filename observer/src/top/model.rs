//! The read model `observer top` renders: plain rows built from the tracker's snapshot, and
//! the header's counts and rates. The renderer reads it and nothing else.

use std::{collections::BTreeMap, net::SocketAddr};

use super::alerts::Anomaly;
use crate::{
    tls::{TlsFacts, names},
    track::{
        lifecycle::{Lifecycle, state_name},
        snapshot::Row,
    },
};

/// One socket as a row of the Connections view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub cookie: u64,
    pub pid: Option<u32>,
    pub comm: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub age_ns: Option<u64>,
    pub in_state_ns: Option<u64>,
    /// Payload bytes received and sent.
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub rtt_us: Option<u32>,
    pub retransmits: Option<u32>,
    pub uid: String,
    pub executable: Option<String>,
    pub owner_source: Option<&'static str>,
    /// Its TLS handshake so far (`--tls`).
    pub tls: Option<TlsFacts>,
    /// Its transitions so far with their times (`CLOCK_BOOTTIME`), when the kernel tracks it.
    pub lifecycle: Option<Lifecycle>,
    pub birth_ns: Option<u64>,
    /// It existed before the observer started: its birth is when it was first seen.
    pub pre_existing: bool,
    /// Resets sent and received.
    pub resets: Option<(u16, u16)>,
    /// Segments sent and received.
    pub segs: Option<(u32, u32)>,
}

impl Conn {
    #[must_use]
    pub fn from_row(row: &Row) -> Self {
        Self {
            cookie: row.cookie,
            pid: row.process.map(|p| p.pid),
            comm: row.process.map(|p| p.name().to_owned()).unwrap_or_default(),
            local: row.local,
            remote: row.remote,
            state: row.state,
            age_ns: row.age_ns,
            in_state_ns: row.in_state_ns,
            bytes_in: row.bytes.map(|b| b.1),
            bytes_out: row.bytes.map(|b| b.0),
            rtt_us: row.srtt_us,
            retransmits: row.retransmits,
            uid: row.uid.as_str().to_owned(),
            executable: row.executable.as_deref().map(str::to_owned),
            owner_source: row.owner_source,
            tls: None,
            lifecycle: row.lifecycle,
            birth_ns: row.birth_ns,
            pre_existing: row.pre_existing,
            resets: row.resets,
            segs: row.segs,
        }
    }

    #[must_use]
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }

    /// Payload bytes received and sent.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes_in.unwrap_or(0) + self.bytes_out.unwrap_or(0)
    }

    /// The negotiated TLS version ("1.3"), once the server's hello was seen.
    #[must_use]
    pub fn tls_version(&self) -> Option<&'static str> {
        self.tls.as_ref()?.version.and_then(names::version)
    }

    /// The server name the client asked for.
    #[must_use]
    pub fn sni(&self) -> Option<&str> {
        self.tls.as_ref()?.server_name.as_deref()
    }
}

/// Events per second over the last refresh interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub new: f64,
    pub closed: f64,
    pub retransmits: f64,
    pub resets: f64,
}

/// Everything one frame shows.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub host: String,
    pub uptime_ns: u64,
    /// The time of the listing shown (`CLOCK_BOOTTIME`), and its offset to Unix time.
    pub now_ns: u64,
    pub boot_to_unix_ns: i64,
    pub rates: Rates,
    /// Events the kernel could not deliver (ring or map full) since start.
    pub lost: u64,
    pub conns: Vec<Conn>,
    /// New connections and payload bytes per second, by owner, over the last refresh interval.
    pub owner_rates: Vec<OwnerRate>,
    /// Alerts firing or recently resolved, as the detectors raised them.
    pub anomalies: Vec<Anomaly>,
    pub listeners: Vec<super::listeners::Listener>,
}

/// One owner's rates over the last refresh interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerRate {
    pub pid: Option<u32>,
    pub comm: String,
    /// Connections opened (or opened and closed) per second.
    pub new_per_s: f64,
    /// Payload bytes, received and sent, per second.
    pub bytes_per_s: f64,
}

/// One process in the Processes view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proc {
    pub pid: Option<u32>,
    pub comm: String,
    pub total: usize,
    pub established: usize,
    pub listen: usize,
    pub close_wait: usize,
    pub time_wait: usize,
    /// Every other state (handshakes, closing).
    pub other: usize,
    pub retransmits: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub new_per_s: f64,
    pub bytes_per_s: f64,
}

impl Model {
    /// Alerts firing now.
    #[must_use]
    pub fn firing(&self) -> usize {
        self.anomalies.iter().filter(|a| a.firing()).count()
    }

    /// Sockets per state name, in name order.
    #[must_use]
    pub fn state_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for c in &self.conns {
            *counts.entry(c.state_name()).or_insert(0) += 1;
        }
        counts
    }

    /// The connections grouped by owner (pid and name), by pid, with their rates; an owner
    /// whose connections all closed within the last interval has a row of rates alone.
    #[must_use]
    pub fn processes(&self) -> Vec<Proc> {
        let mut by: BTreeMap<(Option<u32>, &str), Proc> = BTreeMap::new();
        for c in &self.conns {
            let p = by.entry((c.pid, c.comm.as_str())).or_insert_with(|| Proc {
                pid: c.pid,
                comm: c.comm.clone(),
                ..Proc::default()
            });
            p.total += 1;
            match c.state_name() {
                "ESTABLISHED" => p.established += 1,
                "LISTEN" => p.listen += 1,
                "CLOSE_WAIT" => p.close_wait += 1,
                "TIME_WAIT" => p.time_wait += 1,
                _ => p.other += 1,
            }
            p.retransmits += u64::from(c.retransmits.unwrap_or(0));
            p.bytes_in += c.bytes_in.unwrap_or(0);
            p.bytes_out += c.bytes_out.unwrap_or(0);
        }
        for r in &self.owner_rates {
            let p = by.entry((r.pid, r.comm.as_str())).or_insert_with(|| Proc {
                pid: r.pid,
                comm: r.comm.clone(),
                ..Proc::default()
            });
            p.new_per_s = r.new_per_s;
            p.bytes_per_s = r.bytes_per_s;
        }
        by.into_values().collect()
    }
}
