//! The tracker: decoded kernel events in, connection records out. Pure: it takes time as an
//! argument (`now_ns`, `CLOCK_BOOTTIME`), so a recorded stream replays to the same records.
//!
//! A closed socket's record is held for [`GRACE_NS`] before it is emitted, because a few facts
//! arrive just after the kernel's CLOSE: the RST of `tcp_disconnect()` (`SO_LINGER` 0, close with
//! unread data) is sent after the state change.

mod build;

pub use build::uid_of;
pub mod lifecycle;
pub mod live;
pub mod procs;
pub mod record;
pub mod snapshot;
pub mod stuck;
pub mod zeek;

use std::collections::{HashMap, VecDeque};

use observer_common::{
    ConnClosed, ConnState, Endpoints, Owner, Reset, SynackRetransmit, Transition, conn_flag,
    reset_flag, tcp_state,
};

use self::{
    build::{owner, role_of},
    lifecycle::LateResets,
    live::{Live, Open, TupleKey, key_of_state, reversed},
    procs::Procs,
    record::{
        LossRecord, Losses, Output, Peer, Process, RecordKind, SinkLoss, StateRecord, ends_of,
    },
};
use crate::tls::{TlsRecord, TlsTable};
use crate::{
    decode::{Counters, Event},
    facts::{Fact, Purpose, SocketScan},
};

/// Late facts join a closed socket's record when they happened at most this long after its
/// CLOSE. The decision depends only on event timestamps, so live capture and replay agree.
pub const GRACE_NS: u64 = 250_000_000;
/// Extra wait before a record is emitted, for events stamped before `now` but not yet
/// committed to the ring, or reserved out of timestamp order on another CPU.
pub const SKEW_NS: u64 = 20_000_000;
/// How long an unclaimed SYN-ACK retransmit waits for its child socket (`SYN_RECV` gives up
/// after ~63 s with default settings).
const SYNACK_TTL_NS: u64 = 120_000_000_000;

/// Which records to emit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Either end's port.
    pub port: Option<u16>,
    /// Network namespace inode.
    pub netns: Option<u32>,
    /// Emit a record per state change.
    pub transitions: bool,
}

impl Filter {
    fn admits(&self, netns: u32, t: &Endpoints) -> bool {
        self.admits_ports(netns, t.local_port, t.remote_port)
    }

    fn admits_ports(&self, netns: u32, local: u16, remote: u16) -> bool {
        self.netns.is_none_or(|ns| ns == netns)
            && self.port.is_none_or(|p| local == p || remote == p)
    }
}

struct Pending {
    closed: ConnClosed,
    late: LateResets,
    late_reason: Option<u32>,
    /// What the live table knew of it when it closed.
    open: Option<Open>,
    /// The other end, when it is on this host and known.
    peer: Option<Peer>,
    key: TupleKey,
}

/// How long a record whose other end may be on this host waits, past its grace period, for a
/// kernel table that lists that end. Tables are read every second while records wait.
pub const PEER_WAIT_NS: u64 = 3_000_000_000;

/// Identity of a half-open connection, from the listener's side: (local, remote).
type SynKey = ([u8; 16], u16, [u8; 16], u16);

fn syn_key(t: &Endpoints) -> SynKey {
    (t.local_addr, t.local_port, t.remote_addr, t.remote_port)
}

pub struct Tracker {
    boot_id: [u8; 16],
    filter: Filter,
    /// Closed sockets waiting out the grace period, by (socket address, close time): the
    /// kernel reuses a freed socket's address quickly, so two can wait at once.
    pending: HashMap<(u64, u64), Pending>,
    /// The latest close time per socket address, for late resets.
    latest: HashMap<u64, u64>,
    /// (close time, socket address), in arrival order.
    order: VecDeque<(u64, u64)>,
    synacks: HashMap<SynKey, (u32, u64)>,
    /// Closed sockets waiting, by their (local, remote) tuple: the other end of a local
    /// connection is often among them.
    pending_by_tuple: HashMap<TupleKey, Vec<(u64, u64)>>,
    /// Records whose other end may be on this host but is not known yet: (close time, address).
    held: VecDeque<(u64, u64)>,
    procs: Procs,
    live: Live,
    /// The observer's start (the seed listing's time): the lower bound of pre-existing starts.
    started_ns: Option<u64>,
    last_counters: Counters,
    decode_errors: u64,
    reported: Losses,
    /// Lines each output dropped: (name, since the start, in the last loss record).
    sink_drops: Vec<(&'static str, u64, u64)>,
    /// Resets that no socket could be found for.
    pub unattributed_resets: u64,
    /// Records emitted.
    pub records: u64,
    /// TLS handshakes by socket cookie (`crate::tls`).
    pub tls: TlsTable,
}

impl Tracker {
    #[must_use]
    pub fn new(boot_id: [u8; 16], filter: Filter, max_connections: usize) -> Self {
        Self {
            boot_id,
            filter,
            pending: HashMap::new(),
            latest: HashMap::new(),
            order: VecDeque::new(),
            synacks: HashMap::new(),
            pending_by_tuple: HashMap::new(),
            held: VecDeque::new(),
            procs: Procs::default(),
            live: Live::new(max_connections),
            started_ns: None,
            last_counters: Counters::default(),
            decode_errors: 0,
            reported: Losses::default(),
            sink_drops: Vec::new(),
            unattributed_resets: 0,
            records: 0,
            tls: TlsTable::default(),
        }
    }

