//! Bytes per open connection in observer's userspace table, measured with a counting
//! allocator: `cargo run --release -p observer --example table_memory [N]`.
//!
//! Fills the table the way a live run does — a kernel table read (`Tracked`) and a `sock_diag`
//! listing (`SocketScan`, one holder per socket) for N connections — drops the inputs, and
//! reports the heap the table keeps. BENCHMARKS.md quotes its output.
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "synthetic addresses from a counter, and byte counts shown as floats"
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
};

use observer::{
    decode::Event,
    facts::{Fact, Holder, Purpose, SeenCounters, SeenSocket, SocketScan, Tracked},
    track::{Filter, Tracker},
};
use observer_common::{AF_INET, ConnState, conn_flag, tcp_state};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn state(i: u32) -> ConnState {
    let mut st = ConnState::zeroed();
    st.key = u64::from(i) + 1;
    st.birth_ns = 1;
    st.flags = conn_flag::TUPLE_VALID | conn_flag::ROLE_CLIENT | conn_flag::OWNER_VALID;
    st.first_state = tcp_state::CLOSE;
    st.states[0] = tcp_state::SYN_SENT;
    st.states[1] = tcp_state::ESTABLISHED;
    st.n_transitions = 2;
    st.netns = 1;
    st.tuple.family = AF_INET;
    st.tuple.local_addr[..4].copy_from_slice(&[10, 0, (i >> 16) as u8, (i >> 8) as u8]);
    st.tuple.remote_addr[..4].copy_from_slice(&[10, 1, 0, i as u8]);
    st.tuple.local_port = 40_000 + (i % 20_000) as u16;
    st.tuple.remote_port = 443;
    st
}

fn seen(st: &ConnState) -> SeenSocket {
    let ip = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    SeenSocket {
        netns: st.netns,
        cookie: st.key,
        state: tcp_state::ESTABLISHED,
        local: SocketAddr::from((ip(&st.tuple.local_addr), st.tuple.local_port)),
        remote: SocketAddr::from((ip(&st.tuple.remote_addr), st.tuple.remote_port)),
        uid: 0,
        counters: Some(SeenCounters::default()),
        cgroup_id: Some(1),
        holders: vec![Holder {
            pid: 1234,
            comm: "nginx".into(),
        }],
    }
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(262_144);
    let mut tracker = Tracker::new([0; 16], Filter::default(), n as usize);
    let mut out = Vec::new();
    let before = LIVE.load(Ordering::Relaxed);
    {
        let states: Vec<ConnState> = (0..n).map(state).collect();
        let sockets: Vec<SeenSocket> = states.iter().map(seen).collect();
        tracker.ingest(&Event::Tracked(Tracked { ts_ns: 2, states }), &mut out);
        let kernel_only = LIVE.load(Ordering::Relaxed);
        let scan = SocketScan {
            ts_ns: 3,
            purpose: Purpose::Snapshot,
            sockets,
        };
        tracker.ingest(&Event::Fact(Box::new(Fact::Sockets(scan))), &mut out);
        println!(
            "kernel entries only: {:.0} bytes per connection",
            (kernel_only - before) as f64 / f64::from(n)
        );
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "{n} open connections: {} MiB, {:.0} bytes per connection (kernel entry + listing + indexes)",
        (after - before) >> 20,
        (after - before) as f64 / f64::from(n)
    );
    assert!(out.is_empty());
}
