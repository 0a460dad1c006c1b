//! Builds a connection record from what is known of one socket: its kernel state and counters
//! (at close, or so far), what the live table knew, and the owner's process details.

use observer_common::{
    AF_INET, AF_INET6, CloseInfo, ConnClosed, ConnState, Endpoints, conn_flag, tcp_state,
};

use super::{
    Tracker,
    lifecycle::{LateResets, Lifecycle},
    live::Open,
    record::{ConnRecord, End, Process, RecordKind, Retransmits, Role, Uid, ends_of, ip_of},
    zeek,
};
use crate::facts::{SeenCounters, SeenSocket};

/// One socket, as known when its record is written.
pub struct Parts<'a> {
    pub kind: RecordKind,
    pub st: &'a ConnState,
    pub close: &'a CloseInfo,
    pub late: LateResets,
    pub late_reason: Option<u32>,
    /// When the record's facts hold: the close, or the listing of an open socket.
    pub end_ns: u64,
    pub synack: u32,
    pub open: Option<&'a Open>,
}

impl Tracker {
    pub(super) fn build(&self, p: &Parts<'_>) -> ConnRecord {
        let st = p.st;
        let close = p.close;
        let (local, remote) = ends_of(&st.tuple);
        let pre_existing =
            st.flags & conn_flag::PRE_EXISTING != 0 || p.open.is_some_and(|o| o.pre_existing);
        let role = match role_of(st.flags) {
            Role::Unknown => self.guess_role(st),
            role => role,
        };
        let lifecycle = Lifecycle::derive(st, close, p.late);
        let midstream = p.open.is_some_and(|o| o.kernel.is_none());
        let (sent, received) = payload_bytes(close, &lifecycle);
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
        let start_ns = if pre_existing {
            // Unknown: the observer's start is a lower bound.
            self.started_ns.unwrap_or(st.birth_ns)
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
            open: p.kind != RecordKind::Closed,
            // Known only from a listing (the kernel table was full): picked up mid-stream.
            ..zeek::Facts::from_lifecycle(role, pre_existing || midstream, &lifecycle)
        };
        let established_ns = lifecycle
            .steps()
            .iter()
            .find(|s| s.state == tcp_state::ESTABLISHED)
            .map(|s| s.ts_ns);
        let handshake_rtt_us = match role {
            _ if pre_existing => None,
            Role::Client => established_ns.map(|e| e.saturating_sub(start_ns) / 1_000),
            Role::Server => (st.handshake_rtt_us != 0).then_some(u64::from(st.handshake_rtt_us)),
            Role::Unknown => None,
        };
        let (process, owner_source, cgroup_id) = owner(st, p.open.and_then(|o| o.seen.as_ref()));
        let entry = process.and_then(|pr| self.procs.get(pr.pid));
        ConnRecord {
            kind: p.kind,
            uid: self.uid(st.key),
            role,
            pre_existing,
            cookie: st.key,
            netns: st.netns,
            ipv6: ip_of(st.tuple.family, &st.tuple.local_addr).is_ipv6(),
            source,
            destination,
            start_ns,
            end_ns: p.end_ns,
            lifecycle,
            retransmits: Retransmits {
                syn: st.retrans_syn,
                synack: p.synack,
                data: st.retrans_data,
            },
            srtt_us: close.srtt_us_x8 >> 3,
            resets_sent,
            resets_received: u32::from(st.resets_received),
            rst_reason: p.late_reason.or_else(|| st.rst_reason.checked_sub(1)),
            sk_err: close.sk_err,
            process,
            executable: entry.and_then(|e| e.executable.clone()),
            cgroup: cgroup_id.and_then(|id| self.procs.cgroup_of(id)).cloned(),
            peer: p.open.and_then(|o| o.peer),
            owner_source,
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

    /// The role of a socket first seen mid-life: accepted if its port is listening, else the
    /// end with the ephemeral port (Linux's default range starts at 32768) connected.
    fn guess_role(&self, st: &ConnState) -> Role {
        let (local, remote) = (st.tuple.local_port, st.tuple.remote_port);
        if self.live.is_listening(st.netns, local) || (local < EPHEMERAL && remote >= EPHEMERAL) {
            Role::Server
        } else {
            Role::Client
        }
    }

    /// The record of a socket that closed.
    pub(super) fn closed_record(
        &self,
        c: &ConnClosed,
        late: LateResets,
        late_reason: Option<u32>,
        synack: u32,
        open: Option<&Open>,
    ) -> ConnRecord {
        self.build(&Parts {
            kind: RecordKind::Closed,
            st: &c.state,
            close: &c.close,
            late,
            late_reason,
            end_ns: c.header.ts_ns,
            synack,
            open,
        })
    }

    /// The record of a socket still open, as of the listing at `ts_ns`; `None` without counters.
    pub(super) fn open_record(
        &self,
        cookie: u64,
        open: &Open,
        kind: RecordKind,
        ts_ns: u64,
    ) -> Option<ConnRecord> {
        let seen = open.seen.as_ref()?;
        let counters = seen.counters?;
        let st = open
            .kernel
            .unwrap_or_else(|| state_of_seen(cookie, seen, open.pre_existing));
        Some(self.build(&Parts {
            kind,
            st: &st,
            close: &close_of_seen(&counters, seen.state),
            late: LateResets::default(),
            late_reason: None,
            end_ns: ts_ns,
            synack: 0,
            open: Some(open),
        }))
    }

    /// A uid unique per socket for the life of the kernel: the socket cookie is never reused
    /// within a boot, and the boot id separates boots. Replay reproduces it.
    pub(super) fn uid(&self, cookie: u64) -> Uid {
        uid_of(&self.boot_id, cookie)
    }
}

/// The `conn.uid` of the socket with `cookie` on the boot `boot_id`.
#[must_use]
pub fn uid_of(boot_id: &[u8; 16], cookie: u64) -> Uid {
    let boot_lo = u64::from_le_bytes(boot_id[..8].try_into().unwrap_or_default());
    let boot_hi = u64::from_le_bytes(boot_id[8..].try_into().unwrap_or_default());
    let a = mix(mix(boot_lo ^ cookie) ^ boot_hi);
    let b = mix(mix(boot_hi ^ cookie.rotate_left(32)) ^ boot_lo);
    let mut n = (u128::from(a) << 64) | u128::from(b);
    let mut out = [b'C'; 18];
    for byte in &mut out[1..] {
        *byte = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    Uid(out)
}

/// The owner: the kernel's when it knows one, else the process holding the socket (listed
/// from /proc); with its source and cgroup id.
pub(super) fn owner(
    st: &ConnState,
    seen: Option<&SeenSocket>,
) -> (Option<Process>, Option<&'static str>, Option<u64>) {
    if st.flags & conn_flag::OWNER_VALID != 0 {
        let cgroup = (st.owner.cgroup_id != 0).then_some(st.owner.cgroup_id);
        return (
            Some(Process {
                pid: st.owner.tgid,
                uid: st.owner.uid,
                comm: st.owner.comm,
            }),
            owner_source(st.flags),
            cgroup,
        );
    }
    let Some((seen, holder)) = seen.and_then(|s| Some((s, s.holders.first()?))) else {
        return (None, None, None);
    };
    let mut comm = [0u8; observer_common::COMM_LEN];
    let n = holder.comm.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&holder.comm.as_bytes()[..n]);
    (
        Some(Process {
            pid: holder.pid,
            uid: seen.uid,
            comm,
        }),
        Some("procfs"),
        seen.cgroup_id,
    )
}

/// A kernel-style entry for a socket known only from a listing.
fn state_of_seen(cookie: u64, s: &SeenSocket, pre_existing: bool) -> ConnState {
    let mut st = ConnState::zeroed();
    st.key = cookie;
    st.first_state = s.state;
    st.netns = s.netns;
    st.flags = conn_flag::TUPLE_VALID;
    if pre_existing {
        st.flags |= conn_flag::PRE_EXISTING;
    }
    st.tuple = endpoints(s);
    st
}

fn endpoints(s: &SeenSocket) -> Endpoints {
    let mut t = Endpoints {
        local_port: s.local.port(),
        remote_port: s.remote.port(),
        ..Endpoints::default()
    };
    match (s.local.ip(), s.remote.ip()) {
        (std::net::IpAddr::V4(l), std::net::IpAddr::V4(r)) => {
            t.family = AF_INET;
            t.local_addr[..4].copy_from_slice(&l.octets());
            t.remote_addr[..4].copy_from_slice(&r.octets());
        }
        (l, r) => {
            t.family = AF_INET6;
            t.local_addr = to_v6(l).octets();
            t.remote_addr = to_v6(r).octets();
        }
    }
    t
}

fn to_v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

/// The counters of a listing, read like the kernel's at close.
fn close_of_seen(c: &SeenCounters, state: u8) -> CloseInfo {
    CloseInfo {
        bytes_received: c.bytes_received,
        bytes_sent: c.bytes_sent,
        bytes_retrans: c.bytes_retrans,
        segs_in: c.segs_in,
        segs_out: c.segs_out,
        srtt_us_x8: c.rtt_us.saturating_mul(8),
        total_retrans: c.total_retrans,
        peer_fin: u32::from(matches!(
            state,
            tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
        )),
        ..CloseInfo::default()
    }
}

/// Payload bytes sent (each byte once, however often it was retransmitted) and received.
/// The kernel's `bytes_received` counts sequence space (RFC 4898), so a received FIN adds one.
fn payload_bytes(c: &CloseInfo, lc: &Lifecycle) -> (u64, u64) {
    let sent = c.bytes_sent.saturating_sub(c.bytes_retrans);
    let received = c.bytes_received.saturating_sub(u64::from(lc.fin_received));
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

pub(super) fn role_of(flags: u16) -> Role {
    if flags & conn_flag::ROLE_CLIENT != 0 {
        Role::Client
    } else if flags & conn_flag::ROLE_SERVER != 0 {
        Role::Server
    } else {
        Role::Unknown
    }
}

/// The start of Linux's default `net.ipv4.ip_local_port_range`.
const EPHEMERAL: u16 = 32_768;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `SplitMix64`'s finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
