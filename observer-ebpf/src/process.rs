//! Hook map: which executable a process runs, so that a socket's owner is named by its
//! executable even after the process has exited (curl closes its socket and exits within
//! milliseconds, before userspace could look at /proc).
//!
//! - **Hooks:** the classic tracepoints `sched:sched_process_exec` (the `filename` passed to
//!   execve(), a `__data_loc` whose offset userspace reads from tracefs) and
//!   `sched:sched_process_exit`, filtered to thread-group leaders, which tells userspace that
//!   the pid may be reused.
//! - **Why:** stable on every supported kernel; they fire once per exec and per exit, in the
//!   process's own context, so `bpf_get_current_pid_tgid` names it.
//! - **Cost:** per exec (a 280-byte event and one string read) and per process exit (a 24-byte
//!   event), never per packet or per socket.
//! - **Fallback:** none needed. Processes that only fork (pre-fork workers) are named from
//!   /proc by userspace.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    programs::TracePointContext,
};
use observer_common::{ProcessExec, ProcessExit, counter, kind};

use crate::{
    kernel::{Kmem as _, Probe},
    runtime::{EVENTS, count, header, layout, submit_flags},
};

fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

pub fn on_exec(ctx: &TracePointContext) {
    let Some(loc) = Probe(ctx.as_ptr() as u64).read::<u32>(layout!(tp_exec_filename)) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<ProcessExec>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a ProcessExec; the string
    // is read with a helper that bounds it to the buffer.
    unsafe {
        (*event).header = header(
            kind::PROCESS_EXEC,
            size_of::<ProcessExec>(),
            now(),
            bpf_get_current_pid_tgid(),
        );
        let name = &mut (*event).filename;
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        if bpf_probe_read_kernel_str_bytes(src, name).is_err() {
            name[0] = 0;
            count(counter::READ_FAILED);
        }
    }
    entry.submit(submit_flags());
}

pub fn on_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Threads exit too: only the leader's exit (pid == tgid) ends the process.
    if pid_tgid >> 32 != pid_tgid & 0xffff_ffff {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ProcessExit>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory large enough for a ProcessExit.
    unsafe {
        (*event).header = header(
            kind::PROCESS_EXIT,
            size_of::<ProcessExit>(),
            now(),
            pid_tgid,
        );
    }
    entry.submit(submit_flags());
}
