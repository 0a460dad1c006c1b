//! The tracker: decoded kernel events in, connection records out. Pure: it takes time as an
//! argument (`now_ns`, `CLOCK_BOOTTIME`), so a recorded stream replays to the same records.
//!
//! A closed socket's record is held for [`GRACE_NS`] before it is emitted, because a few facts
//! arrive just after the kernel's CLOSE: the RST of `tcp_disconnect()` (`SO_LINGER` 0, close with
//! unread data) is sent after the state change.

pub mod lifecycle;
pub mod record;
pub mod zeek;

use std::collections::{HashMap, VecDeque};

use observer_common::{
    ConnClosed, Endpoints, Reset, SynackRetransmit, Transition, conn_flag, reset_flag,
};

use self::{
    lifecycle::{LateResets, Lifecycle},
    record::{
        ConnRecord, End, LossRecord, Losses, Output, Process, Retransmits, Role, StateRecord, Uid,
        ends_of, ip_of,
    },
};
use crate::{
    decode::{Counters, Event},
    tls::{TlsRecord, TlsTable},
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
        self.netns.is_none_or(|ns| ns == netns)
            && self
                .port
                .is_none_or(|p| t.local_port == p || t.remote_port == p)
    }
}

struct Pending {
    closed: ConnClosed,
    late: LateResets,
    late_reason: Option<u32>,
}

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
    last_counters: Counters,
    decode_errors: u64,
    reported: Losses,
    /// Resets that no socket could be found for.
    pub unattributed_resets: u64,
    /// Records emitted.
    pub records: u64,
    /// TLS handshakes by socket cookie (`crate::tls`).
    pub tls: TlsTable,
}