    /// How many lines output `name` dropped since the start; reported with the next counters.
    pub fn sink_dropped(&mut self, name: &'static str, total: u64) {
        match self.sink_drops.iter_mut().find(|(n, ..)| *n == name) {
            Some(entry) => entry.1 = total,
            None => self.sink_drops.push((name, total, 0)),
        }
    }

    /// Every output that dropped lines, marked as reported.
    fn sink_losses(&mut self) -> Vec<SinkLoss> {
        let mut losses = Vec::new();
        for (name, total, reported) in &mut self.sink_drops {
            if *total == 0 {
                continue;
            }
            losses.push(SinkLoss {
                name,
                dropped: *total - *reported,
                total: *total,
            });
            *reported = *total;
        }
        losses
    }

    pub fn note_decode_error(&mut self) {
        self.decode_errors += 1;
    }

    /// Feeds one event; records that become due are appended to `out`.
    pub fn ingest(&mut self, event: &Event, out: &mut Vec<Output>) {
        match event {
            Event::Closed(closed) => self.closed(closed),
            Event::Transition(t) => self.transition(t, out),
            Event::Reset(r) => self.reset(r),
            Event::SynackRetransmit(s) => self.synack(s),
            Event::Counters(c) => self.counters(c, out),
            Event::Exec(e) => self.procs.exec(e),
            Event::Exit(e) => self
                .procs
                .exit((e.header.pid_tgid >> 32) as u32, e.header.ts_ns),
            Event::Tracked(t) => self.live.tracked(t),
            Event::Fact(f) => self.fact(f, out),
            Event::TlsHello(h) => self.tls.hello(h),
            Event::TlsHandshake(h) => {
                if let Some(record) = self.tls.handshake(h) {
                    self.push_tls(record, out);
                }
            }
            Event::TlsAlpn(a) => {
                if let Some(record) = self.tls.alpn(a) {
                    self.push_tls(record, out);
                }
            }
        }
    }

    fn fact(&mut self, f: &Fact, out: &mut Vec<Output>) {
        match f {
            Fact::Process(p) => self.procs.fact(p),
            Fact::Cgroup { id, path } => self.procs.cgroup(*id, path),
            Fact::Sockets(scan) => self.scan(scan, out),
            // For the detectors only.
            Fact::TimeWait(_) | Fact::Listeners(_) => {}
            Fact::TlsLibraries(names) => self.tls.libraries.clone_from(names),
        }
    }

    /// A `sock_diag` listing: seeds the table at start; at an update interval or shutdown, a
    /// record per open connection.
    fn scan(&mut self, scan: &SocketScan, out: &mut Vec<Output>) {
        if scan.purpose == Purpose::Seed {
            self.started_ns.get_or_insert(scan.ts_ns);
        }
        let listed = if self.filter.netns.is_some() || self.filter.port.is_some() {
            let admitted = SocketScan {
                sockets: scan
                    .sockets
                    .iter()
                    .filter(|s| {
                        self.filter
                            .admits_ports(s.netns, s.local.port(), s.remote.port())
                    })
                    .cloned()
                    .collect(),
                ..*scan
            };
            self.live.seen(&admitted)
        } else {
            self.live.seen(scan)
        };
        let kind = match scan.purpose {
            Purpose::Update => RecordKind::Update,
            Purpose::Final => RecordKind::Shutdown,
            Purpose::Seed | Purpose::Snapshot => return,
        };
        for cookie in listed {
            if let Some(record) = self.open_record_of(cookie, kind, scan.ts_ns) {
                self.records += 1;
                out.push(Output::Connection(record));
            }
        }
    }

