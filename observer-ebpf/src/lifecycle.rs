//! Hook map: socket state transitions.
//!
//! - **Hook:** `tp_btf/inet_sock_set_state` (args: sk, oldstate, newstate). It fires for every
//!   TCP state change, IPv4 and IPv6, on both ends, in whatever context changed the state.
//! - **Why tp_btf:** it is called directly with the tracepoint's arguments (no perf record is
//!   built, unlike the classic `sock:inet_sock_set_state`), and its `sk` is a BTF pointer:
//!   `bpf_skc_to_tcp_sock(sk)` both filters TCP and lets every field be a plain verified load
//!   (`kernel::Direct`), and `bpf_get_socket_cookie(sk)` gives the socket's `SO_COOKIE`.
//! - **Cost:** one hash lookup and two stores per transition; at a socket's birth also the
//!   owner (comm, pid, uid), endpoints and netns, and one insert; at CLOSE the `tcp_sock`
//!   counters, one 272-byte ring-buffer event and one delete. Nothing goes to userspace per
//!   transition unless `--transitions` asked for it. See BENCHMARKS.md for measured figures.
//! - **Owner:** CLOSE→SYN_SENT runs inside connect() and CLOSE→LISTEN inside listen(), so the
//!   current task owns those sockets. A server child is born in softirq context (often the
//!   client's task), so its owner comes from accept() instead (`accept.rs`).
//! - **Nesting:** the kernel skips a program that is already running on the CPU. A second
//!   program on the same tracepoint takes over exactly the transitions it skipped (`nesting`).
//! - **Fallback:** none needed on 5.8+ kernels with BTF; `observer check` reports a kernel
//!   without BTF as unsupported.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_socket_cookie},
    },
    programs::BtfTracePointContext,
};
use observer_common::{
    COMM_LEN, ConnClosed, ConnState, Endpoints, MAX_TRANSITIONS, Owner, Transition, conn_flag,
    counter, kind, listener_key, tcp_state,
};

use crate::{
    kernel::{self, Direct},
    nesting,
    runtime::{EVENTS, LISTENERS, NEWBORN, count, emit_transitions, header, submit_flags},
};

/// The first of the two programs on `inet_sock_set_state`: handles the transition, then marks
/// it handled (`nesting`).
pub fn on_set_state_first(ctx: &BtfTracePointContext) {
    on_set_state(ctx);
    let (sk, states) = transition(ctx);
    nesting::mark(sk, states);
}

/// The second program on `inet_sock_set_state`, attached after the first: handles the
/// transitions the kernel skipped the first one for (`nesting`).
pub fn on_set_state_nested(ctx: &BtfTracePointContext) {
    let (sk, states) = transition(ctx);
    if nesting::handled(sk, states) {
        return;
    }
    count(counter::TAKEN_OVER);
    on_set_state(ctx);
}

/// The tracepoint's socket address and `old << 8 | new`.
#[inline(always)]
fn transition(ctx: &BtfTracePointContext) -> (u64, u64) {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    (sk, (old & 0xff) << 8 | (new & 0xff))
}

fn on_set_state(ctx: &BtfTracePointContext) {
    let sk_ptr: *mut core::ffi::c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Only TCP: SCTP and MPTCP's master socket share this tracepoint.
    let Some(tp) = kernel::tcp_sock(sk_ptr) else {
        return;
    };
    let sk = sk_ptr as u64;
    // The cookie was generated at the socket's birth (below); reading it is a plain load.
    let cookie = match kernel::cookie(tp) {
        0 => {
            // SAFETY: sk_ptr is the tracepoint's BTF socket pointer, as the helper requires.
            unsafe { bpf_get_socket_cookie(sk_ptr) }
        }
        cookie => cookie,
    };
    // Kernel states fit in a byte (tcp_states.h).
    let (old, new) = (old as u8, new as u8);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        // A listener's child: its cookie is not final yet (below), so its birth waits.
        newborn(sk, now);
        return;
    }
    if is_birth(old, new) {
        begin(sk, cookie, tp, u16::from(old) << 8 | u16::from(new), now);
        return;
    }
    if old == tcp_state::SYN_RECV && kernel::find(cookie).is_none() {
        // The child's first change after its birth: born now, with the time it was cloned.
        begin(
            sk,
            cookie,
            tp,
            u16::from(tcp_state::LISTEN) << 8 | u16::from(tcp_state::SYN_RECV),
            born_at(sk, now),
        );
    }
    let Some(entry) = kernel::tracked(cookie, tp, now) else {
        return;
    };
    // SAFETY: a value pointer returned by the map; only this socket's hooks write it, under the
    // socket's lock or in its softirq.
    let st = unsafe { &mut *entry };
    push_transition(st, new, now);
    kernel::fill_identity(tp, st);
    if new == tcp_state::ESTABLISHED && old == tcp_state::SYN_RECV {
        st.handshake_rtt_us = kernel::srtt_us(tp);
    }
    if emit_transitions() {
        emit_transition(sk, tp, st, u16::from(old) << 8 | u16::from(new), now);
    }
    if closed_by_its_process(tp, st, old, new) {
        refresh_owner(&mut st.owner);
        st.flags = (st.flags & !conn_flag::OWNER_SOURCES)
            | conn_flag::OWNER_VALID
            | conn_flag::OWNER_CLOSE;
    }
    if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        listener(st, new);
    }
    if new == tcp_state::CLOSE {
        if st.flags & conn_flag::OWNER_VALID == 0 {
            // A server socket that died before its process touched it: the listening process
            // stands in. Looked up only here, the rare case.
            listener_owner(st);
        }
        emit_closed(sk, tp, st, now);
        kernel::release(cookie, entry);
    }
}

