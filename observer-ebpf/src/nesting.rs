//! Hook map: the second program on `inet_sock_set_state`, which takes over the transitions the
//! kernel skipped the first one for.
//!
//! - **Why:** the kernel skips a tracing program that is already running on the CPU and counts
//!   it in `recursion_misses`. A softirq that interrupts the first program and changes another
//!   socket's state would lose that transition (measured: hundreds per 3000 loopback sockets
//!   under load, more on 6.1).
//! - **How:** the first program pushes a mark for each transition it handled on this CPU's
//!   stack (`observer_common::nesting`, where the algorithm is unit-tested). The second,
//!   attached after it, runs for the same transition: it pops the mark, or, when there is
//!   none, the first was skipped and it handles the transition itself and counts it
//!   (`counter::TAKEN_OVER`). Userspace reports the first program's skips that were not taken
//!   over as lost.
//! - **Why a stack:** contexts nest, so a softirq that runs between the two programs of a
//!   task's transition, however many transitions it makes, leaves the task's mark on top when
//!   it ends.
//! - **Cost:** the first program: one per-CPU lookup and three stores. The second, in the
//!   common case: one lookup and two compares, the top mark being its own.
//! - **Limit:** a transition is lost only when both programs were skipped, which needs three
//!   levels of nesting on one CPU (TCP state changes run in task and softirq context only).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use observer_common::nesting::Marks;

#[map]
static HANDLED: PerCpuArray<Marks> = PerCpuArray::with_max_entries(1, 0);

/// The first program handled this transition (socket `sk`, states `old << 8 | new`).
#[inline(always)]
pub fn mark(sk: u64, states: u64) {
    if let Some(marks) = HANDLED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, used by this CPU's programs only.
        unsafe { Marks::mark(marks, sk, states) }
    }
}

/// Whether the first program handled this transition; pops its mark.
#[inline(always)]
pub fn handled(sk: u64, states: u64) -> bool {
    match HANDLED.get_ptr_mut(0) {
        // SAFETY: as in `mark`.
        Some(marks) => unsafe { Marks::handled(marks, sk, states) },
        None => false,
    }
}