    /// The record of an open connection, with its other end when that is open too.
    fn open_record_of(
        &mut self,
        cookie: u64,
        kind: RecordKind,
        ts_ns: u64,
    ) -> Option<record::ConnRecord> {
        let open = self.live.get(cookie)?;
        // Neither in the kernel table read just before this listing nor seeded at start: the
        // socket was born between the two reads (seen under QEMU, where the gap is long), and
        // a record now would lack its handshake. The next update, or its close, reports it.
        if open.kernel.is_none() && !open.pre_existing {
            return None;
        }
        let (netns, key) = (open.netns, open.key);
        if !self.filter.admits_ports(netns, key.1, key.3) {
            return None;
        }
        let mut record = self.open_record(cookie, open, kind, ts_ns)?;
        if record.peer.is_none() {
            let boot_id = self.boot_id;
            let listener = self.live.listener_owner(netns, key.3).copied();
            record.peer = self
                .live
                .peer_of(&key, netns, cookie)
                .map(|(c, other)| peer_from_open(uid_of(&boot_id, c), other, listener));
        }
        Some(record)
    }

    /// The boot whose socket cookies this tracker names (`conn.uid`).
    #[must_use]
    pub fn boot_id(&self) -> [u8; 16] {
        self.boot_id
    }

    /// Whether records wait for a kernel table newer than the latest: `app` reads one.
    #[must_use]
    pub fn wants_table(&self) -> bool {
        self.held
            .front()
            .is_some_and(|&(end, _)| self.live.tracked_ns < end.saturating_add(SKEW_NS))
    }

    /// Up to when every record has been handed out, as of `now_ns`: the earliest end among
    /// the records still held (for their grace period, their peer or their ALPN), else
    /// `now_ns` less what the ring may still hold (`SKEW_NS`). The detectors that count
    /// records decide that a window went quiet only up to this time.
    #[must_use]
    pub fn settled(&self, now_ns: u64) -> u64 {
        self.held
            .iter()
            .chain(&self.order)
            .map(|&(end, _)| end)
            .chain(self.tls.held_since())
            .fold(now_ns.saturating_sub(SKEW_NS), u64::min)
    }

    /// Emits the records whose grace period ended by `now_ns`.
    pub fn flush_due(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        while let Some(&(end, sk)) = self.held.front() {
            let waited_enough = end.saturating_add(GRACE_NS + PEER_WAIT_NS) <= now_ns;
            if !waited_enough && self.live.tracked_ns < end.saturating_add(SKEW_NS) {
                break;
            }
            self.held.pop_front();
            self.emit(sk, end, true, out);
        }
        while let Some(&(end, sk)) = self.order.front() {
            if end.saturating_add(GRACE_NS + SKEW_NS) > now_ns {
                break;
            }
            self.order.pop_front();
            self.emit(sk, end, false, out);
        }
        self.procs.expire(now_ns);
        self.tls.expire(now_ns);
        for record in self.tls.due(now_ns) {
            self.push_tls(record, out);
        }
        if self.synacks.len() > 1024 {
            self.synacks
                .retain(|_, &mut (_, last)| last.saturating_add(SYNACK_TTL_NS) > now_ns);
        }
    }

    /// Emits everything still held, then the loss summary. For shutdown and the end of a replay.
    pub fn finish(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        for record in self.tls.due(u64::MAX) {
            self.push_tls(record, out);
        }
        while let Some((end, sk)) = self.held.pop_front() {
            self.emit(sk, end, true, out);
        }
        while let Some((end, sk)) = self.order.pop_front() {
            self.emit(sk, end, true, out);
        }
        let total = self.losses();
        out.push(Output::Loss(LossRecord {
            ts_ns: now_ns,
            delta: total.minus(&self.reported),
            total,
            events: self.last_counters.values[observer_common::counter::EVENTS as usize],
            summary: true,
            sinks: self.sink_losses(),
        }));
        self.reported = total;
    }

    fn losses(&self) -> Losses {
        Losses::from_counters(&self.last_counters, self.decode_errors, self.live.dropped)
    }

