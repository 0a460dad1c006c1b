//! Hook map: TLS handshakes as the libraries run them (timing, outcome, error, socket).
//!
//! - **Hooks:** uprobes, attached by userspace to every copy of the libraries it finds (by file,
//!   so every process mapping that file is covered, including ones started later). The attach
//!   cookie says which function fired (`tls_op`):
//!   - `SSL_do_handshake` (libssl.so.3) and `gnutls_handshake` (libgnutls.so.30), entry and
//!     return. `SSL_connect` and `SSL_accept` call `SSL_do_handshake`, so one pair covers all
//!     three. GnuTLS's return value says fatal or not; OpenSSL's -1 means either "try again"
//!     or failure, so a -1 counts as failure only when the socket carried a TLS alert
//!     (`tls_wire::alerted`), which every OpenSSL handshake failure sends or receives.
//!   - `SSL_free` and `gnutls_deinit`, entry: a handshake still pending is abandoned (a peer
//!     that reset or closed mid-handshake leaves the library waiting for data).
//!   - `SSL_get0_alpn_selected` and `gnutls_alpn_get_selected_protocol`, entry and return,
//!     once per session: the ALPN protocol the application learnt after the handshake (TLS 1.3
//!     encrypts the server's choice). Its out-parameters are read from user memory at return.
//!   - Not hooked, after measuring: `SSL_connect`/`SSL_accept` (the role comes from the
//!     hellos' direction) and `ERR_vset_error` (OpenSSL's reason for a failure, but it fires for
//!     the dozens of errors OpenSSL 3 raises and pops in every successful handshake). A uprobe
//!     hit costs ~14 µs on this machine (`bench/tls_handshakes.sh`).
//! - **Why uprobes on the API, not library structs:** the arguments and return values of these
//!   public functions are stable across versions; struct offsets are not, and Rust eBPF has no
//!   CO-RE. Negotiated values (version, cipher, SNI, ALPN) come from the cleartext hellos on the
//!   wire instead (`tls_wire.rs`), which works for every TLS stack.
//! - **Joining the socket:** a handshake call writes its flight (`ClientHello`, `ServerHello`,
//!   an alert) from the calling thread, so `cgroup_skb` egress, which runs in the sender's
//!   context, finds the thread's in-flight session in `TLS_ACTIVE` and stores its socket cookie
//!   there. No fd, BIO or struct is read: curl's custom BIOs and nginx's fds work the same.
//! - **Cost:** a uprobe hit is a trap, about a microsecond; a handshake makes a few calls (one
//!   per flight on a non-blocking socket). Nothing is attached to `SSL_read`/`SSL_write`, so the
//!   data path costs nothing. Application data is never read.
//! - **Fallback:** a statically linked or unusual library with none of these symbols gives no
//!   handshake event; its connections still get version, cipher, SNI and ALPN from the wire.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user,
        generated::{self, bpf_get_attach_cookie},
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use observer_common::{
    TLS_ALPN_LEN, TlsAlpn, TlsHandshake, TlsSession, counter, kind, tls_lib, tls_op, tls_outcome,
};

use crate::runtime::{EVENTS, count, header, submit_flags};

/// Sessions between their first handshake call and their report (or `SSL_free`), by
/// `[tgid, session pointer]`. LRU: a process that dies mid-handshake leaves no leak.
#[map]
pub static TLS_SESSIONS: LruHashMap<[u64; 2], TlsSession> = LruHashMap::with_max_entries(16_384, 0);

/// The session whose handshake call is running on each thread, by tid.
#[map]
pub static TLS_ACTIVE: HashMap<u32, u64> = HashMap::with_max_entries(16_384, 0);

/// Arguments of an ALPN query in flight, by tid: [session, out-pointer, out-pointer, op].
#[map]
pub static TLS_ALPN_ARGS: HashMap<u32, [u64; 4]> = HashMap::with_max_entries(16_384, 0);

/// GnuTLS's non-fatal returns: `GNUTLS_E_AGAIN`, `GNUTLS_E_INTERRUPTED`.
const GNUTLS_E_AGAIN: i32 = -28;
const GNUTLS_E_INTERRUPTED: i32 = -52;

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

pub fn on_call(ctx: &ProbeContext) {
    // SAFETY: the context of a perf-event-attached uprobe, as the helper requires.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let (op, lib_file) = (cookie & 0xff, (cookie >> 8) as u8);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = pid_tgid >> 32;
    let tid = pid_tgid as u32;
    let Some(session) = ctx.arg::<u64>(0) else {
        return;
    };
    let key = [tgid, session];
    if op == tls_op::ALPN_OPENSSL || op == tls_op::ALPN_GNUTLS {
        // Only sessions whose handshake was followed, and once each.
        // SAFETY: a value pointer returned by the map.
        if TLS_SESSIONS
            .get_ptr(key)
            .is_some_and(|st| unsafe { (*st).alpn_done } == 0)
            && let Some(out) = ctx.arg::<u64>(1)
        {
            let len_out = ctx.arg::<u64>(2).unwrap_or(0);
            let _ = TLS_ALPN_ARGS.insert(tid, [session, out, len_out, op], 0);
        }
        return;
    }
    if op == tls_op::FREE {
        if let Some(st) = TLS_SESSIONS.get_ptr(key) {
            // SAFETY: a value pointer returned by the map.
            let st = unsafe { *st };
            if st.done == 0 {
                report(&st, session, pid_tgid, 0, tls_outcome::ABANDONED);
            }
            let _ = TLS_SESSIONS.remove(key);
        }
        return;
    }
    let library = match op {
        tls_op::HANDSHAKE_OPENSSL => tls_lib::OPENSSL,
        tls_op::HANDSHAKE_GNUTLS => tls_lib::GNUTLS,
        _ => return,
    };
    if TLS_SESSIONS.get_ptr(key).is_none() {
        let st = TlsSession {
            start_ns: now(),
            library,
            lib_file,
            ..TlsSession::default()
        };
        if TLS_SESSIONS.insert(key, st, 0).is_err() {
            count(counter::TLS_MAP_FULL);
            return;
        }
    }
    let _ = TLS_ACTIVE.insert(tid, session, 0);
}

