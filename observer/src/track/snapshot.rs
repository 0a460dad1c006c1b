//! `observer snapshot`: every TCP socket of a fresh listing, joined with what the tracker
//! knows of it (its kernel entry: age, time in state, owner, retransmits by phase).

use std::net::SocketAddr;

use observer_common::{CloseInfo, conn_flag, tcp_state};

use super::{
    Tracker,
    build::owner,
    lifecycle::{LateResets, Lifecycle},
    live::last_state,
    record::{Process, Uid},
};
use crate::facts::SocketScan;

/// One socket, as `observer snapshot` shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub uid: Uid,
    pub netns: u32,
    pub cookie: u64,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub process: Option<Process>,
    pub executable: Option<std::sync::Arc<str>>,
    /// How the owner was learnt (`conn.owner_source`).
    pub owner_source: Option<&'static str>,
    pub uid_owner: u32,
    /// Since the socket was born; `None` when it predates the observer (`age_min_ns` then
    /// is the least it can be: the time since the observer started, when one runs).
    pub age_ns: Option<u64>,
    pub age_min_ns: Option<u64>,
    /// Since the socket entered its current state, when known.
    pub in_state_ns: Option<u64>,
    /// Payload bytes sent and received; `None` for time-wait and request sockets.
    pub bytes: Option<(u64, u64)>,
    pub srtt_us: Option<u32>,
    /// Retransmitted segments over the socket's life.
    pub retransmits: Option<u32>,
    pub segs: Option<(u32, u32)>,
    /// Its transitions so far, with their times, from the kernel's entry.
    pub lifecycle: Option<Lifecycle>,
    /// When it was born (or, pre-existing, first seen) per the kernel's entry.
    pub birth_ns: Option<u64>,
    pub pre_existing: bool,
    /// Resets it sent and received (kernel entry).
    pub resets: Option<(u16, u16)>,
}

impl Tracker {
    /// The rows of `scan`, taken at `now_ns`.
    #[must_use]
    pub fn snapshot(&self, scan: &SocketScan, now_ns: u64) -> Vec<Row> {
        let mut rows: Vec<Row> = scan
            .sockets
            .iter()
            .filter(|s| {
                self.filter
                    .admits_ports(s.netns, s.local.port(), s.remote.port())
            })
            .map(|s| {
                let kernel = self.live.get(s.cookie).and_then(|o| o.kernel.as_ref());
                let (process, owner_source, _) = match kernel {
                    Some(st) => owner(st, Some(s)),
                    None => owner(&observer_common::ConnState::zeroed(), Some(s)),
                };
                let born_here = kernel.filter(|st| st.flags & conn_flag::PRE_EXISTING == 0);
                let in_state_ns = kernel
                    .filter(|st| st.n_transitions > 0 && last_state(st) == s.state)
                    .and_then(|st| {
                        let n = usize::from(st.n_transitions).min(st.ts.len());
                        Some(now_ns.saturating_sub(*st.ts.get(n.checked_sub(1)?)?))
                    });
                Row {
                    uid: self.uid(s.cookie),
                    netns: s.netns,
                    cookie: s.cookie,
                    state: s.state,
                    local: s.local,
                    remote: s.remote,
                    executable: process
                        .and_then(|p| self.procs.get(p.pid))
                        .and_then(|e| e.executable.clone()),
                    process,
                    owner_source,
                    uid_owner: s.uid,
                    age_ns: born_here.map(|st| now_ns.saturating_sub(st.birth_ns)),
                    age_min_ns: self.started_ns.map(|t| now_ns.saturating_sub(t)),
                    in_state_ns,
                    bytes: s.counters.map(|c| {
                        let fin = u64::from(matches!(
                            s.state,
                            tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
                        ));
                        (
                            c.bytes_sent.saturating_sub(c.bytes_retrans),
                            c.bytes_received.saturating_sub(fin),
                        )
                    }),
                    srtt_us: s.counters.map(|c| c.rtt_us),
                    retransmits: s.counters.map(|c| c.total_retrans),
                    segs: s.counters.map(|c| (c.segs_out, c.segs_in)),
                    lifecycle: kernel.map(|st| {
                        Lifecycle::derive(st, &CloseInfo::default(), LateResets::default())
                    }),
                    birth_ns: kernel.map(|st| st.birth_ns),
                    pre_existing: kernel.is_none_or(|st| st.flags & conn_flag::PRE_EXISTING != 0),
                    resets: kernel.map(|st| (st.resets_sent, st.resets_received)),
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.netns, r.local, r.remote));
        rows
    }
}