    fn closed(&mut self, closed: &ConnClosed) {
        let st = &closed.state;
        if live::is_listener(st) {
            self.live.unlisten(st.netns, st.tuple.local_port);
            return;
        }
        let end = closed.header.ts_ns;
        let key = key_of_state(st);
        self.live.note_local_ip(key.0);
        let mut pending = Pending {
            closed: *closed,
            late: LateResets::default(),
            late_reason: None,
            peer: None,
            open: self.live.closed(st.key, end),
            key,
        };
        pending.peer = pending.open.as_ref().and_then(|o| o.peer);
        if self.pending.insert((closed.sk, end), pending).is_some() {
            // The same address closing twice in one nanosecond: keep the newer, as the kernel did.
            return;
        }
        self.pending_by_tuple
            .entry(key)
            .or_default()
            .push((closed.sk, end));
        self.latest.insert(closed.sk, end);
        self.order.push_back((end, closed.sk));
    }

    fn reset(&mut self, r: &Reset) {
        let end = self.latest.get(&r.sk).copied().unwrap_or(0);
        if r.flags & reset_flag::SENT != 0
            && r.sk != 0
            && let Some(p) = self
                .pending
                .get_mut(&(r.sk, end))
                .filter(|_| r.header.ts_ns >= end && r.header.ts_ns <= end.saturating_add(GRACE_NS))
        {
            p.late.sent = p.late.sent.saturating_add(1);
            if r.flags & reset_flag::HAS_REASON != 0 {
                p.late_reason = Some(r.reason);
            }
            return;
        }
        self.unattributed_resets += 1;
    }

    fn synack(&mut self, s: &SynackRetransmit) {
        let entry = self.synacks.entry(syn_key(&s.tuple)).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = s.header.ts_ns;
    }

    fn counters(&mut self, c: &Counters, out: &mut Vec<Output>) {
        self.last_counters = *c;
        let total = self.losses();
        let delta = total.minus(&self.reported);
        let sinks_grew = self
            .sink_drops
            .iter()
            .any(|&(_, total, reported)| total > reported);
        if delta.any() || sinks_grew {
            out.push(Output::Loss(LossRecord {
                ts_ns: c.ts_ns,
                delta,
                total,
                events: c.values[observer_common::counter::EVENTS as usize],
                summary: false,
                sinks: self.sink_losses(),
            }));
            self.reported = total;
        }
    }

    fn transition(&mut self, t: &Transition, out: &mut Vec<Output>) {
        if !self.filter.transitions
            || t.flags & conn_flag::ROLE_LISTENER != 0
            || !self.filter.admits(t.netns, &t.tuple)
        {
            return;
        }
        let (local, remote) = ends_of(&t.tuple);
        out.push(Output::State(StateRecord {
            uid: self.uid(t.cookie),
            ts_ns: t.header.ts_ns,
            old_state: t.old_state,
            new_state: t.new_state,
            role: role_of(t.flags),
            netns: t.netns,
            ipv6: local.0.is_ipv6(),
            local,
            remote,
        }));
    }

    /// Writes a closed socket's record. Its other end, when on this host, is looked up among
    /// the closed sockets waiting and in the live table; if it may be on this host but is in
    /// neither, the record waits for the next kernel table (unless `last_chance`).
    fn emit(&mut self, sk: u64, end: u64, last_chance: bool, out: &mut Vec<Output>) {
        let Some(p) = self.pending.get(&(sk, end)) else {
            return;
        };
        let (key, netns) = (p.key, p.closed.state.netns);
        let could_have_peer = p.peer.is_none()
            && ever_established(&p.closed.state)
            && self.filter.admits(netns, &p.closed.state.tuple);
        if could_have_peer
            && !self.join_pending(sk, end)
            && !self.join_live(sk, end)
            && !last_chance
            && self.live.is_local(key.2)
        {
            self.held.push_back((end, sk));
            return;
        }
        let Some(p) = self.pending.remove(&(sk, end)) else {
            return;
        };
        self.forget_pending(&p.key, sk, end);
        if self.latest.get(&sk) == Some(&end) {
            self.latest.remove(&sk);
        }
        let st = &p.closed.state;
        let tls = self.tls.closed(st.key);
        if !self.filter.admits(st.netns, &st.tuple) {
            return;
        }
        let synack = if role_of(st.flags) == record::Role::Server {
            self.synacks
                .remove(&syn_key(&st.tuple))
                .map_or(0, |(n, _)| n)
        } else {
            0
        };
        self.records += 1;
        let mut record =
            self.closed_record(&p.closed, p.late, p.late_reason, synack, p.open.as_ref());
        record.peer = p.peer;
        if let Some((facts, wire_only)) = tls {
            record.tls = Some(Box::new(facts));
            if let Some(tls) = wire_only {
                self.push_tls(tls, out);
            }
        }
        out.push(Output::Connection(record));
    }

