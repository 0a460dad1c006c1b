//! The open connections the detectors look at: sockets in `CLOSE_WAIT` or `FIN_WAIT2`, and
//! since when, as the latest kernel table describes them.

use std::net::IpAddr;

use observer_common::{conn_flag, tcp_state};

use super::{
    Tracker,
    build::owner,
    live::last_state,
    record::{Process, Uid},
};

/// One socket waiting on a close: in `CLOSE_WAIT` (the peer closed, its owner has not) or in
/// `FIN_WAIT2` (its owner shut down writing, the peer has not closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `tcp_state::CLOSE_WAIT` or `tcp_state::FIN_WAIT2`.
    pub state: u8,
    pub uid: Uid,
    pub netns: u32,
    pub process: Option<Process>,
    /// When it entered that state (`CLOCK_BOOTTIME`).
    pub since_ns: u64,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// Accepted from a listener (its local port is the listener's).
    pub server: bool,
}

impl Tracker {
    /// The admitted sockets in `CLOSE_WAIT` or `FIN_WAIT2` whose entry into it the kernel
    /// recorded. Sockets that were already in it when the observer started have no known age
    /// and are left out. (An orphaned `FIN_WAIT2`, closed by its process, becomes a time-wait
    /// mini socket the kernel reaps after `tcp_fin_timeout`; it is not here.)
    #[must_use]
    pub fn stuck_sockets(&self) -> Vec<Waiting> {
        let mut out: Vec<Waiting> = self
            .live
            .iter()
            .filter_map(|(&cookie, open)| {
                let st = open.kernel.as_ref()?;
                let n = usize::from(st.n_transitions).min(st.ts.len());
                let state = last_state(st);
                if n == 0
                    || !matches!(state, tcp_state::CLOSE_WAIT | tcp_state::FIN_WAIT2)
                    || !self.filter.admits_ports(open.netns, open.key.1, open.key.3)
                {
                    return None;
                }
                let server = st.flags & conn_flag::ROLE_SERVER != 0;
                // The kernel names an accepted socket's owner only at its close: until then,
                // the process that listens on its port (as the connection record would).
                let process = owner(st, open.seen.as_ref()).0.or_else(|| {
                    let o = self
                        .live
                        .listener_owner(open.netns, open.key.1)
                        .filter(|_| server)?;
                    Some(Process {
                        pid: o.tgid,
                        uid: o.uid,
                        comm: o.comm,
                    })
                });
                Some(Waiting {
                    state,
                    uid: self.uid(cookie),
                    netns: open.netns,
                    process,
                    since_ns: st.ts[n - 1],
                    local: (open.key.0, open.key.1),
                    remote: (open.key.2, open.key.3),
                    server,
                })
            })
            .collect();
        out.sort_by_key(|w| (w.since_ns, w.uid.0));
        out
    }
}
