//! Hook map: the owner of a server socket.
//!
//! - **Hook:** `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`. The returned fd is
//!   resolved to its socket in the accepting task: task→files→fdt→fd[fd]→file→private_data
//!   (`struct socket`)→sk, with offsets from BTF.
//! - **Why:** a server child socket changes state in softirq context, where the current task is
//!   whoever the packet interrupted (on loopback, the client). The task returning from accept()
//!   is the owner, and in a pre-fork server that is the child that accepted, not the parent
//!   that listened. sock_ops callbacks run in the same wrong contexts.
//! - **Cost:** ~0.7 µs per accept() (six dependent reads); nothing for other syscalls beyond the
//!   kernel's syscall-tracepoint slow path while any syscall tracepoint is attached.
//! - **Fallback:** sockets accepted through io_uring (no syscall) keep no owner; the record then
//!   says the process is unknown.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_task, bpf_ktime_get_boot_ns},
    programs::TracePointContext,
};
use observer_common::conn_flag;

use crate::{
    kernel, lifecycle,
    runtime::{layout, read},
};

pub fn on_accept_exit(ctx: &TracePointContext) {
    let Some(ret) = read::<i64>(ctx.as_ptr() as u64, layout!(tp_accept_ret)) else {
        return;
    };
    let Ok(fd) = u32::try_from(ret) else { return };
    let Some(sk) = socket_of_fd(fd) else { return };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(entry) = kernel::tracked(sk, now) else {
        return;
    };
    // SAFETY: a value pointer returned by the map.
    let st = unsafe { &mut *entry };
    st.owner = lifecycle::current_owner();
    st.accept_ns = now;
    st.flags |= conn_flag::OWNER_VALID;
}

/// The `struct sock *` behind file descriptor `fd` of the current task.
fn socket_of_fd(fd: u32) -> Option<u64> {
    // SAFETY: no preconditions; the result is only used as an address for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files = read::<u64>(task, layout!(task_files))?;
    let fdt = read::<u64>(files, layout!(files_fdt))?;
    let max_fds = read::<u32>(fdt, layout!(fdt_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read::<u64>(fdt, layout!(fdt_fd))?;
    let file = read::<u64>(fd_array + u64::from(fd) * 8, 0)?;
    let socket = read::<u64>(file, layout!(file_private_data))?;
    let sk = read::<u64>(socket, layout!(socket_sk))?;
    (sk != 0).then_some(sk)
}
