//! Reads of kernel socket structures at offsets resolved from BTF at load time.
//!
//! Rust eBPF has no CO-RE relocations, so userspace looks every field up in
//! `/sys/kernel/btf/vmlinux` (`observer::kernel::layout`) and passes the byte offsets in the
//! `LAYOUT` global; here each field is one `bpf_probe_read_kernel` (~15 ns). Fields are read
//! once per socket (endpoints, netns) or once at CLOSE (counters), never per packet.
//!
//! `struct sock_common` starts `struct sock`, `inet_timewait_sock` and `request_sock` alike, so
//! the `skc_*` reads are valid on any of them; `inet_sport` and the `tcp_sock` counters are only
//! read on full TCP sockets.

use observer_common::{AF_INET6, CloseInfo, ConnState, Endpoints, conn_flag, counter};

use crate::runtime::{CONNS, count, layout, read};

pub const IPPROTO_TCP: u16 = 6;

pub fn protocol(sk: u64) -> Option<u16> {
    read::<u16>(sk, layout!(sk_protocol))
}

pub fn state(sk: u64) -> Option<u8> {
    read::<u8>(sk, layout!(skc_state))
}

/// Inode number of the socket's network namespace: `sk->__sk_common.skc_net.net->ns.inum`.
pub fn netns(sk: u64) -> u32 {
    read::<u64>(sk, layout!(skc_net))
        .and_then(|net| read::<u32>(net, layout!(net_ns_inum)))
        .unwrap_or(0)
}

/// Local and remote address and port. `inet_sport` rather than `skc_num`: the kernel zeroes
/// `inet_num` when it releases the port at CLOSE, before the tracepoint fires.
pub fn endpoints(sk: u64) -> Option<Endpoints> {
    let family = read::<u16>(sk, layout!(skc_family))?;
    let mut ends = Endpoints {
        family,
        local_port: u16::from_be(read::<u16>(sk, layout!(inet_sport))?),
        remote_port: u16::from_be(read::<u16>(sk, layout!(skc_dport))?),
        ..Endpoints::default()
    };
    if family == AF_INET6 {
        ends.local_addr = read::<[u8; 16]>(sk, layout!(skc_v6_rcv_saddr))?;
        ends.remote_addr = read::<[u8; 16]>(sk, layout!(skc_v6_daddr))?;
    } else {
        let local = read::<[u8; 4]>(sk, layout!(skc_rcv_saddr))?;
        let remote = read::<[u8; 4]>(sk, layout!(skc_daddr))?;
        ends.local_addr[..4].copy_from_slice(&local);
        ends.remote_addr[..4].copy_from_slice(&remote);
    }
    Some(ends)
}

/// Fills the endpoints and netns once, when they are known.
pub fn fill_identity(sk: u64, st: &mut ConnState) {
    if st.flags & conn_flag::TUPLE_VALID != 0 {
        return;
    }
    if let Some(ends) = endpoints(sk) {
        st.tuple = ends;
        st.flags |= conn_flag::TUPLE_VALID;
    }
}

/// Counters from `tcp_sock` and `sock`, read when the socket reaches CLOSE.
pub fn close_info(sk: u64) -> CloseInfo {
    let flags = read::<u64>(sk, layout!(sk_flags)).unwrap_or(0);
    let done_bit = layout!(sock_done_bit) & 63;
    CloseInfo {
        bytes_received: read::<u64>(sk, layout!(tcp_bytes_received)).unwrap_or(0),
        bytes_sent: read::<u64>(sk, layout!(tcp_bytes_sent)).unwrap_or(0),
        bytes_retrans: read::<u64>(sk, layout!(tcp_bytes_retrans)).unwrap_or(0),
        segs_in: read::<u32>(sk, layout!(tcp_segs_in)).unwrap_or(0),
        segs_out: read::<u32>(sk, layout!(tcp_segs_out)).unwrap_or(0),
        data_segs_in: read::<u32>(sk, layout!(tcp_data_segs_in)).unwrap_or(0),
        data_segs_out: read::<u32>(sk, layout!(tcp_data_segs_out)).unwrap_or(0),
        srtt_us_x8: read::<u32>(sk, layout!(tcp_srtt_us)).unwrap_or(0),
        total_retrans: read::<u32>(sk, layout!(tcp_total_retrans)).unwrap_or(0),
        sk_err: read::<i32>(sk, layout!(sk_err)).unwrap_or(0),
        peer_fin: ((flags >> done_bit) & 1) as u8,
        _pad: [0; 3],
    }
}

/// The socket's entry, creating one for a socket first met mid-life.
pub fn tracked(sk: u64, now: u64) -> Option<*mut ConnState> {
    CONNS.get_ptr_mut(sk).or_else(|| track_existing(sk, now))
}

/// Starts tracking a TCP socket first met mid-life (it predates the observer, or its birth
/// was missed): a hook other than a birth transition touched a socket not in `CONNS`.
/// Returns `None` for non-TCP sockets and when the map is full (counted).
pub fn track_existing(sk: u64, now: u64) -> Option<*mut ConnState> {
    if protocol(sk)? != IPPROTO_TCP {
        return None;
    }
    let mut st = ConnState::zeroed();
    st.birth_ns = now;
    st.first_state = state(sk)?;
    st.flags = conn_flag::PRE_EXISTING;
    st.netns = netns(sk);
    fill_identity(sk, &mut st);
    insert(sk, &st)
}

/// Inserts a fresh entry and returns a pointer to it in the map.
pub fn insert(sk: u64, st: &ConnState) -> Option<*mut ConnState> {
    if CONNS.insert(sk, st, 0).is_err() {
        count(counter::MAP_FULL);
        return None;
    }
    CONNS.get_ptr_mut(sk)
}
