//! Reads of kernel structures at offsets resolved from BTF at load time.
//!
//! Rust eBPF has no CO-RE relocations, so userspace looks every field up in
//! `/sys/kernel/btf/vmlinux` (`observer::kernel::layout`) and passes the byte offsets in the
//! `LAYOUT` global. That global lives in `.rodata`, which the loader freezes, so the verifier
//! knows each offset as a constant. Two ways to read follow from it:
//!
//! - [`Direct`]: from a BTF pointer (a tp_btf argument, `bpf_skc_to_tcp_sock`,
//!   `bpf_get_current_task_btf`), a plain load the verifier checks against kernel BTF. About a
//!   nanosecond: this is the hot path of every transition.
//! - [`Probe`]: from a bare address (classic tracepoints), `bpf_probe_read_kernel`, tens of
//!   nanoseconds. Only rare events (retransmits, resets, accept) take it.
//!
//! The readers below are written once over [`Kmem`] and serve both.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock};
use observer_common::{AF_INET6, CloseInfo, ConnState, Endpoints, conn_flag, counter, slot_of};

use core::intrinsics::AtomicOrdering;

use crate::runtime::{CONNS, HASH_ENTRIES, SCRATCH, SCRATCH_DEPTH, SETTINGS, SLOTS, count, layout};

pub const IPPROTO_TCP: u16 = 6;

/// Kernel memory reachable from a base: a BTF pointer or a bare address.
pub trait Kmem: Copy {
    /// Reads a `T` (1, 2, 4 or 8 bytes) at `base + offset`.
    fn read<T: Copy>(self, offset: u32) -> Option<T>;
    /// Follows the pointer field at `offset`.
    fn deref(self, offset: u32) -> Option<Self>;
}

/// A BTF-typed kernel pointer: loads are checked by the verifier against kernel BTF.
#[derive(Clone, Copy)]
pub struct Direct(*const u8);

impl Direct {
    /// Wraps a BTF pointer returned by a helper; `None` when null.
    pub fn new(ptr: *const u8) -> Option<Self> {
        (!ptr.is_null()).then_some(Self(ptr))
    }
}

impl Kmem for Direct {
    #[inline(always)]
    fn read<T: Copy>(self, offset: u32) -> Option<T> {
        // SAFETY: the verifier checks the access against BTF (offsets are frozen constants),
        // and faults in such loads are caught by the kernel's exception table. Volatile keeps
        // the compiler from merging adjacent fields into one wider load, which BTF forbids.
        Some(unsafe { core::ptr::read_volatile(self.0.add(offset as usize).cast::<T>()) })
    }

    #[inline(always)]
    fn deref(self, offset: u32) -> Option<Self> {
        let ptr = self.read::<*const u8>(offset)?;
        (!ptr.is_null()).then_some(Self(ptr))
    }
}

/// A bare kernel address: every read is a `bpf_probe_read_kernel`.
#[derive(Clone, Copy)]
pub struct Probe(pub u64);

impl Kmem for Probe {
    #[inline(always)]
    fn read<T: Copy>(self, offset: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults as errors.
        match unsafe { bpf_probe_read_kernel((self.0 + u64::from(offset)) as *const T) } {
            Ok(value) => Some(value),
            Err(_) => {
                count(counter::READ_FAILED);
                None
            }
        }
    }

    #[inline(always)]
    fn deref(self, offset: u32) -> Option<Self> {
        let addr = self.read::<u64>(offset)?;
        (addr != 0).then_some(Self(addr))
    }
}

/// The `struct tcp_sock` behind a tp_btf socket argument, or `None` when it is not a full TCP
/// socket (SCTP, MPTCP's master socket and others share the tracepoint).
#[inline(always)]
pub fn tcp_sock(sk: *mut core::ffi::c_void) -> Option<Direct> {
    // SAFETY: `sk` is the tracepoint's BTF socket pointer, as the helper requires.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
    (!tp.is_null()).then_some(Direct(tp.cast()))
}

/// `SO_COOKIE` if the kernel generated it already, else 0.
pub fn cookie(sk: impl Kmem) -> u64 {
    sk.read::<u64>(layout!(skc_cookie)).unwrap_or(0)
}

/// The cookie of a socket met by address (classic tracepoints cannot call
/// `bpf_get_socket_cookie`): set by the kernel once anyone asked for it, as the lifecycle hook
/// does at every transition. `None` for a socket never asked, which is then not tracked.
pub fn cookie_of(sk: Probe) -> Option<u64> {
    Some(cookie(sk)).filter(|&c| c != 0)
}

/// A bare socket address that is a TCP socket: checks `sk_protocol`.
pub fn tcp_probe(sk: u64) -> Option<Probe> {
    let sk = Probe(sk);
    (sk.read::<u16>(layout!(sk_protocol))? == IPPROTO_TCP).then_some(sk)
}

pub fn state(sk: impl Kmem) -> Option<u8> {
    sk.read::<u8>(layout!(skc_state))
}

