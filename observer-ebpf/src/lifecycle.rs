//! Hook map: socket state transitions.
//!
//! - **Hook:** `tp_btf/inet_sock_set_state` (args: sk, oldstate, newstate). It fires for every
//!   TCP state change, IPv4 and IPv6, on both ends, in whatever context changed the state.
//! - **Why tp_btf:** it is called directly with the tracepoint's arguments (no perf record is
//!   built, unlike the classic `sock:inet_sock_set_state`), and its `sk` is a BTF pointer, so
//!   `bpf_get_socket_cookie(sk)` gives the socket's `SO_COOKIE`.
//! - **Cost:** one hash lookup and two stores per transition; at a socket's birth also the
//!   owner (comm, pid, uid), endpoints and netns; at CLOSE the `tcp_sock` counters and one
//!   264-byte ring-buffer event. Nothing goes to userspace per transition unless
//!   `--transitions` asked for it.
//! - **Owner:** CLOSE→SYN_SENT runs inside connect() and CLOSE→LISTEN inside listen(), so the
//!   current task owns those sockets. A server child is born in softirq context (often the
//!   client's task), so its owner comes from accept() instead (`accept.rs`).
//! - **Fallback:** none needed on 5.8+ kernels with BTF; `observer check` reports a kernel
//!   without BTF as unsupported.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, generated::bpf_get_socket_cookie,
    },
    programs::BtfTracePointContext,
};
use observer_common::{
    ConnClosed, ConnState, MAX_TRANSITIONS, Owner, Transition, conn_flag, counter, kind, tcp_state,
};

use crate::{
    kernel::{self, IPPROTO_TCP},
    runtime::{CONNS, EVENTS, count, emit_transitions, header, wakeup_flags},
};

pub fn on_set_state(ctx: &BtfTracePointContext) {
    let sk_ptr: *mut core::ffi::c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let sk = sk_ptr as u64;
    // Kernel states fit in a byte (tcp_states.h).
    let (old, new) = (old as u8, new as u8);
    let now = unsafe { bpf_ktime_get_boot_ns() };

    let entry = if is_birth(old, new) {
        begin(sk, old, new, now)
    } else {
        kernel::tracked(sk, now)
    };
    let Some(entry) = entry else { return };
    // SAFETY: a value pointer returned by the map; only this socket's hooks write it, under the
    // socket's lock or in its softirq.
    let st = unsafe { &mut *entry };
    push_transition(st, new, now);
    if new != tcp_state::SYN_SENT {
        kernel::fill_identity(sk, st);
    }
    if emit_transitions() {
        emit_transition(sk, st, old, new, now);
    }
    if new == tcp_state::CLOSE {
        // SAFETY: sk_ptr is the tracepoint's BTF socket pointer, as the helper requires.
        st.cookie = unsafe { bpf_get_socket_cookie(sk_ptr) };
        emit_closed(sk, st, now);
        let _ = CONNS.remove(sk);
    }
}

/// Transitions that start a socket's life: connect(), listen(), and a listener's child.
fn is_birth(old: u8, new: u8) -> bool {
    old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV)
}

fn begin(sk: u64, old: u8, new: u8, now: u64) -> Option<*mut ConnState> {
    if kernel::protocol(sk)? != IPPROTO_TCP {
        return None;
    }
    let mut st = ConnState::zeroed();
    st.birth_ns = now;
    st.first_state = old;
    st.netns = kernel::netns(sk);
    st.flags = match new {
        tcp_state::SYN_SENT => conn_flag::ROLE_CLIENT,
        tcp_state::LISTEN => conn_flag::ROLE_LISTENER,
        tcp_state::SYN_RECV => conn_flag::ROLE_SERVER,
        _ => 0,
    };
    if new == tcp_state::SYN_SENT || new == tcp_state::LISTEN {
        // Inside connect() or listen(): the current task owns the socket.
        st.owner = current_owner();
        st.flags |= conn_flag::OWNER_VALID;
    }
    kernel::insert(sk, &st)
}

pub fn current_owner() -> Owner {
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        // The low half is the uid.
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
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

fn emit_closed(sk: u64, st: &ConnState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<ConnClosed>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a ConnClosed.
    unsafe {
        (*event).header = header(kind::CONN_CLOSED, size_of::<ConnClosed>(), now);
        (*event).sk = sk;
        (*event).state = *st;
        (*event).close = kernel::close_info(sk);
    }
    count(counter::EVENTS);
    entry.submit(wakeup_flags());
}

fn emit_transition(sk: u64, st: &ConnState, old: u8, new: u8, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<Transition>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a Transition.
    unsafe {
        (*event).header = header(kind::TRANSITION, size_of::<Transition>(), now);
        (*event).sk = sk;
        (*event).birth_ns = st.birth_ns;
        (*event).tuple = kernel::endpoints(sk).unwrap_or_default();
        (*event).netns = st.netns;
        (*event).old_state = old;
        (*event).new_state = new;
        (*event).flags = st.flags;
    }
    count(counter::EVENTS);
    entry.submit(wakeup_flags());
}
