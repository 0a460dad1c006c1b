//! Hook map: the second program on `inet_sock_set_state`, which takes over the transitions the
//! kernel skipped the first one for.
//!
//! - **Why:** the kernel skips a tracing program that is already running on the CPU and counts
//!   it in `recursion_misses`. A softirq that interrupts the first program and changes another
//!   socket's state would lose that transition (measured: hundreds per 3000 loopback sockets
//!   under load, more on 6.1).
//! - **How:** the first program marks each transition it handled in this CPU's ring of recent
//!   marks (socket address and states). The second, attached after it, runs for the same
//!   transition: it finds and clears the mark, or, when there is none, the first was skipped
//!   and it handles the transition itself and counts it (`counter::TAKEN_OVER`). Userspace
//!   reports the first program's skips that were not taken over as lost.
//! - **Why a ring, not one flag:** a softirq can run between the two programs of one
//!   transition, or interrupt the second before it looked, and mark transitions of its own;
//!   the interrupted transition's mark must still be found. Marks left by transitions whose
//!   second program was skipped (it was interrupting itself, harmlessly) are cleared when the
//!   interrupted run ends, so a later skipped transition cannot match them.
//! - **Cost:** the first program: one per-CPU lookup and three stores. The second, in the
//!   common case: one lookup and two compares, the newest mark being its own.
//! - **Limit:** a transition is lost only when both programs were skipped, which needs three
//!   levels of nesting on one CPU (TCP state changes run in task and softirq context only).

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// Marks kept per CPU: more than the transitions a softirq can make between the two programs
/// of one transition would evict its mark, and the second would then handle it again.
const MARKS: usize = 16;

#[repr(C)]
pub struct Marks {
    /// Marks written so far; the newest is at `(next - 1) % MARKS`.
    next: u64,
    sk: [u64; MARKS],
    states: [u64; MARKS],
}

#[map]
static HANDLED: PerCpuArray<Marks> = PerCpuArray::with_max_entries(1, 0);

/// The first program handled this transition (socket `sk`, states `old << 8 | new`).
#[inline(always)]
pub fn mark(sk: u64, states: u64) {
    if let Some(marks) = HANDLED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array; indexes are masked below its length.
        unsafe {
            let m = &mut *marks;
            let i = (m.next as usize) % MARKS;
            m.sk[i] = sk;
            m.states[i] = states;
            m.next = m.next.wrapping_add(1);
        }
    }
}

/// Whether the first program handled this transition; clears its mark, and the marks of
/// transitions that interrupted this check.
#[inline(always)]
pub fn handled(sk: u64, states: u64) -> bool {
    let Some(marks) = HANDLED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; indexes are masked below its length. A
    // softirq may interrupt this and add marks (below).
    let m = unsafe { &mut *marks };
    let start = m.next;
    let mut found = false;
    for back in 1..=MARKS as u64 {
        let i = (start.wrapping_sub(back) as usize) % MARKS;
        if m.sk[i] == sk && m.states[i] == states {
            m.sk[i] = 0;
            found = true;
            break;
        }
    }
    // Marks added meanwhile are of transitions whose second program was skipped because this
    // one was running: handled, and never to be found.
    let added = m.next.wrapping_sub(start);
    if added != 0 {
        for k in 0..MARKS as u64 {
            if k < added {
                m.sk[(start.wrapping_add(k) as usize) % MARKS] = 0;
            }
        }
    }
    found
}