/// Inode number of the socket's network namespace: `sk->__sk_common.skc_net.net->ns.inum`.
pub fn netns(sk: impl Kmem) -> u32 {
    sk.deref(layout!(skc_net))
        .and_then(|net| net.read::<u32>(layout!(net_ns_inum)))
        .unwrap_or(0)
}

/// Local and remote address and port, written in place. `inet_sport` rather than `skc_num`:
/// the kernel zeroes `inet_num` when it releases the port at CLOSE, before the tracepoint fires.
pub fn endpoints(sk: impl Kmem, ends: &mut Endpoints) -> Option<()> {
    let family = sk.read::<u16>(layout!(skc_family))?;
    ends.family = family;
    ends.local_port = u16::from_be(sk.read::<u16>(layout!(inet_sport))?);
    ends.remote_port = u16::from_be(sk.read::<u16>(layout!(skc_dport))?);
    if family == AF_INET6 {
        v6(sk, layout!(skc_v6_rcv_saddr), &mut ends.local_addr)?;
        v6(sk, layout!(skc_v6_daddr), &mut ends.remote_addr)?;
    } else {
        ends.local_addr[..4].copy_from_slice(&sk.read::<[u8; 4]>(layout!(skc_rcv_saddr))?);
        ends.remote_addr[..4].copy_from_slice(&sk.read::<[u8; 4]>(layout!(skc_daddr))?);
    }
    Some(())
}

/// An IPv6 address, as two 8-byte loads.
fn v6(sk: impl Kmem, offset: u32, out: &mut [u8; 16]) -> Option<()> {
    out[..8].copy_from_slice(&sk.read::<[u8; 8]>(offset)?);
    out[8..].copy_from_slice(&sk.read::<[u8; 8]>(offset + 8)?);
    Some(())
}

/// Fills the endpoints once, when they are known.
pub fn fill_identity(sk: impl Kmem, st: &mut ConnState) {
    if st.flags & conn_flag::TUPLE_VALID == 0 && endpoints(sk, &mut st.tuple).is_some() {
        st.flags |= conn_flag::TUPLE_VALID;
    }
}

/// The smoothed RTT in µs (`tcp_sock.srtt_us` holds it times 8).
pub fn srtt_us(tp: impl Kmem) -> u32 {
    tp.read::<u32>(layout!(tcp_srtt_us)).unwrap_or(0) >> 3
}

/// `sock.sk_err`: why the socket is dying, or 0.
pub fn error(sk: impl Kmem) -> i32 {
    sk.read::<i32>(layout!(sk_err)).unwrap_or(0)
}

/// Counters from `tcp_sock` and `sock`, read when the socket reaches CLOSE.
pub fn close_info(tp: impl Kmem) -> CloseInfo {
    let flags = tp.read::<u64>(layout!(sk_flags)).unwrap_or(0);
    let done_bit = layout!(sock_done_bit) & 63;
    CloseInfo {
        bytes_received: tp.read::<u64>(layout!(tcp_bytes_received)).unwrap_or(0),
        bytes_sent: tp.read::<u64>(layout!(tcp_bytes_sent)).unwrap_or(0),
        bytes_retrans: tp.read::<u64>(layout!(tcp_bytes_retrans)).unwrap_or(0),
        segs_in: tp.read::<u32>(layout!(tcp_segs_in)).unwrap_or(0),
        segs_out: tp.read::<u32>(layout!(tcp_segs_out)).unwrap_or(0),
        data_segs_in: tp.read::<u32>(layout!(tcp_data_segs_in)).unwrap_or(0),
        data_segs_out: tp.read::<u32>(layout!(tcp_data_segs_out)).unwrap_or(0),
        srtt_us_x8: tp.read::<u32>(layout!(tcp_srtt_us)).unwrap_or(0),
        total_retrans: tp.read::<u32>(layout!(tcp_total_retrans)).unwrap_or(0),
        sk_err: error(tp),
        peer_fin: ((flags >> done_bit) & 1) as u32,
    }
}

/// The entry of a socket being tracked: one of its two slots, else the fallback hash map.
#[inline(always)]
pub fn find(cookie: u64) -> Option<*mut ConnState> {
    let (first, mask) = first_slot(cookie);
    for k in 0..2 {
        let slot = SLOTS.get_ptr_mut((first + k) & mask)?;
        // SAFETY: a pointer to a slot of the array map.
        if unsafe { (*slot).key } == cookie {
            return Some(slot);
        }
    }
    // The fallback map is nearly always empty, and a lookup in it costs a cache miss on its
    // bucket array: ask it only when it holds something.
    if hash_entries() == 0 {
        return None;
    }
    CONNS.get_ptr_mut(cookie)
}

fn hash_entries() -> u64 {
    // SAFETY: a pointer to the one slot of an array map; a plain read of a counter.
    HASH_ENTRIES
        .get_ptr(0)
        .map_or(0, |n| unsafe { core::ptr::read_volatile(n) })
}

