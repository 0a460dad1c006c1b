//! Hook map: SYNs and handshake ACKs per listening socket, for `syn_flood` and `observer top`'s
//! Listeners view.
//!
//! - **Hook:** `cgroup_skb` ingress on the cgroup v2 root. A segment for a listener (a SYN, or
//!   the handshake's last ACK, whether to a queued request or a SYN cookie) passes the
//!   listener's filter (`tcp_filter` in `tcp_v4_rcv`), so it carries the listener's socket
//!   (`skb->sk`, in `LISTEN`) and cookie; segments of connected sockets carry their own socket.
//! - **Why here:** half-open requests never reach `inet_sock_set_state`; with
//!   `tcp_syncookies=2` no request socket exists at all; and on 6.18 sock_ops is never called
//!   for request sockets (measured: `RWND_INIT` and `TIMEOUT_INIT` run for full sockets only).
//!   This is the one place that sees every SYN a listener gets, with its source.
//! - **Cost:** every ingress segment on the host runs the program: a socket-state load and, for
//!   listeners only, two header loads and two per-CPU LRU map updates (SYN) or one (ACK). No
//!   event, no wakeup: userspace reads the maps once a second. Attached only while a rule or
//!   view needs it (`ProbeConfig::listeners`).
//! - **Fallback:** without it, `syn_flood` has the `sock_diag` half-open lists, the SYN-ACK
//!   retransmits and the namespace counters.

use aya_ebpf::{
    EbpfContext as _, bindings::bpf_sock, helpers::generated::bpf_get_socket_cookie, macros::map,
    maps::LruPerCpuHashMap, programs::SkBuffContext,
};
use observer_common::{ListenCounts, SynSourceKey, tcp_state};

/// Counts per listening socket, by its cookie.
#[map]
pub static LISTEN_COUNTS: LruPerCpuHashMap<u64, ListenCounts> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// SYNs per listener and source prefix: the senders of a flood. Bounded (LRU): a flood from
/// random sources evicts old prefixes, so these counts are a sample.
#[map]
pub static SYN_SOURCES: LruPerCpuHashMap<SynSourceKey, u64> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

const IPPROTO_TCP: u8 = 6;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

pub fn on_skb(ctx: &SkBuffContext) {
    let _ = try_on_skb(ctx);
}

fn try_on_skb(ctx: &SkBuffContext) -> Option<()> {
    // SAFETY: the program's own context; `sk` may be null, checked before use.
    let sk: *mut bpf_sock = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: non-null socket pointer from the context (the verifier checks the access).
    if unsafe { (*sk).state } != u32::from(tcp_state::LISTEN) {
        return None;
    }
    // cgroup_skb data starts at the network header.
    let first: u8 = ctx.load(0).ok()?;
    let mut source = SynSourceKey::default();
    let (ip_len, proto) = match first >> 4 {
        4 => {
            let saddr: [u8; 4] = ctx.load(12).ok()?;
            source.family = 4;
            source.prefix[..3].copy_from_slice(&saddr[..3]);
            (usize::from(first & 0xf) * 4, ctx.load::<u8>(9).ok()?)
        }
        6 => {
            source.prefix = ctx.load(8).ok()?;
            source.family = 6;
            (40, ctx.load::<u8>(6).ok()?)
        }
        _ => return None,
    };
    if proto != IPPROTO_TCP {
        return None;
    }
    let flags: u8 = ctx.load(ip_len + 13).ok()?;
    let syn = flags & (SYN | ACK | RST) == SYN;
    if !syn && flags & (SYN | ACK | RST) != ACK {
        return None;
    }
    // SAFETY: the program's own skb context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match LISTEN_COUNTS.get_ptr_mut(cookie) {
        // SAFETY: a per-CPU value: no other writer.
        Some(c) => unsafe {
            if syn {
                (*c).syns += 1;
            } else {
                (*c).acks += 1;
            }
        },
        None => {
            let fresh = ListenCounts {
                syns: u64::from(syn),
                acks: u64::from(!syn),
            };
            let _ = LISTEN_COUNTS.insert(cookie, fresh, 0);
        }
    }
    if syn {
        source.cookie = cookie;
        match SYN_SOURCES.get_ptr_mut(source) {
            // SAFETY: a per-CPU value: no other writer.
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = SYN_SOURCES.insert(source, 1, 0);
            }
        }
    }
    Some(())
}
