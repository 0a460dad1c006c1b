//! Hook map: retransmits and resets.
//!
//! - **Hooks:** the classic tracepoints `tcp:tcp_retransmit_skb`, `tcp:tcp_retransmit_synack`,
//!   `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`. Their record layouts differ between
//!   kernels (6.10 replaced `tcp_send_reset`'s ports and addresses with sockaddr blobs and added
//!   `reason`), so userspace reads each format from tracefs at load time, checks it, and passes
//!   the field offsets in `LAYOUT`; a missing field is a load error that names it.
//! - **Why:** they are stable ABI on every kernel since 4.x-5.x and fire exactly once per event.
//! - **Cost:** rare events (loss and aborts); one hash lookup and an increment. Only events
//!   that cannot be charged to a tracked socket go to userspace: SYN-ACK retransmits (the child
//!   does not exist yet) and RSTs sent by a socket already closed (tcp_disconnect and close with
//!   unread data send their RST after CLOSE), by a time-wait socket, or with no socket.
//! - **Fallback:** none needed; the four exist on every supported kernel.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    programs::TracePointContext,
};
use observer_common::{
    ABSENT, AF_INET6, Endpoints, Reset, SynackRetransmit, counter, kind, reset_flag, reset_layout,
    tcp_state,
};

use crate::{
    kernel::{self, Kmem as _, Probe},
    runtime::{EVENTS, count, header, layout, submit_flags},
};

/// A field of the tracepoint record. The context pointer cannot be offset by a value the
/// verifier only learns at load time, so these are probe reads; these events are rare.
fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    Probe(ctx.as_ptr() as u64).read::<T>(offset)
}

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

pub fn on_retransmit(ctx: &TracePointContext) {
    let Some(sk) = field::<u64>(ctx, layout!(tp_retransmit_skaddr)) else {
        return;
    };
    let state = field::<i32>(ctx, layout!(tp_retransmit_state)).unwrap_or(0);
    let err_off = layout!(tp_retransmit_err);
    // Newer kernels also report attempts that failed locally (`err`); count retransmits
    // that left, as older kernels do.
    if err_off != ABSENT && field::<i32>(ctx, err_off).unwrap_or(0) != 0 {
        return;
    }
    let Some(entry) =
        kernel::cookie_of(Probe(sk)).and_then(|c| kernel::tracked(c, Probe(sk), now()))
    else {
        return;
    };
    // SAFETY: a value pointer returned by the map.
    let st = unsafe { &mut *entry };
    if state == i32::from(tcp_state::SYN_SENT) {
        st.retrans_syn += 1;
    } else {
        st.retrans_data += 1;
    }
}

pub fn on_receive_reset(ctx: &TracePointContext) {
    let Some(sk) = field::<u64>(ctx, layout!(tp_receive_reset_skaddr)) else {
        return;
    };
    let Some(entry) =
        kernel::cookie_of(Probe(sk)).and_then(|c| kernel::tracked(c, Probe(sk), now()))
    else {
        return;
    };
    // SAFETY: a value pointer returned by the map.
    let st = unsafe { &mut *entry };
    st.resets_received = st.resets_received.saturating_add(1);
}

pub fn on_send_reset(ctx: &TracePointContext) {
    let sk = field::<u64>(ctx, layout!(tp_send_reset_skaddr)).unwrap_or(0);
    let reason_off = layout!(tp_send_reset_reason);
    let reason = if reason_off == ABSENT {
        None
    } else {
        field::<u32>(ctx, reason_off)
    };
    if sk != 0
        && let Some(entry) = kernel::cookie_of(Probe(sk)).and_then(kernel::find)
    {
        // SAFETY: a value pointer returned by the map.
        let st = unsafe { &mut *entry };
        st.resets_sent = st.resets_sent.saturating_add(1);
        st.rst_reason = reason.map_or(0, |r| r + 1);
        return;
    }
    // Not tracked: a closed, time-wait or absent socket. Userspace attributes it.
    let Some(mut entry) = EVENTS.reserve::<Reset>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // Filled in place from a zeroed value: an `Option<Endpoints>` returned by value leaves its
    // payload undefined on the `None` path, and LLVM then copies registers that were never
    // written there, which the verifier rejects ("R9 !read_ok"). 6.18 never saw it: the
    // frozen layout made the field-layout branch dead code there; 6.1 takes that branch.
    let mut tuple = Endpoints::default();
    let tuple_valid = send_reset_endpoints(ctx, &mut tuple).is_some();
    let state = field::<i32>(ctx, layout!(tp_send_reset_state)).unwrap_or(0) as u8;
    let mut flags = reset_flag::SENT;
    if reason.is_some() {
        flags |= reset_flag::HAS_REASON;
    }
    if tuple_valid {
        flags |= reset_flag::TUPLE_VALID;
    }
    // SAFETY: `event` points at reserved ring memory large enough for a Reset.
    unsafe {
        (*event).header = header(
            kind::RESET,
            size_of::<Reset>(),
            now(),
            bpf_get_current_pid_tgid(),
        );
        (*event).sk = sk;
        (*event).tuple = tuple;
        (*event).reason = reason.unwrap_or(0);
        (*event).state = state;
        (*event).flags = flags;
        (*event)._pad = 0;
    }
    entry.submit(submit_flags());
}

