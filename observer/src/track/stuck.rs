//! The open connections the detectors look at: sockets in `CLOSE_WAIT`, and since when, as the
//! latest kernel table describes them.

use std::net::IpAddr;

use observer_common::{conn_flag, tcp_state};

use super::{
    Tracker,
    build::owner,
    live::last_state,
    record::{Process, Uid},
};

/// One socket in `CLOSE_WAIT`: the peer closed, its owner has not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub uid: Uid,
    pub netns: u32,
    pub process: Option<Process>,
    /// When it entered `CLOSE_WAIT` (`CLOCK_BOOTTIME`).
    pub since_ns: u64,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// Accepted from a listener (its local port is the listener's).
    pub server: bool,
}

impl Tracker {
    /// The admitted sockets in `CLOSE_WAIT` whose entry into it the kernel recorded. Sockets
    /// that were already in it when the observer started have no known age and are left out.
    #[must_use]
    pub fn close_waiting(&self) -> Vec<Waiting> {
        let mut out: Vec<Waiting> = self
            .live
            .iter()
            .filter_map(|(&cookie, open)| {
                let st = open.kernel.as_ref()?;
                let n = usize::from(st.n_transitions).min(st.ts.len());
                if n == 0
                    || last_state(st) != tcp_state::CLOSE_WAIT
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
