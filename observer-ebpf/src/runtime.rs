//! Maps, load-time globals, loss counters and ring-buffer submission shared by every hook.
//!
//! - `SLOTS` (and, for the rare collision, `CONNS`) hold per-socket state keyed by the socket's
//!   kernel address, so transitions, retransmits and resets accumulate in the kernel and
//!   userspace gets one event per socket.
//! - `EVENTS` is the single ring buffer. Producers submit with `BPF_RB_NO_WAKEUP` until
//!   `Settings::wakeup_bytes` are waiting, so userspace is woken per batch, never per event;
//!   it also drains on a timer.
//! - `COUNTERS` is a per-CPU array: every event lost to a full ring or a full map is counted.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use observer_common::{ConnState, EventHeader, HOT_SLOTS, Layout, Owner, Settings, counter};

/// Per-socket state, two candidate slots per socket cookie (`slot_of`): lookups, inserts and
/// deletes are plain loads and stores, no helper call, and the array stays cache-hot
/// (`HOT_SLOTS`).
#[map]
pub static SLOTS: Array<ConnState> = Array::with_max_entries(HOT_SLOTS, 0);

/// Sockets whose two slots were both taken: the capacity beyond the hot slots
/// (`--max-connections`). Grows on demand, so not preallocated.
#[map]
pub static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// How many entries `CONNS` holds, so that lookups skip it while it is empty.
#[map]
pub static HASH_ENTRIES: Array<u64> = Array::with_max_entries(1, 0);

/// Default size; userspace sets the real one with `EbpfLoader::map_max_entries`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// The owner of each listening socket, by `listener_key(netns, port)`: a server socket's owner
/// until its own process is seen. Entries live as long as the listener.
#[map]
pub static LISTENERS: HashMap<u64, Owner> = HashMap::with_max_entries(4096, 0);

/// Per CPU, the last listener's child cloned: its address and when (`lifecycle::newborn`).
#[map]
pub static NEWBORN: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Two `ConnState`s per CPU to build fallback entries in (`kernel::claim`): a hook that
/// interrupts another on its CPU (a softirq's, or the second lifecycle program taking over)
/// builds in the second, chosen by `SCRATCH_DEPTH`.
#[map]
pub static SCRATCH: PerCpuArray<ConnState> = PerCpuArray::with_max_entries(2, 0);

/// Per CPU, how many runs are building in `SCRATCH` right now.
#[map]
pub static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Offsets resolved from BTF and tracefs at load time.
#[unsafe(no_mangle)]
pub static LAYOUT: Layout = Layout::zeroed();

#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings::zeroed();

/// Reads one field of the load-time `LAYOUT` global. Volatile, so the compiler cannot fold the
/// zero it was compiled with.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a plain read of a field of an initialised static.
        unsafe { core::ptr::read_volatile(&raw const $crate::runtime::LAYOUT.$field) }
    };
}
pub(crate) use layout;

pub fn emit_transitions() -> bool {
    // SAFETY: a plain read of an initialised static.
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.emit_transitions) != 0 }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for a ring-buffer submit: wake userspace only once a batch is waiting.
/// Counts the event about to be submitted and returns the submit flags: userspace is woken
/// only once a batch is waiting. The fill level is checked on every 16th event of a CPU (a
/// query reads the consumer position, which userspace writes from another CPU); the ring holds
/// four times the wake-up threshold, and userspace also drains on a timer.
pub fn submit_flags() -> u64 {
    let Some(events) = COUNTERS.get_ptr_mut(counter::EVENTS) else {
        return BPF_RB_NO_WAKEUP;
    };
    add_one(events);
    // SAFETY: as in `add_one`; a count from an interrupting hook only moves the next check.
    let n = unsafe { core::ptr::read_volatile(events) };
    if n % 16 != 0 {
        return BPF_RB_NO_WAKEUP;
    }
    // SAFETY: a plain read of an initialised static.
    let threshold = unsafe { core::ptr::read_volatile(&raw const SETTINGS.wakeup_bytes) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= u64::from(threshold) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        add_one(slot);
    }
}

/// Adds one to a counter of this CPU. Atomic, though no other CPU writes it: a hook
/// interrupted between a load and a store (by a softirq whose hook counts too) would otherwise
/// lose the other's count.
fn add_one(counter: *mut u64) {
    // SAFETY: an 8-byte aligned slot of a per-CPU array map; the result is unused, so this is
    // a plain atomic add (BPF_ATOMIC_ADD), which every BPF ISA version has.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The header every event starts with. `pid_tgid` is the current task's, which is only
/// meaningful for events raised in process context; the close event leaves it 0.
pub fn header(kind: u16, len: usize, now: u64, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind,
        // Event sizes are compile-time constants far below 64 KiB.
        len: len as u16,
        _pad: 0,
        ts_ns: now,
        pid_tgid,
    }
}
