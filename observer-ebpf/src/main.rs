//! observer's eBPF programs. Entry points are thin: each hands its context to a module that
//! holds the logic and opens with its hook map (which hook, why, cost, fallback).
//!
//! Data flows one way: hooks update per-socket state in the `SLOTS` map and write events into
//! the `EVENTS` ring buffer; userspace drains the ring in batches.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Compare-and-swap for claiming slots: the BPF target exposes no stable atomic CAS.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic_cxchg on BPF")
)]

#[cfg(target_arch = "bpf")]
mod accept;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod listen;
#[cfg(target_arch = "bpf")]
mod nesting;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod runtime;
#[cfg(target_arch = "bpf")]
mod tcp_events;
#[cfg(target_arch = "bpf")]
mod tls;
#[cfg(target_arch = "bpf")]
mod tls_wire;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{btf_tracepoint, cgroup_skb, tracepoint, uprobe, uretprobe},
        programs::{
            BtfTracePointContext, ProbeContext, RetProbeContext, SkBuffContext, TracePointContext,
        },
    };
    use observer_common::tls_dir;

    #[btf_tracepoint(function = "inet_sock_set_state")]
    pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
        crate::lifecycle::on_set_state_first(&ctx);
        0
    }

    #[btf_tracepoint(function = "inet_sock_set_state")]
    pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> i32 {
        crate::lifecycle::on_set_state_nested(&ctx);
        0
    }

    #[tracepoint]
    pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
        crate::tcp_events::on_retransmit(&ctx);
        0
    }

    #[tracepoint]
    pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
        crate::tcp_events::on_synack_retransmit(&ctx);
        0
    }

    #[tracepoint]
    pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
        crate::tcp_events::on_send_reset(&ctx);
        0
    }

    #[tracepoint]
    pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
        crate::tcp_events::on_receive_reset(&ctx);
        0
    }

    #[tracepoint]
    pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
        crate::process::on_exec(&ctx);
        0
    }

    #[tracepoint]
    pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
        crate::process::on_exit();
        0
    }

    /// Entry of every TLS library function observed; the attach cookie says which (`tls_op`).
    #[uprobe]
    pub fn tls_call(ctx: ProbeContext) -> u32 {
        crate::tls::on_call(&ctx);
        0
    }

    /// Return of `SSL_do_handshake` and `gnutls_handshake`.
    #[uretprobe]
    pub fn tls_return(ctx: RetProbeContext) -> u32 {
        crate::tls::on_return(&ctx);
        0
    }

    /// Always lets the packet through (1).
    #[cgroup_skb(egress)]
    pub fn tls_wire_egress(ctx: SkBuffContext) -> i32 {
        crate::tls_wire::on_skb(&ctx, tls_dir::EGRESS);
        1
    }

    #[cgroup_skb(ingress)]
    pub fn tls_wire_ingress(ctx: SkBuffContext) -> i32 {
        crate::tls_wire::on_skb(&ctx, tls_dir::INGRESS);
        1
    }

    /// SYNs and handshake ACKs per listener (`syn_flood`); always lets the packet through.
    #[cgroup_skb(ingress)]
    pub fn listener_counts(ctx: SkBuffContext) -> i32 {
        crate::listen::on_skb(&ctx);
        1
    }

    /// Attached to both `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`.
    #[tracepoint]
    pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
        crate::accept::on_accept_exit(&ctx);
        0
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Any reachable panic fails verification; this loop is never reached at run time.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
