//! How the second program on `inet_sock_set_state` tells the transitions the first one handled
//! (observer-ebpf's `nesting`): a per-CPU stack of marks, here so that it is unit-tested.
//!
//! The kernel skips a tracing program that is already running on its CPU. Interrupts nest, so a
//! context that interrupts another runs to its end before the other resumes, and the marks form
//! a stack:
//! - the first program pushes a mark for each transition it handled;
//! - the second pops it, together with every mark above it. Those are of transitions that
//!   interrupted this one after its first program and that are done with: either both
//!   programs ran (and popped their own mark), or only the first did, because this second
//!   program was running.
//! - A transition the first program was skipped for has no mark: the second handles it.
//!
//! A softirq that makes any number of transitions between the two programs of a task's
//! transition leaves the stack as it found it. (A ring of marks that every transition
//! advanced lost the task's mark to a softirq of 16 transitions, and its socket's close was
//! handled twice: one socket, two records.)
//!
//! Every access is volatile: an interrupt on the same CPU may change the stack at any point.

use core::ptr::{read_volatile, write_volatile};

/// Slots per CPU. The stack holds one live mark per nesting level (task, softirq), plus
/// marks of a softirq's transitions made while the second program runs in the task.
pub const MARKS: usize = 16;

#[repr(C)]
pub struct Marks {
    /// Marks pushed, wrapping; the newest is at `(top - 1) % MARKS`.
    top: u64,
    sk: [u64; MARKS],
    states: [u64; MARKS],
}

const _: () = assert!(size_of::<Marks>() == 8 + 16 * MARKS);

#[expect(clippy::cast_possible_truncation, reason = "the value is below MARKS")]
fn at(pos: u64) -> usize {
    (pos % MARKS as u64) as usize
}

impl Marks {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            top: 0,
            sk: [0; MARKS],
            states: [0; MARKS],
        }
    }

    /// The first program handled the transition `states` (`old << 8 | new`) of socket `sk`.
    ///
    /// # Safety
    /// `this` points at this CPU's `Marks`, touched only by this CPU's programs.
    #[expect(
        clippy::inline_always,
        reason = "a BPF program's hot path: no BPF-to-BPF call"
    )]
    #[inline(always)]
    pub unsafe fn mark(this: *mut Self, sk: u64, states: u64) {
        // SAFETY: as the caller promises; indexes are reduced below MARKS.
        unsafe {
            let top = read_volatile(&raw const (*this).top);
            write_volatile(&raw mut (*this).sk[at(top)], sk);
            write_volatile(&raw mut (*this).states[at(top)], states);
            write_volatile(&raw mut (*this).top, top.wrapping_add(1));
        }
    }

    /// Whether the first program handled this transition. Pops its mark and every mark above
    /// it, or, when there is none, the marks pushed while this ran.
    ///
    /// # Safety
    /// As for [`Marks::mark`].
    #[expect(
        clippy::inline_always,
        reason = "a BPF program's hot path: no BPF-to-BPF call"
    )]
    #[inline(always)]
    pub unsafe fn handled(this: *mut Self, sk: u64, states: u64) -> bool {
        // SAFETY: as the caller promises; indexes are reduced below MARKS.
        unsafe {
            let start = read_volatile(&raw const (*this).top);
            let mut base = start;
            let mut found = false;
            for back in 1..=MARKS as u64 {
                let pos = start.wrapping_sub(back);
                if read_volatile(&raw const (*this).sk[at(pos)]) == sk
                    && read_volatile(&raw const (*this).states[at(pos)]) == states
                {
                    base = pos;
                    found = true;
                    break;
                }
            }
            // Cleared, so that a later transition skipped by the first program never matches
            // a stale mark.
            let above = read_volatile(&raw const (*this).top).wrapping_sub(base);
            for k in 0..MARKS as u64 {
                if k < above {
                    write_volatile(&raw mut (*this).sk[at(base.wrapping_add(k))], 0);
                }
            }
            write_volatile(&raw mut (*this).top, base);
            found
        }
    }

    /// Marks on the stack (for tests).
    #[must_use]
    pub fn depth(&self) -> u64 {
        self.top
    }
}

