//! Hook map: the cleartext TLS hellos on the wire (version, cipher, SNI, ALPN, alerts).
//!
//! - **Hook:** `cgroup_skb` ingress and egress on the cgroup v2 root, which sees every TCP
//!   segment of every socket in every network namespace, with its socket cookie.
//! - **Why the wire, not library structs:** `ClientHello` and `ServerHello` are cleartext and
//!   standard, so their fields (SNI, offered ALPN, chosen version, cipher and group, session
//!   resumption, TLS 1.2's chosen ALPN) need no per-version offsets, and they come from any
//!   TLS stack (Go, rustls, Java) with no uprobe at all. The library uprobes (`tls.rs`) add what
//!   the wire cannot show after TLS 1.3 encrypts the rest: timing, outcome and error.
//! - **Bounded, never payload:** per socket and direction, only the first two segments that
//!   start with a handshake (22) or alert (21) record header (version 3.x) are copied, at most
//!   `TLS_CAPTURE_LEN` bytes each: the `ClientHello`, the server's first flight, an alert.
//!   Segments starting with anything else (TLS application data is 23, `ChangeCipherSpec` 20)
//!   are never copied. A plaintext protocol whose segment happens to start with such a header
//!   (say 0x16 0x03 0x01) gets at most two segments copied; userspace parses hellos and alerts
//!   out of them and discards the bytes, and prints only SNI and ALPN names from a well-formed
//!   hello.
//! - **Egress join:** an egress segment is sent in the writing thread's context, so a
//!   handshake flight written inside `SSL_do_handshake`/`gnutls_handshake` names the thread's
//!   in-flight session (`TLS_ACTIVE`), which gets this socket's cookie. The thread comes from
//!   the current task (`current_pid_tgid`), which every kernel from 6.1 offers this hook.
//! - **Cost:** every segment costs the program run and three header loads; a payload segment one
//!   more load of 3 bytes. Only the hellos and alerts of TLS sockets touch the LRU map and the
//!   ring buffer (a 1.1 KiB event each).
//! - **Fallback:** none needed on cgroup v2 hosts; without it, handshakes still get timing,
//!   outcome and socket, but no negotiated values.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_task, bpf_get_socket_cookie, bpf_skb_load_bytes},
    },
    macros::map,
    maps::LruHashMap,
    programs::SkBuffContext,
};
use observer_common::{TLS_CAPTURE_LEN, TlsHello, conn_flag, counter, kind, tls_dir};

use crate::{
    kernel::{self, Kmem as _, Probe},
    runtime::{EVENTS, count, header, layout, submit_flags},
    tls::{TLS_ACTIVE, TLS_SESSIONS},
};

/// Capture state of TLS sockets by cookie: one nibble per direction (egress low, ingress high):
/// bits 0–1 count the segments captured, bit 2 says one started with an alert. Sockets that
/// never carry a TLS handshake or alert record get no entry.
#[map]
pub static TLS_WIRE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65_536, 0);

const ALERT: u8 = 4;
/// Segments captured per direction.
const MAX_SEGMENTS: u8 = 2;
const TLS_ALERT: u8 = 21;
const TLS_HANDSHAKE: u8 = 22;
const IPPROTO_TCP: u8 = 6;

pub fn on_skb(ctx: &SkBuffContext, direction: u8) {
    let _ = try_on_skb(ctx, direction);
}

fn try_on_skb(ctx: &SkBuffContext, direction: u8) -> Option<()> {
    // cgroup_skb data starts at the network header.
    let first: u8 = ctx.load(0).ok()?;
    let (ip_len, proto) = match first >> 4 {
        4 => (u32::from(first & 0xf) * 4, ctx.load::<u8>(9).ok()?),
        // Extension headers before TCP are not followed: TLS over them is not captured.
        6 => (40, ctx.load::<u8>(6).ok()?),
        _ => return None,
    };
    if proto != IPPROTO_TCP {
        return None;
    }
    let doff: u8 = ctx.load(ip_len as usize + 12).ok()?;
    let off = ip_len + u32::from(doff >> 4) * 4;
    let len = ctx.len();
    if len <= off {
        return None;
    }
    let seg_len = len - off;
    // A TLS record header: content type, then version 3.0–3.4 (the record layer says 3.1 or
    // 3.3 in practice). Only segments starting with a handshake or alert record go further:
    // plaintext protocols and TLS application data cost these loads and no map access.
    let head: [u8; 3] = ctx.load(off as usize).ok()?;
    let content_type = head[0];
    if (content_type != TLS_HANDSHAKE && content_type != TLS_ALERT) || head[1] != 3 || head[2] > 4 {
        return None;
    }
    // SAFETY: the program's own skb context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let shift = u32::from(direction) * 4;
    let state = TLS_WIRE.get_ptr_mut(cookie);
    // SAFETY: a value pointer returned by the map.
    let all = state.map_or(0, |s| unsafe { *s });
    let mine = (all >> shift) & 0xf;
    let index = mine & 3;
    if index >= MAX_SEGMENTS {
        return None;
    }
    capture(ctx, direction, cookie, off, seg_len, index);
    let alert = if content_type == TLS_ALERT { ALERT } else { 0 };
    let next = (mine & ALERT) | alert | (index + 1);
    let all = (all & !(0xf << shift)) | (next << shift);
    match state {
        // SAFETY: as above.
        Some(s) => unsafe { *s = all },
        None => {
            let _ = TLS_WIRE.insert(cookie, all, 0);
        }
    }
    Some(())
}