/// Transitions that only the socket's own process makes, in its context: close() or shutdown()
/// (to FIN_WAIT1 or LAST_ACK), and an abort by close() with SO_LINGER 0 or unread data (to
/// CLOSE with no error yet: `tcp_disconnect()` sets ECONNRESET after the change, while a RST
/// received, a timeout or `ss -K` set `sk_err` before it).
fn closed_by_its_process(tp: Direct, st: &ConnState, old: u8, new: u8) -> bool {
    match new {
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => true,
        tcp_state::CLOSE => {
            matches!(old, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT)
                && st.resets_received == 0
                && kernel::error(tp) == 0
        }
        _ => false,
    }
}

/// Keeps `LISTENERS` in step with listening sockets.
#[inline(never)]
fn listener(st: &ConnState, new: u8) {
    let key = listener_key(st.netns, st.tuple.local_port);
    if new == tcp_state::LISTEN {
        let _ = LISTENERS.insert(key, st.owner, 0);
    } else {
        let _ = LISTENERS.remove(key);
    }
}

/// Transitions that start a socket's life: connect() and listen(). A listener's child is born
/// at its first change after LISTEN→SYN_RECV (`newborn`).
fn is_birth(old: u8, _new: u8) -> bool {
    old == tcp_state::CLOSE
}

/// Remembers when a listener's child was cloned (LISTEN→SYN_RECV).
///
/// Its cookie cannot key it yet: up to 6.12 at least, `inet_csk_clone_lock()` fires this
/// transition *before* it copies the request's cookie into the child, so the child still holds
/// its listener's cookie (copied with the rest of the socket) or none, and is given another
/// afterwards. The next change of the child (to ESTABLISHED, in the same softirq on the same
/// CPU; to CLOSE if it dies first) is where it is born, keyed by its final cookie, with this
/// time as its SYN_RECV time. One per-CPU slot: no map insert, and the same on every kernel.
fn newborn(sk: u64, now: u64) {
    if let Some(slot) = NEWBORN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array. A hook interrupting these two stores can
        // only make `born_at` fall back to now for this child, or give its own child this
        // (earlier) time.
        unsafe { *slot = [sk, now] };
    }
}

/// When the child `sk` was cloned, if this CPU saw it (else now: a TCP Fast Open child, whose
/// SYN_RECV lasts an RTT, or one cloned before the observer attached).
fn born_at(sk: u64, now: u64) -> u64 {
    match NEWBORN.get_ptr(0) {
        // SAFETY: as in `newborn`.
        Some(slot) => match unsafe { *slot } {
            [child, at] if child == sk && at <= now => at,
            _ => now,
        },
        None => now,
    }
}

/// Starts tracking a socket just born, its state built in place, first transition included.
/// A birth is never a CLOSE. Not inlined, so that its stack frame and the one of
/// `kernel::tracked` are siblings within the 512-byte BPF stack.
#[inline(never)]
fn begin(sk: u64, cookie: u64, tp: Direct, old_new: u16, now: u64) {
    // Packed: BPF calls take at most five arguments.
    let (old, new) = ((old_new >> 8) as u8, old_new as u8);
    // No lookup first: every life ends at CLOSE, which releases the entry, so a socket born
    // again (connect() after a failed one, same cookie) has none.
    let entry = kernel::claim(cookie);
    let Some(entry) = entry else {
        return;
    };
    // SAFETY: a fresh entry returned by `claim`.
    let st = unsafe { &mut *entry };
    born(st, tp, old, new, now);
    if emit_transitions() {
        emit_transition(sk, tp, st, u16::from(old) << 8 | u16::from(new), now);
    }
}