impl Default for Marks {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// One CPU's two programs, run at program granularity, counting how often each
    /// transition was handled.
    struct Cpu {
        marks: Marks,
        handled: std::collections::BTreeMap<(u64, u64), u32>,
    }

    impl Cpu {
        fn new() -> Self {
            Self {
                marks: Marks::new(),
                handled: std::collections::BTreeMap::new(),
            }
        }

        fn first(&mut self, t: (u64, u64)) {
            *self.handled.entry(t).or_default() += 1;
            // SAFETY: a local Marks.
            unsafe { Marks::mark(&raw mut self.marks, t.0, t.1) };
        }

        fn second(&mut self, t: (u64, u64)) {
            // SAFETY: a local Marks.
            if !unsafe { Marks::handled(&raw mut self.marks, t.0, t.1) } {
                *self.handled.entry(t).or_default() += 1;
            }
        }

        /// A transition during which nothing interrupted.
        fn whole(&mut self, t: (u64, u64)) {
            self.first(t);
            self.second(t);
        }

        fn each_once(&self) -> bool {
            self.handled.values().all(|&n| n == 1)
        }
    }

    fn t(sk: u64, old: u64, new: u64) -> (u64, u64) {
        (sk, old << 8 | new)
    }

    #[test]
    fn a_softirq_of_many_transitions_between_the_two_programs_takes_no_mark_away() {
        for burst in [0_usize, 1, 15, 16, 17, 100] {
            let mut cpu = Cpu::new();
            let task = t(0xffff_0001, 9, 7);
            cpu.first(task);
            for i in 0..burst as u64 {
                cpu.whole(t(0xffff_1000 + i, 1, 8));
            }
            cpu.second(task);
            assert!(cpu.each_once(), "burst {burst}: {:?}", cpu.handled);
            assert_eq!(cpu.handled.len(), burst + 1);
            assert_eq!(cpu.marks.depth(), 0, "burst {burst}");
        }
    }

    #[test]
    fn a_transition_the_first_program_was_skipped_for_is_taken_over() {
        let mut cpu = Cpu::new();
        let outer = t(1, 1, 4);
        let inner = t(2, 8, 7);
        // A softirq interrupts the first program before its mark: for the softirq's transition
        // only the second program runs.
        cpu.second(inner);
        cpu.first(outer);
        cpu.second(outer);
        assert!(cpu.each_once(), "{:?}", cpu.handled);
        assert_eq!(cpu.marks.depth(), 0);
    }

    #[test]
    fn marks_left_while_the_second_program_ran_are_cleared_with_its_own() {
        let mut cpu = Cpu::new();
        let outer = t(1, 1, 4);
        let inner = t(2, 8, 7);
        cpu.first(outer);
        // The second program starts and a softirq interrupts it: for the softirq's transition
        // only the first program runs.
        cpu.first(inner);
        cpu.second(outer);
        assert!(cpu.each_once(), "{:?}", cpu.handled);
        assert_eq!(cpu.marks.depth(), 0);
        // The same socket and states again, the first program skipped this time: no stale mark
        // may claim it was handled.
        // SAFETY: a local Marks.
        assert!(!unsafe { Marks::handled(&raw mut cpu.marks, inner.0, inner.1) });
    }

    #[test]
    fn an_outer_mark_survives_an_inner_transition_taken_over() {
        let mut cpu = Cpu::new();
        let task = t(1, 1, 4);
        cpu.first(task);
        // Between the task's two programs: a softirq transition whose first program was
        // skipped cannot happen, but one with no mark must not pop the task's.
        cpu.second(t(3, 4, 8));
        cpu.second(task);
        assert_eq!(cpu.handled[&task], 1);
        assert_eq!(cpu.marks.depth(), 0);
    }
}