fn capture(ctx: &SkBuffContext, direction: u8, cookie: u64, off: u32, seg_len: u32, index: u8) {
    let pid_tgid = current_pid_tgid();
    if direction == tls_dir::EGRESS {
        join(pid_tgid, cookie);
    }
    let Some(mut entry) = EVENTS.reserve::<TlsHello>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // 1..=TLS_CAPTURE_LEN, in a form the verifier can bound (TLS_CAPTURE_LEN is a power of two).
    let n = if seg_len > TLS_CAPTURE_LEN as u32 {
        TLS_CAPTURE_LEN as u32
    } else {
        seg_len
    };
    let n = ((n - 1) & (TLS_CAPTURE_LEN as u32 - 1)) + 1;
    // SAFETY: `event` points at reserved ring memory large enough for a TlsHello; every field
    // is written before submit, and the load is bounded by the buffer's size.
    unsafe {
        // SAFETY: no preconditions.
        let now = bpf_ktime_get_boot_ns();
        (*event).header = header(kind::TLS_HELLO, size_of::<TlsHello>(), now, pid_tgid);
        (*event).cookie = cookie;
        (*event).direction = direction;
        (*event).index = index;
        (*event).seg_len = seg_len;
        match kernel::find(cookie) {
            Some(st) => {
                (*event).birth_ns = (*st).birth_ns;
                (*event).tuple = (*st).tuple;
                (*event).netns = (*st).netns;
                (*event).flags = (*st).flags
                    & (conn_flag::TUPLE_VALID | conn_flag::ROLE_CLIENT | conn_flag::ROLE_SERVER);
            }
            None => {
                (*event).birth_ns = 0;
                (*event).tuple = observer_common::Endpoints::default();
                (*event).netns = 0;
                (*event).flags = 0;
            }
        }
        let data = (&raw mut (*event).data).cast::<core::ffi::c_void>();
        if bpf_skb_load_bytes(ctx.as_ptr(), off, data, n) < 0 {
            (*event).captured = 0;
        } else {
            (*event).captured = n;
        }
    }
    entry.submit(submit_flags());
}

/// The current thread as `bpf_get_current_pid_tgid` gives it (tgid in the high half). That
/// helper is offered to `cgroup_skb` programs only since 6.10: Debian's 6.1 refuses the program
/// with "unknown func bpf_get_current_pid_tgid#14". `bpf_get_current_task` and probe reads are
/// offered since 5.x to loaders with `CAP_PERFMON`, so every kernel takes this one path. The
/// ids are meaningless on ingress (softirq), as the helper's would be.
fn current_pid_tgid() -> u64 {
    // SAFETY: no preconditions; the task is only read through probe reads.
    let task = Probe(unsafe { bpf_get_current_task() });
    let pid = task.read::<u32>(layout!(task_pid)).unwrap_or(0);
    let tgid = task.read::<u32>(layout!(task_tgid)).unwrap_or(0);
    (u64::from(tgid) << 32) | u64::from(pid)
}

/// Gives the thread's in-flight TLS session (if any) this socket, once.
fn join(pid_tgid: u64, cookie: u64) {
    let tid = pid_tgid as u32;
    // SAFETY: a value pointer returned by the map.
    let Some(session) = TLS_ACTIVE.get_ptr(tid).map(|s| unsafe { *s }) else {
        return;
    };
    if let Some(st) = TLS_SESSIONS.get_ptr_mut([pid_tgid >> 32, session]) {
        // SAFETY: a value pointer returned by the map.
        unsafe {
            if (*st).cookie == 0 {
                (*st).cookie = cookie;
            }
        }
    }
}

/// Whether a segment of this socket, either way, started with a TLS alert: a handshake call
/// that then returns an error has failed (it raised no `WANT_READ`/`WANT_WRITE`).
pub fn alerted(cookie: u64) -> bool {
    // SAFETY: a value pointer returned by the map.
    TLS_WIRE
        .get_ptr(cookie)
        .is_some_and(|s| unsafe { *s } & (ALERT | ALERT << 4) != 0)
}