pub fn on_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the context of a perf-event-attached uretprobe, as the helper requires.
    let op = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } & 0xff;
    if op == tls_op::ALPN_OPENSSL || op == tls_op::ALPN_GNUTLS {
        let _ = on_alpn_return(ctx, pid_tgid);
        return;
    }
    // SAFETY: a value pointer returned by the map.
    let Some(session) = TLS_ACTIVE.get_ptr(tid).map(|s| unsafe { *s }) else {
        return;
    };
    let _ = TLS_ACTIVE.remove(tid);
    let key = [pid_tgid >> 32, session];
    let Some(st) = TLS_SESSIONS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a value pointer returned by the map; this thread owns the session's call.
    let st = unsafe { &mut *st };
    if st.done != 0 {
        return;
    }
    st.calls += 1;
    let ret = ctx.ret::<i64>() as i32;
    let outcome = if st.library == tls_lib::GNUTLS {
        match ret {
            0 => tls_outcome::ESTABLISHED,
            GNUTLS_E_AGAIN | GNUTLS_E_INTERRUPTED => return,
            _ => tls_outcome::FAILED,
        }
    } else {
        match ret {
            1 => tls_outcome::ESTABLISHED,
            // -1 is also WANT_READ/WANT_WRITE; a failure sent or received an alert.
            r if r < 0 && !crate::tls_wire::alerted(st.cookie) => return,
            _ => tls_outcome::FAILED,
        }
    };
    st.done = 1;
    let copy = *st;
    report(&copy, session, pid_tgid, ret, outcome);
}

fn report(st: &TlsSession, session: u64, pid_tgid: u64, ret: i32, outcome: u8) {
    let Some(mut entry) = EVENTS.reserve::<TlsHandshake>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a TlsHandshake; every
    // field is written before submit.
    unsafe {
        (*event).header = header(
            kind::TLS_HANDSHAKE,
            size_of::<TlsHandshake>(),
            now(),
            pid_tgid,
        );
        (*event).session = session;
        (*event).cookie = st.cookie;
        (*event).start_ns = st.start_ns;
        (*event).calls = st.calls;
        (*event).ret = ret;
        (*event).library = st.library;
        (*event).outcome = outcome;
        (*event)._pad = [0; 5];
        (*event).lib_file = st.lib_file;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
    }
    entry.submit(submit_flags());
}

/// The query returned: reads the protocol id it handed out and reports it once.
fn on_alpn_return(ctx: &RetProbeContext, pid_tgid: u64) -> Option<()> {
    let tid = pid_tgid as u32;
    // SAFETY: a value pointer returned by the map.
    let [session, out, len_out, op] = TLS_ALPN_ARGS.get_ptr(tid).map(|a| unsafe { *a })?;
    let _ = TLS_ALPN_ARGS.remove(tid);
    // SAFETY: reads of the caller's out-parameters in its own address space; a bad pointer
    // makes the helper fail, not fault.
    let (data, len) = unsafe {
        if op == tls_op::ALPN_OPENSSL {
            // (const unsigned char **data, unsigned int *len)
            (
                bpf_probe_read_user(out as *const u64).ok()?,
                bpf_probe_read_user(len_out as *const u32).ok()?,
            )
        } else {
            // gnutls_datum_t { unsigned char *data; unsigned int size; }, 0 on success.
            if ctx.ret::<i64>() as i32 != 0 {
                return None;
            }
            (
                bpf_probe_read_user(out as *const u64).ok()?,
                bpf_probe_read_user((out + 8) as *const u32).ok()?,
            )
        }
    };
    if data == 0 || len == 0 {
        return None;
    }
    let st = TLS_SESSIONS.get_ptr_mut([pid_tgid >> 32, session])?;
    // SAFETY: a value pointer returned by the map.
    unsafe {
        if (*st).alpn_done != 0 {
            return None;
        }
        (*st).alpn_done = 1;
    }
    let Some(mut entry) = EVENTS.reserve::<TlsAlpn>(0) else {
        count(counter::RING_FULL);
        return None;
    };
    let event = entry.as_mut_ptr();
    let n = if len > TLS_ALPN_LEN as u32 {
        TLS_ALPN_LEN as u32
    } else {
        len
    };
    // 1..=TLS_ALPN_LEN in a form the verifier can bound (a power of two).
    let n = ((n - 1) & (TLS_ALPN_LEN as u32 - 1)) + 1;
    // SAFETY: `event` points at reserved ring memory large enough for a TlsAlpn; every field is
    // written before submit, and the read is bounded by the buffer's size.
    unsafe {
        (*event).header = header(kind::TLS_ALPN, size_of::<TlsAlpn>(), now(), pid_tgid);
        (*event).session = session;
        (*event).len = len;
        (*event)._pad = 0;
        (*event).protocol = [0; TLS_ALPN_LEN];
        let dst = (&raw mut (*event).protocol).cast::<core::ffi::c_void>();
        if generated::bpf_probe_read_user(dst, n, data as *const core::ffi::c_void) < 0 {
            (*event).len = 0;
        }
    }
    entry.submit(submit_flags());
    Some(())
}