    /// An `observer.tls` record, with its connection's uid when the socket is tracked.
    fn push_tls(&self, mut record: TlsRecord, out: &mut Vec<Output>) {
        if let Some(tuple) = &record.tuple
            && !self.filter.admits(record.netns, tuple)
        {
            return;
        }
        if record.tuple.is_none() && (self.filter.port.is_some() || self.filter.netns.is_some()) {
            return;
        }
        record.uid = record.cookie_birth.map(|(c, _)| self.uid(c));
        out.push(Output::Tls(Box::new(record)));
    }

    /// The other end among the closed sockets waiting: each learns the other.
    fn join_pending(&mut self, sk: u64, end: u64) -> bool {
        let Some(p) = self.pending.get(&(sk, end)) else {
            return false;
        };
        let me = self.peer_of_closed(p);
        let my_cookie = p.closed.state.key;
        let Some(&(osk, oend)) = self
            .pending_by_tuple
            .get(&reversed(&p.key))
            .and_then(|list| list.iter().find(|&&(s, _)| s != sk))
        else {
            return false;
        };
        let Some(other) = self.pending.get_mut(&(osk, oend)) else {
            return false;
        };
        if other.closed.state.key == my_cookie {
            return false;
        }
        other.peer = Some(me);
        let them = self
            .pending
            .get(&(osk, oend))
            .map(|o| self.peer_of_closed(o));
        if let Some(p) = self.pending.get_mut(&(sk, end)) {
            p.peer = them;
        }
        true
    }

    /// The other end in the live table (still open): each learns the other.
    fn join_live(&mut self, sk: u64, end: u64) -> bool {
        let Some(p) = self.pending.get(&(sk, end)) else {
            return false;
        };
        let me = self.peer_of_closed(p);
        let (key, netns, cookie) = (p.key, p.closed.state.netns, p.closed.state.key);
        // The other end's local port is this end's remote port.
        let listener = self.live.listener_owner(netns, key.3).copied();
        let Some((other_cookie, other)) = self.live.peer_of(&key, netns, cookie) else {
            return false;
        };
        other.peer = Some(me);
        let them = peer_from_open(uid_of(&self.boot_id, other_cookie), other, listener);
        if let Some(p) = self.pending.get_mut(&(sk, end)) {
            p.peer = Some(them);
        }
        true
    }

    fn peer_of_closed(&self, p: &Pending) -> Peer {
        let seen = p.open.as_ref().and_then(|o| o.seen.as_ref());
        Peer {
            uid: self.uid(p.closed.state.key),
            process: owner(&p.closed.state, seen).0,
        }
    }

    fn forget_pending(&mut self, key: &TupleKey, sk: u64, end: u64) {
        if let Some(list) = self.pending_by_tuple.get_mut(key) {
            list.retain(|&e| e != (sk, end));
            if list.is_empty() {
                self.pending_by_tuple.remove(key);
            }
        }
    }
}

/// Whether the socket had a connected peer socket (one that got past `SYN_RECV`).
fn ever_established(st: &ConnState) -> bool {
    use tcp_state::{CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK};
    let n = usize::from(st.n_transitions).min(st.states.len());
    matches!(
        st.first_state,
        ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
    ) || st.states[..n].contains(&ESTABLISHED)
}

/// An open socket as its peer's record names it. A server socket its own process has not
/// touched yet (a `CLOSE_WAIT` server whose client closed first) has no owner in the kernel:
/// its listener's process stands in, as it would in the socket's own record if it died now.
fn peer_from_open(uid: record::Uid, open: &Open, listener: Option<Owner>) -> Peer {
    let process = match &open.kernel {
        Some(st) => owner(st, open.seen.as_ref()).0.or_else(|| {
            let server = st.flags & conn_flag::ROLE_SERVER != 0;
            listener.filter(|_| server).map(|o| Process {
                pid: o.tgid,
                uid: o.uid,
                comm: o.comm,
            })
        }),
        None => open.seen.as_ref().and_then(|s| {
            let st = ConnState::zeroed();
            owner(&st, Some(s)).0
        }),
    };
    Peer { uid, process }
}

#[cfg(test)]
mod tests;