/// Fills a zeroed state for a socket just born, its first transition included.
#[inline(always)]
fn born(st: &mut ConnState, tp: Direct, old: u8, new: u8, now: u64) {
    st.birth_ns = now;
    st.first_state = old;
    st.netns = kernel::netns(tp);
    st.flags |= match new {
        tcp_state::SYN_SENT => conn_flag::ROLE_CLIENT,
        tcp_state::LISTEN => conn_flag::ROLE_LISTENER,
        tcp_state::SYN_RECV => conn_flag::ROLE_SERVER,
        _ => 0,
    };
    if new == tcp_state::SYN_SENT || new == tcp_state::LISTEN {
        // Inside connect() or listen(): the current task owns the socket.
        set_current_owner(&mut st.owner);
        st.flags |= conn_flag::OWNER_VALID;
    }
    push_transition(st, new, now);
    // A client's port is not bound yet in SYN_SENT; its endpoints are read at the next change.
    if new != tcp_state::SYN_SENT {
        kernel::fill_identity(tp, st);
    }
    if new == tcp_state::LISTEN {
        listener(st, new);
    }
}

/// Gives a server socket its listener's process as owner.
#[inline(never)]
fn listener_owner(st: &mut ConnState) {
    if st.flags & conn_flag::ROLE_SERVER == 0 {
        return;
    }
    if let Some(owner) = LISTENERS.get_ptr(listener_key(st.netns, st.tuple.local_port)) {
        // SAFETY: a value pointer returned by the map.
        st.owner = unsafe { *owner };
        st.flags |= conn_flag::OWNER_VALID | conn_flag::OWNER_LISTENER;
    }
}

/// Records the current task as the owner unless it already is: the comm and uid lookups are
/// skipped in the common case of the same process.
fn refresh_owner(owner: &mut Owner) {
    if owner.tgid != (bpf_get_current_pid_tgid() >> 32) as u32 {
        set_current_owner(owner);
    }
}

/// Records the current task as the owner. The comm goes straight into place: aya's
/// `bpf_get_current_comm()` would zero a stack buffer byte by byte first.
pub fn set_current_owner(owner: &mut Owner) {
    owner.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The low half is the uid.
    owner.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: no preconditions.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the destination is COMM_LEN bytes of a map value.
    unsafe { bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
}

fn push_transition(st: &mut ConnState, new: u8, now: u64) {
    let n = usize::from(st.n_transitions);
    let slot = if n < MAX_TRANSITIONS {
        n
    } else {
        count(counter::TRANSITIONS_TRUNCATED);
        MAX_TRANSITIONS - 1
    } & (MAX_TRANSITIONS - 1);
    st.states[slot] = new;
    st.ts[slot] = now;
    st.n_transitions = st.n_transitions.saturating_add(1);
}

#[inline(never)]
fn emit_closed(sk: u64, tp: Direct, st: &ConnState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<ConnClosed>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a ConnClosed.
    unsafe {
        (*event).header = header(kind::CONN_CLOSED, size_of::<ConnClosed>(), now, 0);
        (*event).sk = sk;
        (*event).state = *st;
        (*event).close = kernel::close_info(tp);
    }
    entry.submit(submit_flags());
}

// Out of line, like the other rare paths, to keep the hot path small.
#[inline(never)]
fn emit_transition(sk: u64, tp: Direct, st: &ConnState, old_new: u16, now: u64) {
    let (old, new) = ((old_new >> 8) as u8, old_new as u8);
    let Some(mut entry) = EVENTS.reserve::<Transition>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a Transition.
    unsafe {
        (*event).header = header(
            kind::TRANSITION,
            size_of::<Transition>(),
            now,
            bpf_get_current_pid_tgid(),
        );
        (*event).sk = sk;
        (*event).cookie = st.key;
        (*event).birth_ns = st.birth_ns;
        (*event).tuple = Endpoints::default();
        let _ = kernel::endpoints(tp, &mut (*event).tuple);
        (*event).netns = st.netns;
        (*event).old_state = old;
        (*event).new_state = new;
        (*event).flags = st.flags;
    }
    entry.submit(submit_flags());
}