impl Tracker {
    #[must_use]
    pub fn new(boot_id: [u8; 16], filter: Filter) -> Self {
        Self {
            boot_id,
            filter,
            pending: HashMap::new(),
            latest: HashMap::new(),
            order: VecDeque::new(),
            synacks: HashMap::new(),
            last_counters: Counters::default(),
            decode_errors: 0,
            reported: Losses::default(),
            unattributed_resets: 0,
            records: 0,
            tls: TlsTable::default(),
        }
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
            Event::Exec(_) | Event::Exit(_) => {}
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

    /// Emits the records whose grace period ended by `now_ns`.
    pub fn flush_due(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        while let Some(&(end, sk)) = self.order.front() {
            if end.saturating_add(GRACE_NS + SKEW_NS) > now_ns {
                break;
            }
            self.order.pop_front();
            self.emit(sk, end, out);
        }
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
        while let Some((end, sk)) = self.order.pop_front() {
            self.emit(sk, end, out);
        }
        let total = self.losses();
        out.push(Output::Loss(LossRecord {
            ts_ns: now_ns,
            delta: total.minus(&self.reported),
            total,
            events: self.last_counters.values[observer_common::counter::EVENTS as usize],
            summary: true,
        }));
        self.reported = total;
    }

    fn losses(&self) -> Losses {
        Losses::from_counters(&self.last_counters, self.decode_errors)
    }

    fn closed(&mut self, closed: &ConnClosed) {
        if closed.state.flags & conn_flag::ROLE_LISTENER != 0 {
            return;
        }
        let end = closed.header.ts_ns;
        let pending = Pending {
            closed: *closed,
            late: LateResets::default(),
            late_reason: None,
        };
        if self.pending.insert((closed.sk, end), pending).is_some() {
            // The same address closing twice in one nanosecond: keep the newer, as the kernel did.
            return;
        }
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
        if delta.any() {
            out.push(Output::Loss(LossRecord {
                ts_ns: c.ts_ns,
                delta,
                total,
                events: c.values[observer_common::counter::EVENTS as usize],
                summary: false,
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
            uid: self.uid(t.cookie, t.birth_ns),
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

    fn emit(&mut self, sk: u64, end: u64, out: &mut Vec<Output>) {
        let Some(p) = self.pending.remove(&(sk, end)) else {
            return;
        };
        if self.latest.get(&sk) == Some(&end) {
            self.latest.remove(&sk);
        }
        let st = &p.closed.state;
        let tls = self.tls.closed(st.key);
        if !self.filter.admits(st.netns, &st.tuple) {
            return;
        }
        let role = role_of(st.flags);
        let synack = if role == Role::Server {
            self.synacks
                .remove(&syn_key(&st.tuple))
                .map_or(0, |(n, _)| n)
        } else {
            0
        };
        self.records += 1;
        let mut record = self.record(&p, role, synack);
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
        record.uid = record.cookie_birth.map(|(c, b)| self.uid(c, b));
        out.push(Output::Tls(Box::new(record)));
    }

    fn record(&self, p: &Pending, role: Role, synack: u32) -> ConnRecord {
        let c = &p.closed;
        let st = &c.state;
        let close = &c.close;
        let (local, remote) = ends_of(&st.tuple);
        let lifecycle = Lifecycle::derive(st, close, p.late);
        let (sent, received) = payload_bytes(c, &lifecycle);
        let local_end = End {
            ip: local.0,
            port: local.1,
            bytes: sent,
            packets: close.segs_out,
        };
        let remote_end = End {
            ip: remote.0,
            port: remote.1,
            bytes: received,
            packets: close.segs_in,
        };
        let (source, destination) = if role == Role::Server {
            (remote_end, local_end)
        } else {
            (local_end, remote_end)
        };
        let pre_existing = st.flags & conn_flag::PRE_EXISTING != 0;
        let start_ns = if pre_existing {
            st.birth_ns
        } else {
            lifecycle.steps().first().map_or(st.birth_ns, |s| s.ts_ns)
        };
        let resets_sent = u32::from(st.resets_sent) + u32::from(p.late.sent);
        let facts = zeek::Facts {
            orig_bytes: source.bytes,
            resp_bytes: destination.bytes,
            local_retransmits: st.retrans_data,
            resets_sent,
            resets_received: u32::from(st.resets_received),
            sk_err: close.sk_err,
            ..zeek::Facts::from_lifecycle(role, pre_existing, &lifecycle)
        };
        let established_ns = lifecycle
            .steps()
            .iter()
            .find(|s| s.state == observer_common::tcp_state::ESTABLISHED)
            .map(|s| s.ts_ns);
        let handshake_rtt_us = match role {
            Role::Client => established_ns.map(|e| e.saturating_sub(start_ns) / 1_000),
            Role::Server => (st.handshake_rtt_us != 0).then_some(u64::from(st.handshake_rtt_us)),
            Role::Unknown => None,
        };
        ConnRecord {
            uid: self.uid(st.key, st.birth_ns),
            role,
            pre_existing: st.flags & conn_flag::PRE_EXISTING != 0,
            cookie: st.key,
            netns: st.netns,
            ipv6: ip_of(st.tuple.family, &st.tuple.local_addr).is_ipv6(),
            source,
            destination,
            start_ns,
            end_ns: c.header.ts_ns,
            lifecycle,
            retransmits: Retransmits {
                syn: st.retrans_syn,
                synack,
                data: st.retrans_data,
            },
            srtt_us: close.srtt_us_x8 >> 3,
            resets_sent,
            resets_received: u32::from(st.resets_received),
            rst_reason: p.late_reason.or_else(|| st.rst_reason.checked_sub(1)),
            sk_err: close.sk_err,
            process: (st.flags & conn_flag::OWNER_VALID != 0).then_some(Process {
                pid: st.owner.tgid,
                uid: st.owner.uid,
                comm: st.owner.comm,
            }),
            owner_source: owner_source(st.flags),
            conn_state: zeek::conn_state(&facts),
            history: zeek::history(&facts),
            close_initiator: zeek::close_initiator(&facts),
            close_reason: zeek::close_reason(&facts),
            handshake_rtt_us,
            tls: None,
            accept_wait_us: match (st.accept_ns, established_ns) {
                (0, _) | (_, None) => None,
                (accept, Some(est)) => Some(accept.saturating_sub(est) / 1_000),
            },
        }
    }

    /// A uid unique per socket lifetime, derived from (boot, socket cookie, birth time) so
    /// that replay reproduces it.
    fn uid(&self, sk: u64, birth_ns: u64) -> Uid {
        let boot_lo = u64::from_le_bytes(self.boot_id[..8].try_into().unwrap_or_default());
        let boot_hi = u64::from_le_bytes(self.boot_id[8..].try_into().unwrap_or_default());
        let a = mix(mix(boot_lo ^ sk) ^ birth_ns);
        let b = mix(mix(boot_hi ^ birth_ns.rotate_left(32)) ^ sk);
        let mut n = (u128::from(a) << 64) | u128::from(b);
        let mut out = [b'C'; 18];
        for byte in &mut out[1..] {
            *byte = ALPHABET[(n % 62) as usize];
            n /= 62;
        }
        Uid(out)
    }
}

/// Payload bytes sent (each byte once, however often it was retransmitted) and received.
/// The kernel's `bytes_received` counts sequence space (RFC 4898), so a received FIN adds one.
fn payload_bytes(c: &ConnClosed, lc: &Lifecycle) -> (u64, u64) {
    let sent = c.close.bytes_sent.saturating_sub(c.close.bytes_retrans);
    let received = c
        .close
        .bytes_received
        .saturating_sub(u64::from(lc.fin_received));
    (sent, received)
}

fn owner_source(flags: u16) -> Option<&'static str> {
    if flags & conn_flag::OWNER_VALID == 0 {
        None
    } else if flags & conn_flag::OWNER_CLOSE != 0 {
        Some("close")
    } else if flags & conn_flag::OWNER_ACCEPT != 0 {
        Some("accept")
    } else if flags & conn_flag::OWNER_LISTENER != 0 {
        Some("listen")
    } else {
        Some("connect")
    }
}

fn role_of(flags: u16) -> Role {
    if flags & conn_flag::ROLE_CLIENT != 0 {
        Role::Client
    } else if flags & conn_flag::ROLE_SERVER != 0 {
        Role::Server
    } else {
        Role::Unknown
    }
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `SplitMix64`'s finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