/// Adds `delta` (wrapping) to the number of entries in the fallback map.
fn hash_entries_add(delta: u64) {
    if let Some(n) = HASH_ENTRIES.get_ptr_mut(0) {
        // SAFETY: an 8-byte aligned counter in an array map; atomic, as CPUs share it.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, delta) };
    }
}

fn first_slot(cookie: u64) -> (u32, u32) {
    // SAFETY: plain reads of an initialised static.
    let (bits, mask) = unsafe {
        (
            core::ptr::read_volatile(&raw const SETTINGS.slot_bits),
            core::ptr::read_volatile(&raw const SETTINGS.slot_mask),
        )
    };
    (slot_of(cookie, bits) & mask, mask)
}

/// A new, zeroed entry for `cookie`: one of its two slots when either is free (claimed with a
/// compare-and-swap, so two CPUs never take the same one), else the fallback hash map
/// (`IN_HASH`). `None` when both are full (counted as `MAP_FULL`).
pub fn claim(cookie: u64) -> Option<*mut ConnState> {
    let (first, mask) = first_slot(cookie);
    for k in 0..2 {
        let slot = SLOTS.get_ptr_mut((first + k) & mask)?;
        // SAFETY: `key` is the first, 8-byte aligned field of a slot of the array map. The BPF
        // target has no stable compare-and-swap, hence the intrinsic (BPF_CMPXCHG, v3 ISA).
        let (_, claimed) = unsafe {
            core::intrinsics::atomic_cxchg::<
                u64,
                { AtomicOrdering::AcqRel },
                { AtomicOrdering::Relaxed },
            >(&raw mut (*slot).key, 0, cookie)
        };
        if claimed {
            zero_after_key(slot);
            return Some(slot);
        }
    }
    let depth = SCRATCH_DEPTH.get_ptr_mut(0)?;
    // SAFETY: this CPU's counter. A run that interrupts this one between the read and the
    // write finds the same level, and is done with it before this one resumes.
    let level = unsafe { *depth };
    unsafe { *depth = level + 1 };
    let inserted = insert_fallback(cookie, level.min(1));
    // SAFETY: as above.
    unsafe { *depth = level };
    inserted.then(|| CONNS.get_ptr_mut(cookie)).flatten()
}

/// Inserts a zeroed entry for `cookie` in the fallback map, built in this CPU's scratch entry
/// `level`: 192 bytes do not fit the 512-byte BPF stack next to everything else.
fn insert_fallback(cookie: u64, level: u32) -> bool {
    let Some(st) = SCRATCH.get_ptr_mut(level) else {
        return false;
    };
    zero_after_key(st);
    // SAFETY: this CPU's scratch entry of this nesting level, used by one run at a time.
    let st = unsafe { &mut *st };
    st.key = cookie;
    st.flags = conn_flag::IN_HASH;
    if CONNS.insert(cookie, &*st, 0).is_err() {
        count(counter::MAP_FULL);
        return false;
    }
    hash_entries_add(1);
    true
}

/// Frees the entry of a socket that closed.
pub fn release(cookie: u64, st: *mut ConnState) {
    // SAFETY: a pointer returned by `find` or `claim`.
    if unsafe { (*st).flags } & conn_flag::IN_HASH != 0 {
        if CONNS.remove(cookie).is_ok() {
            hash_entries_add(u64::MAX);
        }
    } else {
        // Last write of this socket's hooks: a plain store frees the slot (the kernel's BPF JITs
        // emit aligned 8-byte stores, which are atomic).
        // SAFETY: as in `claim`.
        unsafe { core::ptr::write_volatile(&raw mut (*st).key, 0) };
    }
}

/// Zeroes a claimed slot except its key, word by word: a plain assignment would become a
/// byte-at-a-time memset loop in BPF (~900 instructions).
fn zero_after_key(slot: *mut ConnState) {
    let words = slot.cast::<u64>();
    for i in 1..size_of::<ConnState>() / 8 {
        // SAFETY: within the slot; ConnState is 8-byte aligned and all integers.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The socket's entry; a TCP socket first met mid-life (it predates the observer, or its
/// birth was missed) starts being tracked. `None` when both the slots and the map are full
/// (counted). Not inlined: see `lifecycle::begin`.
#[inline(never)]
pub fn tracked(cookie: u64, sock: impl Kmem, now: u64) -> Option<*mut ConnState> {
    if let Some(entry) = find(cookie) {
        return Some(entry);
    }
    let first_state = state(sock)?;
    let entry = claim(cookie)?;
    // SAFETY: a fresh entry returned by `claim`.
    let st = unsafe { &mut *entry };
    st.birth_ns = now;
    st.first_state = first_state;
    st.flags |= conn_flag::PRE_EXISTING;
    st.netns = netns(sock);
    fill_identity(sock, st);
    Some(entry)
}
