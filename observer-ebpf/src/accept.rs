//! Hook map: the owner of a server socket at accept() (`--accept-hook`, off by default).
//!
//! - **Hook:** `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`. The returned fd is
//!   resolved to its socket in the accepting task: task→files→fdt→fd[fd]→file→private_data
//!   (`struct socket`)→sk, with offsets from BTF.
//! - **Why:** a server child socket changes state in softirq context, where the current task is
//!   whoever the packet interrupted (on loopback, the client). The task returning from accept()
//!   is the owner, and in a pre-fork server that is the child that accepted, not the parent
//!   that listened. sock_ops callbacks run in the same wrong contexts.
//! - **Cost:** measured with `cargo xtask bench churn --paired`: about 4 µs per loopback
//!   connection, and every syscall on the host takes the kernel's syscall-tracepoint slow path
//!   while it is attached. That is why it is opt-in: by default a server socket's owner is its
//!   listener's process until the socket's own process closes it (`lifecycle.rs`), and only
//!   `tcp.accept_wait_us` needs this hook.
//! - **Fallback:** sockets accepted through io_uring (no syscall) keep no owner; the record then
//!   says the process is unknown.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_get_current_task_btf},
    programs::TracePointContext,
};
use observer_common::{SYS_EXIT_RET_OFFSET, conn_flag};

use crate::{
    kernel::{self, Direct, Kmem as _, Probe},
    lifecycle,
    runtime::layout,
};

pub fn on_accept_exit(ctx: &TracePointContext) {
    // SAFETY: a constant-offset context load, checked against the tracepoint's format at load
    // time (`SYS_EXIT_RET_OFFSET`).
    let ret = unsafe {
        *ctx.as_ptr()
            .cast::<u8>()
            .add(SYS_EXIT_RET_OFFSET as usize)
            .cast::<i64>()
    };
    let Ok(fd) = u32::try_from(ret) else {
        return;
    };
    let Some(sk) = socket_of_fd(fd) else {
        return;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // accept() also serves AF_UNIX, SCTP and MPTCP: only TCP sockets, whose cookie the
    // lifecycle hook set at their birth, are tracked.
    let Some(entry) = kernel::tcp_probe(sk)
        .and_then(|sock| Some((sock, kernel::cookie_of(sock)?)))
        .and_then(|(sock, cookie)| kernel::tracked(cookie, sock, now))
    else {
        return;
    };
    // SAFETY: a value pointer returned by the map.
    let st = unsafe { &mut *entry };
    lifecycle::set_current_owner(&mut st.owner);
    st.accept_ns = now;
    st.flags =
        (st.flags & !conn_flag::OWNER_SOURCES) | conn_flag::OWNER_VALID | conn_flag::OWNER_ACCEPT;
}

/// The `struct sock *` behind file descriptor `fd` of the current task. The task, its
/// `files_struct` and `fdtable` are BTF pointers (direct loads); the fd array is indexed by a
/// run-time value, which the verifier only allows through probe reads.
fn socket_of_fd(fd: u32) -> Option<u64> {
    // SAFETY: no preconditions; returns the current task as a BTF pointer.
    let task = Direct::new(unsafe { bpf_get_current_task_btf() }.cast())?;
    let fdt = task.deref(layout!(task_files))?.deref(layout!(files_fdt))?;
    if fd >= fdt.read::<u32>(layout!(fdt_max_fds))? {
        return None;
    }
    let fd_array = fdt.read::<u64>(layout!(fdt_fd))?;
    let file = Probe(fd_array + u64::from(fd) * 8).deref(0)?;
    let socket = file.deref(layout!(file_private_data))?;
    socket.deref(layout!(socket_sk)).map(|sk| sk.0)
}
