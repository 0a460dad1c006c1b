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
//!   The exec hook also walks the file the process now runs (`current->mm->exe_file`) up to the
//!   root of its mount namespace, crossing mounts, as the kernel's `d_path()` would: the name
//!   with symbolic links resolved (`/usr/bin/python3` runs `/usr/bin/python3.11`), the same as
//!   /proc/PID/exe, but known even when the process exits before userspace could read /proc.
//! - **Cost:** per exec (an 800-byte event, three probe reads and one string read per path
//!   component: 1.8 µs per exec of `/bin/true` measured with bpf_stats, against the several
//!   hundred µs an exec costs) and per process exit (a 24-byte event), never per packet or per
//!   socket.
//! - **Fallback:** a path deeper than [`MAX_DEPTH`] or longer than `EXE_PATH_LEN / 2` bytes is
//!   not sent (`exe_len` 0); userspace then uses the execve() name and /proc. Processes that
//!   only fork (pre-fork workers) are named from /proc by userspace.

use aya_ebpf::{
    EbpfContext as _,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_task, bpf_probe_read_kernel_str},
    },
    programs::TracePointContext,
};
use observer_common::{EXE_PATH_LEN, ProcessExec, ProcessExit, counter, kind};

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
        (*event)._pad = 0;
        let len = &raw mut (*event).exe_len;
        if exe_path((&raw mut (*event).exe).cast(), len).is_none() {
            len.write_volatile(0);
        }
    }
    entry.submit(submit_flags());
}

/// Path components walked at most (mount crossings included).
const MAX_DEPTH: u32 = 32;
/// Each component is written through a window of half the buffer, so that the verifier sees
/// every write in bounds whatever the offset.
const WINDOW: usize = EXE_PATH_LEN / 2;

/// Writes the names of the current process's executable's path components into `exe`, from the
/// file up to its mount namespace's root, each NUL-terminated, and the bytes written into
/// `len`; `None` when the walk did not reach the root.
///
/// `len` lives in the event, not in a register, on purpose: read back from memory it is a
/// value the verifier does not track, so the paths through one iteration (a component, a
/// mount crossed) end in equal states and are pruned, instead of doubling at every level.
///
/// # Safety
/// `exe` points at `EXE_PATH_LEN` writable bytes, `len` at a writable `u32`.
unsafe fn exe_path(exe: *mut u8, len: *mut u32) -> Option<()> {
    // SAFETY: no preconditions; the task is only read through probe reads.
    let task = Probe(unsafe { bpf_get_current_task() });
    let file = task.deref(layout!(task_mm))?.deref(layout!(mm_exe_file))?;
    let mut dentry: u64 = file.read(layout!(file_path_dentry))?;
    let mut vfsmount: u64 = file.read(layout!(file_path_mnt))?;
    let mut mount = vfsmount.wrapping_sub(u64::from(layout!(mount_mnt)));
    // SAFETY: `len` is writable (the caller's contract).
    unsafe { len.write_volatile(0) };
    for _ in 0..MAX_DEPTH {
        if dentry == Probe(vfsmount).read::<u64>(layout!(vfsmount_root))? {
            // The root of a mount: go on from where it is mounted, or stop at the namespace's
            // root, the mount that is its own parent.
            let parent: u64 = Probe(mount).read(layout!(mount_parent))?;
            if parent == mount {
                return Some(());
            }
            dentry = Probe(mount).read(layout!(mount_mountpoint))?;
            mount = parent;
            vfsmount = parent.wrapping_add(u64::from(layout!(mount_mnt)));
            continue;
        }
        let parent: u64 = Probe(dentry).read(layout!(dentry_parent))?;
        if parent == dentry {
            return Some(());
        }
        let name: u64 = Probe(dentry).read(layout!(dentry_name))?;
        // SAFETY: `len` is readable (the caller's contract).
        let at = unsafe { len.read_volatile() } as usize;
        if at >= WINDOW {
            return None;
        }
        // SAFETY: `at < WINDOW` and the helper writes at most WINDOW bytes, inside `exe`.
        let n = unsafe {
            bpf_probe_read_kernel_str(
                exe.add(at).cast::<c_void>(),
                WINDOW as u32,
                name as *const c_void,
            )
        };
        if n <= 0 {
            count(counter::READ_FAILED);
            return None;
        }
        // SAFETY: `len` is writable (the caller's contract).
        unsafe { len.write_volatile(at as u32 + n as u32) };
        dentry = parent;
    }
    None
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