/// The RST's local (saddr) and remote (daddr) ends, from whichever record layout this kernel
/// has, written into `ends`; `None` when a read failed (`ends` then holds what was read).
fn send_reset_endpoints(ctx: &TracePointContext, ends: &mut Endpoints) -> Option<()> {
    match layout!(tp_send_reset_layout) {
        reset_layout::SOCKADDR => {
            let local = field::<[u8; 28]>(ctx, layout!(tp_send_reset_saddr))?;
            let remote = field::<[u8; 28]>(ctx, layout!(tp_send_reset_daddr))?;
            from_sockaddrs(ends, &local, &remote);
            Some(())
        }
        reset_layout::FIELDS => {
            ends.family = field::<u16>(ctx, layout!(tp_send_reset_family))?;
            ends.local_port = field::<u16>(ctx, layout!(tp_send_reset_sport))?;
            ends.remote_port = field::<u16>(ctx, layout!(tp_send_reset_dport))?;
            fill_addrs(
                ctx,
                ends,
                [layout!(tp_send_reset_saddr4), layout!(tp_send_reset_daddr4)],
                [layout!(tp_send_reset_saddr6), layout!(tp_send_reset_daddr6)],
            )
        }
        _ => None,
    }
}

/// `struct sockaddr_in` / `sockaddr_in6` as the 6.10+ tracepoints store them: family (host
/// order), port (network order), then the IPv4 address at 4 or the IPv6 address at 8.
fn from_sockaddrs(ends: &mut Endpoints, local: &[u8; 28], remote: &[u8; 28]) {
    ends.family = u16::from_ne_bytes([local[0], local[1]]);
    ends.local_port = u16::from_be_bytes([local[2], local[3]]);
    ends.remote_port = u16::from_be_bytes([remote[2], remote[3]]);
    if ends.family == AF_INET6 {
        ends.local_addr.copy_from_slice(&local[8..24]);
        ends.remote_addr.copy_from_slice(&remote[8..24]);
    } else {
        ends.local_addr[..4].copy_from_slice(&local[4..8]);
        ends.remote_addr[..4].copy_from_slice(&remote[4..8]);
    }
}

fn fill_addrs(
    ctx: &TracePointContext,
    ends: &mut Endpoints,
    v4: [u32; 2],
    v6: [u32; 2],
) -> Option<()> {
    if ends.family == AF_INET6 {
        ends.local_addr = field::<[u8; 16]>(ctx, v6[0])?;
        ends.remote_addr = field::<[u8; 16]>(ctx, v6[1])?;
    } else {
        let local = field::<[u8; 4]>(ctx, v4[0])?;
        let remote = field::<[u8; 4]>(ctx, v4[1])?;
        ends.local_addr[..4].copy_from_slice(&local);
        ends.remote_addr[..4].copy_from_slice(&remote);
    }
    Some(())
}

pub fn on_synack_retransmit(ctx: &TracePointContext) {
    let Some(listener_sk) = field::<u64>(ctx, layout!(tp_synack_skaddr)) else {
        return;
    };
    let Some(family) = field::<u16>(ctx, layout!(tp_synack_family)) else {
        return;
    };
    let mut tuple = Endpoints {
        family,
        local_port: field::<u16>(ctx, layout!(tp_synack_sport)).unwrap_or(0),
        remote_port: field::<u16>(ctx, layout!(tp_synack_dport)).unwrap_or(0),
        ..Endpoints::default()
    };
    if fill_addrs(
        ctx,
        &mut tuple,
        [layout!(tp_synack_saddr), layout!(tp_synack_daddr)],
        [layout!(tp_synack_saddr_v6), layout!(tp_synack_daddr_v6)],
    )
    .is_none()
    {
        return;
    }
    let req = field::<u64>(ctx, layout!(tp_synack_req)).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<SynackRetransmit>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a SynackRetransmit.
    unsafe {
        (*event).header = header(
            kind::SYNACK_RETRANSMIT,
            size_of::<SynackRetransmit>(),
            now(),
            bpf_get_current_pid_tgid(),
        );
        (*event).listener_sk = listener_sk;
        (*event).req = req;
        (*event).tuple = tuple;
    }
    entry.submit(submit_flags());
}
