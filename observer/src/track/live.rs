//! The connections still open: the read model behind update records, `observer snapshot`, and
//! the join of a connection's two ends when both are on this host.
//!
//! It is fed by tables, not per-event: the kernel's socket table ([`Tracked`], read every
//! second or so) and `sock_diag` listings ([`SocketScan`]: at start, at each update interval,
//! at shutdown and on request). A socket leaves it when its close event arrives.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use observer_common::{ConnState, Owner, conn_flag, tcp_state};

use super::record::{Peer, ends_of};
use crate::facts::{Purpose, SeenSocket, SocketScan, Tracked};

/// (local ip, local port, remote ip, remote port), IPv4-mapped addresses as IPv4.
pub type TupleKey = (IpAddr, u16, IpAddr, u16);

/// The key of the other end of a connection.
#[must_use]
pub fn reversed(k: &TupleKey) -> TupleKey {
    (k.2, k.3, k.0, k.1)
}

#[must_use]
pub fn key_of_state(st: &ConnState) -> TupleKey {
    let (l, r) = ends_of(&st.tuple);
    (l.0, l.1, r.0, r.1)
}

fn key_of_seen(s: &SeenSocket) -> TupleKey {
    (s.local.ip(), s.local.port(), s.remote.ip(), s.remote.port())
}

/// How long a closed socket's cookie is remembered, so that a table read just before its close
/// does not bring it back.
const CLOSED_MEMORY_NS: u64 = 5_000_000_000;

/// One open connection, as the latest tables describe it.
#[derive(Debug, Clone)]
pub struct Open {
    /// From the kernel's table: transitions, role, owner, retransmits.
    pub kernel: Option<ConnState>,
    /// From `sock_diag`: state, counters, and (when looked up) the processes holding it.
    pub seen: Option<SeenSocket>,
    /// It existed before the observer started.
    pub pre_existing: bool,
    /// The other end, when it is on this host and its record was written first.
    pub peer: Option<Peer>,
    pub netns: u32,
    pub key: TupleKey,
}

/// A listening socket: seen at `listen()`, or first met listening (it predates the observer;
/// a listener's child is born with `LISTEN` as its first state too, but is not first met).
#[must_use]
pub fn is_listener(st: &ConnState) -> bool {
    st.flags & conn_flag::ROLE_LISTENER != 0
        || (st.flags & conn_flag::PRE_EXISTING != 0 && st.first_state == tcp_state::LISTEN)
}

/// The last state a kernel entry recorded.
#[must_use]
pub fn last_state(st: &ConnState) -> u8 {
    match usize::from(st.n_transitions).min(st.states.len()) {
        0 => st.first_state,
        n => st.states[n - 1],
    }
}

#[derive(Debug, Default)]
pub struct Live {
    /// Boxed: an entry is ~500 bytes, and a table of boxes wastes only pointers on its free
    /// buckets (measured with `examples/table_memory.rs`: 1177 bytes per connection unboxed,
    /// 713 boxed).
    conns: HashMap<u64, Box<Open>>,
    by_tuple: HashMap<TupleKey, Vec<u64>>,
    /// Every local address seen: a remote address among them is on this host.
    local_ips: HashSet<IpAddr>,
    /// Listening (netns, port)s, to tell accepted sockets among those first seen mid-life.
    listeners: HashSet<(u32, u16)>,
    /// The process that listens, from the kernel table: the stand-in owner of accepted sockets
    /// the kernel names only at their close.
    listener_owners: HashMap<(u32, u16), Owner>,
    closed: HashMap<u64, u64>,
    closed_order: VecDeque<(u64, u64)>,
    /// At most this many open connections are kept (`--max-connections`).
    cap: usize,
    /// Connections not kept because the table was full.
    pub dropped: u64,
    /// The time of the latest kernel table.
    pub tracked_ns: u64,
}

impl Live {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    #[must_use]
    pub fn get(&self, cookie: u64) -> Option<&Open> {
        self.conns.get(&cookie).map(|o| &**o)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Open)> {
        self.conns.iter().map(|(c, o)| (c, &**o))
    }

    pub fn note_local_ip(&mut self, ip: IpAddr) {
        if !self.local_ips.contains(&ip) {
            self.local_ips.insert(ip);
        }
    }

    /// Whether `ip` is an address of this host (loopback, or a local address seen on a socket).
    #[must_use]
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local_ips.contains(&ip)
    }

    #[must_use]
    pub fn is_listening(&self, netns: u32, port: u16) -> bool {
        self.listeners.contains(&(netns, port))
    }

    /// A kernel table: updates every listed socket and forgets kernel-backed entries it no
    /// longer lists (they closed, and their close event was handled first).
    pub fn tracked(&mut self, t: &Tracked) {
        self.tracked_ns = self.tracked_ns.max(t.ts_ns);
        let mut listed = HashSet::with_capacity(t.states.len());
        for st in &t.states {
            if st.flags & conn_flag::TUPLE_VALID == 0 || self.closed.contains_key(&st.key) {
                continue;
            }
            if is_listener(st) {
                self.listeners.insert((st.netns, st.tuple.local_port));
                if st.flags & conn_flag::OWNER_VALID != 0 {
                    self.listener_owners
                        .insert((st.netns, st.tuple.local_port), st.owner);
                }
                continue;
            }
            listed.insert(st.key);
            let key = key_of_state(st);
            self.note_local_ip(key.0);
            let pre_existing = st.flags & conn_flag::PRE_EXISTING != 0;
            if let Some(open) = self.upsert(st.key, st.netns, key, pre_existing) {
                open.kernel = Some(*st);
            }
        }
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(cookie, open)| open.kernel.is_some() && !listed.contains(cookie))
            .map(|(&cookie, _)| cookie)
            .collect();
        for cookie in gone {
            self.remove(cookie);
        }
    }

    /// A `sock_diag` listing: updates every open socket in it. Returns the cookies of the open
    /// connections it listed, for update records.
    pub fn seen(&mut self, scan: &SocketScan) -> Vec<u64> {
        let mut listed = Vec::new();
        let mut present = HashSet::with_capacity(scan.sockets.len());
        for s in &scan.sockets {
            present.insert(s.cookie);
            match s.state {
                tcp_state::LISTEN => {
                    self.listeners.insert((s.netns, s.local.port()));
                    self.note_local_ip(s.local.ip());
                    continue;
                }
                tcp_state::TIME_WAIT | tcp_state::NEW_SYN_RECV | tcp_state::CLOSE => continue,
                _ => {}
            }
            if self.closed.contains_key(&s.cookie) {
                continue;
            }
            let key = key_of_seen(s);
            self.note_local_ip(key.0);
            let born_here = self
                .conns
                .get(&s.cookie)
                .and_then(|o| o.kernel.as_ref())
                .is_some_and(|k| k.flags & conn_flag::PRE_EXISTING == 0);
            let pre_existing = scan.purpose == Purpose::Seed && !born_here;
            if let Some(open) = self.upsert(s.cookie, s.netns, key, pre_existing) {
                // Holders are listed at start only: later listings keep them.
                let holders = match open.seen.take() {
                    Some(old) if s.holders.is_empty() => old.holders,
                    _ => s.holders.clone(),
                };
                open.seen = Some(SeenSocket {
                    holders,
                    ..s.clone()
                });
                listed.push(s.cookie);
            }
        }
        // Sockets known only from earlier listings and missing from this one are gone.
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(cookie, open)| open.kernel.is_none() && !present.contains(cookie))
            .map(|(&cookie, _)| cookie)
            .collect();
        for cookie in gone {
            self.remove(cookie);
        }
        listed
    }

    fn upsert(&mut self, cookie: u64, netns: u32, key: TupleKey, pre: bool) -> Option<&mut Open> {
        if !self.conns.contains_key(&cookie) {
            if self.conns.len() >= self.cap {
                self.dropped += 1;
                return None;
            }
            self.by_tuple.entry(key).or_default().push(cookie);
        }
        let open = self.conns.entry(cookie).or_insert_with(|| {
            Box::new(Open {
                kernel: None,
                seen: None,
                pre_existing: pre,
                peer: None,
                netns,
                key,
            })
        });
        open.pre_existing |= pre;
        Some(open)
    }

    fn remove(&mut self, cookie: u64) -> Option<Open> {
        let open = *self.conns.remove(&cookie)?;
        if let Some(list) = self.by_tuple.get_mut(&open.key) {
            list.retain(|&c| c != cookie);
            if list.is_empty() {
                self.by_tuple.remove(&open.key);
            }
        }
        Some(open)
    }

    /// A socket closed at `ts_ns`: it leaves the table; what the table knew is returned.
    pub fn closed(&mut self, cookie: u64, ts_ns: u64) -> Option<Open> {
        self.closed.insert(cookie, ts_ns);
        self.closed_order.push_back((ts_ns, cookie));
        while let Some(&(ts, c)) = self.closed_order.front() {
            if ts.saturating_add(CLOSED_MEMORY_NS) > ts_ns {
                break;
            }
            self.closed_order.pop_front();
            if self.closed.get(&c) == Some(&ts) {
                self.closed.remove(&c);
            }
        }
        self.remove(cookie)
    }

    /// The open socket at the other end of `key`: in the same network namespace (loopback),
    /// else the only one on the host with that tuple.
    pub fn peer_of(&mut self, key: &TupleKey, netns: u32, me: u64) -> Option<(u64, &mut Open)> {
        let candidates: Vec<u64> = self
            .by_tuple
            .get(&reversed(key))?
            .iter()
            .copied()
            .filter(|&c| c != me)
            .collect();
        let cookie = match candidates.as_slice() {
            [one] => *one,
            many => *many
                .iter()
                .find(|c| self.conns.get(c).is_some_and(|o| o.netns == netns))?,
        };
        self.conns
            .get_mut(&cookie)
            .map(|open| (cookie, &mut **open))
    }

    /// A listener closed: sockets first seen on its port later are not its children.
    pub fn unlisten(&mut self, netns: u32, port: u16) {
        self.listeners.remove(&(netns, port));
        self.listener_owners.remove(&(netns, port));
    }

    /// The process listening on (`netns`, `port`), as the latest kernel table named it.
    #[must_use]
    pub fn listener_owner(&self, netns: u32, port: u16) -> Option<&Owner> {
        self.listener_owners.get(&(netns, port))
    }
}
